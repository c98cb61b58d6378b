"""Where a sampling step of InfiniteTalk goes on a GPU: torch.profiler over one warm DiT step of the real-size
template, its CUDA time grouped by kind, and the per-window costs outside the sampler, for each setting asked.

    source benchmarks/device/install_on_device.sh        # on the lent GPU machine (see benchmarks/device/)
    python3 benchmarks/infinitetalk_profile.py --out $OUT/it_profile.json

Every case is one 81-frame window (832x480, fast preset, seed 7) of `infinitetalk_image_single` through the
worker's pool and run_job, with every model file made at the real 14B shapes with random values
(scripts/make_random_weights.py --full-size), as benchmarks/infinitetalk_gpu.py runs it. ComfyUI loads the
benchmark-only custom node package benchmarks/it_profile_hook, which times each DiT call and VAE encode/decode
(CUDA-synchronized) and runs torch.profiler over the second DiT call (step 2 of 4) of each case marked `profile`.
Kernels are grouped by name (benchmarks/it_profile_hook: attention, gemm, elementwise_norm_rope, casts_copies,
convolution, other); kernels inside the audio cross-attention (SingleStreamAttention) are counted apart as
`audio_cross_attn` when the model runs eagerly (under torch.compile its kernels are fused with the block's and
fall into the other kinds).

Per case: the DiT's seconds a step (each call timed), the profiled step's groups and top kernels, VAE encode and
decode seconds inside the sampler, each node's seconds (CLIP vision, audio embeds, the save node), the output's
mean absolute difference (8-bit) from the bf16 reference case, and the frame checks (the least per-frame
standard deviation and the least mean difference between consecutive frames: a flat or frozen frame shows there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.infinitetalk_gpu import Bench, frame_checks, frames_of, prepare  # noqa: E402
from benchmarks.samplers import PeakVram  # noqa: E402
from worker.job import run_job  # noqa: E402

log = logging.getLogger("infinitetalk_profile")

BF16_MM = {"quantization": "fp8_e4m3fn_scaled"}  # fp8 weights, bf16 matmuls: the template's own setting
FP8_MM = {"quantization": "fp8_e4m3fn_scaled_fast"}  # fp8 matmuls (the >= 38 GiB row's default since issue 25)
EAGER, COMPILE = {"compile": False}, {"compile": True}
FULL_4_STEPS = {"quality": "full", "steps": 4}  # the full preset (no LoRA, cfg 5, audio cfg 4: three passes a step)
# name: (template_params, profile this case's warm step[, request fields]). A "cold" case loads (or reloads) the
# models and compiles; the case after it with the same params is the warm one. Every case names both settings,
# so that a change of the device row's defaults does not change what a case measures. Warm cases run
# --windows windows (cold ones one).
CASES = {
    "eager_cold": ({**EAGER, **BF16_MM}, False),
    "eager": ({**EAGER, **BF16_MM}, True),
    "compile_cold": ({**COMPILE, **BF16_MM}, False),
    "compile": ({**COMPILE, **BF16_MM}, True),
    "fp8fast_compile_cold": ({**COMPILE, **FP8_MM}, False),
    "fp8fast_compile": ({**COMPILE, **FP8_MM}, True),
    "fp8fast_eager_cold": ({**EAGER, **FP8_MM}, False),
    "fp8fast_eager": ({**EAGER, **FP8_MM}, True),
    "sageattn_compiled_cold": ({**COMPILE, **FP8_MM, "attention_mode": "sageattn_compiled"}, False),
    "sageattn_compiled": ({**COMPILE, **FP8_MM, "attention_mode": "sageattn_compiled"}, True),
    # SageAttention 2.2.0 where it is installed ahead of the carried 1.0.6 (benchmarks/device/build_sageattention.sh;
    # `versions` records which one ran): the wrapper's custom op (torch.ops.wanvideo.sageattn, opaque to
    # torch.compile), which on Hopper runs the sm90 CUDA kernel
    "sage2_compile_cold": ({**COMPILE, **FP8_MM, "attention_mode": "sageattn"}, False),
    "sage2_compile": ({**COMPILE, **FP8_MM, "attention_mode": "sageattn"}, True),
    # cuDNN's fp8 SDPA for the self-attention (comfy_nodes/fp8_attention.py; needs nvidia-cudnn-frontend)
    "cudnnfp8_compile_cold": ({**COMPILE, **FP8_MM, "attention_mode": "cudnn_fp8"}, False),
    "cudnnfp8_compile": ({**COMPILE, **FP8_MM, "attention_mode": "cudnn_fp8"}, True),
    "fp8fast_compile_noprof": ({**COMPILE, **FP8_MM}, False),
    "full_fp8fast_compile_cold": ({**COMPILE, **FP8_MM}, False, FULL_4_STEPS),
    "full_fp8fast_compile": ({**COMPILE, **FP8_MM}, False, FULL_4_STEPS),
    "full_cudnnfp8_compile_cold": ({**COMPILE, **FP8_MM, "attention_mode": "cudnn_fp8"}, False, FULL_4_STEPS),
    "full_cudnnfp8_compile": ({**COMPILE, **FP8_MM, "attention_mode": "cudnn_fp8"}, False, FULL_4_STEPS),
}
# attention_mode sdpa (bf16 attention) wherever a case names no attention_mode: the >= 38 GiB row's cudnn_fp8 only
# where a case asks for it
CASES = {name: ({"attention_mode": "sdpa", **params}, *rest) for name, (params, *rest) in CASES.items()}
REFERENCE = "eager"  # sdpa (bf16 attention), fp8-scaled weights computed in bf16, no compile: the template as written
# a case that differs from another in one setting only is also compared with that one, pixel by pixel
PAIRS = {"sage2_compile_cold": "fp8fast_compile_cold", "sage2_compile": "fp8fast_compile",
         "cudnnfp8_compile_cold": "fp8fast_compile_cold", "cudnnfp8_compile": "fp8fast_compile",
         "sageattn_compiled_cold": "fp8fast_compile_cold", "sageattn_compiled": "fp8fast_compile",
         "full_cudnnfp8_compile_cold": "full_fp8fast_compile_cold", "full_cudnnfp8_compile": "full_fp8fast_compile"}


def timings_of(profile_dir: Path, label: str) -> dict:
    path = profile_dir / "timings.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    mine = [t for t in lines if t["label"] == label]
    dit = [t["s"] for t in mine if t["kind"] == "dit"]
    timed = [t for t in mine if "t" in t]
    return {"dit_step_s": [round(s, 3) for s in dit],
            "dit_step_median_s": round(float(np.median(dit)), 3) if dit else None,
            "dit_profiled_step_s": next((round(t["s"], 3) for t in mine if t["kind"] == "dit_profiled"), None),
            "vae_encode_s": [round(t["s"], 3) for t in mine if t["kind"] == "vae_encode"],
            "vae_decode_s": [round(t["s"], 3) for t in mine if t["kind"] == "vae_decode"],
            "vae_to_s": [round(t["s"], 3) for t in mine if t["kind"] == "vae_to"],
            "seconds_by_kind": {kind: round(sum(t["s"] for t in mine if t["kind"] == kind), 3)
                                for kind in sorted({t["kind"] for t in mine})},
            "gc_collect_s": [round(t["s"], 3) for t in mine if t["kind"] == "gc_collect"],
            # every timed call in order: [kind, start (s from the first), seconds]; the gaps are the untimed rest
            "timeline": [[t["kind"], round(t["t"] - timed[0]["t"], 3), round(t["s"], 3)] for t in timed]}


def run_case(bench: Bench, pool, profile_dir: Path, name: str, params: dict, profile: bool, outputs: dict,
             fields: dict | None = None, windows: int = 1, compare_with: str | None = None) -> None:
    fields = fields or {}
    entry: dict = {"case": name, "template_params": params, "fields": fields, "windows": windows}
    if bench.deadline - time.monotonic() < bench.args.min_case_s:
        entry["skipped"] = f"{bench.deadline - time.monotonic():.0f} s left of the call"
        bench.results.setdefault("cases", []).append(entry)
        bench.save()
        return
    (profile_dir / "label").write_text(name)
    if profile:
        (profile_dir / "profile").write_text("1")
    started = time.monotonic()
    try:
        with PeakVram([pool.instances[0].gpu] if pool.instances[0].gpu is not None else []) as vram:
            out = run_job({**bench.job((81 + 72 * (windows - 1)) / 25), "template_params": params, **fields}, pool,
                          bench.settings, job_id=name)
        segment = out["segments"][0]
        entry.update({"wall_s": round(time.monotonic() - started, 2), "comfy_s": segment["comfy_seconds"],
                      "device_settings": segment["device_settings"], "peak_vram_gb": vram.peaks_gb(),
                      "node_seconds": segment["node_seconds"], **timings_of(profile_dir, name)})
        width, height = (int(v) for v in bench.args.size.split("x"))
        frames = frames_of(out["video_path"], width, height)
        outputs[name] = frames
        entry["frames_md5"] = hashlib.md5(frames.tobytes()).hexdigest()
        entry["frame_checks"] = frame_checks(frames)
        reference = outputs.get(REFERENCE)
        if reference is not None and name != REFERENCE and reference.shape == frames.shape:
            entry["mean_abs_diff_8bit"] = round(float(np.abs(frames.astype(np.int16) - reference).mean()), 3)
            entry["compared_with"] = REFERENCE
        other = outputs.get(compare_with) if compare_with else None
        if other is not None and other.shape == frames.shape:  # an A/B: the same case with the other patches
            entry["ab"] = {"with": compare_with, "bit_identical": bool(np.array_equal(frames, other)),
                           "mean_abs_diff_8bit": round(float(np.abs(frames.astype(np.int16) - other).mean()), 4),
                           "frames_differing": int((frames != other).reshape(len(frames), -1).any(axis=1).sum())}
        summary = profile_dir / f"{name}.profile.json"
        if summary.exists():
            entry["profile"] = json.loads(summary.read_text())
    except Exception as exc:  # one failing setting must not cost the others their measurement
        entry.update({"failed": f"{type(exc).__name__}: {exc}"[:3000], "wall_s": round(time.monotonic() - started, 2)})
        log.exception("%s failed", name)
    finally:
        (profile_dir / "profile").unlink(missing_ok=True)
    log.info("%s: %s", name, {k: v for k, v in entry.items() if k not in ("node_seconds", "profile")})
    bench.results.setdefault("cases", []).append(entry)
    bench.save()


def regroup(results: dict) -> None:
    """Re-classifies each profile's top kernels with the hook's current kind_of and moves their time between
    groups (for a JSON written by an older classifier; kernels outside the top 40 keep their old kind)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from it_profile_hook import kind_of

    for case in results.get("cases", []):
        p = case.get("profile")
        if not p:
            continue
        groups = {k: dict(v) for k, v in p["groups"].items()}
        moved = 0.0
        for k in p["top_kernels"]:
            if k["kind"] in ("audio_cross_attn", "ref_attn_map"):
                continue
            new = kind_of(k["name"])
            if new != k["kind"]:
                groups[k["kind"]]["ms"] -= k["ms"]
                groups[k["kind"]]["kernels"] -= k["calls"]
                g = groups.setdefault(new, {"ms": 0.0, "kernels": 0})
                g["ms"] += k["ms"]
                g["kernels"] += k["calls"]
                k["kind"] = new
                moved += k["ms"]
        total = sum(g["ms"] for g in groups.values())
        for g in groups.values():
            g["ms"] = round(g["ms"], 2)
            g["share"] = round(g["ms"] / total, 4)
        p["groups_as_recorded"] = p["groups"]
        p["groups"] = dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"]))
        p["regrouped_ms"] = round(moved, 2)


def table(results: dict) -> str:
    rows = ["| case | s a step (median) | profiled step s | attention | gemm | elementwise/norm/RoPE | audio x-attn "
            "| casts/copies | other | GPU busy of wall | VAE dec s | diff | flat/frozen |"]
    for c in results.get("cases", []):
        p = c.get("profile") or {}
        g = p.get("groups", {})
        ms = lambda k: f"{g[k]['ms']:.0f}" if k in g else "-"  # noqa: E731
        other = sum(v["ms"] for k, v in g.items() if k not in (
            "attention", "gemm", "elementwise_norm_rope", "audio_cross_attn", "casts_copies"))
        fc = c.get("frame_checks", {})
        busy = f"{p['gpu_busy_ms'] / 1000 / p['wall_s']:.0%}" if p else "-"
        rows.append(f"| {c['case']} | {c.get('dit_step_median_s', '-')} | {p.get('wall_s', '-')} | {ms('attention')} "
                    f"| {ms('gemm')} | {ms('elementwise_norm_rope')} | {ms('audio_cross_attn')} | {ms('casts_copies')} "
                    f"| {other:.0f} | {busy} | {c.get('vae_decode_s', '-')} | {c.get('mean_abs_diff_8bit', '-')} "
                    f"| {fc.get('flat_frames', '-')}/{fc.get('frozen_frames', '-')} |"
                    + (f" FAILED {c['failed'][:200]}" if "failed" in c else "")
                    + (f" skipped: {c['skipped']}" if "skipped" in c else ""))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--regroup", action="store_true",
                        help="only re-classify the top kernels of --out (a JSON this script wrote) and print the table")
    parser.add_argument("--cases", default="eager_cold,eager,compile_cold,compile,fp8fast_compile_cold,fp8fast_compile",
                        help=f"comma-separated, in order; known: {', '.join(CASES)}")
    parser.add_argument("--unpatched-cases", default="",
                        help="then these cases again on a second instance with WORKER_WAN_PATCHES=0 (comfy_nodes/"
                             "wan_patches.py off), named <case>_unpatched: an A/B of the patches")
    parser.add_argument("--unpatched-setting", default="0",
                        help="WORKER_WAN_PATCHES for the --unpatched-cases lane: 0 (none) or a comma-separated list of "
                             "the speed patches to keep (comfy_nodes/wan_patches.py)")
    parser.add_argument("--second-lane-comfy-args", default="",
                        help="extra ComfyUI arguments for the --unpatched-cases lane only (e.g. '--fast autotune'); "
                             "with --unpatched-setting 1 the lane differs from the first in these alone")
    parser.add_argument("--second-lane-name", default="unpatched", help="the suffix of the second lane's case names")
    parser.add_argument("--windows", type=int, default=1, help="81-frame windows of a warm case's job (cold: 1)")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--budget-s", type=float, default=540, help="start no case after this many seconds")
    parser.add_argument("--min-case-s", type=float, default=40)
    parser.add_argument("--models", default="/tmp/itw-models")
    parser.add_argument("--workflow", default="infinitetalk_image_single")
    parser.add_argument("--cpu", action="store_true", help="CPU instances with the small DiT (a check of this script)")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--vae", choices=["light", "full"], help="the random VAE's size (make_random_weights.py)")
    args = parser.parse_args()
    args.only, args.lanes, args.vram_limits = [], "options", []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.regroup:
        results = json.loads(Path(args.out).read_text())
        regroup(results)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(table(results))
        return
    started = time.monotonic()
    comfy = Path(os.environ.get("COMFYUI_PATH", REPO / ".comfyui" / "ComfyUI"))
    hook = comfy / "custom_nodes" / "it_profile_hook"
    if not hook.exists():
        hook.symlink_to(REPO / "benchmarks" / "it_profile_hook")
    prepared = prepare(args, "itp-bench-")
    root = prepared.root
    profile_dir = root / "profile"
    profile_dir.mkdir()
    os.environ["IT_PROFILE_DIR"] = str(profile_dir)  # read by the hook in ComfyUI, whose pools start below
    try:  # the device's python3 has torch; the dev machine's worker venv (a --cpu check) has not
        import torch

        versions = {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}
    except ImportError:
        versions = {}
    try:  # which SageAttention the sage cases ran: 1.0.6 from .devcarry, or 2.2.0 where /tmp/sage comes first
        from importlib.metadata import version

        versions["sageattention"] = version("sageattention")
    except ImportError:
        pass
    results = {"mode": "profile", "device": prepared.device, "size": args.size, **versions,
               "weights_s": round(prepared.weights_s, 1), "reference": REFERENCE, "command": " ".join(sys.argv),
               "windows": args.windows, "unpatched_setting": args.unpatched_setting,
               "second_lane_comfy_args": args.second_lane_comfy_args}
    bench = Bench(args, root, prepared.models, prepared.media, prepared.settings, started + args.budget_s, results)
    bench.save()
    outputs: dict = {}
    lanes = [("profile", [n for n in args.cases.split(",") if n], "", "1")]
    if args.unpatched_cases:
        lanes.append(("unpatched", [n for n in args.unpatched_cases.split(",") if n], f"_{args.second_lane_name}",
                      args.unpatched_setting))
    try:
        for index, (lane, names, suffix, patches) in enumerate(lanes):
            os.environ["WORKER_WAN_PATCHES"] = patches  # read by comfy_nodes/wan_patches.py in ComfyUI
            pool = bench.pool(lane, (0,), 8188 + 10 * index,
                              comfy_args=args.second_lane_comfy_args.split() if index else [])
            pool.start()
            try:
                for name in names:
                    params, profile, *fields = CASES[name]
                    if args.cpu:  # the plumbing check runs a CPU template that has none of these params
                        params = {}
                    run_case(bench, pool, profile_dir, name + suffix, params, profile, outputs,
                             fields=fields[0] if fields else None, windows=1 if name.endswith("_cold") else args.windows,
                             compare_with=name if suffix else PAIRS.get(name))
            finally:
                pool.shutdown()
    finally:
        results["total_s"] = round(time.monotonic() - started, 1)
        bench.save()
        with open(Path(args.out).parent / "comfyui_profile.log", "wb") as out:
            for log_path in sorted(root.glob("instances-*/*/comfyui.log")):
                out.write(f"===== {log_path}\n".encode() + log_path.read_bytes()[-300_000:])
        shutil.rmtree(root, ignore_errors=True)
    print(table(results))


if __name__ == "__main__":
    main()
