"""The GPU stand-in benchmark (benchmarks/gpu_standin), validated on the CPU with its tiny DiT.

One real ComfyUI on port 8600+ loads the random weights that make_weights.py --tiny writes, the stand-in
nodes and the worker's SaveSegmentVideo, and runs benchmarks/gpu_standin/workflows/wan_standin over two sampling windows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from comfy_manager import ComfyClient, ComfyInstance, PoolSettings
from comfy_manager.client import PromptFailed
from comfy_manager.instance import InstanceSpec
from media_samples.factory import frame_count, make_image, make_index_video, read_indices
from tests.conftest import shifted_port
from worker.templates.template import load_template

STANDIN_WORKFLOWS = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_standin" / "workflows"

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "benchmarks" / "gpu_standin"
PORT = int(os.environ.get("TEST_STANDIN_PORT", str(shifted_port(8601))))

# Every key and shape make_weights.py writes against ComfyUI's own modules, built on the meta device.
CHECK_SHAPES = f"""
import sys, torch
sys.argv = ["check", "--cpu"]
sys.path[:0] = [".", {str(STANDIN)!r}]
import comfy.options; comfy.options.enable_args_parsing()
import comfy.ops, comfy.ldm.wan.model as wan, comfy.ldm.wan.vae as wan_vae
from comfy import model_detection
import make_weights as mw

def same(shapes, module, what):
    ref = {{k: tuple(v.shape) for k, v in module.state_dict().items()}}
    assert set(ref) == set(shapes), (what, sorted(set(ref) ^ set(shapes))[:10])
    bad = [k for k in ref if ref[k] != tuple(shapes[k])]
    assert not bad, (what, bad[:10])

for name, dit in (("tiny", mw.DIT_TINY), ("1.3B", mw.DIT_REAL)):
    shapes = mw.wan_dit_shapes(**dit)
    sd = {{k: torch.empty(v, device="meta") for k, v in shapes.items()}}
    config = model_detection.detect_unet_config(sd, "")
    found = type(model_detection.model_config_from_unet_config(config, sd)).__name__
    assert found == "WAN21_T2V", (name, found)
    assert config["num_heads"] * 128 == dit["dim"] and config["num_layers"] == dit["layers"], config
    kwargs = {{k: v for k, v in config.items() if k != "image_model"}}
    same(shapes, wan.WanModel(**kwargs, device="meta", operations=comfy.ops.disable_weight_init), name)
with torch.device("meta"):
    vae = wan_vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True])
same(mw.wan_vae_shapes(), vae, "vae")
print("shapes ok")
"""


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """(ComfyInstance, models root) with the tiny weights; stopped and removed afterwards."""
    settings = PoolSettings.from_env()
    root = Path(tempfile.mkdtemp(prefix="standin-", dir="/tmp"))
    instance = None
    try:
        models = root / "models"
        subprocess.run([settings.python, str(STANDIN / "make_weights.py"), str(models), "--tiny"], check=True)
        # The worker's nodes, unless ComfyUI already has them linked (scripts/install_comfyui.sh).
        if not (settings.comfy_path / "custom_nodes" / "runpod_worker_nodes").exists():
            (models / "custom_nodes" / "runpod_worker_nodes").symlink_to(REPO / "comfy_nodes")
        spec = InstanceSpec(index=0, port=PORT, gpu=None, root=root / "instance")
        instance = ComfyInstance(spec, settings.comfy_path, settings.python,
                                 ["--extra-model-paths-config", str(models / "extra_model_paths.yaml")])
        instance.start()
        instance.wait_ready(time.monotonic() + 180)
        yield instance, models
    finally:
        if instance is not None:
            instance.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_weight_shapes_match_comfyui():
    settings = PoolSettings.from_env()
    result = subprocess.run([settings.python, "-c", CHECK_SHAPES], cwd=settings.comfy_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "shapes ok" in result.stdout, result.stderr[-3000:]


def test_bindings_declare_the_frame_rule():
    template = load_template("wan_standin", STANDIN_WORKFLOWS)
    assert (template.spec.frames_quantum, template.spec.frames_offset) == (4, 1)
    assert [template.grid.round_up(n) for n in (1, 2, 5, 20, 21, 22)] == [1, 5, 5, 21, 21, 25]
    assert template.bind({"frames": 20, "generate_frames": 21})["8"]["inputs"]["length"] == 21


def test_wan_standin_runs_windowed_and_keeps_every_frame(standin, tmp_path):
    instance, _ = standin
    client = ComfyClient(instance.url)
    image = client.upload(make_image(tmp_path / "ref.png", 80, 60), "standin_ref.png")
    frames = 21  # 4k+1: 6 latent frames; windows of 13 frames (4 latent) carrying 5 (2 latent): 2 windows
    graph = load_template("wan_standin", STANDIN_WORKFLOWS).bind({
        "image": image, "frames": frames, "generate_frames": frames, "width": 64, "height": 48, "seed": 7, "steps": 2, "fps": 25.0,
        "filename_prefix": "standin/out", "dit_name": "wan_standin_tiny.safetensors",
        "window_frames": 13, "motion_frames": 5,
    })
    result = client.run_prompt(graph, timeout_s=240, is_alive=instance.is_alive)
    videos = [o for o in result.outputs if o.node_id == "11" and o.filename.endswith(".mp4")]
    assert len(videos) == 1, result.outputs
    path = client.download(videos[0], tmp_path / "out.mp4")
    assert frame_count(path) == frames
    log = instance.log_tail(400)
    assert "standin window 1: latent frames 2-5 of 6 (2 held)" in log, log
    assert "unet missing" not in log and "Missing VAE keys" not in log, log


@pytest.mark.parametrize("count,width,height", [(37, 65, 49), (1, 64, 48)])
def test_save_segment_video_writes_exact_frames(standin, tmp_path, count, width, height):
    instance, _ = standin
    client = ComfyClient(instance.url)
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": count,
                                                    "color": 0x336699}},
        "2": {"class_type": "SaveSegmentVideo", "inputs": {"images": ["1", 0], "fps": 23.976,
                                                           "filename_prefix": "save/seg", "crf": 12,
                                                           "preset": "ultrafast"}},
    }
    reports = []
    result = client.run_prompt(graph, timeout_s=60, is_alive=instance.is_alive, on_progress=reports.append)
    assert [(o.node_id, o.kind, o.subfolder, o.type) for o in result.outputs] == [("2", "images", "save", "output")]
    # The frames written, a report a batch of 16 (the worker's live progress for the segment), up to all of them.
    written = [(r.value, r.max) for r in reports if r.kind == "progress" and r.node == "2"]
    assert written == [(float(min(n, count)), float(count)) for n in range(16, count + 16, 16)], written
    path = client.download(result.outputs[0], tmp_path / "seg.mp4")
    assert frame_count(path) == count
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name,pix_fmt,width,height,r_frame_rate", "-of", "csv=p=0", str(path)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert probe == f"h264,{width + width % 2},{height + height % 2},yuv420p,2997/125"


def _save_graph(video: str, **save_inputs) -> dict:
    """LoadVideo -> GetVideoComponents -> SaveSegmentVideo(**save_inputs)."""
    inputs = {"images": ["2", 0], "fps": 25.0, "filename_prefix": "split/seg", "crf": 12, "preset": "ultrafast",
              **save_inputs}
    return {"1": {"class_type": "LoadVideo", "inputs": {"file": video}},
            "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
            "3": {"class_type": "SaveSegmentVideo", "inputs": inputs}}


def test_save_segment_video_split_form_writes_raw_overlaps_and_an_encoded_body(standin, tmp_path):
    instance, _ = standin
    client = ComfyClient(instance.url)
    video = client.upload(make_index_video(tmp_path / "index.mp4", 37, 25), "split_index.mp4")
    graph = _save_graph(video, frames=30, head_frames=5, tail_frames=7, body_crf=19, body_preset="veryfast")
    result = client.run_prompt(graph, timeout_s=60, is_alive=instance.is_alive)
    parts = {o.filename.rsplit("_", 1)[1]: o for o in result.outputs}
    assert sorted(parts) == ["body.mp4", "head.y4m", "tail.y4m"], parts
    assert (parts["body.mp4"].kind, parts["head.y4m"].kind) == ("images", "overlaps")  # mp4 previews in the UI
    head, body, tail = (client.download(parts[p], tmp_path / parts[p].filename) for p in ("head.y4m", "body.mp4", "tail.y4m"))
    # Frames 30-36 are past `frames`: dropped.
    assert (read_indices(head), read_indices(body), read_indices(tail)) == (
        list(range(5)), list(range(5, 23)), list(range(23, 30)))
    assert head.read_bytes().startswith(b"YUV4MPEG2 W128 H64 F25:1 ")
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name,pix_fmt,width,height,r_frame_rate,sample_aspect_ratio", "-of", "csv=p=0",
                            str(body)], capture_output=True, text=True, check=True).stdout.strip()
    assert probe == "h264,128,64,1:1,yuv420p,25/1"


@pytest.mark.parametrize("save_inputs, error", [
    ({"frames": 40}, "SaveSegmentVideo got 37 images, fewer than frames=40"),
    ({"head_frames": 20, "tail_frames": 20, "body_crf": 19}, r"head_frames 20 \+ tail_frames 20 exceed the segment.s 37 frames"),
])
def test_save_segment_video_refuses_impossible_counts(standin, tmp_path, save_inputs, error):
    instance, _ = standin
    client = ComfyClient(instance.url)
    video = client.upload(make_index_video(tmp_path / "index.mp4", 37, 25), "refuse_index.mp4")
    with pytest.raises(PromptFailed, match=error):
        client.run_prompt(_save_graph(video, **save_inputs), timeout_s=60, is_alive=instance.is_alive)
