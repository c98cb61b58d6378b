"""Soak: many jobs in a row, then several at a time, on real CPU ComfyUI instances, optionally killing a
random instance (busy or idle) every few jobs; no job may fail, and the worker's memory, open files and
leftover files, and the idle instances' memory, must stay flat.

    .venv/bin/python benchmarks/soak.py [--jobs 50] [--parallel 4] [--kill-every 5] [--keep-models]

Prints a table and writes docs/perf/soak.json (--out). Not part of `make test` (it takes minutes).
--kill-every N: after every N finished jobs, a random moment later, SIGKILL a random instance; the pool's
restart limit is raised for the run (its deliberate kills come far faster than any crash loop).
--keep-models: COMFY_FREE_WHEN_IDLE=0, for comparison (idle instances keep their last job's memory).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.local_worker import LocalWorker  # noqa: E402
from comfy_manager import Health, InstancePool  # noqa: E402
from media_samples.factory import make_index_video, make_tone, read_indices  # noqa: E402
from worker.request.settings import WorkerSettings  # noqa: E402


def wait_idle(pool: InstancePool, settle_s: float = 3.0) -> None:
    """Until every instance is in service and free, then a moment for POST /free to be applied."""
    deadline = time.monotonic() + 300
    while pool.free_count() != pool.size or pool.size != len(pool.instances):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not settle: {pool.health()}")
        time.sleep(0.2)
    time.sleep(settle_s)


def snapshot(settings: WorkerSettings, pool: InstancePool) -> dict:
    me = psutil.Process()
    instance_files = sum(1 for i in pool.instances for d in (i.input_dir, i.output_dir) for p in d.rglob("*")
                         if p.is_file())
    return {"rss_mb": round(me.memory_info().rss / 2**20, 1), "open_files": me.num_fds(),
            "threads": me.num_threads(), "job_files": sum(1 for _ in settings.job_work_dir.rglob("*")),
            "instance_files": instance_files,
            "instance_rss_mb": [round(psutil.Process(i.process.pid).memory_info().rss / 2**20) for i in pool.instances]}


class Killer:
    """After every `every` finished jobs, waits a random moment (so that it often lands mid-segment), then
    SIGKILLs a random instance in service (not one the pool is restarting)."""

    def __init__(self, pool: InstancePool, every: int, seed: int = 15):
        self.pool, self.every = pool, every
        self.random = random.Random(seed)
        self.finished = 0
        self.kills: list[str] = []  # "cpu:8750 busy" (running a prompt) or "cpu:8750 idle"
        self._lock = threading.Lock()

    def job_finished(self) -> None:
        with self._lock:
            self.finished += 1
            due = self.every and self.finished % self.every == 0
        if due:
            threading.Thread(target=self._kill, daemon=True).start()

    def _kill(self) -> None:
        time.sleep(self.random.uniform(0.0, 3.0))
        health = self.pool.health()
        serving = [i for i in self.pool.instances if health[i.name][0] is Health.SERVING and i.is_alive()]
        if not serving:
            return
        victim = self.random.choice(serving)
        try:
            busy = bool(requests.get(victim.url + "/queue", timeout=2).json()["queue_running"])
        except requests.RequestException:
            busy = False
        try:
            os.kill(victim.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        with self._lock:
            self.kills.append(f"{victim.name} {'busy' if busy else 'idle'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--kill-every", type=int, default=0, help="SIGKILL a random instance every N jobs (0: never)")
    parser.add_argument("--keep-models", action="store_true", help="COMFY_FREE_WHEN_IDLE=0, for comparison")
    parser.add_argument("--base-port", type=int, default=8750)
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "soak.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        worker = LocalWorker.on_cpu(root, base_port=args.base_port, free_when_idle=not args.keep_models,
                                    **({"restart_limit": 10_000} if args.kill_every else {}))
        pool, settings = worker.pool, worker.settings
        video = make_index_video(worker.media / "v.mp4", 60, 25)
        audio = make_tone(worker.media / "a.wav", 2.0)
        job = {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
               "width": 128, "height": 64, "output": {"destination": "base64"}}
        pool.start()
        killer = Killer(pool, args.kill_every)
        failures: list[str] = []

        def run(i: int) -> dict | None:
            try:
                return worker.run(job, f"soak{i}")
            except Exception as exc:  # counted, and the soak fails at the end
                failures.append(f"job {i}: {type(exc).__name__}: {exc}")
                return None
            finally:
                killer.job_finished()

        try:
            worker.run(job)  # warm-up
            wait_idle(pool)
            rows = [("start", snapshot(settings, pool), 0.0, 0, 0, 0)]
            for phase, parallel in (("in a row", 1), (f"{args.parallel} at a time", args.parallel)):
                started, kills_before = time.monotonic(), len(killer.kills)
                with ThreadPoolExecutor(parallel) as executor:
                    outputs = list(executor.map(run, range(args.jobs)))
                seconds = time.monotonic() - started
                wait_idle(pool)
                good = [o for o in outputs if o is not None]
                retried = sum(s["attempts"] - 1 for o in good for s in o["segments"])
                rows.append((f"after {args.jobs} {phase}", snapshot(settings, pool), seconds,
                             len(killer.kills) - kills_before, retried, len(outputs) - len(good)))
            check = root / "check.mp4"
            check.write_bytes(base64.b64decode(good[-1]["video"]))
            assert read_indices(check) == list(range(50))
            assert all(o["frames"] == 50 for o in good)
        finally:
            pool.shutdown()
    result = {"jobs_per_phase": args.jobs, "parallel": args.parallel, "kill_every": args.kill_every,
              "free_when_idle": not args.keep_models, "kills": killer.kills, "failed_jobs": failures,
              "rows": [{"when": w, **s, "seconds": round(t, 1), "kills": k, "segments_retried": r, "failed": f}
                       for w, s, t, k, r, f in rows]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'when':<24} {'RSS MB':>7} {'open files':>10} {'threads':>8} {'job files':>9} {'instance files':>14} "
          f"{'instance RSS MB':>16} {'seconds':>8} {'kills':>6} {'retried':>8} {'failed':>6}")
    for w, s, t, k, r, f in rows:
        print(f"{w:<24} {s['rss_mb']:>7} {s['open_files']:>10} {s['threads']:>8} {s['job_files']:>9} "
              f"{s['instance_files']:>14} {str(s['instance_rss_mb']):>16} {t:>8.1f} {k:>6} {r:>8} {f:>6}")
    print(f"kills: {killer.kills}")
    if failures:
        sys.exit("failed jobs:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
