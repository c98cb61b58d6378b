"""The job's audio as a loudness envelope: one level (dB relative to full scale) per output frame.

Computed once per job with ffmpeg (the mix the output carries, decoded to mono 16 kHz PCM and streamed,
so memory does not grow with its length) and handed to the pure planner (worker/planning/seam_placement.py) and
the stitcher, which both look for quiet stretches: a seam in a speech pause hides a mouth that does
not match on both sides.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from worker.request.errors import JobFailed
from worker.media.ffmpeg import DEFAULT_LIMITS, Limits, Watchdog, start

SAMPLE_RATE = 16_000  # speech lives below 8 kHz
SILENCE_DB = -100.0  # the level given to digital silence (and to frames past the audio's end)
BLOCK_FRAMES = 250  # frames decoded at a time


@dataclass(frozen=True)
class LoudnessEnvelope:
    """Per output frame, the mean power of the audio under it, in dBFS (SILENCE_DB at least)."""

    levels_db: np.ndarray  # float64, one per frame
    fps: float

    def __len__(self) -> int:
        return len(self.levels_db)

    @property
    def median_db(self) -> float:
        return float(np.median(self.levels_db)) if len(self.levels_db) else SILENCE_DB

    def level_db(self, start: int, end: int) -> float:
        """The level of frames [start, end) together: their mean power, in dB."""
        return power_to_db(db_to_power(self.levels_db[max(0, start):max(start + 1, end)]).mean())

    def window_levels_db(self, width: int) -> np.ndarray:
        """The level of every run of `width` frames: element i is level_db(i, i + width)."""
        width = max(1, min(width, len(self.levels_db)))
        power = np.concatenate(([0.0], np.cumsum(db_to_power(self.levels_db))))
        return power_to_db((power[width:] - power[:-width]) / width)


def db_to_power(levels_db: np.ndarray) -> np.ndarray:
    return np.power(10.0, np.asarray(levels_db, dtype=np.float64) / 10.0)


def power_to_db(power) -> np.ndarray | float:
    return np.maximum(SILENCE_DB, 10.0 * np.log10(np.maximum(power, 1e-30)))


def loudness_envelope(audio: Path, fps: float, frames: int, limits: Limits = DEFAULT_LIMITS) -> LoudnessEnvelope:
    """The level of every output frame of a job: frame i covers audio [i / fps, (i + 1) / fps).

    Frames past the audio's end are silent. Raises JobFailed if ffmpeg cannot decode the file or overruns
    its deadline (`limits`), JobCancelled when the job is cancelled meanwhile."""
    decoder = start(ffmpeg.input(str(audio)).audio.output("pipe:", format="s16le", ac=1, ar=SAMPLE_RATE),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bounds = np.round(np.arange(frames + 1) * SAMPLE_RATE / fps).astype(np.int64)  # frame i: samples bounds[i]..
    levels = np.full(frames, SILENCE_DB)
    with Watchdog(decoder, "measure the audio's loudness", limits, frames) as watchdog:
        try:
            for first in range(0, frames, BLOCK_FRAMES):
                last = min(frames, first + BLOCK_FRAMES)
                wanted = int(bounds[last] - bounds[first])
                data = decoder.stdout.read(wanted * 2)
                samples = np.frombuffer(data[:len(data) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
                if len(samples) < wanted:
                    samples = np.concatenate((samples, np.zeros(wanted - len(samples))))
                energy = np.concatenate(([0.0], np.cumsum(samples * samples)))
                edges = bounds[first:last + 1] - bounds[first]
                counts = np.maximum(1, np.diff(edges))
                levels[first:last] = power_to_db((energy[edges[1:]] - energy[edges[:-1]]) / counts)
                if len(data) < wanted * 2:
                    break  # the audio ended: the rest stays silent
        finally:
            decoder.stdout.close()
            decoder.kill()
            error = decoder.stderr.read().decode(errors="replace")
            decoder.stderr.close()
            code = decoder.wait()
    watchdog.check()
    if code not in (0, -9) and error.strip():
        raise JobFailed(f"ffmpeg failed to measure the audio's loudness: {error.strip()[-800:]}")
    return LoudnessEnvelope(levels, fps)
