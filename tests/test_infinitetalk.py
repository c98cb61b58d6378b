"""The four InfiniteTalk templates, executed for real: the pinned ComfyUI-WanVideoWrapper in a CPU ComfyUI,
every model file of models/manifest.json made with random values at the loaders' shapes
(scripts/make_random_weights.py: a small DiT and a quarter-width VAE, which the loader takes for LightX2V's
pruned lightVAE; everything else full size), the real worker (`run_job`),
real ffmpeg. The pictures are noise; frame counts, audio, the split-form copy, the presets and the
request checks are real.

One ComfyUI instance serves every test here: umt5-xxl alone is 11.4 GB, so two instances do not fit in a
24 GiB machine; the two segments of each job queue for it instead of running side by side. The first job
pays for the text encoder: the templates' two prompts, each encoded once (comfy_nodes/t5_trim.py: their own
tokens, not 512; 19-38 s each in bf16 on a CPU without bf16 instructions). The templates keep the
embeddings in the wrapper's text-embedding disk cache, which the module's fixture empties first, so that every
run encodes for real.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests

from comfy_manager import ComfyClient, InstancePool, PoolSettings
from tests.conftest import shifted_port
from media_samples.factory import frame_count, make_image, make_index_video, make_tone, media_duration
from tests.support import umt5_tokenizer
from tests.support.template_check import REQUESTS, bind_case, variants
from worker.request.settings import WorkerSettings
from worker.job import run_job
from worker.templates.template import load_template

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = ["infinitetalk_image_single", "infinitetalk_image_multi", "infinitetalk_video_single",
             "infinitetalk_video_multi"]
SIZE = (64, 64)  # the smallest the request allows: the DiT sees 8 x 8 latents
AUDIO_S = 4.88  # 122 frames at 25 fps: two 81-frame windows overlapping by 40 (max_segment_frames 81)
ONE_WINDOW_S = 3.24  # 81 frames: one window of one segment


def weights_dir() -> Path:
    return Path(os.environ.get("RANDOM_WEIGHTS_DIR", Path.home() / ".cache" / "comfy-worker" / "random-weights"))


@pytest.fixture(scope="module")
def weights() -> Path:
    root = weights_dir()
    settings = PoolSettings.from_env()
    subprocess.run([settings.python, str(REPO / "scripts" / "make_random_weights.py"), str(root)], check=True,
                   env={**os.environ, "COMFYUI_PATH": str(settings.comfy_path)}, timeout=1800)
    return root


def text_embed_cache(comfy_path: Path) -> Path:
    return comfy_path / "custom_nodes" / "ComfyUI-WanVideoWrapper" / "text_embed_cache"


@pytest.fixture(scope="module")
def it_pool(weights, tmp_path_factory):
    """One CPU ComfyUI with the wrapper and the random weights; the wrapper's text-embedding cache emptied."""
    defaults = PoolSettings.from_env()
    umt5_tokenizer.ensure(defaults.comfy_path)
    # The wrapper's own cache in the installed ComfyUI (not this test's folders): emptied so that umt5 runs here
    # and t5_trim is seen at work; what it holds is only ever a speed-up.
    for cached in text_embed_cache(defaults.comfy_path).glob("*.pt"):
        cached.unlink()
    settings = defaults.model_copy(update=dict(
        instances_dir=tmp_path_factory.mktemp("it-instances"), base_port=shifted_port(8700), cpu_instances=1,
        force_cpu=True, startup_timeout_s=300,
        extra_args=["--extra-model-paths-config", str(weights / "extra_model_paths.yaml")]))
    pool = InstancePool(settings)
    pool.start()
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("it-media")
    return {
        "image": make_image(folder / "face.png", 96, 96),
        "video": make_index_video(folder / "source.mp4", frames=60, fps=25.0, width=96, height=96),
        "audio": make_tone(folder / "speaker1.wav", seconds=AUDIO_S, frequency=220),
        "audio_one_window": make_tone(folder / "speaker1_short.wav", seconds=ONE_WINDOW_S, frequency=220),
        "audio_2": make_tone(folder / "speaker2.wav", seconds=4.2, frequency=330),
    }


@pytest.fixture(scope="module")
def it_settings(tmp_path_factory, media) -> WorkerSettings:
    """The first job pays for umt5 on the CPU (up to half an hour on a busy 2-core machine): long deadlines."""
    root = tmp_path_factory.mktemp("it-worker")
    return WorkerSettings(job_work_dir=root / "jobs", allowed_input_roots=(media["image"].parent.resolve(),),
                          output_volume_dir=root / "volume", segment_timeout_s=3600, segment_timeout_per_frame_s=20)


def it_request(template: str, media: dict[str, Path], **fields) -> dict:
    spec = load_template(template).spec
    request = {"workflow": template, "input_type": spec.input_type, "person_count": spec.person_counts[0],
               "audio": str(media["audio"]), "width": SIZE[0], "height": SIZE[1], "fps": 25, "steps": 2,
               "output": {"destination": "volume"}}
    request["image" if spec.input_type == "image" else "video"] = str(media[spec.input_type])
    if spec.person_counts[0] == "multi":
        request["audio_2"] = str(media["audio_2"])
    return {**request, **fields}


def decoded_frames(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def assert_real_pictures(path: Path, width: int, height: int) -> None:
    """Random weights give noise, but finite noise: a NaN decodes to a black or one-colour frame."""
    frames = decoded_frames(path, width, height)
    for index, frame in enumerate(frames):
        spread = frame.reshape(-1, 3).std(axis=0)
        assert spread.max() > 2.0, f"frame {index} is one colour (mean {frame.reshape(-1, 3).mean(axis=0)})"


def assert_prompts_encoded_without_padding(pool: InstancePool) -> None:
    """The wrapper's umt5 ran in this ComfyUI (the cache was emptied) and comfy_nodes/t5_trim.py had it encode
    each prompt's own tokens: every encode the wrapper logs ("prompt token count") is followed by the patch's
    line, which names fewer than 512 tokens."""
    log = log_lines(pool)
    counts = [i for i, line in enumerate(log) if line.startswith("prompt token count:")]
    assert len(counts) >= 2, "umt5 encoded fewer than the templates' two prompts"
    for i, end in zip(counts, counts[1:] + [len(log)]):
        trimmed = next((line for line in log[i + 1:end] if line.startswith("[runpod worker] umt5 encoded")), None)
        assert trimmed is not None, f"an encode without t5_trim: {log[i]}"
        tokens = int(trimmed.split(" of ")[1].split()[0])
        counted = [int(n) for n in re.findall(r"\d+", log[i].partition("[")[2])]  # "prompt token count: tensor([74])"
        assert tokens < 512 and counted and max(counted) == tokens, (log[i], trimmed)


def log_lines(pool: InstancePool) -> list[str]:
    return pool.instances[0].log_path.read_text(errors="replace").splitlines()


def assert_second_window_reused_the_encode(pool: InstancePool, before: int) -> None:
    """comfy_nodes/wan_patches.py (cond_encode_memo): a segment's second window VAE-encodes the same [start
    frame, 80 zero frames] as its first; the real wrapper's loop got it from the memo (log lines after `before`)."""
    said = [line for line in log_lines(pool)[before:] if "VAE encode memo:" in line]
    assert len(said) == 1 and "VAE encode memo: 1 encodes reused" in said[0], said


def check_output(output: dict, audio_s: float) -> Path:
    video = Path(output["video_path"])
    frames = math.ceil(audio_s * 25)
    assert output["frames"] == frames and frame_count(video) == frames
    assert abs(media_duration(video, "a") - audio_s) < 0.05
    overlaps = sum(a["end_frame"] - b["start_frame"] for a, b in zip(output["segments"], output["segments"][1:]))
    assert output["frames_copied"] == frames - overlaps  # every body copied as the node encoded it
    assert_real_pictures(video, *SIZE)
    return video


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_runs_end_to_end_in_two_segments(template, it_pool, media, it_settings):
    output = run_job(it_request(template, media, max_segment_frames=81), it_pool, it_settings)
    assert output["workflow"] == template
    assert output["segments_processed"] == 2 and output["gpu_count"] == 1
    first, second = output["segments"]
    assert first["start_frame"] == 0 and second["end_frame"] == output["frames"]
    assert first["frames"] <= 81 and second["frames"] <= 81 and first["end_frame"] > second["start_frame"]
    check_output(output, AUDIO_S)  # multi: the longer track (speaker 1) sets the length
    assert output["quality"] == "fast"
    assert_prompts_encoded_without_padding(it_pool)


@pytest.mark.parametrize("steps", [4, 30])
def test_video_template_follows_the_requested_steps(steps, it_pool, media, it_settings):
    """The sampler starts at round(steps x (1 - denoise)): 4 and 30 steps both run (it was fixed at 20).
    4 steps: one segment of 122 frames, sampled in two windows (the video template's second window, which
    continues from the first one's motion frames); 30 steps (15 sampled): one window of 81 frames, which
    tests what the step count changes without a second window's VAE passes and 15 more model steps."""
    audio_s, audio = (AUDIO_S, media["audio"]) if steps == 4 else (ONE_WINDOW_S, media["audio_one_window"])
    before = len(log_lines(it_pool))
    output = run_job(it_request("infinitetalk_video_single", media, audio=str(audio), steps=steps, denoise=0.5,
                                max_segment_frames=150), it_pool, it_settings)
    assert output["segments_processed"] == 1
    check_output(output, audio_s)
    if steps == 4:  # two windows
        assert_second_window_reused_the_encode(it_pool, before)


def test_full_quality_runs_without_the_distill_lora(it_pool, media, it_settings):
    before = len(log_lines(it_pool))
    output = run_job(it_request("infinitetalk_image_single", media, quality="full", max_segment_frames=150),
                     it_pool, it_settings)
    assert output["quality"] == "full" and output["segments_processed"] == 1
    check_output(output, AUDIO_S)
    assert_second_window_reused_the_encode(it_pool, before)  # two windows


def test_cudnn_fp8_attention_runs_sdpa_on_the_cpu_through_the_real_wrapper(it_pool, media, it_settings):
    """template_params attention_mode "cudnn_fp8" (comfy_nodes/fp8_attention.py): the real WanVideoModelLoader takes
    it, the wrapper's attention() calls pass through the worker's router, and without a Hopper GPU each runs sdpa,
    which the log says once. (The fp8 kernel itself: benchmarks/infinitetalk_profile.py on an H200.)"""
    output = run_job(it_request("infinitetalk_image_single", media, audio=str(media["audio_one_window"]),
                                template_params={"attention_mode": "cudnn_fp8"}), it_pool, it_settings)
    assert output["segments_processed"] == 1
    check_output(output, ONE_WINDOW_S)
    said = [line for line in log_lines(it_pool) if "attention_mode cudnn_fp8 cannot run here" in line]
    assert len(said) == 1 and "no CUDA GPU" in said[0], said


# ------------------------------------------------------------------------ the templates against the real nodes


def validate_only(client: ComfyClient, graph: dict) -> dict:
    """POSTs the graph for ComfyUI's own validation and returns its node_errors; a prompt that passes is
    taken off the queue, or interrupted, before it can run."""
    response = requests.post(f"{client.base_url}/prompt", json={"prompt": graph, "client_id": uuid.uuid4().hex},
                             timeout=60)
    body = response.json()
    prompt_id = body.get("prompt_id")
    if prompt_id:
        requests.post(f"{client.base_url}/queue", json={"delete": [prompt_id]}, timeout=10)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            queue = requests.get(f"{client.base_url}/queue", timeout=10).json()
            if not any(item[1] == prompt_id for item in queue["queue_running"] + queue["queue_pending"]):
                break
            requests.post(f"{client.base_url}/interrupt", timeout=10)
            time.sleep(0.05)  # an interrupted prompt ends within a node; most are gone at the next look
        else:
            pytest.fail(f"prompt {prompt_id} could not be stopped")
    return body.get("node_errors") or ({} if response.ok else {"error": body.get("error")})


@contextmanager
def uploaded(pool: InstancePool, media: dict[str, Path], prefix: str):
    """(client, slot -> file name) of every media file uploaded to the pool's ComfyUI; the files removed after."""
    instance = pool.instances[0]
    client = ComfyClient(instance.url)
    tag = uuid.uuid4().hex[:8]
    uploads = {slot: client.upload(path, f"{prefix}_{tag}_{slot}{path.suffix}") for slot, path in media.items()}
    try:
        yield client, uploads
    finally:
        for name in uploads.values():
            (instance.input_dir / name).unlink(missing_ok=True)


@pytest.mark.parametrize("case", sorted(REQUESTS))
@pytest.mark.parametrize("template", TEMPLATES)
def test_bound_requests_pass_comfyui_validation(template, case, it_pool, media):
    """Typical and extreme requests, every preset, CPU and GPU settings: ComfyUI with the real wrapper
    accepts the bound graph (node_errors empty). Nothing runs: an accepted prompt is dequeued."""
    with uploaded(it_pool, media, "validate") as (client, uploads):
        for preset, vram_gb in variants(load_template(template)):
            graph, _ = bind_case(load_template(template), case, uploads, preset, vram_gb)
            assert validate_only(client, graph) == {}, (preset, vram_gb)


def test_the_loader_refuses_an_attention_mode_it_does_not_have(it_pool, media):
    """The other side of cudnn_fp8's test above: ComfyUI really checks attention_mode against the loader's list."""
    template = load_template("infinitetalk_image_single")
    with uploaded(it_pool, media, "mode") as (client, uploads):
        for mode, refused in (("cudnn_fp8", False), ("fp4_magic", True)):
            graph, _ = bind_case(template, "typical", uploads, "fast", 80.0)
            loaders = [node for node in graph.values() if node["class_type"] == "WanVideoModelLoader"]
            assert loaders
            for node in loaders:
                node["inputs"]["attention_mode"] = mode
            errors = validate_only(client, graph)
            assert bool(errors) == refused and (not refused or "attention_mode" in str(errors)), (mode, errors)


def test_node_schema_matches_the_real_nodes(it_pool):
    """workflows/custom_nodes_schema.json is what scripts/update_node_schema.py writes from this ComfyUI."""
    import json
    from scripts.update_node_schema import SCHEMA, fetch_object_info, schema_from_object_info, used_classes
    from worker.templates.template import WORKFLOWS_DIR
    live = schema_from_object_info(fetch_object_info(it_pool.instances[0].url), used_classes([WORKFLOWS_DIR]),
                                   json.loads((REPO / "models" / "manifest.json").read_text()))
    assert live == json.loads(SCHEMA.read_text()), "run scripts/update_node_schema.py"
