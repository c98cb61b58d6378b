"""Running ffmpeg and ffprobe as processes, quietly, each with a deadline and stopped when its job is
cancelled, with errors that say what failed.

Every ffmpeg the worker runs goes through here: a process that hangs (a loop whose timestamps never reach
the frame count, a decoder stuck on a damaged file) is killed at its deadline, and a cancelled job kills its
ffmpeg processes at once instead of waiting for them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from worker.request.errors import JobCancelled, JobFailed
from worker.request.settings import WorkerSettings

QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
# Work that runs beside the ComfyUI instances (the stitch) yields the CPU to them: their own work
# (sampling loop, VAE, the segment encode) is what a job waits for.
NICE = ["nice", "-n", "10"] if shutil.which("nice") else []


@dataclass(frozen=True)
class Limits:
    """How long one ffmpeg call may run (base_s plus per_frame_s for each frame it handles) and the event
    that stops it (the job's cancel). Limits.of() makes them from FFMPEG_TIMEOUT_S,
    FFMPEG_TIMEOUT_PER_FRAME_S and the job."""

    base_s: float = 300.0
    per_frame_s: float = 1.0
    cancel: threading.Event | None = None

    def seconds(self, frames: int = 0) -> float:
        return self.base_s + self.per_frame_s * max(0, frames)

    @classmethod
    def of(cls, settings: WorkerSettings, cancel: threading.Event | None = None) -> Limits:
        """The deadline of the worker's ffmpeg calls (settings), and the job's cancel event that stops them."""
        return cls(settings.ffmpeg_timeout_s, settings.ffmpeg_timeout_per_frame_s, cancel)


DEFAULT_LIMITS = Limits()


class Watchdog:
    """Kills `process` when its deadline passes or the job is cancelled; check() then raises why."""

    def __init__(self, process: subprocess.Popen, what: str, limits: Limits, frames: int = 0):
        self.process, self.what, self.limits = process, what, limits
        self.seconds = limits.seconds(frames)
        self.fired: str | None = None  # "deadline" or "cancelled"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ffmpeg-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._done.wait(0.1):
            if self.limits.cancel is not None and self.limits.cancel.is_set():
                self.fired = "cancelled"
            elif time.monotonic() > deadline:
                self.fired = "deadline"
            else:
                continue
            self.process.kill()
            return

    def check(self) -> None:
        """Raises JobCancelled or JobFailed if the watchdog stopped the process."""
        if self.fired == "cancelled":
            raise JobCancelled("the job was cancelled")
        if self.fired == "deadline":
            raise JobFailed(f"ffmpeg did not {self.what} within {self.seconds:.0f} s and was stopped "
                            "(FFMPEG_TIMEOUT_S + FFMPEG_TIMEOUT_PER_FRAME_S x frames)")


def start(stream, nice: bool = False, **popen) -> subprocess.Popen:
    """Starts an ffmpeg-python stream (overwriting its output); nice: at a lower CPU priority. The caller
    watches it (Watchdog) and waits for it."""
    command = stream.global_args(*QUIET).compile(overwrite_output=True)
    return subprocess.Popen((NICE if nice else []) + command, **popen)


def run(stream, what: str, nice: bool = False, input: bytes | None = None, limits: Limits = DEFAULT_LIMITS,
        frames: int = 0) -> None:
    """Runs a stream to the end, `input` on its stdin, within limits.seconds(frames); raises JobFailed("ffmpeg
    failed to <what>: <its last error lines>"), JobFailed at the deadline, or JobCancelled."""
    process = start(stream, nice, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with Watchdog(process, what, limits, frames) as watchdog:
        error = process.communicate(input)[1].decode(errors="replace")
    watchdog.check()
    if process.returncode != 0:
        raise JobFailed(f"ffmpeg failed to {what}: {error.strip()[-800:]}")


class ProbeError(RuntimeError):
    """ffprobe could not read the file; the message is its last error line, without the file's path."""


def probe(path: Path, limits: Limits = DEFAULT_LIMITS, *arguments: str) -> dict:
    """ffprobe's JSON of `path` (streams and format, unless `arguments` choose other entries), within
    limits.seconds(); ProbeError if the file cannot be read."""
    command = ["ffprobe", "-v", "error", "-of", "json", *(arguments or ("-show_format", "-show_streams")), str(path)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with Watchdog(process, f"read {path.name}", limits) as watchdog:
        out, err = process.communicate()
    watchdog.check()
    if process.returncode != 0:
        lines = err.decode(errors="replace").replace(f"{path}: ", "").replace(str(path), path.name).strip()
        raise ProbeError(lines.splitlines()[-1] if lines else "ffprobe failed")
    return json.loads(out or b"{}")
