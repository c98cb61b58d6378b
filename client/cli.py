"""`python -m client submit|status|cancel|estimate|timeline ...` (README: "The client")."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from client.api import ApiError, JobState, LocalApi, RunPodEndpoint, WorkerApi
from client.bucket import Bucket, BucketError
from client.display import ProgressLine, format_progress
from client.media import MediaError, place_media
from client.report import estimate_report, job_summary
from client.results import ResultError, save_video
from client.timeline import benchmark_run_as_response, timeline_svg

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130
CANCEL_WAIT_S = 60  # after Ctrl-C: how long to wait for the worker to confirm the job stopped
UNCONFIRMED = "cancel sent, not confirmed"


class ClientError(RuntimeError):
    """Something the user can fix; printed without a traceback."""


# ------------------------------------------------------------------------------------------- arguments


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--endpoint", default=os.environ.get("RUNPOD_ENDPOINT_ID"),
                       help="RunPod endpoint id (or RUNPOD_ENDPOINT_ID); the key comes from RUNPOD_API_KEY")
    where.add_argument("--url", help="the worker's local API, e.g. http://localhost:8000")


# The request's bounds as the worker checks them (worker/request/job_request.py; tests/test_client_package.py
# keeps the two in step): the client cannot import the worker, so it states them here.
EXAMPLES = """examples:
  python -m client submit --url http://localhost:8000 --image face.png --audio speech.wav -o out.mp4
  python -m client submit --endpoint 3kq9x2abcd1234 --image face.png --audio speech.wav \\
      --width 832 --height 480 --set quality=fast --prompt "a woman talking" -o out.mp4"""


def _request_arguments(parser: argparse.ArgumentParser) -> None:
    media = parser.add_argument_group("media (a local file or an http(s) URL)")
    media.add_argument("--image", help="reference image (input_type image); this or --video is required")
    media.add_argument("--video", help="source video (input_type video)")
    media.add_argument("--audio", help="speech, required: the video lasts as long as it")
    media.add_argument("--audio-2", dest="audio_2", help="second speaker (person_count multi)")
    fields = parser.add_argument_group("request fields (README: Request); left out: the worker's defaults")
    fields.add_argument("--workflow", help="the template (workflows/NAME.bindings.json); default: by input type "
                                           "(the worker's DEFAULT_WORKFLOWS)")
    fields.add_argument("--input-type", choices=["image", "video"], help="default: video if --video is given")
    fields.add_argument("--person-count", choices=["single", "multi"], help="default: multi if --audio-2 is given")
    fields.add_argument("--prompt", help="what the video shows, up to 10000 characters; default: the template's")
    fields.add_argument("--negative-prompt", help="what it should not show, up to 10000 characters")
    fields.add_argument("--seed", type=int, help="0-9007199254740992 (default 42)")
    fields.add_argument("--steps", type=int, help="sampling steps: 1-200 (default: the template's preset)")
    fields.add_argument("--width", type=int, help="pixels: 64-2048, a multiple of 16 (default 512)")
    fields.add_argument("--height", type=int, help="pixels: 64-2048, a multiple of 16 (default 512)")
    fields.add_argument("--fps", type=float, help="frames a second: 1-60 (default 25)")
    fields.add_argument("--gpu-count", type=int, help="instances (GPUs) to use at most: 1-64 (default: all)")
    fields.add_argument("--single-gpu", action="store_true", help="use_multi_gpu false: one segment")
    fields.add_argument("--overlap-frames", type=int, help="frames neighbouring segments share: 0-200 "
                                                           "(default: the template's)")
    fields.add_argument("--crf", type=int, help="output.crf, x264 quality: 0-51, lower is better (default 19)")
    fields.add_argument("--preset", choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                                             "slower"], help="output.preset, x264 speed (default veryfast)")
    fields.add_argument("--audio-bitrate-kbps", type=int, help="output.audio_bitrate_kbps: 32-512 (default 192)")
    fields.add_argument("--destination", choices=["auto", "base64", "bucket", "volume"], help="output.destination")
    fields.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other request field; VALUE is JSON where it parses (--set quality=\"fast\", "
                             "--set max_segment_frames=300), else a string; dots nest (output.crf=18)")
    parser.add_argument("--inline-limit-mb", type=float,
                        help="request body size up to which local files go inline as base64 (default: the API's "
                             "limit, 10 MB); bigger ones go through the bucket (BUCKET_* variables)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description="Turns files into a video with the worker.")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="run a job, show its progress, save its video", epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _target_arguments(submit)
    _request_arguments(submit)
    submit.add_argument("-o", "--output", type=Path, help="where to write the video (default: <job id>.mp4)")
    submit.add_argument("--timeline", type=Path, help="also draw the job as an SVG timeline to this file")
    submit.add_argument("--response", type=Path, help="also write the response (without the base64 video) as JSON")
    submit.add_argument("--poll-s", type=float, default=1.0, help="seconds between status polls (default 1)")
    submit.add_argument("--quiet", action="store_true", help="no progress line")

    status = commands.add_parser("status", help="a job's state and progress")
    _target_arguments(status)
    status.add_argument("job_id")
    status.add_argument("--wait", action="store_true", help="follow the job to its end (then -o saves its video)")
    status.add_argument("-o", "--output", type=Path)
    status.add_argument("--poll-s", type=float, default=1.0)

    cancel = commands.add_parser("cancel", help="cancel a job")
    _target_arguments(cancel)
    cancel.add_argument("job_id")

    estimate = commands.add_parser("estimate", help="the worker's plan and estimate for a request (dry run)",
                                   epilog=EXAMPLES.replace(" submit ", " estimate ").replace(" -o out.mp4", ""),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _target_arguments(estimate)
    _request_arguments(estimate)

    timeline = commands.add_parser("timeline", help="draw a saved response (or the GPU benchmark's JSON) as SVG")
    timeline.add_argument("response", type=Path, help="a response JSON (--response of submit, or /status's body), "
                                                      "or benchmarks/gpu_scaling.py's JSON")
    timeline.add_argument("-o", "--output", type=Path, required=True)
    timeline.add_argument("--run", type=int, help="benchmark JSON: which run (by its GPU count)")
    timeline.add_argument("--title", default="")
    timeline.add_argument("--span-s", type=float, help="length of the time axis (several jobs on one scale)")
    return parser


def _set_field(job_input: dict, name: str, value) -> None:
    *parents, leaf = name.split(".")
    for parent in parents:
        job_input = job_input.setdefault(parent, {})
    job_input[leaf] = value


def build_input(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """(the request's fields without its media, the media arguments by field)."""
    media = {f: getattr(args, f) for f in ("image", "video", "audio", "audio_2") if getattr(args, f)}
    given = media.keys() | {item.partition("=")[0].strip() for item in args.set}
    if "audio" not in given:
        raise ClientError("--audio: required (the speech; the video lasts as long as it): a local file or an "
                          "http(s) URL")
    if not given & {"image", "video"}:
        raise ClientError("--image or --video: required (the reference picture, or the video to restyle)")
    job_input: dict = {}
    plain = {"workflow": args.workflow, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
             "seed": args.seed, "steps": args.steps, "width": args.width, "height": args.height, "fps": args.fps,
             "gpu_count": args.gpu_count, "overlap_frames": args.overlap_frames,
             "output.crf": args.crf, "output.preset": args.preset, "output.audio_bitrate_kbps": args.audio_bitrate_kbps,
             "output.destination": args.destination,
             "input_type": args.input_type or ("video" if args.video else "image" if args.image else None),
             "person_count": args.person_count or ("multi" if args.audio_2 else None)}
    if args.single_gpu:
        plain["use_multi_gpu"] = False
    for name, value in plain.items():
        if value is not None:
            _set_field(job_input, name, value)
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ClientError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        _set_field(job_input, name.strip(), value)
    return job_input, media


def make_api(args: argparse.Namespace) -> WorkerApi:
    if args.url:
        return LocalApi(args.url)
    if args.endpoint:
        return RunPodEndpoint(args.endpoint, os.environ.get("RUNPOD_API_KEY"))
    raise ClientError("say where the worker is: --endpoint ENDPOINT_ID (RunPod; RUNPOD_API_KEY) or "
                      "--url http://localhost:8000 (the local API)")


def prepare_input(args: argparse.Namespace, api: WorkerApi) -> dict:
    job_input, media = build_input(args)
    limit = int(args.inline_limit_mb * 1024**2) if args.inline_limit_mb is not None else api.body_limit_bytes
    for placement in place_media(job_input, media, limit, Bucket.from_env()):
        if placement.how != "url":
            print(f"{placement.field}: {placement.source} ({placement.bytes / 1e6:.2f} MB) "
                  f"{'inline' if placement.how == 'inline' else 'uploaded to the bucket'}", file=sys.stderr)
    return job_input


# --------------------------------------------------------------------------------------------- commands


def follow(api: WorkerApi, job_id: str, poll_s: float, line: ProgressLine | None) -> JobState:
    """Polls the job until it ends, showing its progress; Ctrl-C cancels it (a second Ctrl-C gives up)."""
    last: dict | None = None
    try:
        while True:
            state = api.state(job_id)
            if state.final:
                if line and state.status == "COMPLETED" and last:
                    line.update(state.status, {**last, "stage": "done", "percent": 100.0, "eta_s": 0.0,
                                               "segments": [{**s, "state": "done"} for s in last.get("segments", [])]})
                return state
            if line:
                line.update(state.status, state.progress)
            last = state.progress or last
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if line:
            line.end()
        print(f"cancelling job {job_id} (Ctrl-C again to leave without waiting) ...", file=sys.stderr)
        api.cancel(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            state = api.state(job_id)
            if state.final:
                return JobState(job_id, "CANCELLED", error=state.error)  # finish() says so, once
            time.sleep(0.5)
        return JobState(job_id, "CANCELLED", error=UNCONFIRMED)
    finally:
        if line:
            line.end()


def finish(state: JobState, output_path: Path | None, args: argparse.Namespace) -> int:
    """Reports a job's end: the error verbatim, or the summary and the video written where asked."""
    if state.status == "CANCELLED":
        if state.error == UNCONFIRMED:
            print(f"job {state.id}: cancel sent; the worker has not confirmed it within {CANCEL_WAIT_S} s",
                  file=sys.stderr)
        else:
            print(f"job {state.id} cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    if state.status != "COMPLETED":
        print(f"job {state.id} {state.status}:", file=sys.stderr)
        print(state.error or "(the worker gave no error message)", file=sys.stderr)
        return EXIT_FAILED
    output = state.output or {}
    print(job_summary(output, video=False))
    if getattr(args, "response", None):
        args.response.write_text(json.dumps({k: v for k, v in output.items() if k != "video"}, indent=1))
    if getattr(args, "timeline", None):
        args.timeline.write_text(timeline_svg(output))
        print(f"  timeline: {args.timeline}")
    dest = output_path or Path(f"{state.id}.mp4")
    try:
        print("  " + save_video(output, dest))
    except ResultError as exc:
        print(f"  {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    api = make_api(args)
    job_input = prepare_input(args, api)
    job_id = api.submit(job_input)
    print(f"job {job_id} submitted to {api.name}", file=sys.stderr)
    state = follow(api, job_id, args.poll_s, None if args.quiet else ProgressLine())
    return finish(state, args.output, args)


def cmd_status(args: argparse.Namespace) -> int:
    api = make_api(args)
    if args.wait:
        return finish(follow(api, args.job_id, args.poll_s, ProgressLine()), args.output, args)
    state = api.state(args.job_id)
    if not state.final:
        print(f"job {state.id}: {state.status}")
        print(format_progress(state.status, state.progress, 10_000))
        return 0
    if isinstance(api, LocalApi) and state.status == "COMPLETED" and state.output is None:
        print(f"job {state.id}: COMPLETED (the local API gives the result only to the request that ran it)")
        return 0
    return finish(state, args.output, args)


def cmd_cancel(args: argparse.Namespace) -> int:
    state = make_api(args).cancel(args.job_id)
    print(f"job {state.id}: {state.status}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    api = make_api(args)
    job_input = prepare_input(args, api)
    job_input["dry_run"] = True
    state = api.run_sync(job_input, timeout_s=300)
    if state.status != "COMPLETED":
        print(f"dry run {state.status}:", file=sys.stderr)
        print(state.error or "(no error message)", file=sys.stderr)
        if state.error and "dry_run" in state.error:
            print("(this worker may predate the dry_run request field)", file=sys.stderr)
        return EXIT_FAILED
    print(estimate_report(state.output or {}))
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    data = json.loads(args.response.read_text())
    if "runs" in data:  # benchmarks/gpu_scaling.py
        runs = {run["gpus"]: run for run in data["runs"]}
        if args.run not in runs:
            raise ClientError(f"--run: the benchmark has runs with {sorted(runs)} GPU(s)")
        output = benchmark_run_as_response(runs[args.run], data)
        title = args.title or (f"GPU benchmark, {args.run} GPU(s): {data.get('frames')} frames at "
                               f"{data.get('size')}, wall {runs[args.run].get('wall_s')} s ({data.get('device')})")
    else:
        output = data.get("output", data) if isinstance(data.get("output"), dict) else data
        title = args.title
    args.output.write_text(timeline_svg(output, title, args.span_s))
    print(f"timeline: {args.output}")
    return 0


COMMANDS = {"submit": cmd_submit, "status": cmd_status, "cancel": cmd_cancel, "estimate": cmd_estimate,
            "timeline": cmd_timeline}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ClientError, ApiError, MediaError, BucketError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ClientError, MediaError)) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_CANCELLED
