"""Every ffmpeg the worker runs has a deadline and stops when its job is cancelled (worker/media/ffmpeg.py),
against real ffmpeg processes that would otherwise never end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import ffmpeg
import psutil
import pytest

from worker.media import ffmpeg as ffmpeg_calls
from worker.request.errors import JobCancelled, JobFailed
from worker.media.ffmpeg import Limits, ProbeError


def endless(dest: Path):
    """An ffmpeg that encodes a test pattern forever (as a loop whose frame count is never reached would)."""
    return ffmpeg.input("testsrc2=size=64x64:rate=25", f="lavfi").output(str(dest), vcodec="libx264",
                                                                           preset="ultrafast")


def my_ffmpegs() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "ffmpeg"]


def test_an_ffmpeg_past_its_deadline_is_stopped_and_the_error_names_the_step(tmp_path):
    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"ffmpeg did not loop the video within 2 s and was stopped "
                                        r"\(FFMPEG_TIMEOUT_S \+ FFMPEG_TIMEOUT_PER_FRAME_S x frames\)"):
        ffmpeg_calls.run(endless(tmp_path / "out.mp4"), "loop the video", limits=Limits(1.0, 0.01), frames=100)
    assert time.monotonic() - started < 6
    assert my_ffmpegs() == []


def test_cancelling_the_job_stops_its_ffmpeg_at_once(tmp_path):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        ffmpeg_calls.run(endless(tmp_path / "out.mp4"), "cut frames 0-100", limits=Limits(300, 1, cancel))
    assert time.monotonic() - started < 3
    assert my_ffmpegs() == []


def test_a_probe_error_does_not_show_the_workers_paths(tmp_path):
    folder = tmp_path / "worker-jobs" / "job123-abcd"
    folder.mkdir(parents=True)
    garbage = folder / "image.src"
    garbage.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ProbeError) as refused:
        ffmpeg_calls.probe(garbage)
    assert "worker-jobs" not in str(refused.value) and str(refused.value)


def test_measuring_the_loudness_stops_at_its_deadline_and_on_cancel(tmp_path):
    """The seam placement's loudness pass reads audio from ffmpeg: one that never delivers (a pipe nobody
    writes to) is stopped like every other ffmpeg."""
    import os

    from worker.media.loudness import loudness_envelope

    silent_pipe = tmp_path / "audio.wav"
    os.mkfifo(silent_pipe)
    with pytest.raises(JobFailed, match=r"ffmpeg did not measure the audio's loudness within 2 s"):
        loudness_envelope(silent_pipe, 25, 100, Limits(1.0, 0.01))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        loudness_envelope(silent_pipe, 25, 100, Limits(300, 1, cancel))
    assert time.monotonic() - started < 3
    assert my_ffmpegs() == []
