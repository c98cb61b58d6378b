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
from client.display import format_estimate, format_progress
from client.media import MediaError, place_media
from client.timeline import benchmark_run_as_response, timeline_svg
from tests.test_pins import locked, normalize

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


def test_progress_line_and_estimate_text():
    progress = {"stage": "generating", "percent": 47.0, "elapsed_s": 30, "eta_s": 34, "segments": [
        {"index": 0, "state": "running", "instance": "gpu0:8188", "percent": 62, "windows": 3,
         "node": "9 WanVideoSampler", "node_steps": [12, 24]},
        {"index": 1, "state": "waiting", "attempt": 1}]}
    line = format_progress("IN_PROGRESS", progress)
    assert " 47.0%  generating" in line and "ETA 34s" in line
    assert "gpu0:8188 seg 0 62% (3 windows) [WanVideoSampler 12/24]" in line and "seg 1 retrying" in line
    text = format_estimate({"plan": {"workflow": "still", "frames": 50, "segments": [
        {"index": 0, "start_frame": 0, "end_frame": 50, "frames": 50}]}, "estimate": {"total_s": 12.5}})
    assert "segment 0: frames 0-50 (50 frames)" in text and "total_s: 12.5" in text


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
