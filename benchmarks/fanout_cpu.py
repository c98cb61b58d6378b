"""One job on one worker, on two instances of one worker, and on two workers of one endpoint (fan-out through
the endpoint's queue), all on this machine's CPU: the 2-worker ratio against the 2-instance ratio.

    .venv/bin/python benchmarks/fanout_cpu.py [--seconds 30] [--size 256x256] [--repeats 3] [--out FILE]

Every configuration is real: workers are `python handler.py` under the runpod SDK, taking jobs from the RunPod
stand-in (local_platform/runpod_standin.py), each with its own CPU ComfyUI instance(s); the fanned-out job
sends one segment to the other worker as a segment job and stitches both. Each worker is pinned to its cores
(taskset), as a machine of its own would have them: one worker on one core, two workers on a core each, or
one worker with two instances on both (a core each). So both ratios are one lane against two on the same two
cores. Each configuration first runs a short warm-up job on every worker (so all instances are warm), then the
job `--repeats` times; the median wall time (submission to COMPLETED, as a client sees it) counts. Writes
docs/perf/fanout_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from media_samples.factory import make_index_video, make_tone, read_indices  # noqa: E402
from local_platform.runpod_standin import RunPodStandIn  # noqa: E402
from local_platform.workers import WorkerOnPlatform  # noqa: E402

CONFIGS = {  # name -> (workers, instances per worker, FANOUT_MAX_WORKERS, the cores of each worker)
    "1 worker, 1 instance": (1, 1, 0, ["0"]),
    "1 worker, 2 instances": (1, 2, 0, ["0,1"]),
    "2 workers, 1 instance each": (2, 1, 1, ["0", "1"]),
}


def run_config(name: str, root: Path, job: dict, warmup: dict, repeats: int, base_port: int) -> dict:
    workers_n, instances, fanout, cores = CONFIGS[name]
    standin = RunPodStandIn()
    workers = []
    try:
        for number in range(workers_n):
            pod = f"bench-{number}"
            env = {**standin.worker_env(pod), "RUNPOD_API_KEY": standin.api_key,
                   "RUNPOD_ENDPOINT_BASE_URL": standin.api_base, "FANOUT_MAX_WORKERS": str(fanout),
                   "FANOUT_COLD_START_S": "0", "MAX_DURATION_S": "600", "SEAM_BUDGET_PERCENT": "0",
                   "STITCH_LEAD": "0"}
            worker = WorkerOnPlatform(root / f"{name[:1]}{instances}-{pod}", api_port=0,
                                      comfy_port=base_port + 10 * number, instances=instances, env=env)
            worker.env.update(ALLOWED_INPUT_ROOTS=str(root / "media"), OUTPUT_VOLUME_DIR=str(root / "volume"))
            worker.cores = cores[number]
            workers.append(worker.start(standin))
        for _ in range(workers_n):  # a warm-up job on each worker: one at a time, each taken by a free worker
            done = standin.wait_final(standin.submit(warmup).id, 600)
            assert done.status == "COMPLETED", done.error
        walls, segments = [], None
        for _ in range(repeats):
            started = time.monotonic()
            done = standin.wait_final(standin.submit(job).id, 1800)
            walls.append(time.monotonic() - started)
            assert done.status == "COMPLETED", done.error
            frames = len(read_indices(Path(done.output["video_path"])))
            assert frames == done.output["frames"]
            segments = [{"worker": s["worker"], "instance": s["instance"], "frames": s["frames"],
                         "seconds": s["seconds"]} for s in done.output["segments"]]
        return {"config": name, "workers": workers_n, "instances_per_worker": instances,
                "wall_s": [round(w, 2) for w in walls], "median_wall_s": round(statistics.median(walls), 2),
                "segments": segments}
    finally:
        for worker in workers:
            worker.stop()
        standin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=8900)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "perf" / "fanout_cpu.json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as folder:
        root = Path(folder)
        (root / "media").mkdir()
        (root / "volume").mkdir()
        frames = round(args.seconds * 25)

        def job_of(name: str, count: int) -> dict:
            video = make_index_video(root / "media" / f"{name}.mp4", count, 25, width, height)
            audio = make_tone(root / "media" / f"{name}.wav", count / 25)
            return {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
                    "width": width, "height": height, "output": {"destination": "volume"}}

        job, warmup = job_of("job", frames), job_of("warmup", 50)
        results = []
        for name in CONFIGS:
            result = run_config(name, root, job, warmup, args.repeats, args.base_port)
            print(f"{name:28} median {result['median_wall_s']:7.2f} s  (runs {result['wall_s']})", flush=True)
            results.append(result)
    one = results[0]["median_wall_s"]
    ratios = {r["config"]: round(one / r["median_wall_s"], 3) for r in results}
    two_instances, two_workers = ratios["1 worker, 2 instances"], ratios["2 workers, 1 instance each"]
    print(f"speed-up: 2 instances {two_instances:.2f}x, 2 workers {two_workers:.2f}x "
          f"(2-worker / 2-instance: {two_workers / two_instances:.1%})")
    args.out.write_text(json.dumps({
        "command": " ".join(["benchmarks/fanout_cpu.py"] + sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "frames": frames, "size": args.size, "results": results,
        "speedup_vs_one_instance": ratios, "two_workers_over_two_instances": round(two_workers / two_instances, 3),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
