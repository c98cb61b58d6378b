"""Long jobs that fit in memory: a 60 s 512x512 `restyle` job and a 3-minute 512x512 `still` job on two CPU
ComfyUI instances, with the peak memory of each instance, of the worker (and its ffmpeg processes) and the
least RAM the machine had left, sampled every 0.2 s.

    .venv/bin/python benchmarks/memory_planning.py [--restyle-s 60] [--still-s 180] [--port 8950]

Without memory planning the 60 s `restyle` job would put 750 frames on each instance (about 13.5 GB each, at
18 MB a frame) and exhaust a 24 GB machine. Prints a table and writes docs/perf/memory_planning.json,
including what else was running on the machine (it is shared). Not part of `make test` (minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.local_worker import LocalWorker  # noqa: E402
from benchmarks.samplers import PeakSampler  # noqa: E402
from media_samples import real_media  # noqa: E402
from media_samples.factory import make_index_video, make_tone, read_indices  # noqa: E402

MB = 2**20


class PeakTrees(PeakSampler):
    """Peak RSS (and anonymous RSS: less file-backed pages) of each instance's process tree, of this process with
    its other children (the worker and its ffmpeg processes), and the least MemAvailable, while the with-block
    runs; `series`: every sample's instance RSS, for a plot or a look at when the peaks came."""

    interval_s = 0.2

    def __init__(self, instance_pids: dict[str, int]):
        super().__init__()
        self.instances = {name: psutil.Process(pid) for name, pid in instance_pids.items()}
        self.me = psutil.Process()
        self.started = time.monotonic()
        self.peak = {name: 0 for name in self.instances} | {"worker": 0, "all instances": 0}
        self.peak_anonymous = {name: 0 for name in self.instances}
        self.least_available = psutil.virtual_memory().available
        self.series: list[dict] = []

    @staticmethod
    def _tree(process: psutil.Process, skip: set[int] = frozenset()) -> tuple[int, int]:
        """(RSS, anonymous RSS) of a process and its children, leaving out `skip` and children caught between
        fork and exec (still the parent's program: their RSS is the parent's pages, counted twice)."""
        rss = anonymous = 0
        for proc in [process, *process.children(recursive=True)]:
            try:
                if proc.pid not in skip and (proc is process or proc.exe() != process.exe()):
                    info = proc.memory_info()
                    rss, anonymous = rss + info.rss, anonymous + info.rss - info.shared
            except psutil.Error:
                continue
        return rss, anonymous

    def sample(self) -> None:
        skip = set()
        together = 0
        row = {"t": round(time.monotonic() - self.started, 1)}
        for name, process in self.instances.items():
            rss, anonymous = self._tree(process)
            together += rss
            row[name] = round(rss / MB)
            self.peak[name] = max(self.peak[name], rss)
            self.peak_anonymous[name] = max(self.peak_anonymous[name], anonymous)
            skip |= {process.pid} | {child.pid for child in process.children(recursive=True)}
        self.peak["all instances"] = max(self.peak["all instances"], together)
        self.peak["worker"] = max(self.peak["worker"], self._tree(self.me, skip)[0])
        self.least_available = min(self.least_available, psutil.virtual_memory().available)
        self.series.append(row)


def others_running(mine: set[int]) -> list[dict]:
    """The largest other processes on the machine by RSS (it is shared with other work)."""
    rows = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
        if proc.info["pid"] in mine or proc.info["memory_info"] is None:
            continue
        command = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])
        rows.append({"rss_mb": round(proc.info["memory_info"].rss / MB), "command": command[:110]})
    return sorted(rows, key=lambda row: -row["rss_mb"])[:8]


def run(worker: LocalWorker, name: str, job: dict, expected_frames: int, check) -> dict:
    pids = {i.name: i.process.pid for i in worker.pool.instances}
    mine = {os.getpid(), *pids.values(), *(c.pid for c in psutil.Process().children(recursive=True))}
    before = {"available_mb": round(psutil.virtual_memory().available / MB), "others": others_running(mine),
              "load_1min": round(os.getloadavg()[0], 2)}
    started = time.monotonic()
    with PeakTrees(pids) as peaks:
        output = worker.run(job, name)
    wall = time.monotonic() - started
    assert output["frames"] == expected_frames, (output["frames"], expected_frames)
    check(output)
    return {"job": name, "frames": output["frames"], "wall_s": round(wall, 1),
            "segments": [{"frames": s["frames"], "instance": s["instance"], "ram_peak_mb": s["ram_peak_mb"],
                          "comfy_s": s["comfy_seconds"]} for s in output["segments"]],
            "peak_rss_mb": {key: round(value / MB) for key, value in peaks.peak.items()},
            "peak_anonymous_rss_mb": {key: round(value / MB) for key, value in peaks.peak_anonymous.items()},
            "instance_rss_mb_every_2_s": peaks.series[::10],
            "least_available_mb": round(peaks.least_available / MB), "before": before,
            "timings": output["timings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restyle-s", type=float, default=60.0)
    parser.add_argument("--still-s", type=float, default=180.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--port", type=int, default=8950)
    parser.add_argument("--jobs", default="restyle,still", help="which of the two jobs to run")
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "memory_planning.json"))
    args = parser.parse_args()
    size = args.size

    rows = []
    with tempfile.TemporaryDirectory(prefix="memory-planning-") as tmp:
        worker = LocalWorker.on_cpu(Path(tmp), base_port=args.port)
        worker.settings.job_work_dir.mkdir(exist_ok=True)
        restyle_frames = math.ceil(args.restyle_s * 25)
        video = make_index_video(worker.media / "source.mp4", restyle_frames, 25, size, size)
        photo = real_media.phone_jpeg(worker.media / "photo.jpg", 1024, 768)
        worker.pool.start()
        try:
            restyle = {"workflow": "restyle", "input_type": "video", "video": str(video),
                       "audio": str(make_tone(worker.media / "restyle.wav", args.restyle_s)), "width": size,
                       "height": size, "output": {"destination": "volume"}}

            def every_frame_in_order(output: dict) -> None:
                assert read_indices(output["video_path"]) == list(range(restyle_frames))

            if "restyle" in args.jobs:
                rows.append(run(worker, "restyle", restyle, restyle_frames, every_frame_in_order))
            still = {"workflow": "still", "input_type": "image", "image": str(photo),
                     "audio": str(make_tone(worker.media / "still.wav", args.still_s)), "width": size, "height": size,
                     "output": {"destination": "volume"}}
            if "still" in args.jobs:
                rows.append(run(worker, "still", still, math.ceil(args.still_s * 25), lambda output: None))
        finally:
            worker.pool.shutdown()

    machine = psutil.virtual_memory().total
    result = {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {machine / 2**30:.1f} GiB RAM",
              "size": f"{size}x{size}", "instances": 2, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['machine']}, two CPU instances, {size}x{size}")
    for row in rows:
        peaks = row["peak_rss_mb"]
        print(f"{row['job']}: {row['frames']} frames in {len(row['segments'])} segments "
              f"({', '.join(str(s['frames']) for s in row['segments'])}), {row['wall_s']} s; peak RSS "
              + ", ".join(f"{k} {v} MB" for k, v in peaks.items())
              + f"; least RAM available {row['least_available_mb']} MB (before: {row['before']['available_mb']} MB)")


if __name__ == "__main__":
    main()
