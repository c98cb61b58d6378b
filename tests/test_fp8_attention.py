"""comfy_nodes/fp8_attention.py without a GPU: which calls of the wrapper's attention() the "cudnn_fp8" mode sends to
cuDNN's fp8 kernel and which to sdpa, the loader's added choice, the rebinding in the wrapper's modules, and
wan_patches.apply installing it. Stand-in tensors carry only what the routing reads. The kernel itself runs on a
Hopper GPU: benchmarks/attention_bench.py (its output against fp32) and benchmarks/infinitetalk_profile.py (a
whole window, the frames checked) measure it there (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.support import comfy_nodes_parts

REPO = Path(__file__).resolve().parent.parent
BF16 = "bf16"  # a stand-in dtype: the routing only compares dtypes


class T:
    """A stand-in tensor of [B, L, H, D]."""

    def __init__(self, *shape, cuda=True, dtype=BF16):
        self.shape, self.is_cuda, self.dtype = tuple(shape), cuda, dtype

    def dim(self):
        return len(self.shape)


@pytest.fixture
def fp8():
    return comfy_nodes_parts.load("fp8_attention")


def routed(fp8, fp8_kernel=True):
    calls = []

    def original(q, k, v, *args, attention_mode="sdpa", **kwargs):
        calls.append(("original", attention_mode, args, kwargs))
        return "original"

    def kernel(q, k, v):
        calls.append(("fp8", q.shape, k.shape))
        return "fp8"

    return fp8.route(original, kernel if fp8_kernel else None, (BF16,)), calls


SELF = (1, 32760, 40, 128)  # InfiniteTalk's self-attention at 832x480, 81 frames


def test_cudnn_fp8_sends_long_self_attention_to_the_fp8_kernel(fp8):
    attention, calls = routed(fp8)
    assert attention(T(*SELF), T(*SELF), T(*SELF), k_lens=[32760], attention_mode="cudnn_fp8") == "fp8"
    assert calls == [("fp8", SELF, SELF)]


@pytest.mark.parametrize("q, k, kwargs, why", [
    (T(*SELF), T(1, 512, 40, 128), {}, "text cross-attention"),
    (T(*SELF), T(1, 257, 40, 128), {}, "image cross-attention"),
    (T(1, 1024, 40, 128), T(1, 1024, 40, 128), {}, "short self-attention"),
    (T(*SELF), T(*SELF), {"attn_mask": object()}, "a mask"),
    (T(*SELF), T(*SELF), {"causal": True}, "causal"),
    (T(1, 32760, 40, 96), T(1, 32760, 40, 96), {}, "a head size cuDNN's fp8 kernel does not take"),
    (T(*SELF, cuda=False), T(*SELF, cuda=False), {}, "on the CPU"),
    (T(*SELF, dtype="fp32"), T(*SELF, dtype="fp32"), {}, "fp32"),
])
def test_cudnn_fp8_runs_sdpa_for_what_the_kernel_does_not_take(fp8, q, k, kwargs, why):
    attention, calls = routed(fp8)
    assert attention(q, k, k, attention_mode="cudnn_fp8", **kwargs) == "original", why
    assert calls == [("original", "sdpa", (), kwargs)], why


def test_cudnn_fp8_runs_sdpa_where_the_kernel_cannot_run(fp8):
    attention, calls = routed(fp8, fp8_kernel=False)
    assert attention(T(*SELF), T(*SELF), T(*SELF), attention_mode="cudnn_fp8") == "original"
    assert calls == [("original", "sdpa", (), {})]


@pytest.mark.parametrize("mode", ["sdpa", "sageattn", "flash_attn_3", "sageattn_compiled"])
def test_other_modes_reach_the_wrapper_unchanged(fp8, mode):
    attention, calls = routed(fp8)
    assert attention(T(*SELF), T(*SELF), T(*SELF), 7, attention_mode=mode, k_lens=[1]) == "original"
    assert calls == [("original", mode, (7,), {"k_lens": [1]})]


@pytest.mark.parametrize("capability, importable, problem", [
    ((9, 0), True, None),
    (None, True, "no CUDA GPU"),
    ((8, 9), True, "this GPU is 8.9"),
    ((10, 0), True, "this GPU is 10.0"),
    ((9, 0), False, "nvidia-cudnn-frontend is not installed"),
])
def test_support_problem_names_what_is_missing(fp8, capability, importable, problem):
    said = fp8.support_problem(capability, importable)
    assert said == problem if problem is None else problem in said


class Loader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (["a.safetensors"],)},
                "optional": {"attention_mode": (["sdpa", "sageattn"], {"default": "sdpa"})}}


def test_the_loader_offers_cudnn_fp8_once_and_keeps_its_other_choices(fp8):
    loader = type("WanVideoModelLoader", (Loader,), {})
    fp8.add_choice(loader)
    fp8.add_choice(loader)  # a second install (a reloaded module) adds nothing more
    types_ = loader.INPUT_TYPES()
    assert types_["optional"]["attention_mode"] == (["sdpa", "sageattn", "cudnn_fp8"], {"default": "sdpa"})
    assert types_["required"] == Loader.INPUT_TYPES()["required"]
    assert Loader.INPUT_TYPES()["optional"]["attention_mode"][0] == ["sdpa", "sageattn"]  # the original untouched


def test_rebind_replaces_the_function_only_where_it_was_imported(fp8):
    def original():
        pass

    def other():
        pass

    modules = {"w.wanvideo.modules.attention": types.SimpleNamespace(attention=original),
               "w.wanvideo.modules.model": types.SimpleNamespace(attention=original),
               "w.multitalk.multitalk": types.SimpleNamespace(attention=original),
               "w.lynx.modules": types.SimpleNamespace(attention=other),
               "unrelated": types.SimpleNamespace(),
               "gone": None}
    names = fp8.rebind(original, "routed", modules)
    assert sorted(names) == ["w.multitalk.multitalk", "w.wanvideo.modules.attention", "w.wanvideo.modules.model"]
    assert modules["w.lynx.modules"].attention is other


@pytest.fixture
def wrapper_modules(monkeypatch):
    prefix = "/ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper"
    calls = []

    def attention(q, k, v, *args, attention_mode="sdpa", **kwargs):
        calls.append(attention_mode)
        return "wrapper"

    attention_module = types.ModuleType(prefix + ".wanvideo.modules.attention")
    model = types.ModuleType(prefix + ".wanvideo.modules.model")
    loading = types.ModuleType(prefix + ".nodes_model_loading")
    attention_module.attention = model.attention = attention
    loading.WanVideoModelLoader = type("WanVideoModelLoader", (Loader,), {"loadmodel": lambda self, **kw: None})
    for module in (attention_module, model, loading):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return model, loading, calls


def test_wan_patches_installs_the_mode_and_says_why_sdpa_runs(wrapper_modules, caplog):
    model, loading, calls = wrapper_modules
    patches = comfy_nodes_parts.load("wan_patches")
    with caplog.at_level(logging.WARNING):
        applied = patches.apply(capability=lambda: (8, 9), vram_gib=lambda: 48.0,
                                fp8_problem=lambda: "this GPU is 8.9")
    assert "cudnn_fp8_mode" in applied
    assert "cudnn_fp8" in loading.WanVideoModelLoader.INPUT_TYPES()["optional"]["attention_mode"][0]
    assert "cudnn_fp8 cannot run here (this GPU is 8.9)" in caplog.text
    assert model.attention(T(*SELF), T(*SELF), T(*SELF), attention_mode="cudnn_fp8") == "wrapper"
    assert calls == ["sdpa"]
    routed_once = model.attention
    patches.apply(capability=lambda: (8, 9), vram_gib=lambda: 48.0, fp8_problem=lambda: "this GPU is 8.9")
    assert model.attention is routed_once  # applied once


def prompt_with_modes():
    return {"prompt": {"14": {"class_type": "WanVideoModelLoader", "inputs": {"attention_mode": "cudnn_fp8"}},
                       "15": {"class_type": "Other", "inputs": {"attention_mode": "sdpa", "x": 1}}}}


def test_a_prompt_asking_for_the_mode_runs_sdpa_where_it_could_not_be_installed(caplog):
    """The >= 38 GiB rows ask for cudnn_fp8 in every job: where the mode never made it into the wrapper's loader (the
    wrapper's attention module not found here), ComfyUI's on-prompt handler, which runs before ComfyUI validates the
    prompt, turns it into sdpa and says so, instead of the loader refusing the job."""
    patches = comfy_nodes_parts.load("wan_patches")
    with caplog.at_level(logging.ERROR):
        prompt = patches.on_prompt(prompt_with_modes())
    assert prompt["prompt"]["14"]["inputs"]["attention_mode"] == "sdpa"
    assert prompt["prompt"]["15"]["inputs"] == {"attention_mode": "sdpa", "x": 1}
    assert "attention_mode cudnn_fp8 is not installed in WanVideoWrapper's loader" in caplog.text
    assert "node(s) 14 run sdpa" in caplog.text


def test_a_prompt_asking_for_the_installed_mode_keeps_it(wrapper_modules):
    patches = comfy_nodes_parts.load("wan_patches")
    patches.apply(capability=lambda: (8, 0), vram_gib=lambda: 80.0, fp8_problem=lambda: "no CUDA GPU")  # in the list
    prompt = patches.sdpa_where_the_mode_is_missing(prompt_with_modes())
    assert prompt == prompt_with_modes()


# Runs in ComfyUI's venv (torch, no GPU): the op gets a CPU kernel (the module's own sdpa fallback, which computes
# what cuDNN's graph computes, in bf16), so that the model's path, quantization and dequantization included, runs
# and is traced by torch.compile as on the GPU. Prints one JSON line.
SCRIPT = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
from tests.support import comfy_nodes_parts
fp8 = comfy_nodes_parts.load("fp8_attention")
fp8.register_op()
torch.library.register_kernel("runpod_worker::cudnn_fp8_sdpa", "cpu", fp8._sdpa_fallback)
torch.manual_seed(0)
q, k, v = (torch.randn(1, 4096, 2, 128, dtype=torch.bfloat16) for _ in range(3))
k_text = torch.randn(1, 512, 2, 128, dtype=torch.bfloat16)
ref = torch.nn.functional.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
rel = lambda out: float((out.float() - ref).norm() / ref.norm())
eager = fp8.self_attention(q, k, v)
compiled = torch.compile(fp8.self_attention, fullgraph=True, backend="eager")(q, k, v)

calls = []
def wrapper_attention(q, k, v, *args, attention_mode="sdpa", **kwargs):
    calls.append(attention_mode)
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
routed = fp8.route(wrapper_attention, fp8.self_attention, (torch.bfloat16,))
traced = torch.compile(routed, fullgraph=True, backend="eager")
cross = traced(q, k_text, k_text, k_lens=None, attention_mode="cudnn_fp8")

# keys, then values, with a constant offset in 1 channel of 16 (as real models' keys have): the model's path
# (centred first) against the same call without the centring and against bf16 sdpa, each error relative to the
# part of the output that varies from token to token (what a frame shows): over every channel for the keys, over
# the offset channels for the values (fp8's relative rounding leaves the other channels alone)
channels = torch.zeros(1, 1, 2, 128)
channels[..., ::16] = 1.0
offsets = {}
for name, k2, v2, where in (("k", (k.float() + 40 * channels).bfloat16(), v, torch.ones_like(channels)),
                            ("v", k, (v.float() + 2 * channels).bfloat16(), channels)):
    ref2 = torch.nn.functional.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k2, v2))).transpose(1, 2)
    sel = (where == 1).expand_as(ref2)
    varying = (ref2 - ref2.mean(dim=1, keepdim=True))[sel].norm()
    err = lambda out: float((out.float() - ref2)[sel].norm() / varying)
    (q8, dq), (k8, dk), (v8, dv) = (fp8.quantize(t) for t in (q, k2, v2))
    offsets[name] = {
        "centred": err(fp8.self_attention(q, k2, v2)),
        "uncentred": err(fp8._OP(q8, k8, v8, dq, dk, dv).to(q.dtype) * (dv * fp8.O_HEADROOM).to(q.dtype)),
        "bf16": err(torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k2, v2))).transpose(1, 2))}
print(json.dumps({"eager_rel_err": rel(eager), "compiled_rel_err": rel(compiled), "dtype": str(eager.dtype),
                  "same": bool(torch.equal(eager, compiled)), "cross_calls": calls, "cross_shape": list(cross.shape),
                  "offsets": offsets}))
"""


def test_the_models_path_computes_attention_in_fp8_and_traces_whole():
    """self_attention (quantize, the custom op, dequantize) against fp32 attention: the fp8 error (~0.05, far
    above bf16's 0.002, so fp8 really ran) and no more; torch.compile(fullgraph=True) traces it and the router
    without a graph break, with the same result; a cross-attention call under the mode reaches the wrapper's
    sdpa."""
    from comfy_manager.settings import PoolSettings

    settings = PoolSettings()
    done = subprocess.run([settings.python, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.02 < seen["eager_rel_err"] < 0.08, seen
    assert seen["same"] and seen["dtype"] == "torch.bfloat16", seen
    assert seen["cross_calls"] == ["sdpa"] and seen["cross_shape"] == [1, 4096, 2, 128], seen
    # with a key offset the centred path keeps fp8's usual error (~0.07 of the varying part), the same call without
    # the centring ~5x that; with a value offset the offset channels' output is as close to fp32 as bf16 sdpa's
    # (whose own rounding of the offset dominates there), the uncentred call's ~15x further (e4m3's rounding of it)
    keys, values = seen["offsets"]["k"], seen["offsets"]["v"]
    assert keys["centred"] < 0.09 and keys["uncentred"] > 3 * keys["centred"], seen
    assert values["centred"] < 1.2 * values["bf16"] and values["uncentred"] > 5 * values["bf16"], seen
