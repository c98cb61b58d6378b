"""comfy_nodes/wan_patches.py without ComfyUI, the wrapper or a GPU: stand-in classes under the wrapper's module
names, a stand-in for torch's .to() argument parsing, a stand-in capability and VRAM size, numpy arrays for
tensors."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from tests.support import comfy_nodes_parts


@pytest.fixture
def patches(monkeypatch):
    module = comfy_nodes_parts.load("wan_patches")
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


class NumpyOps:
    is_tensor = staticmethod(lambda x: isinstance(x, np.ndarray))
    same = staticmethod(lambda a, b: a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))
    copy = staticmethod(lambda x: x.copy())
    size = staticmethod(lambda x: x.size)


class WanVideoVAE(AudioProjModel):
    """Encodes [B, C, T, H, W] (or a list of [C, T, H, W]) to [B, 2, (T + 3) // 4, H, W], deterministically."""

    def __init__(self, device: str):
        super().__init__(device)
        self.encoded: list[tuple] = []

    def encode(self, videos, device, tiled=False, end_=False, tile_size=None, tile_stride=None, pbar=True,
               sample=False):
        self.encoded.append(tuple(videos.shape))
        out = np.stack([v[:, ::4].sum(axis=0) * (2.0 if tiled else 1.0) for v in videos])
        out = np.stack([out, -out], axis=1)
        return out + np.random.rand(*out.shape) if sample else out


class WanVideoSampler:
    """InfiniteTalk's window loop as nodes_sampler.py runs it: every window encodes the frame `window` of the
    start images padded with zero frames to 9 frames (81 in the wrapper), then the motion frames (the start
    frame in the first window, the last 3 frames of the window before after it)."""

    def process(self, vae, start_images, windows, fail_at=None, tiled=False):
        original = start_images
        latents, last = [], None
        for window in range(windows):
            if window == fail_at:
                raise RuntimeError("out of memory")
            cond = original[:, :, window:window + 1]
            padded = np.concatenate([cond, np.zeros((1, 3, 8, 4, 4))], axis=2)
            y = vae.encode(padded, device="cpu", tiled=tiled, pbar=False)[0]
            y[0] += 1  # a caller that writes into what encode returned must not change what the memo holds
            motion = vae.encode(cond if window == 0 else last, device="cpu", tiled=tiled, pbar=False)[0]
            latents.append((y.copy(), motion))
            last = padded[:, :, -3:] + window + 1
            if window + 1 >= original.shape[2]:  # as the wrapper pads the start images with their last frame
                original = np.concatenate([original, original[:, :, -1:]], axis=2)
        return latents


class FakeGc:
    def __init__(self):
        self.calls = []

    def collect(self, generation=2):
        self.calls.append(generation)
        return 0

    def isenabled(self):
        return True


@pytest.fixture
def vae_wrapper(monkeypatch, patches):
    prefix = "/ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper"
    vae_module = types.ModuleType(prefix + ".wanvideo.wan_video_vae")
    sampler_module = types.ModuleType(prefix + ".nodes_sampler")
    vae_module.WanVideoVAE = type("WanVideoVAE", (WanVideoVAE,), {})
    sampler_module.WanVideoSampler = type("WanVideoSampler", (WanVideoSampler,), {"__module__": sampler_module.__name__})
    sampler_module.gc = FakeGc()  # the wrapper's `import gc`; never the real gc module here
    monkeypatch.setitem(sys.modules, vae_module.__name__, vae_module)
    monkeypatch.setitem(sys.modules, sampler_module.__name__, sampler_module)
    patches.MEMO.ops = NumpyOps
    patches.GC = patches.YoungGc(sampler_module.gc)
    return vae_module.WanVideoVAE, sampler_module.WanVideoSampler


def memo_on(patches):
    """As inside a sampler call of this thread."""
    patches.MEMO.depth, patches.MEMO.owner = 1, threading.get_ident()


def run_windows(vae_cls, sampler_cls, start_images, windows, **kwargs):
    vae = vae_cls("cuda")
    return vae, sampler_cls().process(vae, start_images, windows, **kwargs)


def image(seed=0, frames=1):
    return np.random.default_rng(seed).normal(size=(1, 3, frames, 4, 4))


def test_an_image_is_encoded_once_with_the_same_latents(patches, vae_wrapper):
    vae_cls, sampler_cls = vae_wrapper
    _, expected = run_windows(vae_cls, sampler_cls, image(), 4)
    assert "cond_encode_memo" in patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    vae, got = run_windows(vae_cls, sampler_cls, image(), 4)
    for (y, motion), (y_expected, motion_expected) in zip(got, expected, strict=True):
        assert np.array_equal(y, y_expected) and np.array_equal(motion, motion_expected)
    # the padded start image once, the motion frames every window
    assert vae.encoded == [(1, 3, 9, 4, 4), (1, 3, 1, 4, 4)] + [(1, 3, 3, 4, 4)] * 3
    assert (patches.MEMO.hits, patches.MEMO.inputs) == (3, None)  # dropped when the sampler returned


def test_a_video_input_is_encoded_every_window(patches, vae_wrapper):
    vae_cls, sampler_cls = vae_wrapper
    patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    vae, got = run_windows(vae_cls, sampler_cls, image(frames=3), 3)
    assert len(vae.encoded) == 6 and patches.MEMO.hits == 0  # with the memo: 3 windows x (start frame, motion)
    patches.MEMO.depth = -100  # memo off
    _, expected = run_windows(vae_cls, sampler_cls, image(frames=3), 3)
    patches.MEMO.depth = 0
    for (y, motion), (y_expected, motion_expected) in zip(got, expected, strict=True):
        assert np.array_equal(y, y_expected) and np.array_equal(motion, motion_expected)


def test_the_memo_only_inside_the_sampler_and_never_for_sampled_or_other_settings(patches, vae_wrapper):
    vae_cls, sampler_cls = vae_wrapper
    patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    vae, frames = vae_cls("cuda"), image()
    vae.encode(frames, device="cpu")
    vae.encode(frames, device="cpu")
    assert len(vae.encoded) == 2  # outside WanVideoSampler.process: every call encodes
    memo_on(patches)
    try:
        first = vae.encode(frames, device="cpu")
        assert np.array_equal(vae.encode(frames, "cpu"), first) and len(vae.encoded) == 3  # positional or not
        assert not np.array_equal(vae.encode(frames, "cpu", tiled=True), first) and len(vae.encoded) == 4
        vae.encode(frames, device="cpu", sample=True)
        vae.encode(frames, device="cpu", sample=True)
        assert len(vae.encoded) == 6
        other = vae_cls("cuda")
        other.encode(frames, device="cpu")  # another VAE
        assert len(other.encoded) == 1 and len(vae.encoded) == 6 and patches.MEMO.hits == 1
        done = []
        thread = threading.Thread(target=lambda: done.append(vae.encode(frames, device="cpu")))  # another thread
        thread.start()
        thread.join()
        assert len(done) == 1 and len(vae.encoded) == 7 and patches.MEMO.hits == 1
    finally:
        patches.MEMO.depth, patches.MEMO.owner = 0, None
        patches.MEMO.clear()


def test_no_memory_for_a_hits_copy_runs_the_encode(patches, vae_wrapper):
    """A hit's copy that fails (out of memory) drops the entry and encodes as if there were no memo."""
    vae_cls, _ = vae_wrapper
    patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    vae, frames = vae_cls("cuda"), image()
    memo_on(patches)
    try:
        first = vae.encode(frames, device="cpu")

        class NoRoom(NumpyOps):
            @staticmethod
            def copy(x):
                raise RuntimeError("CUDA out of memory")

        patches.MEMO.ops = NoRoom
        assert np.array_equal(vae.encode(frames, device="cpu"), first)
        assert len(vae.encoded) == 2 and patches.MEMO.hits == 0 and patches.MEMO.inputs is None
    finally:
        patches.MEMO.depth, patches.MEMO.owner = 0, None
        patches.MEMO.clear()


def test_the_memo_is_dropped_when_the_sampler_fails(patches, vae_wrapper):
    vae_cls, sampler_cls = vae_wrapper
    patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    with pytest.raises(RuntimeError):
        run_windows(vae_cls, sampler_cls, image(), 3, fail_at=2)
    assert patches.MEMO.depth == 0 and patches.MEMO.inputs is None and patches.MEMO.output is None


@pytest.mark.parametrize("gib, resident", [(80.0, True), (38.0, True), (31.5, False), (None, False)])
def test_the_vae_stays_on_the_gpu_only_on_big_cards(patches, vae_wrapper, gib, resident):
    vae_cls, _ = vae_wrapper
    assert ("resident_vae" in patches.apply(capability=lambda: (9, 0), vram_gib=lambda: gib)) == resident
    vae = vae_cls("cpu")
    vae.to("cuda:0")
    vae.to("cpu")
    assert vae.device == ("cuda" if resident else "cpu")


ALL = {"resident_audio_proj", "resident_vae", "cond_encode_memo", "young_gc_in_sampler"}


@pytest.mark.parametrize("setting, applied", [
    ("1", ALL),
    ("", ALL),
    ("0", set()),
    ("resident_audio_proj", {"resident_audio_proj"}),
    ("cond_encode_memo, resident_vae", {"resident_vae", "cond_encode_memo"}),
])
def test_worker_wan_patches_picks_the_speed_patches(patches, wrapper, vae_wrapper, monkeypatch, setting, applied):
    monkeypatch.setenv("WORKER_WAN_PATCHES", setting)
    assert patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0) == applied | {"fp8_fast_gate"}


SAMPLER_SOURCE = """
class WanVideoSampler:
    def process(self, windows, fail=False, elsewhere=None):
        gc.collect()  # before sampling
        for _ in range(windows):
            gc.collect()  # every window
        gc.collect(0)  # a generation named: as asked
        if elsewhere is not None:
            elsewhere()  # another module's collection meanwhile (ComfyUI freeing a model): the real gc's
        if fail:
            raise RuntimeError("interrupted")
        return "video"
"""


def sampler_module(monkeypatch, gc_module, name="/ComfyUI/custom_nodes/ComfyUI-WanVideoWrapper.nodes_sampler"):
    """A module that says `gc.collect()` with its own global name `gc`, as the wrapper's nodes_sampler does."""
    module = types.ModuleType(name)
    module.gc = gc_module
    exec(SAMPLER_SOURCE, module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.mark.parametrize("fail", [False, True])
def test_the_sampler_collects_young_garbage_and_everything_once_at_its_end(patches, monkeypatch, fail):
    gc_module = FakeGc()
    module = sampler_module(monkeypatch, gc_module)
    scope = patches.YoungGc(gc_module)
    assert patches.young_gc_in(module.WanVideoSampler, scope)
    gc_module.collect()  # outside the sampler: a full collection
    if fail:
        with pytest.raises(RuntimeError):
            module.WanVideoSampler().process(3, fail=True)
    else:
        assert module.WanVideoSampler().process(3) == "video"
    assert gc_module.calls == [2, 1, 1, 1, 1, 0, 2]  # young-only inside, one full at the end
    assert scope.depth == 0 and module.gc is scope and module.gc.isenabled()  # the rest is the real module's


def test_young_gc_leaves_other_modules_alone(patches, monkeypatch):
    """Only the sampler module's own name for gc is replaced: the gc module itself, which ComfyUI and every other
    package call, is untouched, even while the sampler runs."""
    gc_module = FakeGc()
    module = sampler_module(monkeypatch, gc_module)
    patches.young_gc_in(module.WanVideoSampler, patches.YoungGc(gc_module))
    assert module.WanVideoSampler().process(1, elsewhere=gc_module.collect) == "video"
    assert gc_module.calls == [1, 1, 0, 2, 2]  # the other module's full collection, then the one at the end


def test_young_gc_not_applied_where_the_sampler_module_has_no_gc(patches, vae_wrapper, caplog):
    _, sampler_cls = vae_wrapper
    del sys.modules[sampler_cls.__module__].gc  # a wrapper version that imports gc differently
    with caplog.at_level("WARNING"):
        applied = patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    assert "young_gc_in_sampler" not in applied and "cond_encode_memo" in applied
    assert "no `gc` name" in caplog.text


@pytest.mark.parametrize("gib, applied", [(80.0, True), (31.5, False)])
def test_young_gc_only_on_big_cards(patches, vae_wrapper, gib, applied):
    _, sampler_cls = vae_wrapper
    fake = sys.modules[sampler_cls.__module__].gc
    assert ("young_gc_in_sampler" in patches.apply(capability=lambda: (9, 0), vram_gib=lambda: gib)) == applied
    assert sys.modules[sampler_cls.__module__].gc is (patches.GC if applied else fake)


@pytest.mark.parametrize("gib, applied", [(80.0, True), (38.0, True), (31.5, False), (None, True)])
def test_the_memo_only_on_the_cpu_and_big_cards(patches, vae_wrapper, gib, applied):
    """Below 38 GiB the DiT's blocks are swapped and the memo's ~194 MB copy is left out; None: no GPU."""
    assert ("cond_encode_memo" in patches.apply(capability=lambda: (9, 0), vram_gib=lambda: gib)) == applied


def test_no_memory_for_the_memo_leaves_the_encodes_as_they_were(patches, vae_wrapper):
    class NoRoom(NumpyOps):
        @staticmethod
        def copy(x):
            raise MemoryError("no room for the copy")

    vae_cls, sampler_cls = vae_wrapper
    _, expected = run_windows(vae_cls, sampler_cls, image(), 3)
    patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    patches.MEMO.ops = NoRoom
    vae, got = run_windows(vae_cls, sampler_cls, image(), 3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, expected, strict=True))
    assert len(vae.encoded) == 6 and patches.MEMO.hits == 0 and patches.MEMO.inputs is None


def test_an_unknown_patch_name_is_said_and_the_rest_apply(patches, wrapper, vae_wrapper, monkeypatch, caplog):
    monkeypatch.setenv("WORKER_WAN_PATCHES", "resident_vae,resident_vea")
    with caplog.at_level("WARNING"):
        applied = patches.apply(capability=lambda: (9, 0), vram_gib=lambda: 80.0)
    assert applied == {"resident_vae", "fp8_fast_gate"}
    assert "no patch called resident_vea" in caplog.text


@pytest.mark.parametrize("text, limit", [("", None), ("24", 24.0), (" 47.5 ", 47.5), ("0", None), ("-3", None),
                                         ("lots", None), ("inf", None), ("nan", None)])
def test_the_vram_limit_is_read_one_way_for_the_cap_and_the_patches(patches, monkeypatch, caplog, text, limit):
    """WORKER_VRAM_LIMIT_GB: comfy_nodes/__init__'s allocator cap and the patches' card size both read it here; a
    value that is no positive number is said in the log and means no limit, never a failed import."""
    monkeypatch.setenv("WORKER_VRAM_LIMIT_GB", text)
    assert patches.vram_limit_gib() == limit
    assert ("not a positive number" in caplog.text) == (text.strip() not in ("", "24", "47.5"))
