"""A one-screen, human-readable account of a finished job."""

from __future__ import annotations

from worker.output.response import JobResponse


def format_summary(response: JobResponse) -> str:
    t = response.timings
    lines = [
        f"workflow {response.workflow}: {response.frames} frames at {response.fps:g} fps "
        f"({response.duration_s:.2f} s), {response.segments_processed} segment(s) on "
        f"{response.gpu_count} of {response.instances_available} instance(s), overlap {response.overlap_frames}",
    ]
    for s in response.segments:
        lines.append(f"  segment {s.index} on {s.instance:<12} frames {s.start_frame:>6}-{s.end_frame:<6} "
                     f"({s.frames:>5} frames)  {s.seconds:7.2f} s (ComfyUI {s.comfy_seconds:.2f} s)")
    lines += _seam_lines(response)
    lines.append(f"  timings: prepare {t.prepare:.2f} s, generate {t.generate:.2f} s, stitch {t.stitch:.2f} s, "
                 f"deliver {t.deliver:.2f} s, total {t.total:.2f} s")
    where = response.video_url or response.video_path or f"base64 in the response ({response.video_bytes / 1e6:.2f} MB)"
    lines.append(f"  video: {where}")
    return "\n".join(lines)


def _seam_lines(response: JobResponse) -> list[str]:
    """A line on how seams were placed and blended, then one per seam (README: "Reading the seam report")."""
    summary = response.seam_summary
    if summary is None or not response.seams:
        return []
    change = "n/a" if summary.change_median is None else f"{summary.change_median:.2f}"
    lines = [f"  seams: {summary.blend} blend of {summary.blend_frames} frames, placement cost {summary.cost_frames:g} "
             f"of {summary.budget_frames:g} frames, colour matched: {'yes' if summary.color_matched else 'no'}, "
             f"median audio {summary.audio_median_db:.1f} dBFS, median change {change}"]
    for seam in response.seams:
        audio = "n/a" if seam.audio_db is None else f"{seam.audio_db:+.1f} dB"
        at_seam = "n/a" if seam.change_at_seam is None else f"{seam.change_at_seam:.2f}"
        lines.append(f"  seam {seam.index}: frames {seam.blend_start_frame}-{seam.blend_end_frame} blended "
                     f"(moved {seam.moved_frames:+d}), audio {audio}, disagreement {seam.disagreement_at_blend:.2f} "
                     f"(overlap {seam.disagreement:.2f}), colour {seam.color_difference_before:.2f} -> "
                     f"{seam.color_difference_after:.2f}, change {at_seam} (median {change})")
    return lines
