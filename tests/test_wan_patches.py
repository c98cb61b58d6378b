"""comfy_nodes/wan_patches.py without ComfyUI, the wrapper or a GPU: stand-in classes under the wrapper's module
names, a stand-in for torch's .to() argument parsing, a stand-in capability."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def patches(monkeypatch):
    spec = importlib.util.spec_from_file_location("wan_patches_under_test", REPO / "comfy_nodes" / "wan_patches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Module.to(device) -> the device it names; here a plain string stands for it.
    monkeypatch.setattr(module, "_target_device", lambda args, kwargs: types.SimpleNamespace(
        type=str(args[0] if args else kwargs["device"]).split(":")[0]))
    return module


class Param:
    def __init__(self, device: str):
        self.device = types.SimpleNamespace(type=device)


class AudioProjModel:
    def __init__(self, device: str):
        self.device, self.moves = device, []

    def parameters(self):
        return iter([Param(self.device)])

    def to(self, device):
        self.moves.append(device)
        self.device = device.split(":")[0]
        return self


class WanVideoModelLoader:
    def loadmodel(self, model, quantization, **kwargs):
        return quantization


@pytest.fixture
def wrapper(monkeypatch):
    """The two wrapper modules, as ComfyUI names a custom node package's submodules."""
    prefix = "/ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper"
    multitalk = types.ModuleType(prefix + ".multitalk.multitalk")
    loading = types.ModuleType(prefix + ".nodes_model_loading")
    multitalk.AudioProjModel = type("AudioProjModel", (AudioProjModel,), {})
    loading.WanVideoModelLoader = type("WanVideoModelLoader", (WanVideoModelLoader,), {})
    monkeypatch.setitem(sys.modules, multitalk.__name__, multitalk)
    monkeypatch.setitem(sys.modules, loading.__name__, loading)
    return multitalk, loading


def test_the_audio_projection_stays_on_the_gpu_and_still_moves_there(patches, wrapper):
    multitalk, _ = wrapper
    assert "resident_audio_proj" in patches.apply(capability=lambda: (9, 0))
    on_gpu = multitalk.AudioProjModel("cuda")
    assert on_gpu.to("cpu") is on_gpu and on_gpu.moves == [] and on_gpu.device == "cuda"
    on_cpu = multitalk.AudioProjModel("cpu")
    on_cpu.to("cuda:0")
    on_cpu.to("cpu")  # now on the GPU: stays
    assert on_cpu.moves == ["cuda:0"] and on_cpu.device == "cuda"
    assert multitalk.AudioProjModel("cpu").to("cpu").moves == ["cpu"]  # not on a GPU: the move is made


@pytest.mark.parametrize("capability, asked, given", [
    ((8, 0), "fp8_e4m3fn_scaled_fast", "fp8_e4m3fn_scaled"),  # A100
    ((8, 6), "fp8_e4m3fn_fast", "fp8_e4m3fn"),  # A6000
    ((8, 9), "fp8_e4m3fn_scaled_fast", "fp8_e4m3fn_scaled_fast"),  # L40S, RTX 4090
    ((9, 0), "fp8_e4m3fn_scaled_fast", "fp8_e4m3fn_scaled_fast"),  # H100, H200
    ((8, 0), "fp8_e4m3fn_scaled", "fp8_e4m3fn_scaled"),
    (None, "fp8_e4m3fn_scaled_fast", "fp8_e4m3fn_scaled_fast"),  # no GPU: left to the wrapper
])
def test_fp8_fast_matmuls_only_where_the_gpu_has_them(patches, wrapper, capability, asked, given):
    _, loading = wrapper
    patches.apply(capability=lambda: capability)
    assert loading.WanVideoModelLoader().loadmodel(model="m", quantization=asked) == given


def test_applied_once_and_only_what_is_loaded(patches, wrapper, monkeypatch):
    multitalk, loading = wrapper
    monkeypatch.delitem(sys.modules, loading.__name__)
    assert patches.apply(capability=lambda: (8, 0)) == {"resident_audio_proj"}
    first = multitalk.AudioProjModel.to
    monkeypatch.setitem(sys.modules, loading.__name__, loading)
    assert patches.apply(capability=lambda: (8, 0)) == {"resident_audio_proj", "fp8_fast_gate"}
    assert multitalk.AudioProjModel.to is first  # not wrapped twice
    assert patches.on_prompt({"prompt": {}}) == {"prompt": {}}


def test_switched_off_the_speed_patch_goes_the_guard_stays(patches, wrapper, monkeypatch):
    """WORKER_WAN_PATCHES=0 (a benchmark's A/B) leaves the audio projection alone, but an A100 still gets bf16
    matmuls: the >= 38 GiB device row asks for fp8 fast ones, which fail there."""
    monkeypatch.setenv("WORKER_WAN_PATCHES", "0")
    assert patches.apply(capability=lambda: (8, 0)) == {"fp8_fast_gate"}
    _, loading = wrapper
    assert loading.WanVideoModelLoader().loadmodel(model="m", quantization="fp8_e4m3fn_fast") == "fp8_e4m3fn"
