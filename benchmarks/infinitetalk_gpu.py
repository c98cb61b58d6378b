"""InfiniteTalk at its real size on GPUs: the templates as users run them, through the worker's own pool and
run_job, with every model file made at the real 14B shapes with random values (scripts/make_random_weights.py
--full-size: the compute is the real model's, the picture is noise).

    source benchmarks/device/install_on_device.sh        # on the lent GPU machine (see benchmarks/device/)
    python3 benchmarks/infinitetalk_gpu.py windows --out $OUT/it_windows.json
    python3 benchmarks/infinitetalk_gpu.py scaling --out $OUT/it_scaling.json

windows  one 81-frame window (832x480) per case, in two lanes at once, one per GPU (or one lane: --lanes):
         lane 0 (the whole GPU): the fast preset cold (models loaded), warm, and again (run-to-run spread);
                the full preset (4 steps: seconds a step at three passes); each Hopper option alone and
                together (sageattn, fp8 fast matmuls, torch.compile), each a model reload;
         lane 1: the same fast window on instances capped at 24, 32 and 48 GiB (COMFY_VRAM_LIMIT_GB), with
                the settings the template's device rows choose for that size.
         Per case: wall and ComfyUI seconds, per-node seconds, the sampler's seconds a step (from ComfyUI's
         progress lines), peak VRAM, and the output's mean absolute difference (8-bit) from the lane's
         fast sdpa run with the same seed.
scaling  one fast job of --frames frames (default 842 = two 441-frame segments: 6 windows each, 12 on one
         GPU) on 1 GPU, then on 2, after a warm-up that loads the models on both.

JSON is written after every case, so a call cut short still returns what it measured. --cpu --small runs
the same code on CPU instances with the small random DiT (a check of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.samplers import PeakRss, PeakVram  # noqa: E402
from comfy_manager import InstancePool, PoolSettings  # noqa: E402
from media_samples.factory import make_image, make_tone  # noqa: E402
from worker.request.settings import WorkerSettings  # noqa: E402
from worker.job import run_job  # noqa: E402
from worker.planning.learned import Learned  # noqa: E402

log = logging.getLogger("infinitetalk_gpu")
STEP_RATE = re.compile(r"(\d+)/(\d+) \[[0-9:]+<[0-9:?]+,\s+([0-9.]+)(s/it|it/s)\]")


@dataclass
class Case:
    name: str
    fields: dict = field(default_factory=dict)  # request fields over the lane's base job
    compare_to: str | None = None  # the case whose output this one's pixels are compared with


@dataclass
class Bench:
    args: argparse.Namespace
    root: Path
    models: Path
    media: Path
    settings: WorkerSettings
    deadline: float
    results: dict
    lock: threading.Lock = field(default_factory=threading.Lock)

    def save(self) -> None:
        with self.lock:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(json.dumps(self.results, indent=1) + "\n")

    def pool(self, name: str, gpus: tuple[int, ...], port: int, vram_limit_gb: float | None = None,
             comfy_args: list[str] | None = None) -> InstancePool:
        """Instances on `gpus` (CPU instances with --cpu), listening from `port` on, with the random weights
        (and `comfy_args` after COMFY_EXTRA_ARGS's)."""
        base = PoolSettings.from_env()
        extra = ["--extra-model-paths-config", str(self.models / "extra_model_paths.yaml"), *(comfy_args or [])]
        return InstancePool(base.model_copy(update=dict(
            instances_dir=self.root / f"instances-{name}", gpus=gpus, force_cpu=self.args.cpu,
            cpu_instances=len(gpus), vram_limit_gb=vram_limit_gb, startup_timeout_s=600, base_port=port,
            extra_args=base.extra_args + extra)))

    def job(self, seconds: float, **fields) -> dict:
        width, height = (int(v) for v in self.args.size.split("x"))
        audio = make_tone(self.media / f"speech_{seconds:.2f}.wav", seconds, frequency=180)
        return {"workflow": self.args.workflow, "image": str(self.media / "face.png"), "audio": str(audio),
                "width": width, "height": height, "fps": 25, "seed": 7, "output": {"destination": "volume"},
                **fields}


def make_weights(args: argparse.Namespace, models: Path) -> float:
    started = time.monotonic()
    base = PoolSettings.from_env()
    vae = getattr(args, "vae", None)  # light: the pruned lightVAE's layout (make_random_weights.py --vae)
    subprocess.run([base.python, str(REPO / "scripts" / "make_random_weights.py"), str(models),
                    *([] if args.small else ["--full-size"]), *(["--vae", vae] if vae else [])], check=True)
    return time.monotonic() - started


@dataclass
class Prepared:
    root: Path  # a scratch folder, removed by the caller at the end
    media: Path  # root/media with face.png at --size
    models: Path  # the random weights (--models)
    settings: WorkerSettings
    device: list[str]  # nvidia-smi's name and memory of each GPU, or ["cpu"]
    weights_s: float


def prepare(args: argparse.Namespace, prefix: str) -> Prepared:
    """What every InfiniteTalk benchmark sets up first (this one and infinitetalk_profile.py): a scratch folder,
    the face image at --size, the random weights at --models, the worker's settings, the device's name."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    media = root / "media"
    media.mkdir()
    width, height = (int(v) for v in args.size.split("x"))
    make_image(media / "face.png", width, height)
    models = Path(args.models)
    weights_s = make_weights(args, models)
    settings = WorkerSettings(job_work_dir=root / "jobs", allowed_input_roots=(media.resolve(),),
                              output_volume_dir=root / "volume", segment_timeout_s=3600)
    device = ["cpu"] if args.cpu else subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
        text=True).stdout.strip().splitlines()
    return Prepared(root, media, models, settings, device, weights_s)


def step_seconds(log_path: Path, since: int, steps: int) -> float | None:
    """The sampler's rate on its last finished window in the instance's log after byte `since` (a progress
    bar of `steps` steps; other bars, umt5's layers or weight loading, have other totals), in seconds a step."""
    text = log_path.read_bytes()[since:].decode(errors="replace")
    rates = [(int(done), int(total), float(value), unit) for done, total, value, unit in STEP_RATE.findall(text)]
    finished = [r for r in rates if r[0] == r[1] == steps]
    if not finished:
        return None
    _, _, value, unit = finished[-1]
    return round(value if unit == "s/it" else 1.0 / value, 3)


def frames_of(path: str, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def frame_checks(frames: np.ndarray) -> dict:
    """Flat frames have almost no spread; frozen ones almost no change from the frame before."""
    f = frames.astype(np.float32)
    std = f.reshape(len(f), -1).std(axis=1)
    step = np.abs(np.diff(f, axis=0)).reshape(len(f) - 1, -1).mean(axis=1) if len(f) > 1 else np.zeros(0)
    return {"frames": int(len(f)), "min_frame_std": round(float(std.min()), 2),
            "mean_frame_std": round(float(std.mean()), 2),
            "min_consecutive_diff": round(float(step.min()), 3) if len(step) else None,
            "mean_consecutive_diff": round(float(step.mean()), 3) if len(step) else None,
            "flat_frames": int((std < 2.0).sum()), "frozen_frames": int((step < 0.5).sum())}


def run_case(bench: Bench, lane: str, pool: InstancePool, case: Case, base_job: dict, outputs: dict) -> None:
    """Runs one case on the lane's pool and records it under results[lane]."""
    entry: dict = {"case": case.name, "fields": case.fields}
    remaining = bench.deadline - time.monotonic()
    if bench.args.only and not any(case.name.startswith(prefix) for prefix in bench.args.only):
        return
    if remaining < bench.args.min_case_s:
        entry["skipped"] = f"{remaining:.0f} s left of the call"
    else:
        instance = pool.instances[0]
        since = instance.log_path.stat().st_size if instance.log_path.exists() else 0
        started = time.monotonic()
        gpus = [instance.gpu] if instance.gpu is not None else []
        try:
            with PeakVram(gpus) as vram:
                out = run_job({**base_job, **case.fields}, pool, bench.settings, job_id=f"{lane}-{case.name}")
            segment = out["segments"][0]
            entry.update({
                "wall_s": round(time.monotonic() - started, 2), "comfy_s": segment["comfy_seconds"],
                "frames": out["frames"], "quality": out["quality"], "device_settings": segment["device_settings"],
                "step_s": step_seconds(instance.log_path, since, case.fields.get("steps", 4)),
                "peak_vram_gb": vram.peaks_gb(),
                "node_seconds": segment["node_seconds"],
            })
            width, height = (int(v) for v in bench.args.size.split("x"))
            outputs[case.name] = frames_of(out["video_path"], width, height)
            reference = outputs.get(case.compare_to) if case.compare_to else None
            if reference is not None:
                diff = np.abs(outputs[case.name].astype(np.int16) - reference.astype(np.int16))
                entry["mean_abs_diff_8bit"] = round(float(diff.mean()), 3)
                entry["compared_with"] = case.compare_to
        except Exception as exc:  # one failing option must not cost the others their measurement
            entry.update({"failed": f"{type(exc).__name__}: {exc}"[:3000],
                          "wall_s": round(time.monotonic() - started, 2)})
            log.exception("%s %s failed", lane, case.name)
    log.info("%s %s: %s", lane, case.name, {k: v for k, v in entry.items() if k != "node_seconds"})
    with bench.lock:
        bench.results.setdefault(lane, []).append(entry)
    bench.save()


def lane_options(bench: Bench) -> None:
    """Lane 0: the fast window cold, warm and again; the full preset; each Hopper option and all together."""
    gpu = (0,)
    window = bench.job(81 / 25)
    sage = {"attention_mode": "sageattn"}
    fp8 = {"quantization": "fp8_e4m3fn_scaled_fast"}
    cases = [  # most wanted first: the call may end before the last ones
        Case("fast cold"), Case("fast warm", compare_to="fast cold"), Case("fast again", compare_to="fast warm"),
        Case("fast sageattn + fp8 fast", {"template_params": {**sage, **fp8}}, compare_to="fast warm"),
        Case("full 4 steps", {"quality": "full", "steps": 4}),
        Case("fast sageattn", {"template_params": sage}, compare_to="fast warm"),
        Case("fast fp8 fast", {"template_params": fp8}, compare_to="fast warm"),
        Case("fast compile", {"template_params": {"compile": True}}, compare_to="fast warm"),
        Case("fast compile warm", {"template_params": {"compile": True}}, compare_to="fast warm"),
        Case("fast sageattn + fp8 fast again", {"template_params": {**sage, **fp8}},
             compare_to="fast sageattn + fp8 fast"),
    ]
    pool = bench.pool("options", gpu, 8188)
    pool.start()
    outputs: dict = {}
    try:
        for case in cases:
            run_case(bench, "lane_options", pool, case, window, outputs)
    finally:
        pool.shutdown()


def lane_vram(bench: Bench) -> None:
    """Lane 1: the fast window as 24, 32 and 48 GiB cards run it (the template's device rows choose)."""
    gpu = (1,) if bench.args.lanes == "both" and not bench.args.cpu else (0,)
    window = bench.job(81 / 25)
    for index, limit in enumerate(bench.args.vram_limits):
        pool = bench.pool(f"vram{limit:g}", gpu, 8200 + 10 * index, vram_limit_gb=limit)
        started = time.monotonic()
        try:
            pool.start()
        except Exception as exc:
            bench.results.setdefault("lane_vram", []).append({"case": f"{limit:g} GiB", "failed": str(exc)[:2000]})
            bench.save()
            continue
        outputs: dict = {}
        try:
            for case in (Case(f"fast {limit:g} GiB cold"), Case(f"fast {limit:g} GiB warm")):
                run_case(bench, "lane_vram", pool, case, window, outputs)
        finally:
            pool.shutdown()
        log.info("VRAM %g GiB lane done in %.0f s", limit, time.monotonic() - started)


def windows(bench: Bench) -> None:
    """Both lanes at once on two GPUs (--lanes both), or one of them on GPU 0."""
    lanes = []
    if bench.args.lanes in ("both", "options"):
        lanes.append(threading.Thread(target=lane_options, args=(bench,), name="options"))
    if bench.args.lanes in ("both", "vram") and bench.args.vram_limits:
        lanes.append(threading.Thread(target=lane_vram, args=(bench,), name="vram"))
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()


def scaling(bench: Bench) -> None:
    """The same fast job on 1 GPU and on 2 (--gpus 1: on 1 only), after a warm-up that loads every instance."""
    args = bench.args
    counts = list(range(1, args.gpus + 1))
    pool = bench.pool("scaling", tuple(range(args.gpus)), 8188)
    planner = Learned(0.0)  # equal segments: a stitch lead would push the first one off the 72-frame grid
    pool.start()
    bench.results["startup_s"] = round(pool.startup_s, 1)
    try:
        started = time.monotonic()
        # One 81-frame segment per instance: every instance loads its models before the timed runs.
        warmup = bench.job(122 / 25, max_segment_frames=81, gpu_count=2) if args.gpus == 2 else bench.job(81 / 25)
        if args.template_params:  # the warm-up loads (and compiles) the models the timed job will use
            warmup["template_params"] = args.template_params
        warm = run_job(warmup, pool, bench.settings, job_id="warmup", learned=planner)
        bench.results["warmup"] = {"wall_s": round(time.monotonic() - started, 1),
                                   "instances": sorted({s["instance"] for s in warm["segments"]}),
                                   "node_seconds": [s["node_seconds"] for s in warm["segments"]]}
        bench.save()
        job = bench.job(args.frames / 25, **({"template_params": args.template_params} if args.template_params else {}))
        for count in counts:
            with PeakRss() as rss, PeakVram(list(range(args.gpus)) if not args.cpu else []) as vram:
                out = run_job({**job, "gpu_count": count}, pool, bench.settings, job_id=f"run{count}",
                              learned=planner)
            busy: dict[str, float] = {}  # ComfyUI seconds per instance (segments queue on one with fewer GPUs)
            for segment in out["segments"]:
                busy[segment["instance"]] = busy.get(segment["instance"], 0.0) + segment["comfy_seconds"]
            comfy = max(busy.values())
            bench.results.setdefault("runs", []).append({
                "gpus": count, "frames": out["frames"], "wall_s": out["timings"]["total"],
                "timings": out["timings"], "comfy_s": comfy,
                "overhead_s": round(out["timings"]["total"] - comfy, 2),
                "frames_copied": out["frames_copied"], "peak_vram_gb": vram.peaks_gb(),
                "worker_peak_rss_mb": round(rss.peak / 2**20, 1),
                "segments": [{k: s[k] for k in ("instance", "start_frame", "end_frame", "frames", "seconds",
                                                "comfy_seconds", "node_seconds")} for s in out["segments"]],
            })
            if not args.cpu:  # the output's md5 and flat/frozen frame checks (random weights: every frame noise)
                width, height = (int(v) for v in args.size.split("x"))
                frames = frames_of(out["video_path"], width, height)
                bench.results["runs"][-1].update({"frames_md5": hashlib.md5(frames.tobytes()).hexdigest(),
                                                  "frame_checks": frame_checks(frames)})
                del frames
            runs = bench.results["runs"]
            one = runs[0]["wall_s"]
            for run in runs:
                run["speedup"] = round(one / run["wall_s"], 3)
            bench.save()
    finally:
        pool.shutdown()


def keep_log_tails(root: Path, folder: Path, tail_bytes: int = 400_000) -> None:
    """The last bytes of every instance's ComfyUI log, into one file per pool."""
    folder.mkdir(parents=True, exist_ok=True)
    for pool in sorted(root.glob("instances-*")):
        with open(folder / f"comfyui_{pool.name}.log", "wb") as out:
            for log_path in sorted(pool.glob("*/comfyui.log")):
                data = log_path.read_bytes()
                out.write(f"===== {log_path.parent.name}\n".encode() + data[-tail_bytes:] + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["windows", "scaling"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--frames", type=int, default=842, help="scaling: the job's length")
    parser.add_argument("--gpus", type=int, choices=[1, 2], default=2,
                        help="scaling: 2 compares 1 GPU with 2; 1 times the job on one GPU (a machine with one)")
    parser.add_argument("--template-params", type=json.loads, default=None,
                        help="scaling: the job's template_params, JSON "
                             "(e.g. '{\"quantization\": \"fp8_e4m3fn_scaled_fast\"}')")
    parser.add_argument("--lanes", choices=["both", "options", "vram"], default="both",
                        help="windows: both lanes at once on GPUs 0 and 1, or one lane on GPU 0")
    parser.add_argument("--vram-limits", default="24,32,48", help="windows: GiB ceilings for lane 1 ('' for none)")
    parser.add_argument("--budget-s", type=float, default=570, help="stop starting cases after this many seconds")
    parser.add_argument("--min-case-s", type=float, default=45, help="skip a case with less time than this left")
    parser.add_argument("--models", default="/tmp/itw-models")
    parser.add_argument("--workflow", default="infinitetalk_image_single",
                        help="another image template only to check this script's plumbing quickly on a CPU")
    parser.add_argument("--only", default="", help="windows: run only cases whose names start with these (comma-separated)")
    parser.add_argument("--logs", help="folder to copy the tail of every ComfyUI instance's log into")
    parser.add_argument("--cpu", action="store_true", help="CPU instances (a check of this script)")
    parser.add_argument("--small", action="store_true", help="the small random DiT (with --cpu)")
    parser.add_argument("--vae", choices=["light", "full"], help="the random VAE's size (make_random_weights.py)")
    args = parser.parse_args()
    args.vram_limits = [float(v) for v in args.vram_limits.split(",") if v]
    args.only = [v for v in args.only.split(",") if v]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    started = time.monotonic()
    prepared = prepare(args, "itw-bench-")
    root = prepared.root
    results = {"mode": args.mode, "command": " ".join(sys.argv), "template_params": args.template_params,
               "device": prepared.device, "size": args.size, "weights": "small" if args.small else "full",
               "weights_s": round(prepared.weights_s, 1)}
    bench = Bench(args, root, prepared.models, prepared.media, prepared.settings, started + args.budget_s, results)
    bench.save()
    try:
        windows(bench) if args.mode == "windows" else scaling(bench)
    finally:
        results["total_s"] = round(time.monotonic() - started, 1)
        bench.save()
        if args.logs:
            keep_log_tails(root, Path(args.logs))
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=1)[:6000])


if __name__ == "__main__":
    main()
