"""Two small patches of ComfyUI-WanVideoWrapper, applied once, when ComfyUI takes its first prompt (by then every
custom node package is loaded, whatever order ComfyUI loaded them in). Measured in docs/PERFORMANCE.md.

resident audio projection  The wrapper's WanModel.forward moves its InfiniteTalk/MultiTalk audio projection
    (AudioProjModel, ~93M parameters) to the GPU at the start of every sampling step and back to the CPU after
    it: on an H200 ~90 ms of pageable copies a step (11 device-to-host, 12 host-to-device) and a stall of the
    stream while the CPU waits for them. Here a module of that class that is already on a GPU ignores a move to
    the CPU made by a direct `.to()` call; moving the whole model (`model.to(...)`, which reaches children
    through `_apply`, not `.to`) still takes it along. The arithmetic is unchanged.
fp8 fast matmuls only where they run  `fp8_*_fast` quantization (torch._scaled_mm) needs compute capability
    8.9 or more (Ada, Hopper, Blackwell); on an older GPU (A100, A6000: they share the >= 38 GiB device row
    with the H100/H200) WanVideoModelLoader gets the same quantization without `_fast` (fp8 weights, bf16
    matmuls) instead of failing.

WORKER_WAN_PATCHES=0 turns the first off (a benchmark's A/B); the second is a guard the >= 38 GiB device row
relies on, always applied, and said in the log where the wrapper's loader cannot be found.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("runpod_worker.wan_patches")
_APPLIED: set[str] = set()
_WARNED: set[str] = set()


def enabled() -> bool:
    return os.environ.get("WORKER_WAN_PATCHES", "1") != "0"


def _find(class_name: str, module_suffix: str):
    for name, module in list(sys.modules.items()):
        if module is not None and name.endswith(module_suffix) and isinstance(getattr(module, class_name, None), type):
            return getattr(module, class_name)
    return None


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


def apply(capability=_cuda_capability) -> set[str]:
    """Applies each patch whose wrapper class is loaded and not yet patched; returns the names applied so far."""
    if "fp8_fast_gate" not in _APPLIED:  # a guard, not a speed-up: on whatever WORKER_WAN_PATCHES says
        loader = _find("WanVideoModelLoader", "nodes_model_loading")
        if loader is not None:
            fast_only_where_supported(loader, capability)
            _APPLIED.add("fp8_fast_gate")
        elif "missing_loader" not in _WARNED and any("WanVideoWrapper" in name for name in sys.modules):
            _WARNED.add("missing_loader")
            log.error("WanVideoWrapper's WanVideoModelLoader was not found: fp8 fast matmuls are not kept off GPUs "
                      "below compute capability 8.9 (A100, A6000), where they fail")
    if not enabled():
        return _APPLIED
    if "resident_audio_proj" not in _APPLIED:
        audio_proj = _find("AudioProjModel", "multitalk.multitalk")
        if audio_proj is not None:
            keep_resident(audio_proj)
            _APPLIED.add("resident_audio_proj")
    return _APPLIED


def on_prompt(json_data):
    """A PromptServer on-prompt handler: applies the patches before the first prompt runs."""
    try:
        before = set(_APPLIED)
        applied = apply()
        if applied - before:
            print(f"[runpod worker] WanVideoWrapper patches applied: {', '.join(sorted(applied - before))}")
    except Exception:  # a patch must never stop a prompt
        log.exception("applying the WanVideoWrapper patches failed")
    return json_data
