"""The frame counts a workflow generates (its template declares them; planning rounds segments to them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameGrid:
    """The frame counts a workflow generates: offset + quantum x k, at least `minimum`.

    Wan's VAE gives 4k + 1 frames; InfiniteTalk's 81-frame windows with 9 motion frames give 72k + 9.
    A segment of another length costs the next count on the grid, the extra frames thrown away.
    """

    quantum: int = 1
    offset: int = 0
    minimum: int = 1

    def round_up(self, frames: int) -> int:
        frames = max(frames, self.minimum, self.offset)
        return frames + (self.offset - frames) % self.quantum
