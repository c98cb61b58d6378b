"""A model of fan-out on GPUs: one InfiniteTalk job (fast preset, 832x480) on 1..16 single-GPU workers of one
endpoint, cold or warm, for 1, 5 and 30 minutes of video, computed by the worker's own planner
(worker/planning/plan.py: plan_job, the estimate per lane count) from measured H200 figures.

    .venv/bin/python benchmarks/fanout_model.py [--window-s 10.3] [--cold-s 88] [--warm-s 2]

--window-s: seconds per 81-frame window inside a whole job on one warm H200 (842 frames in 128.7 s, 12 windows
of 10.25 s, with the default settings: docs/PERFORMANCE.md, fifth session); --cold-s: what a cold worker adds
before its first window runs at that pace (instance ready in 17 s, then its first window 83.4 s against 12.4 s
warm with bf16 attention: model loading and compile, not measured again with fp8 attention; the worker's own
planner counts FANOUT_COLD_START_S 20 s plus the templates' load_s 70 s);
--warm-s: a warm worker's (FlashBoot, or an earlier job's) pick-up. The parent is always warm here (it is already running a job).
Prints a table and writes docs/perf/fanout_model.json. Nothing runs on a GPU: this is arithmetic on the plan.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.planning.learned import Learned, RateKey  # noqa: E402
from worker.planning.plan import Lane, plan_job, remote_lanes  # noqa: E402
from worker.request.job_request import JobRequest  # noqa: E402
from worker.templates.template import available_templates  # noqa: E402

TEMPLATE = "infinitetalk_image_single"
WORKERS = (1, 2, 4, 8, 16)
MINUTES = (1, 5, 30)


def model(window_s: float, start_s: float, minutes: float, workers: int) -> dict:
    template = available_templates()[TEMPLATE]
    request = JobRequest(workflow=TEMPLATE, image="face.png", audio="speech.wav", width=832, height=480,
                         workers=workers - 1)
    learned = Learned(0.0)
    per_frame = window_s / template.grid.quantum  # one window's new frames: 72
    learned.throughput.record(RateKey.of(request, template), per_frame, 0.0)
    frames = round(minutes * 60 * 25)
    lanes = [Lane("gpu0")] + remote_lanes(workers - 1, start_s)
    planned = plan_job(request, template, frames, lanes, learned)
    option = next(o for o in planned.estimate.per_gpu_count if o.gpus == workers)
    return {"workers": workers, "minutes": minutes, "segments": option.segments, "wall_s": option.wall_s,
            "gpu_s": option.gpu_s, "gpu_min_per_video_min": round(option.gpu_s / 60 / minutes, 2),
            "wall_min_per_video_min": round(option.wall_s / 60 / minutes, 2),
            "planner_would_use": planned.workers + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=float, default=10.3)
    parser.add_argument("--cold-s", type=float, default=88.0)
    parser.add_argument("--warm-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "perf" / "fanout_model.json")
    args = parser.parse_args()
    rows = []
    print("| video | workers | start | segments | wall | speed-up | GPU min per video min | planner uses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for minutes in MINUTES:
        for start, start_s in (("cold", args.cold_s), ("warm", args.warm_s)):
            one = None
            for workers in WORKERS:
                row = {**model(args.window_s, start_s, minutes, workers), "start": start, "start_s": start_s}
                one = one or row["wall_s"]
                row["speedup"] = round(one / row["wall_s"], 2)
                rows.append(row)
                print(f"| {minutes} min | {workers} | {start} | {row['segments']} | {row['wall_s'] / 60:.1f} min | "
                      f"{row['speedup']:.2f}x | {row['gpu_min_per_video_min']:.2f} | {row['planner_would_use']} |")
    args.out.write_text(json.dumps({"command": " ".join(["benchmarks/fanout_model.py"] + sys.argv[1:]),
                                    "window_s": args.window_s, "cold_s": args.cold_s, "warm_s": args.warm_s,
                                    "template": TEMPLATE, "size": "832x480", "preset": "fast", "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
