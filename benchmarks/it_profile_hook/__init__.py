"""A benchmark-only ComfyUI custom node package (no nodes): with IT_PROFILE_DIR set, it times every call of the
WanVideoWrapper's DiT forward and VAE encode/decode inside ComfyUI, and runs torch.profiler over one DiT call when
asked, writing what it saw under IT_PROFILE_DIR. benchmarks/infinitetalk_profile.py links it into ComfyUI's
custom_nodes on the GPU machine; the worker's image never has it.

Control files in IT_PROFILE_DIR, written by the benchmark between jobs:
  label    the current case's name: every timing line is tagged with it
  profile  present: profile the DiT call number `skip` (0-based, its content, default 1: the second step of the
           next window, so warm) after the label last changed; the result goes to <label>.profile.json
Output: timings.jsonl, one line per timed call: {"label", "kind", "s", "t" (its start, perf_counter), "call"};
kinds: dit, dit_profiled, vae_encode, vae_decode, vae_to (the VAE's moves between CPU and GPU), empty_cache
(ComfyUI's soft_empty_cache), gc_collect (every gc.collect() in the process: the sampler runs one a window).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

DIR = os.environ.get("IT_PROFILE_DIR")

# Kernel name -> kind. Order matters: the first kind whose patterns match wins.
KINDS = (
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn", "_fwd_kernel", "sage")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "matmul", "_mm_", "wgmma", "triton_tem_", "splitk", "cublas",
              "scaled_mm", "sm90_", "s16816", "hmma")),
    ("casts_copies", ("copy", "cast", "convert", "catarray", "memcpy", "memset", "to_dtype", "fill")),
    ("elementwise_norm_rope", ("elementwise", "vectorized", "reduce", "norm", "rms", "softmax", "triton_poi",
                               "triton_red", "triton_per", "rope", "mul", "add", "rsqrt", "pow", "mean", "gelu",
                               "silu", "tanh", "index", "where", "clamp", "cumsum", "sum", "exp")),
    ("convolution", ("conv", "im2col", "implicit", "winograd", "nchw", "nhwc", "wgrad", "dgrad")),
)


def kind_of(name: str) -> str:
    low = name.lower().replace("nocast", "")  # aten's gpu_kernel_impl_nocast: elementwise math, not a cast
    if low.startswith("triton_") and not low.startswith("triton_tem_"):
        return "elementwise_norm_rope"  # an inductor-fused kernel: norms, RoPE, modulation, casts fused together
    for kind, patterns in KINDS:
        if any(p in low for p in patterns):
            return kind
    return "other"


class _State:
    label = ""
    calls = 0  # DiT calls since the label last changed
    patched = False


STATE = _State()


def _read(name: str) -> str | None:
    try:
        with open(os.path.join(DIR, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _log(kind: str, seconds: float, **extra) -> None:
    with open(os.path.join(DIR, "timings.jsonl"), "a") as f:
        f.write(json.dumps({"label": STATE.label, "kind": kind, "s": round(seconds, 5), **extra}) + "\n")


def _current_label() -> str:
    label = _read("label") or ""
    if label != STATE.label:
        STATE.label, STATE.calls = label, 0
    return label


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _annotated(name: str, forward):
    """forward inside a record_function range, so the profile can tell its kernels apart (eager only)."""
    import torch

    def run(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return forward(self, *args, **kwargs)
        with torch.profiler.record_function(name):
            return forward(self, *args, **kwargs)

    return run


def summarize(trace_path: str, wall_s: float) -> dict:
    """Groups a chrome trace's GPU kernels by kind; kernels inside an `it::audio_cross_attn` range count as
    audio cross-attention, those inside `it::ref_attn_map` as the multi-speaker attention map."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    ranges: dict[str, list[tuple[float, float]]] = {}
    kernels = []
    for e in events:
        cat = e.get("cat", "")
        if e.get("ph") != "X":
            continue
        if cat == "gpu_user_annotation" and str(e.get("name", "")).startswith("it::"):
            ranges.setdefault(e["name"][4:], []).append((e["ts"], e["ts"] + e["dur"]))
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            kernels.append((e["ts"], e["dur"], e.get("name", ""), cat))
    kernels.sort()
    groups: dict[str, dict] = {}
    by_name: dict[str, dict] = {}
    busy_us, end_us = 0.0, None
    for ts, dur, name, cat in kernels:
        kind = kind_of(name) if cat == "kernel" else "casts_copies"
        for range_name, spans in ranges.items():
            if any(a <= ts < b for a, b in spans):
                kind = range_name
                break
        g = groups.setdefault(kind, {"ms": 0.0, "kernels": 0})
        g["ms"] += dur / 1000
        g["kernels"] += 1
        n = by_name.setdefault(name[:160], {"kind": kind, "ms": 0.0, "calls": 0})
        n["ms"] += dur / 1000
        n["calls"] += 1
        # busy time: the union of kernel intervals on the GPU timeline
        if end_us is None or ts >= end_us:
            busy_us += dur
            end_us = ts + dur
        elif ts + dur > end_us:
            busy_us += ts + dur - end_us
            end_us = ts + dur
    total = sum(g["ms"] for g in groups.values())
    span_ms = (kernels[-1][0] + kernels[-1][1] - kernels[0][0]) / 1000 if kernels else 0.0
    for g in groups.values():
        g["ms"] = round(g["ms"], 2)
        g["share"] = round(g["ms"] / total, 4) if total else 0.0
    top = sorted(by_name.items(), key=lambda kv: -kv[1]["ms"])[:40]
    return {
        "wall_s": round(wall_s, 4), "kernel_ms": round(total, 2), "gpu_busy_ms": round(busy_us / 1000, 2),
        "gpu_span_ms": round(span_ms, 2), "kernels": len(kernels),
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"])),
        "top_kernels": [{"name": k, **{kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()}}
                        for k, v in top],
    }


def _profile_call(call):
    import torch
    from torch.profiler import ProfilerActivity, profile

    label = STATE.label or "unlabelled"
    _sync()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = call()
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    trace = os.path.join(DIR, f"{label}.trace.json")
    prof.export_chrome_trace(trace)
    summary = summarize(trace, wall)
    summary["label"] = label
    with open(os.path.join(DIR, f"{label}.profile.json"), "w") as f:
        json.dump(summary, f, indent=1)
    try:
        os.remove(os.path.join(DIR, "profile"))
    except OSError:
        pass
    os.remove(trace)  # hundreds of MB; the summary is what is kept
    return result


def _patch_dit(module) -> None:
    cls = module.WanModel
    original = cls.forward

    def forward(self, *args, **kwargs):
        _current_label()
        call = STATE.calls
        STATE.calls += 1
        want = _read("profile")
        if want is not None and call == int(want or 1):
            result = _profile_call(lambda: original(self, *args, **kwargs))
            summary = os.path.join(DIR, f"{STATE.label or 'unlabelled'}.profile.json")
            with open(summary) as f:
                _log("dit_profiled", json.load(f)["wall_s"], call=call)
            return result
        _sync()
        started = time.perf_counter()
        result = original(self, *args, **kwargs)
        _sync()
        _log("dit", time.perf_counter() - started, call=call, t=round(started, 4))
        return result

    cls.forward = forward


def _patch_timed(owner, name: str, kind: str, sync: bool = True) -> None:
    """owner.name (a class's method or a module's function) logs each call's seconds as `kind`; with `sync`,
    CUDA-synchronized before and after, so that the GPU work the call queued counts."""
    original = getattr(owner, name)

    @functools.wraps(original)  # its signature stays readable (comfy_nodes/wan_patches.py binds encode's)
    def timed(*args, **kwargs):
        _current_label()
        if sync:
            _sync()
        started = time.perf_counter()
        result = original(*args, **kwargs)
        if sync:
            _sync()
        _log(kind, time.perf_counter() - started, t=round(started, 4))
        return result

    setattr(owner, name, timed)


def _patch_wrapper() -> None:
    if STATE.patched:
        return
    model = vae = multitalk = None
    for name, module in list(sys.modules.items()):
        if name.endswith("wanvideo.modules.model") and hasattr(module, "WanModel"):
            model = module
        elif name.endswith("wanvideo.wan_video_vae") and hasattr(module, "WanVideoVAE"):
            vae = module
        elif name.endswith("multitalk.multitalk") and hasattr(module, "SingleStreamAttention"):
            multitalk = module
    if model is None:
        return
    _patch_dit(model)
    if vae is not None:
        _patch_timed(vae.WanVideoVAE, "encode", "vae_encode")
        _patch_timed(vae.WanVideoVAE, "decode", "vae_decode")
        _patch_timed(vae.WanVideoVAE, "to", "vae_to")  # the sampler's moves of the VAE to the GPU and back
    try:
        import comfy.model_management as mm

        _patch_timed(mm, "soft_empty_cache", "empty_cache", sync=False)  # the sampler calls it once a window
    except ImportError:
        pass
    import gc

    _patch_timed(gc, "collect", "gc_collect", sync=False)  # the sampler runs a full collection once a window
    if multitalk is not None:
        multitalk.SingleStreamAttention.forward = _annotated("it::audio_cross_attn",
                                                             multitalk.SingleStreamAttention.forward)
        if hasattr(multitalk, "SingleStreamMultiAttention"):
            multitalk.SingleStreamMultiAttention.forward = _annotated(
                "it::audio_cross_attn", multitalk.SingleStreamMultiAttention.forward)
    STATE.patched = True
    print(f"it_profile_hook: patched the wrapper (vae {vae is not None}, multitalk {multitalk is not None})",
          flush=True)


def _install() -> None:
    import execution

    original = execution.execute

    async def execute(*args, **kwargs):
        _patch_wrapper()
        return await original(*args, **kwargs)

    execution.execute = execute


if DIR:
    os.makedirs(DIR, exist_ok=True)
    _install()
