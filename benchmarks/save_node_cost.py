"""What SaveSegmentVideo costs for a whole segment, and where it goes: the node itself (comfy_nodes), run in
ComfyUI's Python on the frames of one long segment, against ffmpeg alone encoding the same yuv420p frames
(the floor: what the node's x264 work costs with nothing else in the way).

    # on the dev machine (CPU), from the repository root:
    .comfyui/venv/bin/python benchmarks/save_node_cost.py --device cpu
    # on a GPU machine (carry .devcarry; benchmarks/device/install_on_device.sh), the same with --device cuda

Cases, each on the same frames (a talking-head stand-in, benchmarks/color_match_cost.py):
  ffmpeg_alone   the body's encode (the output's CRF and preset) from yuv420p bytes already in memory
  split          the node as the InfiniteTalk templates run it for a single segment: the body encoded with the
                 output's settings, no overlaps
  split_matched  the same, every frame colour-matched to a reference image first (request seams.color_match)
  whole          the whole form (CRF 12, ultrafast, a key frame a second): what other templates write
Each node case reports the node's own breakdown (SaveClock: frames to the device, colour match, yuv420p and
back to the CPU, writing into ffmpeg's pipe, waiting for ffmpeg to finish). Results go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.color_match_cost import frames_like_a_face  # noqa: E402


def load_node(comfy_dir: Path, output_dir: Path, cpu: bool):
    """comfy_nodes as ComfyUI loads it, with ComfyUI's own modules importable, its device chosen (--cpu or the
    GPU) and its output folder set."""
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing(False)  # ComfyUI's defaults, not this script's arguments
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import folder_paths

    folder_paths.set_output_directory(str(output_dir))
    import comfy_nodes

    return comfy_nodes


def time_ffmpeg_alone(segment_format, planes: bytes, width: int, height: int, fps: float, crf: int, preset: str,
                      out: Path) -> float:
    command = segment_format.encode_command(str(out), width, height, fps, crf, preset)
    started = time.perf_counter()
    subprocess.run(command, input=planes, check=True, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where ComfyUI's device is")
    parser.add_argument("--frames", type=int, default=842, help="the segment's frames (842: 33.7 s at 25 fps)")
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--crf", type=int, default=19, help="the output's CRF (the request's default)")
    parser.add_argument("--preset", default="veryfast", help="the output's x264 preset (the request's default)")
    parser.add_argument("--cases", default="ffmpeg_alone,split,split_matched,whole")
    parser.add_argument("--comfy-dir", default=str(REPO / ".comfyui" / "ComfyUI"))
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "save_node_cost.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    fps = 25.0

    import torch

    with tempfile.TemporaryDirectory(prefix="save_node_cost_") as tmp:
        nodes = load_node(Path(args.comfy_dir), Path(tmp), cpu=args.device == "cpu")
        started = time.perf_counter()
        frames = torch.from_numpy(frames_like_a_face(args.frames, width, height))
        results = {"frames": args.frames, "size": args.size, "fps": fps, "crf": args.crf, "preset": args.preset,
                   "device": args.device, "cpu": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "torch": torch.__version__,
                   "frames_made_s": round(time.perf_counter() - started, 2), "cases": {}}
        if args.device != "cpu":
            results["gpu"] = torch.cuda.get_device_name()
        for case in args.cases.split(","):
            if case == "ffmpeg_alone":
                planes = b"".join(nodes.yuv420p_frames(frames[i:i + 16]).cpu().numpy().tobytes()
                                  for i in range(0, len(frames), 16))
                seconds = time_ffmpeg_alone(nodes.segment_format, planes, width, height, fps, args.crf, args.preset,
                                            Path(tmp) / "alone.mp4")
                results["cases"][case] = {"seconds": round(seconds, 2), "fps": round(args.frames / seconds, 1)}
            else:
                node = nodes.SaveSegmentVideo()
                options = {"body_crf": args.crf, "body_preset": args.preset} if case.startswith("split") else {}
                if case == "split_matched":
                    options["color_reference"] = frames[:1].flip(-1).contiguous()  # other colours than the frames
                started = time.perf_counter()
                node.save(frames, fps, case, 12, "ultrafast", **options)
                seconds = time.perf_counter() - started
                results["cases"][case] = {"seconds": round(seconds, 2), "fps": round(args.frames / seconds, 1),
                                          "steps_s": {k: round(v, 2) for k, v in node.last_seconds.items()}}
            print(case, json.dumps(results["cases"][case]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else []
    runs.append(results)
    out.write_text(json.dumps(runs, indent=1) + "\n")
    print("->", out)


if __name__ == "__main__":
    main()
