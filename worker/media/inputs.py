"""A job's inputs: every media field fetched into the job folder and probed, then cut per segment with
ffmpeg, so that an instance decodes only its own part.

Media as people have it, and what is done about it here:
- audio whose container only estimates its length (raw ADTS AAC from text-to-speech APIs, VBR MP3 without
  a Xing header, WebM without a duration) is decoded once to WAV: its length is then exact, and every
  segment's slice is cut from the WAV sample-exactly;
- video whose first timestamp is not 0 (MPEG-TS and AVCHD camcorder files, MP4 with an edit list,
  MediaRecorder's WebM) is numbered from its first frame;
- anamorphic video (non-square samples, e.g. PAL 720x576 at 64:45) is scaled as it is displayed;
- colours are converted from the source's matrix (its tag, else BT.709 from 720 lines up and BT.601 below,
  as players guess) to the BT.709 the whole pipeline uses (segment_format.MATRIX, declared by COLOUR_TAGS);
- a video that does not seek exactly (anything but MP4/MOV: an MPEG-TS seek can land past the only key
  frame, a MediaRecorder WebM has no index) or that is shorter than the audio is first cut once into a clip
  at the output's size and rate, looped by listing that clip again as often as needed, never with ffmpeg's
  -stream_loop, whose timestamps go wrong on such files and can make it loop forever.
Every ffmpeg runs with the job's deadline and cancel (ffmpeg_calls.Limits).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from worker.media import probe, segment_format
from worker.request.errors import JobFailed, JobInputError
from worker.media.ffmpeg import DEFAULT_LIMITS, Limits, ProbeError, probe as ffprobe, run
from worker.media.sources import fetch_media
from worker.planning.segment_plan import Segment, SegmentPlan, total_frames_for
from worker.request.job_request import JobRequest
from worker.request.settings import WorkerSettings

log = logging.getLogger(__name__)
# Intermediate clips are lossless (x264 CRF 0) and as fast to write as x264 allows (no B-frames: a clip joins
# by stream copy, packets in display order); they live seconds. Lossless, so that two segments sharing an
# overlap receive the very same source frames: their versions of it then differ only by what their workflows
# do (the seam report's disagreement), not by two lossy encodes. Tagged with the matrix they were converted to.
_CLIP_CODEC = {"vcodec": "libx264", "preset": "ultrafast", "crf": 0, "pix_fmt": "yuv420p",
               **segment_format.COLOUR_TAGS}
# ffprobe's matrix tags -> the scale filter's names for them.
_MATRICES = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "bt601", "bt601": "bt601", "fcc": "fcc",
             "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}


@dataclass(frozen=True)
class VideoSource:
    """The source video as fetched, and what cutting it needs to know."""

    path: Path
    duration_s: float
    start_s: float = 0.0  # timestamp of its first frame: frame 0 of the job
    matrix: str = "bt601"  # the scale filter's name of its colour matrix
    seekable: bool = True  # whether a seek lands exactly (an MP4/MOV's sample table)

    @classmethod
    def of(cls, path: Path, info: probe.MediaInfo) -> VideoSource:
        tagged = _MATRICES.get(info.color_space or "")
        guessed = "bt709" if info.height >= 720 else "bt601"  # what players assume of an untagged video
        return cls(path, info.video_duration_s, info.video_start_s, tagged or guessed,
                   seekable=info.format_name.startswith("mov,mp4"))


@dataclass(frozen=True)
class JobInputs:
    """The job's media in its folder: what each segment is cut from, and the audio to mux."""

    audio_tracks: list[Path]  # audio, then audio_2 if given, decoded to WAV
    final_audio: Path  # the result's sound: the one track, or both mixed
    image: Path | None  # input_type image: the image as PNG
    video: VideoSource | None  # input_type video
    duration_s: float  # of the (longest) audio, as decoded: the output's length

    def total_frames(self, fps: float) -> int:
        return total_frames_for(self.duration_s, fps)


def fetch_inputs(request: JobRequest, settings: WorkerSettings, folder: Path, limits: Limits) -> JobInputs:
    """Fetches every media field into the job's `folder` and checks it is the kind of file it should be."""
    tracks = []
    for field in ("audio", "audio_2"):
        value = getattr(request, field)
        if value:
            path = fetch_media(field, value, folder / f"{field}.src", settings)
            tracks.append(read_audio(field, path, folder / f"{field}.wav", settings.max_duration_s, limits))
    image = video = None
    if request.input_type == "image":
        source = fetch_media("image", request.image, folder / "image.src", settings)
        probe.require_image("image", probe.probe("image", source, limits))
        image = image_to_png(source, folder / "image.png", limits)
    else:
        path = fetch_media("video", request.video, folder / "video.src", settings)
        info = probe.probe("video", path, limits)
        probe.require_video("video", info)
        video = VideoSource.of(path, info)
    final_audio = tracks[0][0] if len(tracks) == 1 else mix_audio([t[0] for t in tracks], folder / "audio_mix.wav",
                                                                  limits)
    return JobInputs([t[0] for t in tracks], final_audio, image, video, max(t[1] for t in tracks))


def read_audio(field: str, src: Path, dst: Path, max_duration_s: float,
               limits: Limits = DEFAULT_LIMITS) -> tuple[Path, float]:
    """(src decoded to WAV, its length in seconds), checked: an audio stream, not empty, within the limit.

    The length is what decoding gives, not what the container declares: for raw AAC or MP3 without a Xing
    header that is an estimate from the first frames' bitrate, off by a third on speech that ends in silence.
    An MP4/MOV declares it exactly; there decoding stops at that length.
    Decoding stops a second past the limit, so an over-long file costs no more than that.
    """
    info = probe.probe(field, src, limits)
    probe.require_audio_stream(field, info)
    stream = ffmpeg.input(str(src)).audio
    # An MP4/MOV's sample table gives its audio's exact length, which decoding overshoots by the encoder's
    # padding of the last AAC frame (tens of ms: one more video frame than the sound): it bounds the decode.
    exact = info.format_name.startswith("mov,mp4") and info.duration_s > 0
    until = min(max_duration_s + 1, info.duration_s) if exact else max_duration_s + 1
    run(stream.output(str(dst), t=until, acodec="pcm_s16le", vn=None, sn=None, map_metadata=-1),
        f"decode the {field}", limits=limits, frames=int(info.duration_s))
    try:
        streams = ffprobe(dst, limits, "-show_entries", "stream=duration").get("streams") or [{}]
        seconds = float(streams[0].get("duration") or 0)
    except (ProbeError, ValueError):
        seconds = 0.0
    if seconds <= 0:
        raise JobInputError(field, "the audio has zero length")
    if seconds > max_duration_s:
        raise JobInputError(field, f"the audio lasts {max(seconds, info.duration_s):.1f} s, over the "
                                   f"{max_duration_s:.0f} s limit (MAX_DURATION_S)")
    return dst, seconds


def cut_segment_inputs(request: JobRequest, plan: SegmentPlan, inputs: JobInputs, folder: Path,
                       limits: Limits) -> list[dict[str, Path]]:
    """Per segment, the files its workflow loads, by slot: its frames (video mode) or the image, and its
    slice of each audio track; written into the job's `folder`."""
    fps, width, height = request.fps, request.width, request.height
    video = inputs.video
    if video is not None:
        short = video.duration_s * fps < plan.total_frames - 0.5
        if short:
            log.info("video (%.2f s) is shorter than the audio (%.2f s): looping it", video.duration_s,
                     inputs.duration_s)
        if short or not video.seekable:
            video = clip_video(video, folder, fps, width, height, plan.total_frames, limits)

    def cut(segment: Segment) -> dict[str, Path]:
        files: dict[str, Path] = {}
        # Half a frame more audio, so a workflow that counts frames from the audio never comes up short.
        start_s, length_s = segment.start / fps, (segment.frames + 0.5) / fps
        for slot, track in zip(("audio", "audio_2"), inputs.audio_tracks):
            files[slot] = cut_audio(track, folder / f"seg{segment.index}_{slot}.wav", start_s, length_s, limits)
        if video is not None:
            files["video"] = cut_video(video, folder / f"seg{segment.index}_video.mp4", segment, fps, width, height,
                                       limits)
        else:
            files["image"] = inputs.image
        return files

    with ThreadPoolExecutor(max_workers=min(4, len(plan.segments))) as executor:
        return list(executor.map(cut, plan.segments))


# -- the cuts ------------------------------------------------------------------------------------------

def frames_of(video: VideoSource | Path, fps: float, width: int, height: int, first: int = 0, seek_s: float = 0.0):
    """The video's frames from `first` on, on the fps grid, scaled (as displayed: sample aspect ratio applied)
    to cover width x height, centre-cropped, converted to BT.709; an ffmpeg-python stream.

    With -copyts the source keeps its own timestamps whatever the seek, so after shifting them by the first
    frame's (video.start_s: MPEG-TS files start near 1.4 s, edit lists and wrapped timestamps elsewhere) the
    fps filter numbers frames from the video's first frame, and trim picks a frame by its number the same
    way whatever segment asks for it. The seek only saves decoding.
    """
    video = video if isinstance(video, VideoSource) else VideoSource(video, 0.0)
    return (
        ffmpeg.input(str(video.path), ss=seek_s, copyts=None).video
        .filter("setpts", f"PTS-{video.start_s:.6f}/TB")
        .filter("fps", fps=segment_format.rate_text(fps))
        .filter("trim", start_pts=first)
        .filter("setpts", "PTS-STARTPTS")
        .filter("scale", "trunc(iw*sar/2)*2", "ih")  # square pixels: as wide as it is displayed
        .filter("setsar", 1)
        .filter("scale", width, height, force_original_aspect_ratio="increase", in_color_matrix=video.matrix,
                out_color_matrix=segment_format.MATRIX, out_range="tv")
        .filter("crop", width, height)
        .filter("setsar", 1)
    )


def cut_video(src: VideoSource | Path, dst: Path, segment: Segment, fps: float, width: int, height: int,
              limits: Limits = DEFAULT_LIMITS) -> Path:
    """Frames [segment.start, segment.end) of src on the fps grid, at width x height (frames_of)."""
    seek = max(0.0, segment.start / fps - 1.0)
    stream = frames_of(src, fps, width, height, segment.start, seek)
    run(stream.output(str(dst), vframes=segment.frames, an=None, r=segment_format.rate_text(fps), **_CLIP_CODEC),
        f"cut frames {segment.start}-{segment.end}", limits=limits, frames=segment.frames)
    return dst


def clip_video(video: VideoSource, folder: Path, fps: float, width: int, height: int, total_frames: int,
               limits: Limits = DEFAULT_LIMITS) -> VideoSource:
    """The video's first total_frames frames (repeated if it has fewer), at the output's size and rate, in
    an MP4 that seeks exactly.

    Its frames are decoded from the start once into a clip (timestamps from 0, square pixels, BT.709); if
    that is short, the concat demuxer lists the clip as many times as needed and copies it: a finite input,
    so ffmpeg always ends.
    """
    clip = cut_video(video, folder / "video_clip.mp4", Segment(0, 0, total_frames), fps, width, height, limits)
    frames = _frame_count(clip, limits)
    if frames < 1:
        raise JobInputError("video", "no frame of the video could be decoded")
    if frames >= total_frames:
        return VideoSource(clip, total_frames / fps, 0.0, segment_format.MATRIX)
    listing = folder / "video_loop.txt"
    listing.write_text(f"file '{clip.name}'\n" * -(-total_frames // frames))
    looped = folder / "video_looped.mp4"
    run(ffmpeg.input(str(listing), format="concat", safe=0).video.output(str(looped), c="copy",
                                                                         vframes=total_frames),
        "loop the video", limits=limits, frames=total_frames)
    return VideoSource(looped, total_frames / fps, 0.0, segment_format.MATRIX)


def _frame_count(path: Path, limits: Limits) -> int:
    streams = ffprobe(path, limits, "-select_streams", "v:0", "-show_entries", "stream=nb_frames").get("streams")
    try:
        return int((streams or [{}])[0].get("nb_frames") or 0)
    except ValueError:
        return 0


def cut_audio(src: Path, dst: Path, start_s: float, duration_s: float, limits: Limits = DEFAULT_LIMITS) -> Path:
    """duration_s seconds of src from start_s as WAV, padded with silence where src ends sooner."""
    stream = ffmpeg.input(str(src), ss=start_s).audio.filter("apad", whole_dur=duration_s)
    run(stream.output(str(dst), t=duration_s, acodec="pcm_s16le", vn=None), f"cut audio at {start_s:.2f} s",
        limits=limits, frames=int(duration_s))
    return dst


def image_to_png(src: Path, dst: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
    """The first frame of src as PNG, whatever the source format; JobInputError if it cannot be decoded."""
    try:
        run(ffmpeg.input(str(src)).video.output(str(dst), vframes=1), "read the image", limits=limits)
    except JobFailed as exc:
        # ffmpeg's first complaint, without its "[decoder @ 0x...]" prefix or the job folder's path
        first = str(exc).partition(": ")[2].replace(str(src), src.name).strip().splitlines()[:1] or ["ffmpeg failed"]
        detail = re.sub(r"^\[[^\]]*\]\s*", "", first[0])[:200]
        raise JobInputError("image", f"the picture could not be decoded ({detail}); send {probe.SEND['image']}") from None
    return dst


def mix_audio(tracks: list[Path], dst: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
    """The speakers' tracks mixed into one WAV, as long as the longest."""
    inputs = [ffmpeg.input(str(t)).audio for t in tracks]
    mixed = ffmpeg.filter(inputs, "amix", inputs=len(inputs), duration="longest", normalize=0)
    run(mixed.output(str(dst), acodec="pcm_s16le"), "mix the speakers' audio", limits=limits)
    return dst
