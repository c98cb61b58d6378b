"""How fast recent jobs generated and stitched, so the planner can let the stitch overlap generation.

If every segment ended at the same moment, the whole stitch would come after generation; making each
segment a little shorter than the next (planner's stitch_lead) lets the stitch of the earlier ones run
meanwhile and leaves only the last segment's share. The right ratio is the stitch's cost per frame (all
encoders at work) over one instance's generation cost per frame, which this module learns from finished
jobs with the same template, size and steps. Until it has seen one, the lead is 0 (equal segments).
Workflows whose cost moves in window steps (InfiniteTalk: 72 frames) gain less from it: segments a few
frames apart often sample the same number of windows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

RateKey = tuple[str, int, int, int | None]  # template, width, height, steps


@dataclass
class _Rates:
    generate_s_per_frame: float  # one instance
    stitch_s_per_frame: float


class ThroughputLog:
    def __init__(self, smoothing: float = 0.5):
        self.smoothing = smoothing
        self._rates: dict[RateKey, _Rates] = {}
        self._lock = threading.Lock()

    def record(self, key: RateKey, generate_s_per_frame: float, stitch_s_per_frame: float) -> None:
        with self._lock:
            seen = self._rates.get(key)
            if seen is None:
                self._rates[key] = _Rates(generate_s_per_frame, stitch_s_per_frame)
                return
            a = self.smoothing
            seen.generate_s_per_frame = a * generate_s_per_frame + (1 - a) * seen.generate_s_per_frame
            seen.stitch_s_per_frame = a * stitch_s_per_frame + (1 - a) * seen.stitch_s_per_frame

    def rates(self, key: RateKey) -> tuple[float, float] | None:
        """(generate, stitch) seconds per frame learned for key, if any."""
        with self._lock:
            seen = self._rates.get(key)
            return None if seen is None else (seen.generate_s_per_frame, seen.stitch_s_per_frame)

    def stitch_lead(self, key: RateKey) -> float:
        with self._lock:
            seen = self._rates.get(key)
        if seen is None or seen.generate_s_per_frame <= 0:
            return 0.0
        return min(1.0, seen.stitch_s_per_frame / seen.generate_s_per_frame)
