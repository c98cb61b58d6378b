"""GPU scaling: the same long stand-in job (benchmarks/gpu_standin) on 1 and on N GPUs, end to end through
worker.job.run_job and the worker's own instance manager.

    source benchmarks/device/install_on_device.sh   # on the lent GPU machine
    python3 benchmarks/gpu_scaling.py --gpus 1,2 --seconds 60 --out $OUT/gpu_scaling.json

For each GPU count: start that many ComfyUI instances (start-up timed), run a short warm-up job that
loads the model on every instance, then the timed job with peak VRAM sampled per GPU and the worker's
peak RSS. Writes JSON (device, frames, runs) after every run and prints a table.

A job too long for one device call can be split: `--gpus 1 --out one.json`, then
`--gpus 2,4 --baseline one.json` takes the 1-GPU run from the first call (same job settings required).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["EXTRA_WORKFLOW_DIRS"] = str(REPO / "benchmarks" / "gpu_standin" / "workflows")

from benchmarks.samplers import PeakRss, PeakVram  # noqa: E402
from comfy_manager import InstancePool, PoolSettings  # noqa: E402
from media_samples.factory import make_image, make_tone  # noqa: E402
from worker.request.settings import WorkerSettings  # noqa: E402
from worker.job import run_job  # noqa: E402
from worker.planning.learned import Learned, RateKey  # noqa: E402


def ceiling(gpus: int, frames: int, overlap: int) -> float:
    """The best speed-up overlapping segments allow: N x T / (T + (N - 1) x overlap)."""
    return gpus * frames / (frames + (gpus - 1) * overlap)


def write_result(args, device: list[str], frames: int, weights_s: float, runs: list[dict],
                 rates: tuple[float, float] | None) -> dict:
    """Adds speed-up, ceiling and overhead share to each run and writes the JSON; returns it."""
    one = next((r for r in runs if r["gpus"] == 1), None)
    for r in runs:
        r["speedup"] = round(one["wall_s"] / r["wall_s"], 3) if one else None
        r["ceiling"] = round(ceiling(r["gpus"], frames, args.overlap), 3)
        r["efficiency_vs_ceiling"] = round(r["speedup"] / r["ceiling"], 3) if one else None
        r["overhead_pct"] = round(100 * r["overhead_s"] / r["wall_s"], 2)
    runs.sort(key=lambda r: r["gpus"])
    result = {"device": f"{len(device)} x {device[0]}", "frames": frames, "fps": args.fps,
              "size": args.size, "steps": args.steps, "overlap": args.overlap, "weights_s": round(weights_s, 1),
              "learned_rates_s_per_frame": rates,
              "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="1,2", help="GPU counts to run, e.g. 1,2,4,8")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=40)
    parser.add_argument("--tiny", action="store_true", help="tiny stand-in weights (CPU check of this script)")
    parser.add_argument("--cpu", action="store_true", help="CPU instances (check of this script only)")
    parser.add_argument("--half", action="store_true",
                        help="also time, on 1 GPU alone, a job as long as one segment of the largest GPU count "
                             "(tells load-dependent slow-down apart from work that does not shrink)")
    parser.add_argument("--logs", help="folder to copy each ComfyUI instance's log into")
    parser.add_argument("--baseline", help="JSON of an earlier call whose runs (the 1-GPU one) to include")
    parser.add_argument("--seams", default="{}",
                        help='the request\'s seams options as JSON, e.g. \'{"color_match": true}\' (the stand-in '
                             'links its reference image) or \'{"blend": "linear"}\'; SEAM_BUDGET_PERCENT from the env')
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "gpu_scaling.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    width, height = (int(v) for v in args.size.split("x"))
    counts = [int(n) for n in args.gpus.split(",")]

    root = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    models = root / "models"
    made = time.monotonic()
    base = PoolSettings.from_env()
    subprocess.run([base.python, str(REPO / "benchmarks/gpu_standin/make_weights.py"),
                    str(models), *(["--tiny"] if args.tiny else [])], check=True)
    weights_s = time.monotonic() - made
    if args.tiny:  # the template loads the 1.3B file name; let it find the tiny model there
        (models / "diffusion_models" / "wan_standin_t2v_1.3B.safetensors").symlink_to("wan_standin_tiny.safetensors")
    media = root / "media"
    media.mkdir()
    image = make_image(media / "reference.png", width, height)
    audio = make_tone(media / "speech.wav", args.seconds)
    settings = WorkerSettings(job_work_dir=root / "jobs", allowed_input_roots=(media.resolve(),),
                              output_volume_dir=root / "volume", segment_timeout_s=3600)
    job = {"workflow": "wan_standin", "input_type": "image", "image": str(image), "audio": str(audio),
           "width": width, "height": height, "fps": args.fps, "steps": args.steps,
           "overlap_frames": args.overlap, "output": {"destination": "volume", "preset": "veryfast"},
           "seams": json.loads(args.seams)}
    # Long enough for one segment per instance (each at least 2 x overlap frames), so that every instance
    # has loaded the model before the timed job; one step keeps it short.
    warmup_s = (max(counts) + 1) * 2 * args.overlap / args.fps
    warmup = {**job, "audio": str(make_tone(media / "warmup.wav", warmup_s)), "steps": 1}

    extra = ["--extra-model-paths-config", str(models / "extra_model_paths.yaml")]
    runs, frames = [], None
    planner = Learned(settings.stitch_lead)  # one for every run, as a worker has
    rate_key = RateKey("wan_standin", width, height, args.steps)  # what it learns the stitch lead under
    earlier = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if earlier:
        settings_now = {"fps": args.fps, "size": args.size, "steps": args.steps, "overlap": args.overlap}
        if any(earlier[k] != v for k, v in settings_now.items()):
            raise SystemExit(f"--baseline {args.baseline} ran other settings: {[earlier[k] for k in settings_now]}")
        runs, frames = [r for r in earlier["runs"] if r["gpus"] not in counts], earlier["frames"]
        # The worker then knows the rates of the earlier runs, as it would after serving them.
        planner.throughput.record(rate_key, *earlier["learned_rates_s_per_frame"])
    device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True).stdout.strip().splitlines() if not args.cpu else ["cpu"]
    for count in counts:
        pool = InstancePool(base.model_copy(update=dict(
            instances_dir=root / f"instances{count}", gpus=tuple(range(count)), force_cpu=args.cpu,
            cpu_instances=count, extra_args=base.extra_args + extra)))
        pool.start()
        try:
            started = time.monotonic()
            warm = run_job({**warmup, "gpu_count": count}, pool, settings, job_id=f"warmup{count}", learned=planner)
            if len({segment["instance"] for segment in warm["segments"]}) < count:
                raise SystemExit(f"the warm-up reached {warm['segments_processed']} of {count} instances")
            first_job_s = time.monotonic() - started
            lead = planner.throughput.stitch_lead(rate_key)
            with PeakRss() as rss, PeakVram(list(range(count)) if not args.cpu else []) as vram:
                out = run_job({**job, "gpu_count": count}, pool, settings, job_id=f"run{count}", learned=planner)
            comfy = max(s["comfy_seconds"] for s in out["segments"])
            runs.append({
                "gpus": count, "wall_s": out["timings"]["total"], "generate_s": out["timings"]["generate"],
                "stitch_s": out["timings"]["stitch"], "prepare_s": out["timings"]["prepare"],
                "comfy_s": comfy, "overhead_s": round(out["timings"]["total"] - comfy, 3),
                "peak_vram_gb": vram.peaks_gb(), "startup_s": round(pool.startup_s, 2),
                "instance_ready_s": [round(i.ready_after_s or 0, 2) for i in pool.instances],
                "first_job_s": round(first_job_s, 2), "worker_peak_rss_mb": round(rss.peak / 2**20, 1),
                "stitch_lead": round(lead, 4), "frames_copied": out["frames_copied"],
                "segments": out["segments"], "seams": out["seams"], "seam_summary": out["seam_summary"],
            })
            if frames not in (None, out["frames"]):
                raise SystemExit(f"the baseline has {frames} frames, this job {out['frames']}")
            frames = out["frames"]
            if args.half and count == 1:
                longest = max(counts)
                segment_s = (args.seconds + (longest - 1) * args.overlap / args.fps) / longest
                half = run_job({**job, "audio": str(make_tone(media / "segment.wav", segment_s))}, pool, settings,
                               job_id="segment_alone", learned=planner)
                runs[-1]["one_segment_alone"] = {"frames": half["frames"],
                                                 "comfy_s": half["segments"][0]["comfy_seconds"]}
        finally:
            for instance in pool.instances if args.logs else []:
                Path(args.logs).mkdir(parents=True, exist_ok=True)
                shutil.copy(instance.log_path, Path(args.logs) / f"comfyui_{count}gpu_{instance.name.replace(':', '_')}.log")
            pool.shutdown()
        # What is done survives a later failure.
        write_result(args, device, frames, weights_s, runs, planner.throughput.rates(rate_key))

    shutil.rmtree(root, ignore_errors=True)
    result = write_result(args, device, frames, weights_s, runs, planner.throughput.rates(rate_key))
    print(f"learned (generate, stitch) seconds per frame: {result['learned_rates_s_per_frame']}")
    print(f"\n{result['device']}: {frames} frames ({frames / args.fps:.0f} s at {args.fps:g} fps), {args.size}, "
          f"{args.steps} steps, overlap {args.overlap}")
    print(f"{'GPUs':>4} {'wall s':>8} {'ComfyUI s':>9} {'stitch s':>8} {'overhead':>9} {'speedup':>8} "
          f"{'ceiling':>8} {'eff.':>6} {'start s':>8} {'1st job s':>9} {'VRAM GB':>14}")
    for r in runs:
        if "one_segment_alone" in r:
            alone = r["one_segment_alone"]
            print(f"  (1 GPU, one segment's length alone: {alone['frames']} frames, ComfyUI {alone['comfy_s']:.1f} s)")
        print(f"{r['gpus']:>4} {r['wall_s']:>8.1f} {r['comfy_s']:>9.1f} {r['stitch_s']:>8.2f} "
              f"{r['overhead_pct']:>8.1f}% {r['speedup'] or 0:>7.2f}x {r['ceiling']:>7.2f}x "
              f"{r['efficiency_vs_ceiling'] or 0:>6.2f} {r['startup_s']:>8.1f} {r['first_job_s']:>9.1f} "
              f"{','.join(str(v) for v in r['peak_vram_gb']):>14}")


if __name__ == "__main__":
    main()
