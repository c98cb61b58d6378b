"""What colour matching costs per segment: the worker's own (SaveSegmentVideo's ColorMatcher, torch, on
ComfyUI's device) against the InfiniteTalk wrapper's `colormatch` (the color-matcher package, per frame,
numpy on the CPU), on frames of the real size.

    # ours, with ComfyUI's Python (torch); --device cuda on a GPU machine:
    .comfyui/venv/bin/python benchmarks/color_match_cost.py ours --device cpu
    # the wrapper's, in any Python with numpy and color-matcher==0.6.0:
    python benchmarks/color_match_cost.py wrapper --methods mkl,hm-mvgd-hm

Frames are a talking-head stand-in (a smooth gradient with a moving bright disc and noise, drifted in colour
over time), 832x480 by default. Each call adds its numbers to --out (docs/perf/color_match_cost.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def frames_like_a_face(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """[count, height, width, 3] float32 in 0..1: a gradient, a moving disc, noise, a slow colour drift."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.0 * x], axis=-1) * 0.6 + 0.2
    out = np.empty((count, height, width, 3), np.float32)
    for i in range(count):
        cx, cy = width * (0.5 + 0.1 * np.sin(i / 9)), height * (0.5 + 0.05 * np.cos(i / 7))
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < (height / 4) ** 2)[..., None] * 0.25
        drift = np.array([1 + 0.1 * i / count, 1.0, 1 - 0.1 * i / count], np.float32)
        out[i] = np.clip((base + disc) * drift + rng.normal(0, 0.02, (height, width, 3)), 0, 1)
    return out


def time_ours(frames: np.ndarray, device: str, batch: int, window: int) -> dict:
    """SaveSegmentVideo's path with and without matching: batches to the device, (statistics, match), to uint8."""
    import torch
    spec = importlib.util.spec_from_file_location("color_match", REPO / "comfy_nodes" / "color_match.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = torch.from_numpy(frames)
    reference_image, reference_frames = images[:1], images.flip(-1)  # image mode; video mode (other colours)
    target = torch.device(device)

    def run(reference) -> float:
        started = time.perf_counter()
        matcher = None if reference is None else module.ColorMatcher(reference, len(images), window, target)
        waiting = []
        for first in range(0, len(images), batch):
            chunk = images[first:first + batch].to(target)
            if matcher is None:
                (chunk * 255).to(torch.uint8).cpu()
                continue
            matcher.add(chunk)
            waiting.append((first, chunk))
            last = first + chunk.shape[0] == len(images)
            while waiting and (last or matcher.can_match(waiting[0][0] + waiting[0][1].shape[0])):
                start, pending = waiting.pop(0)
                (matcher.match(start, pending) * 255).to(torch.uint8).cpu()
        if target.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run(None)  # warm-up
    plain, image, video = run(None), run(reference_image), run(reference_frames)
    return {"device": device, "torch_threads": torch.get_num_threads(), "plain_s": round(plain, 3),
            "image_reference_s": round(image, 3), "source_frames_reference_s": round(video, 3),
            "per_frame_ms_image": round(1000 * (image - plain) / len(images), 3),
            "per_frame_ms_source_frames": round(1000 * (video - plain) / len(images), 3)}


def time_wrapper(frames: np.ndarray, methods: list[str], sample: int) -> dict:
    """The wrapper's loop: ColorMatcher().transfer(src=frame, ref=reference, method) for every frame."""
    from color_matcher import ColorMatcher
    reference = frames[0]
    result = {}
    for method in methods:
        started = time.perf_counter()
        for frame in frames[:sample]:
            ColorMatcher().transfer(src=frame, ref=reference, method=method)
        result[method] = {"per_frame_ms": round(1000 * (time.perf_counter() - started) / sample, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["ours", "wrapper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=200, help="frames matched (ours)")
    parser.add_argument("--sample", type=int, default=10, help="frames timed per method (wrapper)")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--methods", default="mkl,hm-mvgd-hm,reinhard")
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "color_match_cost.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    count = args.frames if args.which == "ours" else args.sample
    frames = frames_like_a_face(count, width, height)
    if args.which == "ours":
        found = time_ours(frames, args.device, batch=16, window=25)
    else:
        found = time_wrapper(frames, args.methods.split(","), args.sample)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    key = f"{args.which}_{args.device}" if args.which == "ours" else "wrapper_cpu"
    result[key] = {"machine": f"{platform.processor() or platform.machine()}", "size": args.size, "frames": count,
                   **found}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result[key], indent=1))


if __name__ == "__main__":
    main()
