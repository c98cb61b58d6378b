"""What the client prints: a live progress line (rewritten in place with \\r on a terminal, one line per
change elsewhere) and the job summary."""

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


def format_segment(segment: dict) -> str:
    """`gpu0:8188 seg 0 62% [9 WanVideoSampler 12/24]`, `seg 1 waiting`, `seg 2 done`."""
    label = f"seg {segment.get('index')}"
    if segment.get("state") == "waiting":
        attempt = segment.get("attempt") or 0
        return f"{label} {'retrying' if attempt else 'waiting'}"
    where = f"{segment.get('instance')} " if segment.get("instance") else ""
    if segment.get("state") == "done":
        return f"{where}{label} done"
    text = f"{where}{label} {segment.get('percent', 0):.0f}%"
    if segment.get("windows", 1) not in (1, segment.get("frames")):  # a template without a grid counts frames
        text += f" ({segment['windows']} windows)"
    node, steps = segment.get("node"), segment.get("node_steps")
    if node:
        name = node.split(" ", 1)[-1]
        text += f" [{name}" + (f" {steps[0]:.0f}/{steps[1]:.0f}" if steps else "") + "]"
    return text


def format_progress(status: str, progress: dict | None, width: int = 160) -> str:
    """One line: bar, percent, stage, elapsed and ETA, then each segment."""
    if not progress:
        return f"[{' ' * BAR_WIDTH}]  {status.lower().replace('_', ' ')}"[:width]
    percent = float(progress.get("percent") or 0)
    filled = int(BAR_WIDTH * percent / 100)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    line = (f"[{bar}] {percent:5.1f}%  {progress.get('stage', '?'):<10} "
            f"{format_seconds(progress.get('elapsed_s'))} elapsed, ETA {format_seconds(progress.get('eta_s'))}")
    segments = progress.get("segments") or []
    if segments:
        line += "  | " + " | ".join(format_segment(s) for s in segments)
    return line if len(line) <= width else line[:width - 1] + "…"


class ProgressLine:
    """Shows a job's progress as it changes. On a terminal the line is rewritten in place; otherwise (a pipe,
    a log) a line is written only when the stage or the whole percent changes."""

    def __init__(self, stream: TextIO = sys.stdout, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._last_key: tuple | None = None
        self._shown = False

    def update(self, status: str, progress: dict | None) -> None:
        if self.live:
            width = shutil.get_terminal_size((160, 20)).columns - 1
            self.stream.write("\r" + format_progress(status, progress, width).ljust(width))
            self._shown = True
        else:
            key = (status, progress.get("stage") if progress else None,
                   int(progress.get("percent") or 0) if progress else None)
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(format_progress(status, progress, 10_000) + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leaves the live line where it is, so that what follows starts on a new line."""
        if self.live and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def format_summary(output: dict) -> str:
    """The worker's response in a few lines: segments, timings, seams (if the worker reports them)."""
    lines = [f"workflow {output.get('workflow')}: {output.get('frames')} frames at {output.get('fps')} fps "
             f"({output.get('duration_s')} s), {output.get('segments_processed')} segment(s) on "
             f"{output.get('gpu_count')} of {output.get('instances_available')} instance(s), "
             f"overlap {output.get('overlap_frames')}"]
    for s in output.get("segments") or []:
        times = f", ran {s['started_s']:.2f}-{s['finished_s']:.2f} s into the job" if "started_s" in s else ""
        retried = f", {s['attempts']} attempts" if s.get("attempts", 1) > 1 else ""
        lines.append(f"  segment {s.get('index')} on {s.get('instance', '?'):<12} frames {s.get('start_frame'):>6}-"
                     f"{s.get('end_frame'):<6} {s.get('seconds', 0):8.2f} s (ComfyUI {s.get('comfy_seconds', 0):.2f} s"
                     f"{retried}{times})")
    seams = output.get("seams")
    if seams:
        lines.append("  seams:")
        for seam in seams if isinstance(seams, list) else [seams]:
            lines.append("    " + (", ".join(f"{k} {v}" for k, v in seam.items()) if isinstance(seam, dict) else str(seam)))
    t = output.get("timings") or {}
    if t:
        lines.append("  timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in t.items()))
    return "\n".join(lines)


def format_estimate(output: dict) -> str:
    """A dry run's answer (`dry_run: true`): the plan's segments, then the estimate as the worker gave it.
    Takes the plan at the top level or under `plan`."""
    plan = output.get("plan") if isinstance(output.get("plan"), dict) else output
    lines = [f"workflow {plan.get('workflow', output.get('workflow'))}: {plan.get('frames')} frames at "
             f"{plan.get('fps')} fps ({plan.get('duration_s')} s), {len(plan.get('segments') or [])} segment(s), "
             f"overlap {plan.get('overlap_frames')}, {plan.get('instances_available', '?')} instance(s) available"]
    for s in plan.get("segments") or []:
        windows = f", {s['windows']} window(s)" if "windows" in s else ""
        lines.append(f"  segment {s.get('index')}: frames {s.get('start_frame')}-{s.get('end_frame')} "
                     f"({s.get('frames')} frames{windows})")
    estimate = output.get("estimate")
    if estimate is None:
        lines.append("estimate: none (the template declares no speed and the worker has run no such job yet)")
    else:
        lines.append("estimate:")
        for key, value in (estimate.items() if isinstance(estimate, dict) else [("value", estimate)]):
            if isinstance(value, list) and all(isinstance(v, dict) for v in value):  # e.g. per GPU count
                lines.append(f"  {key}:")
                lines += ["    " + ", ".join(f"{k} {v}" for k, v in item.items()) for item in value]
            else:
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)
