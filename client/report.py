"""What a person reads about a job's result: the summary of a finished job (segments, seams, the estimate it
had, timings, where the video is) and a dry run's plan and estimate.

One renderer for everyone who shows a result: the client prints it, and the worker logs it after every job
(`make run` shows it too). It reads the response as the worker sends it (a dict, the job's `output`), needs
nothing but Python, and lives in the client because the client must not import the worker; the worker
imports it from here (worker/job.py). Every number has its unit, a value the worker did not give is left
out or reads "n/a" (never `None`), a template that samples frame by frame speaks of frames, not windows,
and instances are called GPUs only where they are GPUs.
"""

from __future__ import annotations

from typing import Any, Iterable


def plural(count: int, noun: str) -> str:
    """`1 segment`, `2 segments`, `2 GPUs`."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def duration(seconds: float | None) -> str:
    """`8.4 s`, `3 min 05 s`, `1 h 02 min`; `n/a` when unknown."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def instance_noun(names: Iterable[str | None]) -> str:
    """`GPU` where every instance named is a GPU's (`gpu0:8188`), else `instance` (`cpu:8188`, or unknown)."""
    names = [n for n in names if n]
    return "GPU" if names and all(n.lower().startswith("gpu") for n in names) else "instance"


def _fps(fps: Any) -> str:
    return f"{fps:g}" if isinstance(fps, (int, float)) else str(fps)


def _number(value: Any, fmt: str = ".2f", unit: str = "") -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{value:{fmt}}{unit}"


def _workflow(output: dict) -> str:
    preset = f" (preset {output['quality']})" if output.get("quality") else ""
    return f"workflow {output.get('workflow', '?')}{preset}"


def _frames_and_length(output: dict) -> str:
    return (f"{output.get('frames', '?')} frames at {_fps(output.get('fps', '?'))} fps "
            f"({_number(output.get('duration_s'))} s)")


def _per_frame(segments: list[dict]) -> bool:
    """True for a template without a frame grid: it samples frame by frame, so its windows are its frames."""
    return all(s.get("windows", s.get("frames")) == s.get("frames") for s in segments)


# ------------------------------------------------------------------------------------------ a finished job


def job_summary(output: dict, video: bool = True) -> str:
    """A finished job in a few lines; `video`: end with where the video is (the client prints its own line,
    where it wrote the file)."""
    segments = output.get("segments") or []
    noun = instance_noun(s.get("instance") for s in segments)
    used = output.get("gpu_count", len({s.get("instance") for s in segments}))
    available = output.get("instances_available")
    on = f"{used} of {plural(available, noun)}" if isinstance(available, int) else plural(used, noun)
    lines = [f"{_workflow(output)}: {_frames_and_length(output)}, {plural(len(segments), 'segment')} on {on}, "
             f"overlap {plural(output.get('overlap_frames', 0), 'frame')}"]
    for s in segments:
        attempts = s.get("attempts", 1)
        retried = f", {attempts} attempts" if isinstance(attempts, int) and attempts > 1 else ""
        ran = (f", ran {s['started_s']:.2f}-{s['finished_s']:.2f} s into the job"
               if isinstance(s.get("started_s"), (int, float)) and s.get("finished_s") else "")
        where = f"{s['instance']} of worker {s['worker']}" if s.get("worker") else (s.get("instance") or "?")
        lines.append(f"  segment {s.get('index')} on {where:<10} frames "
                     f"{s.get('start_frame'):>5}-{s.get('end_frame'):<5} ({s.get('frames'):>4} frames) "
                     f"{_number(s.get('seconds'), '7.2f')} s (ComfyUI {_number(s.get('comfy_seconds'))} s{retried}){ran}")
    lines += seam_lines(output)
    lines += [f"  warning: {warning}" for warning in output.get("warnings") or []]
    expected = output.get("estimate")
    if isinstance(expected, dict) and isinstance(expected.get("wall_s"), (int, float)):
        took = (output.get("timings") or {}).get("generate")
        lines.append(f"  estimate: generation {duration(expected['wall_s'])} expected ({expected.get('basis')}), "
                     f"took {duration(took)}")
    timings = output.get("timings") or {}
    if timings:
        lines.append("  timings: " + ", ".join(f"{name} {_number(seconds)} s" for name, seconds in timings.items()))
    if video:
        lines.append(f"  video: {video_location(output)}")
    return "\n".join(lines)


def video_location(output: dict) -> str:
    size = output.get("video_bytes")
    mb = f"{size / 1e6:.2f} MB" if isinstance(size, (int, float)) else "size unknown"
    if output.get("video_url"):
        return f"{output['video_url']} ({mb}, in the bucket)"
    if output.get("video_path"):
        return f"{output['video_path']} ({mb}, on the worker's volume)"
    return f"base64 in the response ({mb})"


def seam_lines(output: dict) -> list[str]:
    """A line on how seams were placed and blended, then one per seam (README: "Reading the seam report")."""
    summary, seams = output.get("seam_summary"), output.get("seams") or []
    if not isinstance(summary, dict) or not seams:
        return []
    median = _number(summary.get("change_median"))
    colour = "yes" if summary.get("color_matched") else "no"
    lines = [f"  seams: {summary.get('blend')} blend of {plural(summary.get('blend_frames', 0), 'frame')}, "
             f"placement cost {_number(summary.get('cost_frames'), 'g')} of {_number(summary.get('budget_frames'), 'g')} "
             f"frames, colour matched: {colour}, median audio {_number(summary.get('audio_median_db'), '.1f', ' dBFS')}, "
             f"median change {median}"]
    for seam in seams:
        lines.append(f"  seam {seam.get('index')}: frames {seam.get('blend_start_frame')}-{seam.get('blend_end_frame')} "
                     f"blended (moved {seam.get('moved_frames', 0):+d}), audio {_number(seam.get('audio_db'), '+.1f', ' dB')}, "
                     f"disagreement {_number(seam.get('disagreement_at_blend'))} "
                     f"(overlap {_number(seam.get('disagreement'))}), colour {_number(seam.get('color_difference_before'))} "
                     f"-> {_number(seam.get('color_difference_after'))}, change {_number(seam.get('change_at_seam'))} "
                     f"(median {median})")
    return lines


# ------------------------------------------------------------------------------------------------ dry run


def estimate_report(output: dict) -> str:
    """A dry run's answer (`dry_run: true`): the plan's segments, then what the worker expects them to take.
    Takes the plan at the top level or under `plan`."""
    plan = output.get("plan") if isinstance(output.get("plan"), dict) else output
    segments = plan.get("segments") or []
    noun = instance_noun(plan.get("instance_names") or output.get("instance_names") or [])
    per_frame = _per_frame(segments)
    available = plan.get("instances_available")
    lines = [f"{_workflow({**output, **plan})}: {_frames_and_length(plan)}, {plural(len(segments), 'segment')}, "
             f"overlap {plural(plan.get('overlap_frames', 0), 'frame')}"
             + (f", {plural(available, noun)} available" if isinstance(available, int) else "")]
    for s in segments:
        windows = "" if per_frame or "windows" not in s else f", {plural(s['windows'], 'window')}"
        lines.append(f"  segment {s.get('index')}: frames {s.get('start_frame')}-{s.get('end_frame')} "
                     f"({s.get('frames')} frames{windows})")
    lines += estimate_lines(output.get("estimate"), noun, per_frame, len(segments))
    return "\n".join(lines)


def estimate_lines(estimate: dict | None, noun: str = "instance", per_frame: bool = True,
                   segments: int | None = None) -> list[str]:
    if not isinstance(estimate, dict):
        return ["estimate: none yet (the template declares no speed and this worker has run no job of this kind; "
                "run one and ask again)"]
    unit = "frame" if per_frame else "window"
    lines = [f"estimate: {_number(estimate.get('seconds_per_window'), '.3g')} s a {unit} ({estimate.get('basis')})"]
    options = estimate.get("per_gpu_count") or []
    chosen = next((o for o in options if o.get("wall_s") == estimate.get("wall_s") and o.get("segments") == segments),
                  None)
    if not options:
        options = [{"gpus": None, "wall_s": estimate.get("wall_s"), "gpu_s": estimate.get("gpu_s")}]
    for option in options:
        count, others = option.get("gpus"), option.get("workers") or 0
        where = "this plan" if count is None else f"on {plural(count - others, noun)}" + (
            f" and {plural(others, 'other worker')} (started cold)" if others else "")
        mark = " (this plan)" if option is chosen else ""
        lines.append(f"  {where}{mark}: generation {duration(option.get('wall_s'))}, "
                     f"{duration(option.get('gpu_s'))} of {noun} time")
    lines.append("  generation only, instances warm: preparing, stitching and delivering the video come on top")
    if isinstance(estimate.get("load_s"), (int, float)):
        lines.append(f"  a cold {noun} first loads the models: about {duration(estimate['load_s'])}, once")
    return lines
