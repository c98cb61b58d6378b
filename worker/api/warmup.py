"""The optional warm-up (WARMUP_SIZE=WIDTHxHEIGHT): before the worker takes work, every instance runs one short job
of the default image template (DEFAULT_WORKFLOWS' image/single) at that size: one window's frames (81, or the
template's shortest segment) of a grey picture and quiet noise. The instance then has its models loaded (and,
with torch.compile, compiled for that size), so the first job, or a segment job from another worker's fan-out,
runs at the warm pace: on an H200 the first InfiniteTalk window of a cold instance took 83 s against 17 s warm.
What it costs: that one window per instance at every start, whether a job comes or not.

The warm-up jobs learn nothing (a cold instance's times are its models'); a failure is logged and the worker
serves anyway (its first job then pays the start itself).
"""

from __future__ import annotations

import base64
import logging
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from typing import Callable

from comfy_manager import InstancePool
from worker.planning.learned import Learned
from worker.request.settings import WorkerSettings
from worker.templates.template import available_templates

log = logging.getLogger("warmup")
FPS = 25


def warm_up(pool: InstancePool, settings: WorkerSettings, run_job: Callable[..., dict]) -> dict[str, float]:
    """Runs the warm-up job (through `run_job`: worker/job.py's) once on each instance in service, all at once;
    returns seconds per job ("warmup-N"). Never raises: a warm-up that cannot run is logged and skipped."""
    if not settings.warmup:
        return {}
    try:
        return _warm_up(pool, settings, run_job)
    except Exception as exc:
        log.warning("warm-up skipped (the first job pays the start instead): %s: %s", type(exc).__name__, exc)
        return {}


def _warm_up(pool: InstancePool, settings: WorkerSettings, run_job: Callable[..., dict]) -> dict[str, float]:
    width, height = (int(v) for v in settings.warmup.split("x"))
    name = settings.default_workflow("image", "single")
    template = available_templates(settings.extra_workflow_dirs)[name]
    frames = max(81 if template.grid.quantum > 1 else FPS, template.spec.min_segment_frames)
    image, audio = _sample_media(frames / FPS)
    job = {"workflow": name, "image": image, "audio": audio, "width": width - width % 16,
           "height": height - height % 16, "fps": FPS, "use_multi_gpu": False, "output": {"destination": "base64"}}
    seconds: dict[str, float] = {}

    def one(number: int) -> None:
        started = time.monotonic()
        try:
            run_job(job, pool, settings, job_id=f"warmup-{number}", learned=Learned(0.0))
            seconds[f"warmup-{number}"] = round(time.monotonic() - started, 1)
        except Exception as exc:  # the worker serves anyway
            log.warning("warm-up job %d failed (the first job pays the start instead): %s", number, exc)

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(n,), name=f"warmup-{n}") for n in range(len(pool.serving_instances))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.info("warm-up: %d of %d instance(s) ran %d frames of %r at %dx%d in %.1f s (%s)", len(seconds), len(threads),
             frames, name, width, height, time.monotonic() - started,
             ", ".join(f"{s:.1f} s" for s in seconds.values()) or "none")
    return seconds


def _sample_media(seconds: float) -> tuple[str, str]:
    """A grey PNG and `seconds` of quiet noise as WAV, as data URIs."""
    with tempfile.TemporaryDirectory(prefix="warmup-") as folder:
        png, wav = Path(folder) / "face.png", Path(folder) / "speech.wav"
        for args in (["-f", "lavfi", "-i", "color=c=gray:s=256x256", "-frames:v", "1", str(png)],
                     ["-f", "lavfi", "-i", f"anoisesrc=a=0.02:d={seconds:.3f}:r=16000", str(wav)]):
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=60)
        return (f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}",
                f"data:audio/wav;base64,{base64.b64encode(wav.read_bytes()).decode()}")
