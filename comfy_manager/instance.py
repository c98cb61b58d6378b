"""One ComfyUI process: its private folders, its port, its GPU, its log."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import requests

from comfy_manager.oom import MemoryCgroup, ProcessEnd, out_of_memory
from comfy_manager.processes import spawn_tied

log = logging.getLogger(__name__)
START_MARK = "\n=== starting: "  # written into the log before each start
PROMPT_MARK = "got prompt"  # ComfyUI's log line when a prompt begins


class InstanceDied(RuntimeError):
    """A ComfyUI process exited or never became ready; the message carries its last log lines."""

    def __init__(self, instance: "ComfyInstance", what: str):
        super().__init__(f"ComfyUI {instance.name} {what}. Last log lines:\n{instance.log_tail()}")


@dataclass(frozen=True)
class InstanceSpec:
    index: int
    port: int
    gpu: int | None  # None: runs on the CPU
    root: Path  # private folder holding input/, output/, temp/, user/ and the log
    vram_gb: float | None = None  # what templates may plan for: the GPU's memory, or the limit below
    vram_limit_gb: float | None = None  # COMFY_VRAM_LIMIT_GB: the worker's node caps the CUDA allocator here
    gpu_memory_gb: float | None = None  # the card's own memory, as NVML reports it


class ComfyInstance:
    """Starts, watches and stops one ComfyUI process pinned to one GPU (or the CPU)."""

    def __init__(self, spec: InstanceSpec, comfy_path: Path, python: str, extra_args: list[str],
                 cpu_threads: int | None = None):
        self.spec = spec
        self.cpu_threads = cpu_threads
        self.comfy_path = comfy_path
        self.python = python
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.generation = 0  # how many times it was started: tells a failure of an earlier process apart
        self._prompts_finished = 0  # by the current process; 0: its next prompt loads the models (cold)
        self._state_lock = threading.Lock()  # segments' threads, the pool's watcher and its idle /free touch it
        self.started_at = 0.0
        self.ready_after_s: float | None = None
        self._cgroup: MemoryCgroup | None = None  # its memory cgroup, read at start (gone with /proc/PID)
        self._oom_kills_at_start: int | None = None

    @property
    def warm(self) -> bool:
        """Its current process has finished a prompt since it started or last unloaded its models: the next
        prompt finds them loaded. A cold instance's first prompt also pays for loading them."""
        with self._state_lock:
            return self._prompts_finished > 0

    def prompt_finished(self, generation: int) -> None:
        """A prompt started on process `generation` has finished; counted only if that process still runs
        (not restarted meanwhile): it is the one that has the models now."""
        with self._state_lock:
            if generation == self.generation:
                self._prompts_finished += 1

    def models_unloaded(self) -> None:
        """Its models were unloaded (POST /free): the next prompt loads them again."""
        with self._state_lock:
            self._prompts_finished = 0

    @property
    def name(self) -> str:
        device = "cpu" if self.spec.gpu is None else f"gpu{self.spec.gpu}"
        return f"{device}:{self.spec.port}"

    @property
    def gpu(self) -> int | None:
        return self.spec.gpu

    @property
    def vram_gb(self) -> float | None:
        """The VRAM templates plan for on this instance; None on the CPU."""
        return self.spec.vram_gb

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def input_dir(self) -> Path:
        return self.spec.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.spec.root / "output"

    @property
    def log_path(self) -> Path:
        return self.spec.root / "comfyui.log"

    def command(self) -> list[str]:
        root = self.spec.root
        args = [
            self.python, str(self.comfy_path / "main.py"),
            "--listen", "127.0.0.1", "--port", str(self.spec.port),
            "--input-directory", str(root / "input"),
            "--output-directory", str(root / "output"),
            "--temp-directory", str(root / "temp"),
            "--user-directory", str(root / "user"),
            "--database-url", f"sqlite:///{root / 'user' / 'comfyui.db'}",
            "--front-end-root", str(root / "frontend"),
            "--disable-metadata", "--disable-auto-launch", "--preview-method", "none",
        ]
        # On a CPU, half-precision math is emulated and slow: ComfyUI's own encoders and VAE run in fp32 there.
        args += ["--cpu", "--fp32-text-enc", "--fp32-vae"] if self.spec.gpu is None else ["--cuda-device", str(self.spec.gpu)]
        if self.spec.vram_limit_gb and self.spec.gpu_memory_gb:
            # ComfyUI plans its model loading from the whole card; keep what is above the limit in reserve.
            args += ["--reserve-vram", f"{max(0.0, self.spec.gpu_memory_gb - self.spec.vram_limit_gb):.1f}"]
        return args + self.extra_args

    def start(self) -> None:
        """Launches the process in its own process group, tied to this one's life (it is killed if the worker
        dies: comfy_manager/processes.py); returns at once (see wait_ready)."""
        root = self.spec.root
        for sub in ("input", "output", "temp", "user", "frontend"):
            folder = root / sub
            if sub in ("input", "output") and folder.exists():
                shutil.rmtree(folder)  # leftovers of an earlier run are never read
            folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.spec.vram_limit_gb:
            env["WORKER_VRAM_LIMIT_GB"] = str(self.spec.vram_limit_gb)  # read by comfy_nodes/ at import
        if self.cpu_threads:
            # Instances share the machine's cores: without a cap each starts one torch thread per core,
            # and CPU work (decoding, colour conversion) of N instances fights over them.
            env["OMP_NUM_THREADS"] = str(self.cpu_threads)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"{START_MARK}{' '.join(self.command())}\n".encode())
            log_file.flush()  # before the process writes: the mark heads what this start logs
            self.process = spawn_tied(
                self.command(), python=self.python, cwd=self.comfy_path, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        with self._state_lock:
            self.generation += 1
            self._prompts_finished = 0
        self.started_at = time.monotonic()
        self.ready_after_s = None
        self._cgroup = MemoryCgroup.of_process(self.process.pid)
        self._oom_kills_at_start = self._cgroup.oom_kills() if self._cgroup else None
        log.info("ComfyUI %s starting (pid %d, log %s)", self.name, self.process.pid, self.log_path)

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_responding(self, timeout_s: float = 2.0) -> bool:
        """Whether this instance's ComfyUI answers on its port. The answer must come from our process (its
        command line names our input folder): another ComfyUI already listening there would otherwise pass
        for ours while ours fails to bind the port."""
        try:
            response = requests.get(f"{self.url}/system_stats", timeout=timeout_s)
            argv = response.json().get("system", {}).get("argv", []) if response.ok else []
        except (requests.RequestException, ValueError, AttributeError):
            return False
        return isinstance(argv, list) and str(self.input_dir) in argv

    def wait_ready(self, deadline: float) -> None:
        """Blocks until the HTTP API answers; raises InstanceDied if it exits or the deadline passes."""
        while True:
            if not self.is_alive():
                raise InstanceDied(self, f"{self.exit_status() or 'was not started'} during start-up")
            if self.is_responding():
                self.ready_after_s = time.monotonic() - self.started_at
                log.info("ComfyUI %s ready after %.1f s", self.name, self.ready_after_s)
                return
            if time.monotonic() > deadline:
                raise InstanceDied(self, "did not answer before the start-up deadline")
            time.sleep(0.25)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stops the whole process group: SIGTERM, then SIGKILL after grace_s."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        log.info("ComfyUI %s stopped", self.name)

    def exit_status(self, wait_s: float = 0.0) -> str | None:
        """How the process ended ("exited with code 1", "killed by SIGKILL"), None while it runs. wait_s: how
        long to wait for it to end (a process whose socket just closed may need a moment)."""
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout=wait_s) if wait_s > 0 else self.process.poll()
        except subprocess.TimeoutExpired:
            return None
        if code is None:
            return None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def out_of_memory(self, wait_s: float = 2.0) -> str | None:
        """Why this instance's process is believed to have run out of memory (oom.py), or None. A running
        process is judged by its log alone (CUDA OOMs are raised to the prompt, the process survives)."""
        process = self.process
        if process is None:
            return None
        self.exit_status(wait_s)
        code = process.poll()
        since_prompt = self.log_since(PROMPT_MARK)
        if code is None:
            return out_of_memory(ProcessEnd(process.pid, 0, None, None, since_prompt))
        return out_of_memory(ProcessEnd(process.pid, code, self._oom_kills_at_start, self._cgroup, since_prompt))

    def log_since(self, mark: str) -> str:
        """The current process's log from its last line containing mark (or from its start)."""
        tail = self.log_tail(400)
        start = tail.rfind(START_MARK.strip())
        current = tail[start:] if start >= 0 else tail
        at = current.rfind(mark)
        return current[at:] if at >= 0 else current

    def log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                tail = deque(f.read().decode(errors="replace").splitlines(), maxlen=lines)
        except OSError:
            return "(no log)"
        return "\n".join(tail)
