"""The client as a package of its own: its pins, that it needs nothing of the worker, that it builds and
installs, and its pure parts (media placement, bucket settings, timeline drawing, estimate text)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from client.api import LocalApi
from client.bucket import Bucket, BucketError
from client.cli import build_parser
from client.display import format_progress
from client.media import MediaError, place_media
from client.report import estimate_report, job_summary
from client.timeline import benchmark_run_as_response, timeline_svg
from tests.test_pins import locked, normalize
from worker.request.errors import rule_of
from worker.request.job_request import JobRequest, OutputOptions

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "client"
SVG = "{http://www.w3.org/2000/svg}"


def test_client_pins_agree_with_its_lock_its_pyproject_and_the_workers_lock():
    direct, lock = locked(REPO / "requirements/client.txt"), locked(REPO / "requirements/client.lock")
    assert all(lock.get(name) == version for name, version in direct.items()), (direct, lock)
    worker = locked(REPO / "requirements/worker.lock")
    assert {n: v for n, v in worker.items() if n in lock} == lock, "the worker's .venv must run the client"
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    assert {normalize(d.split("==")[0]): d.split("==")[1] for d in declared} == direct


def test_the_client_imports_nothing_of_the_worker():
    allowed = {"client", "requests", "boto3", "botocore"} | set(sys.stdlib_module_names)
    for path in CLIENT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_the_client_runs_from_a_folder_without_the_worker(tmp_path):
    """`python -m client` where nothing but the client is (its own dependencies come from the environment)."""
    shutil.copytree(CLIENT, tmp_path / "client", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "response.json").write_text(json.dumps(RESPONSE))
    result = subprocess.run([sys.executable, "-m", "client", "timeline", "response.json", "-o", "job.svg"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ET.parse(tmp_path / "job.svg").getroot().tag == f"{SVG}svg"
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"video-client": "client.cli:main"}
    assert project["tool"]["setuptools"]["package-dir"] == {"client": "."}


# ------------------------------------------------------------------------------------------------ media


def test_small_files_go_inline_big_ones_to_the_bucket_urls_as_they_are(tmp_path):
    small, big = tmp_path / "a.wav", tmp_path / "b.mp4"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"y" * 50_000)

    class FakeBucket:  # the real one is exercised against a real S3 server in tests/test_client.py
        uploaded: list = []

        def upload(self, path: Path) -> str:
            self.uploaded.append(path)
            return f"https://bucket.example/{path.name}"

    job: dict = {"width": 512}
    placed = place_media(job, {"audio": str(small), "video": str(big), "image": "https://x.example/face.png"},
                         20_000, FakeBucket())
    assert {p.field: p.how for p in placed} == {"image": "url", "audio": "inline", "video": "bucket"}
    assert job["audio"].startswith("data:audio/") and job["video"] == "https://bucket.example/b.mp4"
    assert job["image"] == "https://x.example/face.png"
    with pytest.raises(MediaError, match="no file at /nope.png"):
        place_media({}, {"image": "/nope.png"}, 20_000, None)


@pytest.mark.parametrize("env, expected", [
    ({"BUCKET_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com/media/team"},
     ("https://acct.r2.cloudflarestorage.com", "media", "team/inputs", "us-east-1")),
    ({"BUCKET_ENDPOINT_URL": "https://clips.s3.eu-west-1.amazonaws.com", "BUCKET_INPUT_PREFIX": ""},
     ("https://s3.eu-west-1.amazonaws.com", "clips", "", "eu-west-1")),
    ({"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9000", "BUCKET_NAME": "in", "BUCKET_REGION": "auto"},
     ("http://127.0.0.1:9000", "in", "inputs", "auto")),
])
def test_bucket_settings_from_the_workers_variables(env, expected):
    bucket = Bucket.from_env({"BUCKET_ACCESS_KEY_ID": "AK", "BUCKET_SECRET_ACCESS_KEY": "SECRET", **env})
    assert (bucket.endpoint_url, bucket.bucket, bucket.prefix, bucket.region) == expected
    assert "SECRET" not in repr(bucket)


def test_no_bucket_unless_all_three_variables_are_set_and_a_bucket_is_named():
    assert Bucket.from_env({"BUCKET_ENDPOINT_URL": "https://host/b", "BUCKET_ACCESS_KEY_ID": "AK"}) is None
    with pytest.raises(BucketError, match="names no bucket"):
        Bucket.from_env({"BUCKET_ENDPOINT_URL": "https://minio.local", "BUCKET_ACCESS_KEY_ID": "AK",
                         "BUCKET_SECRET_ACCESS_KEY": "S"})


# ------------------------------------------------------------------------------------------------ display


RESPONSE = {"workflow": "restyle", "frames": 300, "segments_processed": 2, "segments": [
    {"index": 0, "instance": "gpu0:8188", "start_frame": 0, "end_frame": 154, "seconds": 4.7, "started_s": 1.3,
     "finished_s": 6.0, "node_seconds": {"1 LoadVideo": 0.5, "4 ImageSharpen": 1.0, "6 SaveSegmentVideo": 2.5}},
    {"index": 1, "instance": "gpu1:8189", "start_frame": 146, "end_frame": 300, "seconds": 4.5, "started_s": 1.3,
     "finished_s": 5.8, "node_seconds": {"1 LoadVideo": 0.4, "4 ImageSharpen": 1.0, "6 SaveSegmentVideo": 2.3}}],
    "timings": {"prepare": 1.3, "generate": 4.7, "stitch": 1.7, "deliver": 0.1, "total": 7.8}}


def test_a_response_is_drawn_one_row_per_instance_with_its_nodes_then_the_stitch():
    svg = ET.fromstring(timeline_svg(RESPONSE))
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert {"job", "gpu0:8188", "gpu1:8189", "stitch"} <= set(labels)
    tips = [t.text for t in svg.iter(f"{SVG}title")]
    assert sum(t.startswith("segment 0: node") for t in tips) == 3
    assert "stitch tail 1.70 s (after the last segment)" in tips
    # segment 0's nodes end where the segment does (6.0 s), laid end to end
    bars = {t.text: g.find(f"{SVG}rect") for g in svg.iter(f"{SVG}g") for t in g.findall(f"{SVG}title")}
    save = bars["segment 0: node 6 SaveSegmentVideo 2.50 s"]
    whole = next(r for tip, r in bars.items() if tip.startswith("segment 0: frames"))
    assert float(save.get("x")) + float(save.get("width")) == pytest.approx(
        float(whole.get("x")) + float(whole.get("width")), abs=0.2)
    assert not any("start times not in the data" in (label or "") for label in labels)


def test_the_benchmark_json_is_drawn_with_assumed_starts_and_says_so():
    benchmark = json.loads((REPO / "docs/perf/gpu_scaling.json").read_text())
    run = next(r for r in benchmark["runs"] if r["gpus"] == 2)
    response = benchmark_run_as_response(run, benchmark)
    assert response["timings"]["total"] == run["wall_s"] and len(response["segments"]) == 2
    labels = [t.text for t in ET.fromstring(timeline_svg(response)).iter(f"{SVG}text")]
    assert any("segment start times not in the data" in (label or "") for label in labels)


PROGRESS = {"stage": "generating", "percent": 47.0, "elapsed_s": 30, "eta_s": 34, "segments": [
    {"index": 0, "state": "running", "instance": "gpu0:8188", "percent": 62, "windows": 3, "frames": 200,
     "node": "9 WanVideoSampler", "node_steps": [12, 24]},
    {"index": 1, "state": "running", "instance": "gpu1:8189", "percent": 40, "windows": 3, "frames": 200,
     "node": "9 WanVideoSampler", "node_steps": [8, 24]},
    {"index": 2, "state": "waiting", "attempt": 1}]}


@pytest.mark.parametrize("width, expected", [
    (200, "[###########-------------]  47.0%  generating 30s elapsed, ETA 34s  | gpu0:8188 seg 0 62% (3 windows) "
          "[WanVideoSampler 12/24] | gpu1:8189 seg 1 40% (3 windows) [WanVideoSampler 8/24] | seg 2 retrying"),
    (120, "[####------]  47.0%  generating 30s elapsed, ETA 34s  | gpu0:8188 seg 0 62% | gpu1:8189 seg 1 40% | "
          "seg 2 retrying"),
    (100, "[####------]  47.0%  generating 30s elapsed, ETA 34s  | seg 0 62% | seg 1 40% | seg 2 retrying"),
    (80, "[####------]  47.0%  generating 30s elapsed, ETA 34s  | 0/3 segments done"),
    (60, "[####------]  47.0%  generating 30s elapsed, ETA 34s"),
    (45, " 47.0%  generating 30s elapsed, ETA 34s"),
    (20, "47.0% ETA 34s"),
])
def test_the_progress_line_fits_the_terminal_dropping_detail_never_the_percent_and_eta(width, expected):
    assert format_progress("IN_PROGRESS", PROGRESS, width) == expected
    assert len(expected) <= width


def test_no_bar_is_drawn_before_the_job_reports_progress():
    import io

    from client.display import ProgressLine
    stream = io.StringIO()
    line = ProgressLine(stream, live=False)
    line.update("IN_QUEUE", None)
    line.update("IN_PROGRESS", None)
    assert stream.getvalue() == ""
    line.update("IN_PROGRESS", {**PROGRESS, "segments": []})
    assert stream.getvalue().startswith("[###########-------------]  47.0%")


SUMMARY_RESPONSE = {
    "workflow": "infinitetalk_image_single", "quality": "fast", "frames": 842, "fps": 25.0, "duration_s": 33.68,
    "gpu_count": 2, "instances_available": 2, "segments_processed": 2, "overlap_frames": 9,
    "segments": [
        {"index": 0, "instance": "gpu0:8188", "gpu": 0, "start_frame": 0, "end_frame": 426, "frames": 426,
         "seconds": 118.2, "comfy_seconds": 117.9, "attempts": 1, "started_s": 2.0, "finished_s": 120.2},
        {"index": 1, "instance": "gpu1:8189", "gpu": 1, "start_frame": 417, "end_frame": 842, "frames": 425,
         "seconds": 121.0, "comfy_seconds": 120.5, "attempts": 2, "started_s": 2.1, "finished_s": 123.1}],
    "seams": [{"index": 0, "overlap_start_frame": 417, "overlap_end_frame": 426, "moved_frames": -3,
               "blend_start_frame": 418, "blend_end_frame": 424, "audio_db": None, "disagreement": 3.1,
               "disagreement_at_blend": 1.2, "color_difference_before": 2.5, "color_difference_after": 0.4,
               "change_at_seam": None}],
    "seam_summary": {"budget_frames": 8.4, "cost_frames": 3, "blend": "focused", "blend_frames": 6,
                     "color_matched": True, "audio_median_db": -20.0, "change_median": None},
    "estimate": {"basis": "measured on one NVIDIA H200", "seconds_per_window": 19.3, "load_s": 33.0,
                 "wall_s": 115.8, "gpu_s": 231.6, "per_gpu_count": []},
    "timings": {"prepare": 2.0, "generate": 121.1, "stitch": 4.0, "deliver": 0.5, "total": 127.6},
    "video_url": "https://bucket.example/out.mp4", "video_bytes": 12_340_000}


def test_the_summary_of_a_gpu_job_with_units_and_no_none():
    assert job_summary(SUMMARY_RESPONSE).splitlines() == [
        "workflow infinitetalk_image_single (preset fast): 842 frames at 25 fps (33.68 s), 2 segments on 2 of 2 GPUs, "
        "overlap 9 frames",
        "  segment 0 on gpu0:8188  frames     0-426   ( 426 frames)  118.20 s (ComfyUI 117.90 s), ran 2.00-120.20 s "
        "into the job",
        "  segment 1 on gpu1:8189  frames   417-842   ( 425 frames)  121.00 s (ComfyUI 120.50 s, 2 attempts), ran "
        "2.10-123.10 s into the job",
        "  seams: focused blend of 6 frames, placement cost 3 of 8.4 frames, colour matched: yes, median audio "
        "-20.0 dBFS, median change n/a",
        "  seam 0: frames 418-424 blended (moved -3), audio n/a, disagreement 1.20 (overlap 3.10), colour 2.50 -> "
        "0.40, change n/a (median n/a)",
        "  estimate: generation 1 min 56 s expected (measured on one NVIDIA H200), took 2 min 01 s",
        "  timings: prepare 2.00 s, generate 121.10 s, stitch 4.00 s, deliver 0.50 s, total 127.60 s",
        "  video: https://bucket.example/out.mp4 (12.34 MB, in the bucket)"]
    assert "None" not in job_summary(SUMMARY_RESPONSE)


def test_the_summary_says_the_output_checks_warnings():
    warned = {**SUMMARY_RESPONSE, "flat_frames": 12, "warnings": ["12 of 842 frames are one colour (black or blank)"]}
    lines = job_summary(warned).splitlines()
    assert lines[lines.index("  seam 0: frames 418-424 blended (moved -3), audio n/a, disagreement 1.20 (overlap "
                             "3.10), colour 2.50 -> 0.40, change n/a (median n/a)") + 1] == \
        "  warning: 12 of 842 frames are one colour (black or blank)"


def test_the_estimate_of_a_frame_by_frame_template_on_cpu_instances():
    dry = {"dry_run": True, "workflow": "still", "quality": None, "frames": 163, "fps": 25.0, "duration_s": 6.52,
           "instances_available": 2, "instance_names": ["cpu:8188", "cpu:8189"], "overlap_frames": 4,
           "segments": [{"index": 0, "start_frame": 0, "end_frame": 84, "frames": 84, "windows": 84},
                        {"index": 1, "start_frame": 80, "end_frame": 163, "frames": 83, "windows": 83}],
           "estimate": {"basis": "measured on two CPU cores, two instances at once, scaled to 128x96",
                        "seconds_per_window": 0.004, "load_s": None, "wall_s": 0.4, "gpu_s": 0.7,
                        "per_gpu_count": [{"gpus": 1, "segments": 1, "wall_s": 0.7, "gpu_s": 0.7},
                                          {"gpus": 2, "segments": 2, "wall_s": 0.4, "gpu_s": 0.7}]}}
    assert estimate_report(dry).splitlines() == [
        "workflow still: 163 frames at 25 fps (6.52 s), 2 segments, overlap 4 frames, 2 instances available",
        "  segment 0: frames 0-84 (84 frames)",
        "  segment 1: frames 80-163 (83 frames)",
        "estimate: 0.004 s a frame (measured on two CPU cores, two instances at once, scaled to 128x96)",
        "  on 1 instance: generation 0.7 s, 0.7 s of instance time",
        "  on 2 instances (this plan): generation 0.4 s, 0.7 s of instance time",
        "  generation only, instances warm: preparing, stitching and delivering the video come on top"]
    assert estimate_report({**dry, "estimate": None}).splitlines()[-1] == (
        "estimate: none yet (the template declares no speed and this worker has run no job of this kind; run one "
        "and ask again)")


def test_the_estimate_of_a_windowed_template_on_gpus():
    dry = {"workflow": "infinitetalk_image_single", "quality": "fast", "frames": 842, "fps": 25.0,
           "duration_s": 33.68, "instances_available": 2, "instance_names": ["gpu0:8188", "gpu1:8189"],
           "overlap_frames": 9,
           "segments": [{"index": 0, "start_frame": 0, "end_frame": 426, "frames": 426, "windows": 6},
                        {"index": 1, "start_frame": 417, "end_frame": 842, "frames": 425, "windows": 6}],
           "estimate": {"basis": "measured on one NVIDIA H200", "seconds_per_window": 19.3, "load_s": 33.0,
                        "wall_s": 115.8, "gpu_s": 231.6,
                        "per_gpu_count": [{"gpus": 1, "segments": 1, "wall_s": 231.6, "gpu_s": 231.6},
                                          {"gpus": 2, "segments": 2, "wall_s": 115.8, "gpu_s": 231.6}]}}
    assert estimate_report(dry).splitlines() == [
        "workflow infinitetalk_image_single (preset fast): 842 frames at 25 fps (33.68 s), 2 segments, overlap "
        "9 frames, 2 GPUs available",
        "  segment 0: frames 0-426 (426 frames, 6 windows)",
        "  segment 1: frames 417-842 (425 frames, 6 windows)",
        "estimate: 19.3 s a window (measured on one NVIDIA H200)",
        "  on 1 GPU: generation 3 min 52 s, 3 min 52 s of GPU time",
        "  on 2 GPUs (this plan): generation 1 min 56 s, 3 min 52 s of GPU time",
        "  generation only, instances warm: preparing, stitching and delivering the video come on top",
        "  a cold GPU first loads the models: about 33.0 s, once"]


# The client's help states the worker's bounds (it cannot import them): each flag's help holds its field's rule.
FLAG_FIELDS = {"--seed": "seed", "--steps": "steps", "--width": "width", "--height": "height", "--fps": "fps",
               "--gpu-count": "gpu_count", "--overlap-frames": "overlap_frames", "--crf": "output.crf",
               "--audio-bitrate-kbps": "output.audio_bitrate_kbps"}


def test_submit_help_states_the_workers_bounds_and_an_example():
    submit = build_parser()._subparsers._group_actions[0].choices["submit"]
    helps = {option: action.help for action in submit._actions for option in action.option_strings}
    for flag, name in FLAG_FIELDS.items():
        model, _, field = name.rpartition(".")
        info = (OutputOptions if model else JobRequest).model_fields[field]
        assert rule_of(info) in helps[flag], (flag, rule_of(info), helps[flag])
    assert submit._option_string_actions["--preset"].choices == list(
        OutputOptions.model_fields["preset"].annotation.__args__)
    text = submit.format_help()
    assert "examples:\n  python -m client submit --url http://localhost:8000 --image face.png --audio speech.wav" in text


def test_the_local_client_waits_for_the_result_when_progress_reports_the_end_first():
    """The local /status answer (with a big base64 video) can arrive after /progress already says COMPLETED;
    the client must take the result from the answer, not the end from /progress. A stand-in API that
    answers /status a second late plays that."""

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, body: dict, code: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/run":
                self._json({"id": "job-1", "status": "IN_PROGRESS"})
            else:  # /status/job-1: the job ran; its answer is slow to arrive
                time.sleep(1.0)
                self._json({"id": "job-1", "status": "COMPLETED", "output": {"video": "AAAA", "frames": 3}})

        def do_GET(self):
            self._json({"id": "job-1", "status": "COMPLETED", "progress": {"stage": "done", "percent": 100}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = LocalApi(f"http://127.0.0.1:{server.server_address[1]}")
        job_id = api.submit({"image": "x"})
        state = api.state(job_id)
        assert (state.status, state.output) == ("COMPLETED", {"video": "AAAA", "frames": 3})
    finally:
        server.shutdown()
        server.server_close()
