"""Soak: many jobs in a row, then several at a time, on real CPU ComfyUI instances; the worker's memory,
open files and leftover files must stay flat.

    .venv/bin/python benchmarks/soak.py [--jobs 50] [--parallel 4]

Prints a table and writes docs/perf/soak.json. Not part of `make test` (it takes minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.local_worker import LocalWorker  # noqa: E402
from comfy_manager import InstancePool  # noqa: E402
from tests.media_factory import make_index_video, make_tone, read_indices  # noqa: E402
from worker.config import WorkerSettings  # noqa: E402


def snapshot(settings: WorkerSettings, pool: InstancePool) -> dict:
    me = psutil.Process()
    instance_files = sum(1 for i in pool.instances for d in (i.input_dir, i.output_dir) for p in d.rglob("*")
                         if p.is_file())
    return {"rss_mb": round(me.memory_info().rss / 2**20, 1), "open_files": me.num_fds(),
            "threads": me.num_threads(), "job_files": sum(1 for _ in settings.job_work_dir.rglob("*")),
            "instance_files": instance_files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "soak.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        worker = LocalWorker.on_cpu(root, base_port=8750)
        pool, settings = worker.pool, worker.settings
        video = make_index_video(worker.media / "v.mp4", 60, 25)
        audio = make_tone(worker.media / "a.wav", 2.0)
        job = {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
               "width": 128, "height": 64, "output": {"destination": "base64"}}
        pool.start()
        try:
            worker.run(job)  # warm-up
            rows = [("start", snapshot(settings, pool), 0.0, 0)]
            for phase, parallel in (("in a row", 1), (f"{args.parallel} at a time", args.parallel)):
                started = time.monotonic()
                with ThreadPoolExecutor(parallel) as executor:
                    outputs = list(executor.map(lambda i: worker.run(job, f"soak{i}"), range(args.jobs)))
                assert all(o["frames"] == 50 for o in outputs)
                rows.append((f"after {args.jobs} {phase}", snapshot(settings, pool), time.monotonic() - started,
                             args.jobs))
            check = root / "check.mp4"
            import base64
            check.write_bytes(base64.b64decode(outputs[-1]["video"]))
            assert read_indices(check) == list(range(50))
        finally:
            pool.shutdown()
    result = {"jobs_per_phase": args.jobs, "parallel": args.parallel,
              "rows": [{"when": w, **s, "seconds": round(t, 1)} for w, s, t, _ in rows]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'when':<24} {'RSS MB':>7} {'open files':>10} {'threads':>8} {'job files':>9} {'instance files':>14} "
          f"{'seconds':>8}")
    for w, s, t, _ in rows:
        print(f"{w:<24} {s['rss_mb']:>7} {s['open_files']:>10} {s['threads']:>8} {s['job_files']:>9} "
              f"{s['instance_files']:>14} {t:>8.1f}")


if __name__ == "__main__":
    main()
