"""Small patches of ComfyUI-WanVideoWrapper, applied once, when ComfyUI takes its first prompt (by then every custom
node package is loaded, whatever order ComfyUI loaded them in). Measured in docs/PERFORMANCE.md. None of them
changes the arithmetic (an H200 A/B of the first three gave a bit-identical video; the gc patch frees no tensor
that holds values in use).

resident_audio_proj  The wrapper's WanModel.forward moves its InfiniteTalk/MultiTalk audio projection
    (AudioProjModel, ~93M parameters) to the GPU at the start of every sampling step and back to the CPU after
    it: on an H200 ~90 ms of pageable copies a step (11 device-to-host, 12 host-to-device) and a stall of the
    stream while the CPU waits for them. Here a module of that class that is already on a GPU ignores a move to
    the CPU made by a direct `.to()` call; moving the whole model (`model.to(...)`, which reaches children
    through `_apply`, not `.to`) still takes it along.
resident_vae  The InfiniteTalk/MultiTalk loop of WanVideoSampler moves the VAE (WanVideoVAE, ~127M parameters,
    ~250 MB in bf16) to the GPU and back to the CPU twice a window, around the conditioning encode and around
    the decode. On GPUs with at least 38 GiB (the device row that keeps every model on the GPU; the
    WORKER_VRAM_LIMIT_GB cap counts) a VAE already on a GPU ignores direct `.to(cpu)` calls, as above. Below
    38 GiB it is left alone: there the DiT's blocks are swapped and every MB counts.
cond_encode_memo  The same loop VAE-encodes [the start image, 80 zero frames] at the start of every 81-frame
    window (~1.3 s on an H200). For an image input that tensor is the same in every window: the loop takes
    frame `window index` of the start images, and a single image is padded by repeating its last frame. While
    WanVideoSampler.process runs, WanVideoVAE.encode keeps one entry: the largest input it encoded in that call
    (a copy, on the input's device: 3 x 81 x 480 x 832 in the VAE's dtype, 194 MB in bf16 at 832x480) and its
    latent (16 x 21 x 60 x 104 fp32, 8.4 MB). A call with an input equal to it (same shape, dtype and device,
    torch.equal, the same VAE and the same encode arguments) gets a copy of that latent instead of an encode;
    a miss with an input at least as large replaces the entry (a video input, whose window frames differ, so
    costs one comparison and one copy a window); smaller inputs (the motion frames) pass through. Sampled
    encodes (sample=True) are never memoized. The entry is dropped when the sampler call returns or raises,
    and when there is no memory for its copies (the encode's own result stands). On the CPU and on GPUs with
    at least 38 GiB; below that (the rows that swap the DiT's blocks) it is left alone.
young_gc_in_sampler  WanVideoSampler.process runs a full gc.collect() before sampling and once a window of the
    InfiniteTalk loop: ~0.45 s each on an H200 machine with the compiled 14B model in the process (Python walks
    every object it holds), ~6 s of a 12-window job. On GPUs with at least 38 GiB the wrapper's nodes_sampler
    module gets a stand-in for its `gc` name: while a sampler call runs, its own gc.collect() calls without
    arguments collect the young generations only (gc.collect(1): the objects made since the last collections);
    one full collection runs when the sampler call ends. The gc module itself is not touched: ComfyUI's and
    every other package's collections, and Python's automatic ones, go on as before. Tensors freed by reference
    counting (nearly all of them) are freed as before; garbage in reference cycles that outlives one of the
    sampler's young collections (which moves what it does not free to the oldest generation) waits until the
    sampler call ends.
cudnn_fp8_mode  adds attention_mode "cudnn_fp8" (fp8_attention.py: the DiT's self-attention through cuDNN's fp8
    SDPA on Hopper, sdpa on other GPUs) to WanVideoModelLoader's choices and routes the wrapper's attention() for
    it; the InfiniteTalk templates' >= 38 GiB row asks for it. Nothing changes for the other modes. Always applied,
    at ComfyUI's start where the wrapper is loaded by then, else at the first prompt, before ComfyUI validates it.
fp8_fast_gate  `fp8_*_fast` quantization (torch._scaled_mm) needs compute capability 8.9 or more (Ada,
    Hopper, Blackwell); on an older GPU (A100, A6000: they share the >= 38 GiB device row with the H100/H200)
    WanVideoModelLoader gets the same quantization without `_fast` (fp8 weights, bf16 matmuls) instead of
    failing.

WORKER_WAN_PATCHES chooses the speed patches (a benchmark's A/B): unset or 1, all of them; 0, none; otherwise a
comma-separated list of their names (an unknown name is said in the log). fp8_fast_gate is a guard the >= 38 GiB device row relies on, always applied,
and said in the log where the wrapper's loader cannot be found. cudnn_fp8_mode is always applied too (the
>= 38 GiB rows ask for the mode: a loader without it would refuse their prompts).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading

from . import fp8_attention
from .patching import find_class, find_module, prompt_handler

log = logging.getLogger("runpod_worker.wan_patches")
_APPLIED: set[str] = set()
_WARNED: set[str] = set()
SPEED_PATCHES = ("resident_audio_proj", "resident_vae", "cond_encode_memo", "young_gc_in_sampler")
BIG_GPU_GIB = 38.0  # resident_vae, young_gc_in_sampler, cond_encode_memo: the row that keeps every model on the GPU


def wanted() -> set[str]:
    """The speed patches WORKER_WAN_PATCHES asks for."""
    value = os.environ.get("WORKER_WAN_PATCHES", "1").strip()
    if value in ("", "1"):
        return set(SPEED_PATCHES)
    if value == "0":
        return set()
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(SPEED_PATCHES))
    if unknown and "unknown_names" not in _WARNED:
        _WARNED.add("unknown_names")
        log.warning("WORKER_WAN_PATCHES names no patch called %s (there are: %s)", ", ".join(unknown),
                    ", ".join(SPEED_PATCHES))
    return names & set(SPEED_PATCHES)


def _target_device(args, kwargs):
    """The device a Module.to(*args, **kwargs) call names, or None."""
    import torch

    return torch._C._nn._parse_to(*args, **kwargs)[0]


def keep_resident(cls) -> None:
    """Instances of `cls` that are on a GPU ignore direct `.to(cpu)` calls."""
    original = cls.to

    def to(self, *args, **kwargs):
        device = _target_device(args, kwargs)
        if device is not None and device.type == "cpu":
            first = next(self.parameters(), None)
            if first is not None and first.device.type != "cpu":
                return self
        return original(self, *args, **kwargs)

    to.__wrapped__ = original
    cls.to = to


class TorchOps:
    """What the memo asks of a tensor (tests stand numpy in for torch here)."""

    @staticmethod
    def is_tensor(x) -> bool:
        import torch

        return isinstance(x, torch.Tensor)

    @staticmethod
    def same(a, b) -> bool:
        import torch

        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)

    @staticmethod
    def copy(x):
        return x.detach().clone()

    @staticmethod
    def size(x) -> int:
        return x.numel()


class EncodeMemo:
    """One entry: the largest input WanVideoVAE.encode saw in the current sampler call, and its output."""

    def __init__(self, ops=TorchOps) -> None:
        self.ops = ops
        self.depth = 0  # sampler calls running (a node may call another's process)
        self.owner: int | None = None  # the thread of the sampler call: encodes from others are left alone
        self.hits = self.misses = 0
        self.clear()

    def active(self) -> bool:
        return self.depth > 0 and threading.get_ident() == self.owner

    def clear(self) -> None:
        self.vae = self.arguments = self.inputs = self.output = None

    def lookup(self, vae, inputs, arguments):
        if (self.inputs is not None and self.vae is vae and self.arguments == arguments
                and self.ops.same(self.inputs, inputs)):
            try:
                copy = self.ops.copy(self.output)
            except (MemoryError, RuntimeError):  # no room for the copy: the entry goes, the encode runs
                self.clear()
            else:
                self.hits += 1
                return copy
        self.misses += 1
        return None

    def store(self, vae, inputs, arguments, output) -> None:
        if self.inputs is None or self.ops.size(inputs) >= self.ops.size(self.inputs):
            self.clear()  # the old entry goes before the new copies are made
            try:
                inputs_copy, output_copy = self.ops.copy(inputs), self.ops.copy(output)
            except (MemoryError, RuntimeError):  # torch's out-of-memory is a RuntimeError: no entry, the job goes on
                return
            self.vae, self.arguments, self.inputs, self.output = vae, arguments, inputs_copy, output_copy


MEMO = EncodeMemo()


def memoize_encode(cls, memo: EncodeMemo = MEMO) -> None:
    """cls.encode answers from `memo` while memo.depth > 0 (see cond_encode_memo above)."""
    original = cls.encode
    signature = inspect.signature(original)

    def encode(self, videos, *args, **kwargs):
        if not memo.active() or not memo.ops.is_tensor(videos):
            return original(self, videos, *args, **kwargs)
        try:
            bound = signature.bind(self, videos, *args, **kwargs)
        except TypeError:  # the wrapper's encode() changed: no memo, said once
            if "encode_signature" not in _WARNED:
                _WARNED.add("encode_signature")
                log.warning("WanVideoVAE.encode was called in a way the memo does not know (%s): not memoized",
                            signature)
            return original(self, videos, *args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k not in ("self", "videos", "pbar")}
        if arguments.get("sample"):
            return original(self, videos, *args, **kwargs)
        arguments = tuple(sorted((k, repr(v)) for k, v in arguments.items()))
        cached = memo.lookup(self, videos, arguments)
        if cached is not None:
            return cached
        output = original(self, videos, *args, **kwargs)
        if memo.ops.is_tensor(output):
            memo.store(self, videos, arguments, output)
        return output

    encode.__wrapped__ = original
    cls.encode = encode


def memo_scope(cls, memo: EncodeMemo = MEMO) -> None:
    """cls.process runs with the encode memo on, and drops its entry when it returns or raises."""
    original = cls.process

    def process(self, *args, **kwargs):
        if memo.depth == 0:
            memo.hits = memo.misses = 0
            memo.owner = threading.get_ident()
        memo.depth += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            memo.depth -= 1
            if memo.depth == 0:
                memo.owner = None
                memo.clear()
                if memo.hits:
                    print(f"[runpod worker] VAE encode memo: {memo.hits} encodes reused, {memo.misses} run", flush=True)

    process.__wrapped__ = original
    cls.process = process


class YoungGc:
    """Stands in for the `gc` module under the wrapper's nodes_sampler's own name for it: collect() without
    arguments collects generations 0 and 1 only while a sampler call runs (`depth` > 0); everything else is the
    real gc module's. Which thread calls is not checked: ComfyUI runs one prompt at a time, in one thread, and
    only code of nodes_sampler (or code that nodes_sampler's functions run) reaches this name."""

    def __init__(self, gc_module=None) -> None:
        import gc

        self.gc = gc_module or gc
        self.depth = 0
        self.light = 0  # collections made young-only, for the log

    def collect(self, *args, **kwargs):
        if not args and not kwargs and self.depth > 0:
            self.light += 1
            return self.gc.collect(1)
        return self.gc.collect(*args, **kwargs)

    def __getattr__(self, name):  # gc.disable, gc.get_objects, ...: the real module's
        if name == "gc":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.gc, name)


GC = YoungGc()


def young_gc_in(cls, scope: YoungGc | None = None) -> bool:
    """cls.process runs with its module's argument-less gc.collect() calls made young-only, and one full collection
    at its end. False, and nothing changed, where cls's module has no `gc` name for the gc module (the wrapper
    changed its imports)."""
    scope = scope or GC
    module = sys.modules.get(cls.__module__)
    if module is None or getattr(module, "gc", None) is not scope.gc:
        return False
    module.gc = scope
    original = cls.process

    def process(self, *args, **kwargs):
        scope.depth += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            scope.depth -= 1
            if scope.depth == 0:
                scope.gc.collect()
                if scope.light:
                    print(f"[runpod worker] {scope.light} full gc.collect() calls of the sampler made young-only",
                          flush=True)
                    scope.light = 0

    process.__wrapped__ = original
    cls.process = process
    return True


def fast_only_where_supported(cls, capability) -> None:
    """cls.loadmodel gets `quantization` without `_fast` when capability() (major, minor) is below (8, 9)."""
    original = cls.loadmodel

    def loadmodel(self, *args, **kwargs):
        quantization = kwargs.get("quantization")
        if isinstance(quantization, str) and quantization.endswith("_fast"):
            cap = capability()
            if cap is not None and tuple(cap) < (8, 9):
                kwargs["quantization"] = quantization[: -len("_fast")]
                log.warning("%s needs compute capability >= 8.9 (this GPU: %d.%d): using %s", quantization,
                            cap[0], cap[1], kwargs["quantization"])
        return original(self, *args, **kwargs)

    loadmodel.__wrapped__ = original
    cls.loadmodel = loadmodel


def _cuda_capability():
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def _vram_gib():
    """This process's GPU memory in GiB (WORKER_VRAM_LIMIT_GB where lower), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    limit = vram_limit_gib()
    return gib if limit is None else min(gib, limit)


def vram_limit_gib():
    """WORKER_VRAM_LIMIT_GB as a positive number of GiB, or None where it is unset. The worker always sets a number
    (from its validated COMFY_VRAM_LIMIT_GB); anything else is logged and counts as no limit, in every reader."""
    text = os.environ.get("WORKER_VRAM_LIMIT_GB", "").strip()
    if not text:
        return None
    try:
        limit = float(text)
    except ValueError:
        limit = -1.0
    if not limit > 0 or limit == float("inf"):
        log.warning("WORKER_VRAM_LIMIT_GB=%r is not a positive number of GiB; no VRAM limit", text)
        return None
    return limit


def add_modes(fp8_problem=None) -> bool:
    """cudnn_fp8_mode, once the wrapper is loaded (comfy_nodes/__init__ calls this at import, so that /object_info
    lists the choice from the start where ComfyUI loaded the wrapper first; apply() again at every prompt until it
    took). fp8_problem: why cuDNN's fp8 attention cannot run here (default: fp8_attention.problem_here())."""
    if "cudnn_fp8_mode" in _APPLIED:
        return True
    attention_module = find_module("wanvideo.modules.attention", "attention")
    loader = find_class("WanVideoModelLoader", "nodes_model_loading")
    if attention_module is None or loader is None:
        return False
    problem = fp8_problem() if fp8_problem is not None else fp8_attention.problem_here()
    fp8_attention.install(attention_module, loader, problem)
    _APPLIED.add("cudnn_fp8_mode")
    return True


def apply(capability=_cuda_capability, vram_gib=_vram_gib, fp8_problem=None) -> set[str]:
    """Applies each patch whose wrapper class is loaded and not yet patched; returns the names applied so far."""
    try:  # an added choice, on whatever WORKER_WAN_PATCHES says; its failure must not cost the other patches
        add_modes(fp8_problem)
    except Exception:
        if "add_modes" not in _WARNED:
            _WARNED.add("add_modes")
            log.exception("adding attention_mode cudnn_fp8 failed (the other patches go on)")
    if "fp8_fast_gate" not in _APPLIED:  # a guard, not a speed-up: on whatever WORKER_WAN_PATCHES says
        loader = find_class("WanVideoModelLoader", "nodes_model_loading")
        if loader is not None:
            fast_only_where_supported(loader, capability)
            _APPLIED.add("fp8_fast_gate")
        elif "missing_loader" not in _WARNED and any("WanVideoWrapper" in name for name in sys.modules):
            _WARNED.add("missing_loader")
            log.error("WanVideoWrapper's WanVideoModelLoader was not found: fp8 fast matmuls are not kept off GPUs "
                      "below compute capability 8.9 (A100, A6000), where they fail")
    pending = wanted() - _APPLIED
    if not pending:
        return _APPLIED
    vae = find_class("WanVideoVAE", "wanvideo.wan_video_vae")
    sampler = find_class("WanVideoSampler", "nodes_sampler")
    gib = vram_gib() if vae is not None or sampler is not None else None  # None: no GPU (or nothing to gate)
    big = gib is not None and gib >= BIG_GPU_GIB
    if "resident_audio_proj" in pending:
        audio_proj = find_class("AudioProjModel", "multitalk.multitalk")
        if audio_proj is not None:
            keep_resident(audio_proj)
            _APPLIED.add("resident_audio_proj")
    if "resident_vae" in pending and vae is not None and big:
        keep_resident(vae)
        _APPLIED.add("resident_vae")
    if "young_gc_in_sampler" in pending and sampler is not None and big:
        if young_gc_in(sampler):
            _APPLIED.add("young_gc_in_sampler")
        elif "sampler_gc" not in _WARNED:
            _WARNED.add("sampler_gc")
            log.warning("WanVideoSampler's module has no `gc` name for the gc module: young_gc_in_sampler "
                        "not applied")
    if "cond_encode_memo" in pending and vae is not None and sampler is not None and (gib is None or big):
        memoize_encode(vae)
        memo_scope(sampler)
        _APPLIED.add("cond_encode_memo")
    return _APPLIED


def sdpa_where_the_mode_is_missing(json_data):
    """A prompt's attention_mode "cudnn_fp8" turned into "sdpa" while the mode is not in the wrapper's loader (where
    add_modes failed): ComfyUI would refuse the prompt, and the >= 38 GiB rows ask for the mode in every job. Said
    in the log at every such prompt."""
    if "cudnn_fp8_mode" in _APPLIED:
        return json_data
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    changed = []
    for node_id, node in (prompt.items() if isinstance(prompt, dict) else ()):
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict) and inputs.get("attention_mode") == fp8_attention.MODE:
            inputs["attention_mode"] = "sdpa"
            changed.append(str(node_id))
    if changed:
        log.error("attention_mode %s is not installed in WanVideoWrapper's loader (its attention module or loader was "
                  "not found, or installing it failed): node(s) %s run sdpa", fp8_attention.MODE, ", ".join(changed))
    return json_data


_apply_on_prompt = prompt_handler(apply, lambda names: f"WanVideoWrapper patches applied: {', '.join(sorted(names))}",
                                  "the WanVideoWrapper patches", log)


def on_prompt(json_data):
    """ComfyUI's on-prompt handler (before it validates the prompt): the patches, then the mode's fallback."""
    return sdpa_where_the_mode_is_missing(_apply_on_prompt(json_data))
