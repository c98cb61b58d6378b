"""A one-screen, human-readable account of a finished job."""

from __future__ import annotations

from worker.response import JobResponse


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
    lines.append(f"  timings: prepare {t.prepare:.2f} s, generate {t.generate:.2f} s, stitch {t.stitch:.2f} s, "
                 f"deliver {t.deliver:.2f} s, total {t.total:.2f} s")
    where = response.video_url or response.video_path or f"base64 in the response ({response.video_bytes / 1e6:.2f} MB)"
    lines.append(f"  video: {where}")
    return "\n".join(lines)
