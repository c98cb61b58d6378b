"""Running ffmpeg-python streams as processes, quietly, with errors that say what failed."""

from __future__ import annotations

import shutil
import subprocess

from worker.errors import JobFailed

QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
# Work that runs beside the ComfyUI instances (the stitch) yields the CPU to them: their own work
# (sampling loop, VAE, the segment encode) is what a job waits for.
NICE = ["nice", "-n", "10"] if shutil.which("nice") else []


def start(stream, nice: bool = False, **popen) -> subprocess.Popen:
    """Starts an ffmpeg-python stream (overwriting its output); nice: at a lower CPU priority."""
    command = stream.global_args(*QUIET).compile(overwrite_output=True)
    return subprocess.Popen((NICE if nice else []) + command, **popen)


def run(stream, what: str, nice: bool = False, input: bytes | None = None) -> None:
    """Runs a stream to the end, `input` on its stdin; raises JobFailed("ffmpeg failed to <what>: <its last
    error lines>")."""
    process = start(stream, nice, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    error = process.communicate(input)[1].decode(errors="replace")
    if process.returncode != 0:
        raise JobFailed(f"ffmpeg failed to {what}: {error.strip()[-800:]}")
