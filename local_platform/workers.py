"""Starts the real worker: `python handler.py --rp_serve_api` (WorkerApi), or as RunPod runs it, polling a platform
for jobs (WorkerOnPlatform); each with its own CPU ComfyUI instances."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import requests

if TYPE_CHECKING:
    from local_platform.runpod_standin import RunPodStandIn

REPO = Path(__file__).resolve().parents[1]


class WorkerApi:
    def __init__(self, root: Path, api_port: int, comfy_port: int, instances: int = 2, env: dict | None = None):
        self.root = root
        self.url = f"http://127.0.0.1:{api_port}"
        self.media = root / "media"
        self.jobs = root / "jobs"
        self.volume = root / "volume"
        self.instances_dir = root / "instances"
        for folder in (self.media, self.jobs, self.volume):
            folder.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "COMFY_BASE_PORT": str(comfy_port), "COMFY_CPU_INSTANCES": str(instances),
                    "COMFY_FORCE_CPU": "1", "COMFY_INSTANCES_DIR": str(self.instances_dir),
                    "ALLOWED_INPUT_ROOTS": str(self.media), "JOB_WORK_DIR": str(self.jobs),
                    "OUTPUT_VOLUME_DIR": str(self.volume), "RUNPOD_DEBUG_LEVEL": "INFO",
                    **(env or {})}  # env: over these
        self.log_path = root / "worker.log"
        self.process: subprocess.Popen | None = None

    def launch(self) -> "WorkerApi":
        """Starts the worker process and returns at once (start() also waits for its API)."""
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", port],
            cwd=REPO, env=self.env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        return self

    def start(self, timeout_s: float = 240) -> "WorkerApi":
        self.launch()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited during start-up:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/docs", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"worker did not start in {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        # Whatever happened, no ComfyUI of this worker may outlive the tests.
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.instances_dir) in " ".join(proc.info["cmdline"] or []):
                proc.kill()

    def comfy_processes(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if str(self.instances_dir) in " ".join(p.info["cmdline"] or [])
                and "main.py" in " ".join(p.info["cmdline"] or [])]

    def runsync(self, job_input: dict, timeout_s: float = 600) -> dict:
        response = requests.post(self.url + "/runsync", json={"input": job_input}, timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def leftover_job_files(self) -> list[Path]:
        return list(self.jobs.rglob("*"))


class WorkerOnPlatform(WorkerApi):
    """One worker of an endpoint as RunPod runs it (`python handler.py`, no local API): it polls the RunPod
    stand-in (local_platform/runpod_standin.py) for jobs as its RUNPOD_POD_ID (RunPodStandIn.worker_env)."""

    cores: str | None = None  # e.g. "1": the worker (and its instances) run on these CPU cores only (taskset)

    @property
    def pod(self) -> str:
        return self.env.get("RUNPOD_POD_ID", "standin-worker")

    def start(self, standin: "RunPodStandIn", timeout_s: float = 240) -> "WorkerOnPlatform":
        """Starts the worker (again, after a kill) and returns once it polls `standin` for jobs."""
        seen = standin.takes_by.get(self.pod, 0)
        pinned = ["taskset", "-c", self.cores] if self.cores else []
        self.process = subprocess.Popen([*pinned, sys.executable, "handler.py"], cwd=REPO, env=self.env,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while standin.takes_by.get(self.pod, 0) <= seen:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.pod} did not start polling for jobs:\n{self.log_tail()}")
            time.sleep(0.3)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def save_video(output: dict, dest: Path) -> Path:
    dest.write_bytes(base64.b64decode(output["video"]))
    return dest
