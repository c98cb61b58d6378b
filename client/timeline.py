"""A job's response drawn as a timeline, as SVG (text: no drawing library needed).

One row per instance: each segment from when its try began to when its video was on disk, the ComfyUI
nodes it ran laid end to end inside it (coloured by node type; hover for names and seconds); above them
the job's prepare and delivery; below them the stitch, from the first segment done to the stitched file,
its tail (what was left once generation ended) darker.

Reads the response fields `segments[].started_s/finished_s/node_seconds` and `timings`. Responses without
per-segment times (older workers, the GPU benchmark's JSON) are drawn with every segment starting when
`prepare` ended, which the caption says.
"""

from __future__ import annotations

import math
from html import escape

WIDTH = 980
LABEL_W = 120
ROW_H = 34
BAR_H = 22
TOP = 46
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#86bcb6", "#d37295"]
UPLOAD_FILL = "#d9d9d9"


def has_segment_times(output: dict) -> bool:
    return all("started_s" in s and "finished_s" in s for s in output.get("segments") or [])


def _nice_step(span: float, ticks: int = 10) -> float:
    raw = max(span, 1e-6) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def timeline_svg(output: dict, title: str = "", span_s: float | None = None) -> str:
    """The SVG document for one job's response (`output` of /status or /runsync); span_s: the time axis's
    length (to draw several jobs on one scale), else the job's."""
    timings = output.get("timings") or {}
    segments = output.get("segments") or []
    prepare = float(timings.get("prepare", 0.0))
    exact = has_segment_times(output)
    bars = []
    for s in segments:
        start = float(s["started_s"]) if exact else prepare
        end = float(s["finished_s"]) if exact else start + float(s.get("seconds", 0.0))
        bars.append((s, start, end))
    stitched = prepare + float(timings.get("generate", 0.0)) + float(timings.get("stitch", 0.0))
    generated = prepare + float(timings.get("generate", 0.0))
    total = float(timings.get("total", max([stitched] + [e for _, _, e in bars])))
    span = max(total, max((e for _, _, e in bars), default=0.0), span_s or 0.0, 1e-3)
    instances = sorted({s.get("instance", "?") for s in segments})
    rows = ["job"] + instances + ["stitch"]
    plot_w = WIDTH - LABEL_W - 20
    x = lambda t: LABEL_W + plot_w * max(0.0, t) / span  # noqa: E731
    colours: dict[str, str] = {}

    def colour(node_name: str) -> str:
        kind = node_name.split(" ", 1)[-1]
        return colours.setdefault(kind, PALETTE[len(colours) % len(PALETTE)])

    height = TOP + ROW_H * len(rows) + 100
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{LABEL_W}" y="18" font-size="14" font-weight="bold">{escape(title or _default_title(output))}</text>']
    if not exact:
        out.append(f'<text x="{LABEL_W}" y="34" fill="#666">segment start times not in the data: each segment '
                   f'is drawn from the end of prepare for its own duration</text>')
    # Axis and grid.
    step = _nice_step(span)
    axis_y = TOP + ROW_H * len(rows) + 4
    tick = 0.0
    while tick <= span + 1e-9:
        out.append(f'<line x1="{x(tick):.1f}" y1="{TOP - 4}" x2="{x(tick):.1f}" y2="{axis_y}" stroke="#eee"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#444">{tick:g} s</text>')
        tick += step
    for i, name in enumerate(rows):
        y = TOP + ROW_H * i
        out.append(f'<text x="{LABEL_W - 8}" y="{y + BAR_H / 2 + 4}" text-anchor="end">{escape(name)}</text>')

    def block(t0: float, t1: float, row: int, fill: str, tip: str, label: str = "", opacity: float = 1.0) -> None:
        y = TOP + ROW_H * row
        w = max(0.5, x(t1) - x(t0))
        out.append(f'<g><title>{escape(tip)}</title><rect x="{x(t0):.1f}" y="{y}" width="{w:.1f}" height="{BAR_H}" '
                   f'fill="{fill}" fill-opacity="{opacity}" stroke="#333" stroke-width="0.5"/>')
        if label and w > 7 * len(label):
            out.append(f'<text x="{x(t0) + 4:.1f}" y="{y + BAR_H / 2 + 4}" fill="#111">{escape(label)}</text>')
        out.append('</g>')

    block(0.0, prepare, 0, "#c6dbef", f"prepare {prepare:.2f} s (fetch, probe, cut)", "prepare")
    if "deliver" in timings:
        block(stitched, stitched + float(timings["deliver"]), 0, "#c7e9c0",
              f"deliver {float(timings['deliver']):.2f} s", "deliver")
    for s, start, end in bars:
        row = rows.index(s.get("instance", "?"))
        nodes = s.get("node_seconds") or {}
        label = f"segment {s.get('index')}: frames {s.get('start_frame')}-{s.get('end_frame')}"
        block(start, end, row, UPLOAD_FILL, f"{label}, {end - start:.2f} s on {s.get('instance')} "
                                            f"(attempts {s.get('attempts', 1)})")
        t = max(start, end - sum(nodes.values()))  # nodes run back to back and end as the video is taken
        for name, seconds in nodes.items():
            block(t, t + seconds, row, colour(name), f"segment {s.get('index')}: node {name} {seconds:.2f} s")
            t += seconds
        y = TOP + ROW_H * row + BAR_H + 9
        out.append(f'<text x="{x(start) + 2:.1f}" y="{y}" fill="#444" font-size="9">{escape(label)}</text>')
    stitch_row = len(rows) - 1
    first_done = min((e for _, _, e in bars), default=generated)
    if stitched > first_done:
        block(first_done, min(generated, stitched), stitch_row, "#fdd0a2",
              "stitch alongside generation (bodies copied or encoded as segments arrive)", "stitch")
        block(max(first_done, generated), stitched, stitch_row, "#e6550d",
              f"stitch tail {stitched - generated:.2f} s (after the last segment)", "tail")
    # Legend.
    legend_y = axis_y + 34
    lx = LABEL_W
    for kind, fill in [("segment time outside its nodes (upload, queue, take the video)", UPLOAD_FILL)] + list(colours.items()):
        needed = 24 + 6.5 * len(kind)
        if lx + needed > WIDTH - 10 and lx > LABEL_W:
            lx, legend_y = LABEL_W, legend_y + 16
        out.append(f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{fill}" stroke="#333" '
                   f'stroke-width="0.5"/><text x="{lx + 14}" y="{legend_y}">{escape(kind)}</text>')
        lx += needed
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _default_title(output: dict) -> str:
    t = output.get("timings") or {}
    return (f"{output.get('workflow', 'job')}: {output.get('frames', '?')} frames, "
            f"{output.get('segments_processed', len(output.get('segments') or []))} segment(s), "
            f"total {float(t.get('total', 0)):.1f} s")


def benchmark_run_as_response(run: dict, benchmark: dict) -> dict:
    """One run of benchmarks/gpu_scaling.py's JSON in the shape of a job response (for timeline_svg)."""
    prepare, generate, stitch = run.get("prepare_s", 0.0), run.get("generate_s", 0.0), run.get("stitch_s", 0.0)
    wall = run.get("wall_s", prepare + generate + stitch)
    return {"workflow": "gpu benchmark", "frames": benchmark.get("frames"), "segments": run.get("segments", []),
            "segments_processed": len(run.get("segments", [])),
            "timings": {"prepare": prepare, "generate": generate, "stitch": stitch,
                        "deliver": round(max(0.0, wall - prepare - generate - stitch), 3), "total": wall}}
