"""The same job on 1 and 2 CPU ComfyUI instances: wall time, time inside ComfyUI, overhead, stitch speed,
and the worker's peak memory at two video lengths.

    .venv/bin/python benchmarks/cpu_scaling.py [--seconds 20] [--repeats 2]

Prints a table and writes docs/perf/cpu_scaling.json. Runs through worker.job.run_job (no runpod).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.local_worker import LocalWorker  # noqa: E402
from benchmarks.samplers import PeakRss  # noqa: E402
from tests.media_factory import make_index_video, make_tone  # noqa: E402


def job_for(media: Path, seconds: float, size: tuple[int, int], **extra) -> dict:
    fps = 25
    frames = int(seconds * fps) + 5
    video = make_index_video(media / f"src_{seconds}.mp4", frames, fps, *size)
    audio = make_tone(media / f"tone_{seconds}.wav", seconds)
    return {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
            "width": size[0], "height": size[1], "fps": fps, "output": {"destination": "volume"}, **extra}


def plain_reencode_fps(video: str, options: dict) -> float:
    """Frames per second of a plain ffmpeg decode + x264 re-encode of the same frames, same settings."""
    started = time.monotonic()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", video, "-c:v", "libx264",
                    "-preset", options["preset"], "-crf", str(options["crf"]), "-pix_fmt", "yuv420p", "-an",
                    "-f", "mp4", "/dev/null"], check=True)
    seconds = time.monotonic() - started
    frames = int(subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                                 "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", video],
                                capture_output=True, text=True, check=True).stdout)
    return frames / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="video length of the timed job")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "cpu_scaling.json"))
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        worker = LocalWorker.on_cpu(Path(tmp), base_port=8700)
        worker.pool.start()
        try:
            job = job_for(worker.media, args.seconds, size)
            worker.run({**job, "gpu_count": 1})  # warm-up: the first prompt loads torch kernels
            runs = []
            for instances in (1, 2):
                for repeat in range(args.repeats):
                    with PeakRss() as rss:
                        out = worker.run({**job, "gpu_count": instances}, job_id=f"b{instances}_{repeat}")
                    comfy_critical = max(s["comfy_seconds"] for s in out["segments"])
                    runs.append({
                        "instances": instances, "repeat": repeat, "frames": out["frames"],
                        "wall_s": out["timings"]["total"], "comfy_s": comfy_critical,
                        "overhead_s": round(out["timings"]["total"] - comfy_critical, 3),
                        "timings": out["timings"], "peak_rss_mb": round(rss.peak / 2**20, 1),
                        "stitch_fps": round(out["frames"] / out["timings"]["stitch"], 1),
                        "video_path": out["video_path"],
                    })
            reencode = plain_reencode_fps(runs[-1]["video_path"], {"preset": "veryfast", "crf": 19})
            memory = []
            for seconds in (args.seconds, args.seconds * 4):
                long_job = job_for(worker.media, seconds, size)
                with PeakRss() as rss:
                    out = worker.run(long_job)
                memory.append({"seconds": seconds, "frames": out["frames"], "peak_rss_mb": round(rss.peak / 2**20, 1)})
        finally:
            worker.pool.shutdown()

    best = {n: min(r["wall_s"] for r in runs if r["instances"] == n) for n in (1, 2)}
    result = {"machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
              "job": f"restyle, {args.seconds:g} s at 25 fps, {args.size}", "runs": runs,
              "speedup_2_vs_1": round(best[1] / best[2], 3), "plain_reencode_fps": round(reencode, 1),
              "memory_by_length": memory}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{result['job']} on {result['machine']}")
    print(f"{'instances':>9} {'wall s':>8} {'ComfyUI s':>10} {'overhead s':>11} {'stitch s':>9} "
          f"{'stitch fps':>10} {'peak RSS MB':>12}")
    for r in runs:
        print(f"{r['instances']:>9} {r['wall_s']:>8.2f} {r['comfy_s']:>10.2f} {r['overhead_s']:>11.2f} "
              f"{r['timings']['stitch']:>9.2f} {r['stitch_fps']:>10.0f} {r['peak_rss_mb']:>12.0f}")
    print(f"speedup 2 vs 1 (best of {args.repeats}): {result['speedup_2_vs_1']:.2f}x")
    print(f"plain ffmpeg re-encode of the same frames: {reencode:.0f} frames/s")
    for m in memory:
        print(f"worker peak RSS for {m['frames']} frames: {m['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
