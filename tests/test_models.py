"""The model check (worker/templates/model_files.py), its fitness check under runpod, the extra model paths, and
scripts/download_models.py against a local stand-in for Hugging Face."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from worker.templates import model_files as models
from worker.templates.model_check import models_fitness_check
from worker.templates.model_files import find_model, missing_message, missing_models, model_files

REPO_ROOT = Path(__file__).resolve().parent.parent
DOWNLOAD = REPO_ROOT / "scripts" / "download_models.py"


def blob(name: str, size: int) -> bytes:
    """Deterministic, incompressible-looking content for a fake model file."""
    out, counter = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


FILES = {  # repo/path -> content
    "org/dit/sub/dit.safetensors": blob("dit", 300_000),
    "org/vae/vae.safetensors": blob("vae", 400_000),
    "org/audio/w2v.safetensors": blob("w2v", 50_000),
    "org/lora/lora.safetensors": blob("lora", 20_000),
}


def fake_manifest() -> dict:
    def entry(file, folder, key, used_by, optional=False, sha=True, estimate=False):
        data = FILES[key]
        repo, path = "/".join(key.split("/")[:2]), "/".join(key.split("/")[2:])
        return {"file": file, "folder": folder, "size_bytes": len(data) + (1000 if estimate else 0),
                "size_is_estimate": estimate, "source": {"repo": repo, "path": path},
                "sha256": hashlib.sha256(data).hexdigest() if sha else None, "used_by": used_by,
                "optional": optional, "note": ""}

    return {"comfyui": {"version": "0.3.75"}, "custom_nodes": [],
            "models": [
                entry("wan/fake_dit.safetensors", "diffusion_models", "org/dit/sub/dit.safetensors", ["talk"]),
                entry("fake_vae.safetensors", "vae", "org/vae/vae.safetensors", ["talk", "still"], sha=False,
                      estimate=True),
                entry("fake_w2v.safetensors", "audio_encoders", "org/audio/w2v.safetensors", ["talk"]),
                entry("extra_lora.safetensors", "loras", "org/lora/lora.safetensors", ["talk"], optional=True),
            ]}


@pytest.fixture()
def manifest_file(tmp_path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(fake_manifest()))
    return path


def put(root: Path, folder: str, file: str, data: bytes = b"weights") -> Path:
    path = root / folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------- the check


def test_empty_models_folder_reports_every_required_file_by_name_and_folder(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    missing = missing_models(root, manifest=fake_manifest())
    assert [(m.folder, m.file) for m in missing] == [("diffusion_models", "wan/fake_dit.safetensors"),
                                                     ("vae", "fake_vae.safetensors"),
                                                     ("audio_encoders", "fake_w2v.safetensors")]
    message = missing_message(missing, [root])
    for folder, file in [("diffusion_models", "wan/fake_dit.safetensors"), ("vae", "fake_vae.safetensors"),
                         ("audio_encoders", "fake_w2v.safetensors")]:
        assert f"{file} (folder {folder};" in message
        assert str(root / folder) in message
    assert "extra_lora" not in message  # optional
    assert "scripts/download_models.sh" in message and "/runpod-volume/models" in message
    assert message.startswith("3 required model file(s) missing")


def test_present_files_pass_and_templates_filter(tmp_path):
    root = tmp_path / "models"
    put(root, "vae", "fake_vae.safetensors")
    assert [m.file for m in missing_models(root, templates=["still"], manifest=fake_manifest())] == []
    assert len(missing_models(root, templates=["talk"], manifest=fake_manifest())) == 2
    put(root, "diffusion_models", "wan/fake_dit.safetensors")
    put(root, "audio_encoders", "fake_w2v.safetensors")
    assert missing_models(root, manifest=fake_manifest()) == []
    # an empty file (an aborted copy) does not count
    put(root, "vae", "fake_vae.safetensors", b"")
    assert [m.file for m in missing_models(root, manifest=fake_manifest())] == ["fake_vae.safetensors"]


def test_a_file_may_be_in_any_root(tmp_path):
    volume, baked = tmp_path / "volume", tmp_path / "baked"
    put(volume, "diffusion_models", "wan/fake_dit.safetensors")
    put(baked, "vae", "fake_vae.safetensors")
    put(baked, "audio_encoders", "fake_w2v.safetensors")
    assert missing_models([volume, baked], manifest=fake_manifest()) == []
    dit = model_files(fake_manifest())[0]
    assert find_model(dit, [baked, volume]) == volume / "diffusion_models" / "wan" / "fake_dit.safetensors"


def test_default_roots_follow_extra_model_paths(tmp_path, monkeypatch):
    """With no roots given, the check looks where ComfyUI would: its models/ and the yaml's folders."""
    comfy = tmp_path / "ComfyUI"
    volume = tmp_path / "volume-models"
    config = tmp_path / "extra.yaml"
    config.write_text(textwrap.dedent(f"""\
        vol:
          base_path: {volume}
          vae: vae
          audio_encoders: |
            audio_encoders
            wav2vec2
        """))
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    monkeypatch.setattr(models, "EXTRA_MODEL_PATHS", config)
    put(comfy / "models", "diffusion_models", "wan/fake_dit.safetensors")
    put(volume, "vae", "fake_vae.safetensors")
    put(volume, "wav2vec2", "fake_w2v.safetensors")
    assert missing_models(manifest=fake_manifest()) == []


def test_fitness_check_only_with_require_models(tmp_path, monkeypatch, manifest_file):
    monkeypatch.setenv("MODELS_MANIFEST", str(manifest_file))
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "ComfyUI"))
    monkeypatch.setattr(models, "extra_model_dirs", lambda *a: {})
    monkeypatch.delenv("REQUIRE_MODELS", raising=False)
    models_fitness_check()  # the CPU dev path: no models, no complaint
    monkeypatch.setenv("REQUIRE_MODELS", "1")
    with pytest.raises(RuntimeError) as info:
        models_fitness_check()
    assert "wan/fake_dit.safetensors (folder diffusion_models;" in str(info.value)
    root = tmp_path / "ComfyUI" / "models"
    put(root, "diffusion_models", "wan/fake_dit.safetensors")
    put(root, "vae", "fake_vae.safetensors")
    put(root, "audio_encoders", "fake_w2v.safetensors")
    models_fitness_check()


FITNESS_SCRIPT = """
import asyncio, runpod
from runpod.serverless.modules.rp_fitness import run_fitness_checks
from worker.templates.model_check import models_fitness_check
runpod.serverless.register_fitness_check(models_fitness_check)
asyncio.run(run_fitness_checks())
print("SERVING")
"""


def test_runpod_fitness_check_refuses_to_start_without_models(tmp_path, manifest_file):
    """The real runpod fitness machinery: the worker exits 1 and logs the missing files."""
    empty_yaml = tmp_path / "none.yaml"
    env = dict(os.environ, MODELS_MANIFEST=str(manifest_file), COMFYUI_PATH=str(tmp_path / "ComfyUI"),
               REQUIRE_MODELS="1", RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true", RUNPOD_SKIP_GPU_CHECK="true",
               PYTHONPATH=str(REPO_ROOT))
    script = FITNESS_SCRIPT.replace("from worker.templates.model_check import models_fitness_check",
                                    f"import worker.templates.model_files as m; m.EXTRA_MODEL_PATHS = m.Path({str(empty_yaml)!r})\n"
                                    "from worker.templates.model_check import models_fitness_check")
    failed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "SERVING" not in output
    assert "fake_dit.safetensors" in output and "models_fitness_check" in output
    root = tmp_path / "ComfyUI" / "models"
    for folder, file in [("diffusion_models", "wan/fake_dit.safetensors"), ("vae", "fake_vae.safetensors"),
                         ("audio_encoders", "fake_w2v.safetensors")]:
        put(root, folder, file)
    served = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert served.returncode == 0 and "SERVING" in served.stdout, served.stdout + served.stderr


# ---------------------------------------------------------------------------------------------- the real files


def test_extra_model_paths_maps_every_manifest_folder_from_the_volume():
    manifest = json.loads((REPO_ROOT / "models" / "manifest.json").read_text())
    config = yaml.safe_load((REPO_ROOT / "models" / "extra_model_paths.yaml").read_text())
    assert config["runpod_volume"]["base_path"] == "/runpod-volume/models"
    assert config["baked"]["base_path"] == "/models"
    folders = {m["folder"] for m in manifest["models"]}
    for section in ("runpod_volume", "baked"):
        assert folders <= set(config[section]), folders - set(config[section])
    dirs = models.extra_model_dirs()
    for folder in folders:
        assert Path("/runpod-volume/models") / folder in dirs[folder]


def test_real_manifest_loads():
    manifest = models.load_manifest()
    required = model_files(manifest)
    assert required, "the manifest lists no required model"
    for m in model_files(manifest, include_optional=True):
        assert m.repo and m.path and m.folder and m.file


# ---------------------------------------------------------------------------------------------- downloads


class FakeHub(BaseHTTPRequestHandler):
    """Serves FILES at /<repo>/resolve/<revision>/<path>, with Range support, like huggingface.co."""

    requests: list[tuple[str, str | None]] = []
    cut_after: dict[str, int] = {}  # path -> bytes after which the first response is cut off

    def do_GET(self):  # noqa: N802
        parts = self.path.lstrip("/").split("/")
        FakeHub.requests.append((self.path, self.headers.get("Range")))
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_error(404)
            return
        key = "/".join(parts[:2] + parts[4:])
        data = FILES.get(key)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = FakeHub.cut_after.pop(key, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def hub():
    FakeHub.requests = []
    FakeHub.cut_after = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_download(hub_url: str, root: Path, manifest: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_TOKEN="hf_secret_token_value")
    return subprocess.run([sys.executable, str(DOWNLOAD), "--root", str(root), "--manifest", str(manifest),
                           "--no-hub", *args], env=env, capture_output=True, text=True, timeout=120)


def test_download_fetches_required_models_then_skips_them(hub, tmp_path, manifest_file):
    root = tmp_path / "models"
    first = run_download(hub, root, manifest_file)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "diffusion_models/wan/fake_dit.safetensors").read_bytes() == FILES["org/dit/sub/dit.safetensors"]
    assert (root / "vae/fake_vae.safetensors").read_bytes() == FILES["org/vae/vae.safetensors"]
    assert (root / "audio_encoders/fake_w2v.safetensors").read_bytes() == FILES["org/audio/w2v.safetensors"]
    assert not (root / "loras").exists()  # optional, not asked for
    assert not list(root.rglob("*.partial"))
    assert "hf_secret_token_value" not in first.stdout + first.stderr
    assert missing_models(root, manifest=fake_manifest()) == []
    requests_before = len(FakeHub.requests)

    again = run_download(hub, root, manifest_file)
    assert again.returncode == 0
    assert again.stdout.count("  present\n") == 3
    assert len(FakeHub.requests) == requests_before  # idempotent: nothing fetched

    optional = run_download(hub, root, manifest_file, "--optional")
    assert optional.returncode == 0
    assert (root / "loras/extra_lora.safetensors").read_bytes() == FILES["org/lora/lora.safetensors"]


def test_download_resumes_a_partial_file_and_a_dropped_connection(hub, tmp_path, manifest_file):
    root = tmp_path / "models"
    data = FILES["org/dit/sub/dit.safetensors"]
    partial = root / "diffusion_models/wan/fake_dit.safetensors.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:100_000])  # left by an interrupted run
    FakeHub.cut_after["org/vae/vae.safetensors"] = 250_000  # this one drops mid-way
    result = run_download(hub, root, manifest_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "diffusion_models/wan/fake_dit.safetensors").read_bytes() == data
    assert (root / "vae/fake_vae.safetensors").read_bytes() == FILES["org/vae/vae.safetensors"]
    ranges = {p.split("/")[2]: r for p, r in FakeHub.requests if r}
    assert ranges["dit"] == "bytes=100000-"
    assert 0 < int(ranges["vae"].split("=")[1].rstrip("-")) <= 250_000  # resumed after what had come
    assert not list(root.rglob("*.partial"))


def test_download_rejects_a_wrong_file(hub, tmp_path):
    manifest = fake_manifest()
    manifest["models"][0]["sha256"] = "0" * 64
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest))
    root = tmp_path / "models"
    result = run_download(hub, root, path)
    assert result.returncode == 1
    assert "sha256 differs" in result.stderr and "diffusion_models/wan/fake_dit.safetensors" in result.stderr
    assert not (root / "diffusion_models/wan/fake_dit.safetensors").exists()
    assert not list(root.rglob("*.partial"))
    assert (root / "vae/fake_vae.safetensors").exists()  # the others still came down


def test_download_reports_a_missing_file(hub, tmp_path):
    manifest = fake_manifest()
    manifest["models"][1]["source"]["path"] = "nope.safetensors"
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(manifest))
    result = run_download(hub, tmp_path / "models", path)
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr and "vae/fake_vae.safetensors" in result.stderr


def test_download_dry_run_lists_without_fetching(hub, tmp_path, manifest_file):
    result = run_download(hub, tmp_path / "models", manifest_file, "--dry-run", "--optional")
    assert result.returncode == 0
    assert "loras/extra_lora.safetensors" in result.stdout and "to download" in result.stdout
    assert FakeHub.requests == []
    assert not (tmp_path / "models").exists()
