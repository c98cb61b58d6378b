"""What the client prints while a job runs: a live progress line (rewritten in place with \\r on a terminal,
one line per change elsewhere). The result's summary and the estimate are client/report.py's."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

BAR_WIDTH = 24


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_segment(segment: dict, detail: int = 2) -> str:
    """`gpu0:8188 seg 0 62% [9 WanVideoSampler 12/24]`, `seg 1 waiting`, `seg 2 done`. `detail`: 2 all of it,
    1 without the node, 0 without the instance too (a narrow terminal)."""
    label = f"seg {segment.get('index')}"
    state = segment.get("state")
    if state == "waiting":
        attempt = segment.get("attempt") or 0
        return f"{label} {'retrying' if attempt else 'waiting'}"
    where = f"{segment.get('instance')} " if segment.get("instance") and detail >= 1 else ""
    if state in ("done", "cancelled"):
        return f"{where}{label} {state}"
    text = f"{where}{label} {segment.get('percent', 0):.0f}%"
    if detail < 2:
        return text
    if segment.get("windows", 1) not in (1, segment.get("frames")):  # a template without a grid counts frames
        text += f" ({segment['windows']} windows)"
    node, steps = segment.get("node"), segment.get("node_steps")
    if node:
        name = node.split(" ", 1)[-1]
        text += f" [{name}" + (f" {steps[0]:.0f}/{steps[1]:.0f}" if steps else "") + "]"
    return text


def format_progress(status: str, progress: dict | None, width: int = 160) -> str:
    """One line that fits `width`: bar, percent, stage, elapsed and ETA, then each segment, with less detail
    per segment (then a count of those done) where the line would be too long; the percent and the ETA
    always stay."""
    if not progress:
        return status.lower().replace("_", " ")[:width]
    percent = float(progress.get("percent") or 0)
    eta = f"ETA {format_seconds(progress.get('eta_s'))}"
    stage = f"{progress.get('stage', '?'):<10}"
    elapsed = f"{format_seconds(progress.get('elapsed_s'))} elapsed"
    segments = progress.get("segments") or []
    tails = [" | ".join(format_segment(s, detail) for s in segments) for detail in (2, 1, 0)] if segments else []
    if segments:
        tails.append(f"{sum(s.get('state') == 'done' for s in segments)}/{len(segments)} segments done")

    def head(bar_width: int) -> str:
        filled = int(bar_width * percent / 100)
        bar = f"[{'#' * filled}{'-' * (bar_width - filled)}] " if bar_width else ""
        return f"{bar}{percent:5.1f}%  {stage} {elapsed}, {eta}"

    for tail in tails:  # the segments with less and less detail, before a shorter bar
        for bar_width in (BAR_WIDTH, 10):
            if len(head(bar_width)) + 4 + len(tail) <= width:
                return f"{head(bar_width)}  | {tail}"
    for bar_width in (BAR_WIDTH, 10, 0):
        if len(head(bar_width)) <= width:
            return head(bar_width)
    return f"{percent:.1f}% {eta}"[:width]


class ProgressLine:
    """Shows a job's progress as it changes. On a terminal the line is rewritten in place; otherwise (a pipe,
    a log) a line is written only when the stage or the whole percent changes."""

    def __init__(self, stream: TextIO = sys.stdout, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._last_key: tuple | None = None
        self._shown = False

    def update(self, status: str, progress: dict | None) -> None:
        if not progress:
            return  # nothing to draw before the job has started (a request refused at once shows no bar)
        if self.live:
            width = shutil.get_terminal_size((160, 20)).columns - 1
            self.stream.write("\r" + format_progress(status, progress, width).ljust(width))
            self._shown = True
        else:
            key = (status, progress.get("stage"), int(progress.get("percent") or 0))
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(format_progress(status, progress, shutil.get_terminal_size((10_000, 20)).columns) + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leaves the live line where it is, so that what follows starts on a new line."""
        if self.live and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
