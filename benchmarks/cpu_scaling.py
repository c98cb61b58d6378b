"""The same job on 1 and 2 CPU ComfyUI instances: wall time, time inside ComfyUI, overhead, stitch speed,
and the worker's peak memory at two video lengths; then what each seam mechanism costs.

    .venv/bin/python benchmarks/cpu_scaling.py [--seconds 20] [--repeats 2] [--seams-only]

Prints tables and writes docs/perf/cpu_scaling.json and docs/perf/cpu_seams.json. Runs through
worker.job.run_job (no runpod). The seam part speaks sentences with pauses (espeak-ng) for the audio and
runs the job with each mechanism added in turn: seam placement (SEAM_BUDGET_PERCENT), the focused blend,
colour matching; and times the loudness envelope and the placement search alone.
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
from media_samples.factory import (make_index_video, make_speech, make_tone, write_split_segment,  # noqa: E402
                                 yuv420p_frames)
from worker.media.inputs import cut_video  # noqa: E402
from worker.job import run_job  # noqa: E402
from worker.planning.learned import Learned  # noqa: E402
from worker.media.loudness import loudness_envelope  # noqa: E402
from worker.planning.segment_plan import plan_segments, total_frames_for  # noqa: E402
from worker.output.seam_blend import BlendOptions  # noqa: E402
from worker.planning.seam_placement import SeamSearch, place_seams  # noqa: E402
from worker.render.segment_video import SegmentVideo  # noqa: E402
from worker.output.stitch import OutputFormat, Stitcher  # noqa: E402

SENTENCES = ["Good morning, and thank you all for coming today.",
             "We are going to talk about how a long video is made on many machines at once.",
             "Each machine makes one part, and the parts overlap a little.",
             "Where two parts meet, the worker looks for a pause in the speech.",
             "It blends the two versions where they agree, and it measures every seam.",
             "That is all for now. Thank you, and goodbye."]
# Each mechanism added to the one before: (name, SEAM_BUDGET_PERCENT, request seams options).
SEAM_VARIANTS = [("none", 0.0, {"blend": "linear", "color_match": False}),
                 ("+ placement", 3.0, {"blend": "linear", "color_match": False}),
                 ("+ placement 10%", 10.0, {"blend": "linear", "color_match": False}),
                 ("+ focused blend", 3.0, {"blend": "focused", "color_match": False}),
                 ("+ colour match", 3.0, {"blend": "focused", "color_match": True})]


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


def speech_for(media: Path, seconds: float) -> Path:
    """Sentences with pauses, as long as `seconds` (repeated and cut)."""
    speech = make_speech(media / "speech_all.wav", SENTENCES * 4, pause_s=0.6)
    audio = media / f"speech_{seconds}.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(speech), "-t", str(seconds), str(audio)],
                   check=True)
    return audio


def median_seconds(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def seam_costs(worker: LocalWorker, seconds: float, size: tuple[int, int], repeats: int) -> dict:
    """The job with each seam mechanism added in turn (best of `repeats`), and the envelope and search alone."""
    audio = speech_for(worker.media, seconds)
    frames = total_frames_for(seconds, 25)
    job = job_for(worker.media, seconds, size)
    job["audio"] = str(audio)
    envelope_s = median_seconds(lambda: loudness_envelope(audio, 25, frames))
    envelope = loudness_envelope(audio, 25, frames)
    balanced = plan_segments(frames, 2, 8)
    search = SeamSearch(envelope.levels_db, 8, 0.03, 2, radius=50)
    placement_s = median_seconds(lambda: place_seams(balanced, search))
    variants = []
    for name, budget, options in SEAM_VARIANTS:
        settings = worker.settings.model_copy(update={"seam_budget_percent": budget})
        best = None
        for repeat in range(repeats):
            out = run_job({**job, "seams": options}, worker.pool, settings, f"seams{len(variants)}_{repeat}",
                          learned=Learned(0.0))  # equal segments in every variant
            if best is None or out["timings"]["total"] < best["timings"]["total"]:
                best = out
        save = [v for s in best["segments"] for k, v in s["node_seconds"].items() if k.endswith("SaveSegmentVideo")]
        seam = best["seams"][0]
        variants.append({"variant": name, "wall_s": best["timings"]["total"], "generate_s": best["timings"]["generate"],
                         "stitch_tail_s": best["timings"]["stitch"], "save_node_s": round(max(save), 3),
                         "seam_summary": best["seam_summary"], "seams": best["seams"],
                         "moved_frames": seam["moved_frames"], "audio_db": seam["audio_db"],
                         "blend": (seam["blend_start_frame"], seam["blend_end_frame"])})
    ffmpeg_start_s = median_seconds(lambda: subprocess.run(["ffmpeg", "-version"], capture_output=True, check=True))
    return {"job": f"restyle, {seconds:g} s of espeak-ng speech at 25 fps, {size[0]}x{size[1]}, 2 instances",
            "frames": frames, "loudness_envelope_s": round(envelope_s, 4), "ffmpeg_start_s": round(ffmpeg_start_s, 4),
            "placement_search_s": round(placement_s, 5), "variants": variants,
            "stitch_of_one_overlap": blend_cost(worker.media / "blend")}


def blend_cost(folder: Path, size: tuple[int, int] = (832, 480), overlap: int = 40, repeats: int = 3) -> dict:
    """The stitch of two split-form segments (bodies copied: what is left is the overlap and the join) with the
    linear and the focused blend, best of `repeats`: the focused blend reads the later segment's overlap twice
    and compares the two versions."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = 200
    plan = plan_segments(frames, 2, overlap)
    source = make_index_video(folder / "source.mp4", frames, 25, *size)
    videos = []
    for segment in plan.segments:
        clip = cut_video(source, folder / f"s{segment.index}.mp4", segment, 25, *size)
        files = write_split_segment(yuv420p_frames(clip, *size), folder / f"seg{segment.index}",
                                    plan.overlap_with_previous(segment), plan.overlap_with_next(segment), *size)
        videos.append(SegmentVideo(files.get("body"), files.get("head"), files.get("tail"), split=True))
    audio = make_tone(folder / "tone.wav", frames / 25)
    output = OutputFormat(*size, 25, 19, "veryfast", 192)
    result = {"size": f"{size[0]}x{size[1]}", "overlap": overlap}
    for name, blend in (("linear_s", BlendOptions(focused=False)), ("focused_s", BlendOptions(True, 10))):
        best = None
        for repeat in range(repeats):
            started = time.perf_counter()
            with Stitcher(plan, folder / "chunks", audio, output, blend=blend) as stitcher:
                for segment in plan.segments:
                    stitcher.add_segment(segment.index, videos[segment.index])
                stitcher.finish(folder / "out.mp4")
            seconds = time.perf_counter() - started
            best = seconds if best is None else min(best, seconds)
        result[name] = round(best, 3)
    return result


def print_seams(result: dict) -> None:
    print(f"\nseams: {result['job']}; loudness envelope {result['loudness_envelope_s'] * 1000:.0f} ms, "
          f"placement search {result['placement_search_s'] * 1000:.2f} ms")
    print(f"{'variant':>16} {'wall s':>7} {'stitch s':>8} {'save s':>7} {'moved':>6} {'cost/budget':>12} "
          f"{'audio dB':>9} {'blend':>9}")
    for v in result["variants"]:
        summary = v["seam_summary"]
        print(f"{v['variant']:>16} {v['wall_s']:>7.2f} {v['stitch_tail_s']:>8.2f} {v['save_node_s']:>7.2f} "
              f"{v['moved_frames']:>6} {summary['cost_frames']:>5g}/{summary['budget_frames']:<6g} "
              f"{v['audio_db']:>9.1f} {v['blend'][0]:>4}-{v['blend'][1]:<4}")
    blend = result["stitch_of_one_overlap"]
    print(f"stitch of two split segments, overlap {blend['overlap']} at {blend['size']}: linear {blend['linear_s']:.3f} s, "
          f"focused {blend['focused_s']:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="video length of the timed job")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--out", default=str(REPO / "docs" / "perf" / "cpu_scaling.json"))
    parser.add_argument("--seams-out", default=str(REPO / "docs" / "perf" / "cpu_seams.json"))
    parser.add_argument("--seams-only", action="store_true", help="only the seam mechanisms' costs")
    parser.add_argument("--base-port", type=int, default=8700)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        worker = LocalWorker.on_cpu(Path(tmp), base_port=args.base_port)
        worker.pool.start()
        try:
            worker.run({**job_for(worker.media, 2.0, size), "gpu_count": 1})  # warm-up: torch kernels
            seams = seam_costs(worker, args.seconds, size, args.repeats)
            Path(args.seams_out).write_text(json.dumps(seams, indent=1) + "\n")
            print_seams(seams)
            if args.seams_only:
                return
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
