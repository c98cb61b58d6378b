"""A segment's video as its workflow saved it: one file, or SaveSegmentVideo's head / body / tail.

Any save node writes one file holding every frame of the segment. The worker's SaveSegmentVideo node
(comfy_nodes/), when the template binds the segment's overlaps and the output's x264 settings, writes
the split form instead (worker/media/segment_format.py): the frames shared with the previous segment (head,
raw y4m), those no other segment has (body, already encoded as the final video will be) and those shared
with the next (tail, raw y4m). The stitcher copies such a body into the result and only cross-fades the
raw overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SegmentVideo:
    # The whole form: `body` is the one file, every frame of the segment. The split form (split=True):
    # `body` holds the frames between the overlaps, encoded as the output (None when there are none),
    # `head` and `tail` the raw overlap frames (None where the segment has no neighbour).
    body: Path | None
    head: Path | None = None
    tail: Path | None = None
    split: bool = False
    stats: Path | None = None  # SaveSegmentVideo's measurements (segment_format.SegmentStats), if it wrote them

    @classmethod
    def whole(cls, path: Path, stats: Path | None = None) -> SegmentVideo:
        return cls(body=path, stats=stats)

    def missing_parts(self, frames: int, head_frames: int, tail_frames: int) -> list[str]:
        """The files of the split form that a segment of this shape needs but did not get."""
        if not self.split:
            return []
        needed = {"head": head_frames > 0, "body": frames > head_frames + tail_frames, "tail": tail_frames > 0}
        return [part for part, need in needed.items() if need and getattr(self, part) is None]

    def locate(self, frame: int, frames: int, head_frames: int, tail_frames: int) -> tuple[Path, int]:
        """The file that holds segment frame `frame` and the frame's index in it. `frames`, `head_frames`
        and `tail_frames` are the segment's length and overlaps in the plan."""
        if not self.split:
            return self.body, frame
        if frame < head_frames:
            return self.head, frame
        if frame >= frames - tail_frames:
            return self.tail, frame - (frames - tail_frames)
        return self.body, frame - head_frames

