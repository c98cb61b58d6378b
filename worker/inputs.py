"""A job's inputs: every media field fetched into the job folder and probed, then cut per segment with
ffmpeg, so that an instance decodes only its own part."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from worker import probe
from worker.ffmpeg_calls import run
from worker.job_context import JobContext
from worker.media_sources import fetch_media
from worker.planner import Segment, SegmentPlan, total_frames_for

log = logging.getLogger(__name__)
# Intermediate clips are lossless (x264 CRF 0) and as fast to write as x264 allows; they live seconds. Lossless,
# so that two segments sharing an overlap receive the very same source frames: their versions of it then
# differ only by what their workflows do (the seam report's disagreement), not by two lossy encodes.
_CLIP_CODEC = {"vcodec": "libx264", "preset": "ultrafast", "crf": 0, "pix_fmt": "yuv420p"}


@dataclass(frozen=True)
class JobInputs:
    """The job's media in its folder: what each segment is cut from, and the audio to mux."""

    audio_tracks: list[Path]  # audio, then audio_2 if given
    final_audio: Path  # the result's sound: the one track, or both mixed
    image: Path | None  # input_type image: the image as PNG
    video: Path | None  # input_type video: the source as fetched
    duration_s: float  # of the (longest) audio: the output's length
    video_duration_s: float = 0.0

    def total_frames(self, fps: float) -> int:
        return total_frames_for(self.duration_s, fps)


def fetch_inputs(ctx: JobContext) -> JobInputs:
    """Fetches every media field into the job folder and checks it is the kind of file it should be."""
    request, folder, settings = ctx.request, ctx.work_dir, ctx.settings
    tracks = []
    for field in ("audio", "audio_2"):
        value = getattr(request, field)
        if value:
            path = fetch_media(field, value, folder / f"{field}.src", settings)
            info = probe.probe(field, path)
            probe.require_audio(field, info, settings.max_duration_s)
            tracks.append((path, info.duration_s))
    image = video = None
    video_duration_s = 0.0
    if request.input_type == "image":
        source = fetch_media("image", request.image, folder / "image.src", settings)
        probe.require_image("image", probe.probe("image", source))
        image = image_to_png(source, folder / "image.png")
    else:
        video = fetch_media("video", request.video, folder / "video.src", settings)
        info = probe.probe("video", video)
        probe.require_video("video", info)
        video_duration_s = info.duration_s
    final_audio = tracks[0][0] if len(tracks) == 1 else mix_audio([t[0] for t in tracks], folder / "audio_mix.wav")
    return JobInputs([t[0] for t in tracks], final_audio, image, video, max(t[1] for t in tracks), video_duration_s)


def cut_segment_inputs(ctx: JobContext, plan: SegmentPlan, inputs: JobInputs) -> list[dict[str, Path]]:
    """Per segment, the files its workflow loads, by slot: its frames (video mode) or the image, and its
    slice of each audio track."""
    fps, folder = ctx.request.fps, ctx.work_dir
    video = inputs.video
    if video is not None and inputs.video_duration_s * fps < plan.total_frames - 0.5:
        log.info("video (%.2f s) is shorter than the audio (%.2f s): looping it",
                 inputs.video_duration_s, inputs.duration_s)
        video = loop_video(video, folder / "video_looped.mp4", fps, plan.total_frames)

    def cut(segment: Segment) -> dict[str, Path]:
        files: dict[str, Path] = {}
        # Half a frame more audio, so a workflow that counts frames from the audio never comes up short.
        start_s, length_s = segment.start / fps, (segment.frames + 0.5) / fps
        for slot, track in zip(("audio", "audio_2"), inputs.audio_tracks):
            files[slot] = cut_audio(track, folder / f"seg{segment.index}_{slot}.wav", start_s, length_s)
        if video is not None:
            files["video"] = cut_video(video, folder / f"seg{segment.index}_video.mp4", segment, fps,
                                       ctx.request.width, ctx.request.height)
        else:
            files["image"] = inputs.image
        return files

    with ThreadPoolExecutor(max_workers=min(4, len(plan.segments))) as executor:
        return list(executor.map(cut, plan.segments))


# -- the cuts ------------------------------------------------------------------------------------------

def loop_video(src: Path, dst: Path, fps: float, total_frames: int) -> Path:
    """A copy of src resampled to fps and looped until it has total_frames frames."""
    stream = ffmpeg.input(str(src), stream_loop=-1).video.filter("fps", fps=fps)
    run(stream.output(str(dst), vframes=total_frames, an=None, **_CLIP_CODEC), "loop the video")
    return dst


def cut_video(src: Path, dst: Path, segment: Segment, fps: float, width: int, height: int) -> Path:
    """Frames [segment.start, segment.end) of src on the fps grid, scaled and cropped to width x height.

    With -copyts the fps filter numbers frames from the start of the source, so trimming by pts picks
    the same frame for a given index whatever segment asks for it; the input seek (1 s early) only
    saves decoding.
    """
    seek = max(0.0, segment.start / fps - 1.0)
    stream = (
        ffmpeg.input(str(src), ss=seek, copyts=None).video
        .filter("fps", fps=fps)
        .filter("trim", start_pts=segment.start, end_pts=segment.end)
        .filter("setpts", "PTS-STARTPTS")
        .filter("scale", width, height, force_original_aspect_ratio="increase")
        .filter("crop", width, height)
        .filter("setsar", 1)
    )
    run(stream.output(str(dst), vframes=segment.frames, an=None, r=fps, **_CLIP_CODEC),
        f"cut frames {segment.start}-{segment.end}")
    return dst


def cut_audio(src: Path, dst: Path, start_s: float, duration_s: float) -> Path:
    """duration_s seconds of src from start_s as WAV, padded with silence where src ends sooner."""
    stream = ffmpeg.input(str(src), ss=start_s).audio.filter("apad", whole_dur=duration_s)
    run(stream.output(str(dst), t=duration_s, acodec="pcm_s16le", vn=None), f"cut audio at {start_s:.2f} s")
    return dst


def image_to_png(src: Path, dst: Path) -> Path:
    """The first frame of src as PNG, whatever the source format."""
    run(ffmpeg.input(str(src)).video.output(str(dst), vframes=1), "read the image")
    return dst


def mix_audio(tracks: list[Path], dst: Path) -> Path:
    """The speakers' tracks mixed into one WAV, as long as the longest."""
    inputs = [ffmpeg.input(str(t)).audio for t in tracks]
    mixed = ffmpeg.filter(inputs, "amix", inputs=len(inputs), duration="longest", normalize=0)
    run(mixed.output(str(dst), acodec="pcm_s16le"), "mix the speakers' audio")
    return dst
