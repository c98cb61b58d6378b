"""An idle ComfyUI instance's memory after jobs, with and without COMFY_FREE_WHEN_IDLE (POST /free when it
goes idle): one CPU instance, the same restyle job (320x192, 200 frames) three times each way.

    .venv/bin/python benchmarks/idle_memory.py

Prints a table and writes docs/perf/idle_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.local_worker import LocalWorker  # noqa: E402
from media_samples.factory import make_index_video, make_tone  # noqa: E402


def idle_rss_mb(worker: LocalWorker, settle_s: float = 4.0) -> int:
    """The instance's RSS once idle (POST /free is applied between prompts, then a gc)."""
    time.sleep(settle_s)
    return round(psutil.Process(worker.pool.instances[0].process.pid).memory_info().rss / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="jobs each way")
    parser.add_argument("--base-port", type=int, default=8790)
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "idle_memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as tmp:
        worker = LocalWorker.on_cpu(Path(tmp), base_port=args.base_port, instances=1, free_when_idle=False)
        video = make_index_video(worker.media / "v.mp4", 200, 25, 320, 192)
        audio = make_tone(worker.media / "a.wav", 8.0)
        job = {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
               "width": 320, "height": 192, "output": {"destination": "volume"}}
        worker.pool.start()
        try:
            rows = [{"when": "idle after start", "free_when_idle": None, "rss_mb": idle_rss_mb(worker)}]
            for free_when_idle in (False, True):
                worker.pool.settings = worker.pool.settings.model_copy(update={"free_when_idle": free_when_idle})
                for _ in range(args.jobs):
                    worker.run(job)
                    rows.append({"when": f"idle after job {len(rows)}", "free_when_idle": free_when_idle,
                                 "rss_mb": idle_rss_mb(worker)})
        finally:
            worker.pool.shutdown()
    Path(args.out).write_text(json.dumps({"job": "restyle 320x192, 200 frames, 1 CPU instance", "rows": rows},
                                         indent=1) + "\n")
    for row in rows:
        flag = "" if row["free_when_idle"] is None else f"COMFY_FREE_WHEN_IDLE={int(row['free_when_idle'])}"
        print(f"{row['when']:<22} {flag:<24} {row['rss_mb']:>6} MB")


if __name__ == "__main__":
    main()
