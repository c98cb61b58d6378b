"""Segment cutting, stitching and input fetching against real ffmpeg and a real HTTP server."""

from __future__ import annotations

import base64
import http.server
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from media_samples import real_media
from media_samples.factory import (frame_count, make_index_video, make_tone, media_duration, read_indices,
                                 write_split_segment, yuv420p_frames)
from worker.media import inputs, probe, sources as media_sources
from worker.request.settings import MB
from worker.request.errors import JobFailed, JobInputError
from worker.media.ffmpeg import Limits
from worker.media.sources import fetch_media
from worker.planning.segment_plan import Segment, plan_segments
from worker.render.segment_video import SegmentVideo
from worker.output.seam_blend import Span, blend_frame
from worker.output.stitch import OutputFormat, Stitcher, StitchResult, plan_chunks

# The request's defaults (crf 19, veryfast, 192 kb/s AAC) at the test videos' size and rate.
OUTPUT = OutputFormat(width=128, height=64, fps=25, crf=19, preset="veryfast", audio_bitrate_kbps=192)


def stitch(plan, videos: list[SegmentVideo | Path], audio: Path, dest: Path,
           encoders: int | None = None) -> StitchResult:
    """Every segment at hand, in order: stitched into dest as a job stitches them (paths: whole-form segments)."""
    with Stitcher(plan, dest.parent / "chunks", audio, OUTPUT, encoders) as stitcher:
        for segment, video in zip(plan.segments, videos, strict=True):
            stitcher.add_segment(segment.index, video if isinstance(video, SegmentVideo) else SegmentVideo.whole(video))
        return stitcher.finish(dest)


@pytest.fixture(scope="module")
def index_video(tmp_path_factory) -> Path:
    return make_index_video(tmp_path_factory.mktemp("src") / "index.mp4", 200, 25)


@pytest.mark.parametrize("start, end", [(0, 60), (52, 120), (113, 200), (199, 200)])
def test_cut_video_takes_exactly_the_segments_frames(index_video, tmp_path, start, end):
    clip = inputs.cut_video(index_video, tmp_path / "clip.mp4", Segment(0, start, end), 25, 128, 64)
    assert read_indices(clip) == list(range(start, end))


def test_cut_video_at_another_frame_rate_agrees_on_shared_frames(tmp_path):
    source = make_index_video(tmp_path / "src30.mp4", 300, 30)
    first = read_indices(inputs.cut_video(source, tmp_path / "a.mp4", Segment(0, 0, 60), 25, 128, 64))
    second = read_indices(inputs.cut_video(source, tmp_path / "b.mp4", Segment(1, 50, 110), 25, 128, 64))
    assert first[50:] == second[:10]  # the overlap shows the same source frames in both segments
    assert first[-1] == 71  # frame 59 at 25 fps is source frame 70.8 -> 71 at 30 fps


def test_loop_video_repeats_the_source(index_video, tmp_path):
    looped = inputs.clip_video(inputs.VideoSource(index_video, 8.0), tmp_path, 25, 128, 64, 450)
    assert read_indices(looped.path) == [i % 200 for i in range(450)]


def camcorder_source(path: Path, kind: str) -> inputs.VideoSource:
    """An index video of 100 frames as camcorders, MP4 edit lists and browsers have it (media_samples/real_media.py)."""
    if kind in ("wrapping ts", "ts"):
        real_media.camcorder_ts(path, 100, wrap=kind == "wrapping ts")
    elif kind == "webm":
        real_media.browser_webm(path, 100)
    else:
        real_media.mp4_with_edit_list(path, 100, 25, kind)
    return inputs.VideoSource.of(path, probe.probe("video", path))


@pytest.mark.parametrize("kind, first", [("wrapping ts", 0), ("ts", 0), ("webm", 0), ("delay", 0), ("skip", 15)])
def test_video_that_does_not_start_at_0_is_numbered_from_its_first_shown_frame(tmp_path, kind, first):
    suffix = {"wrapping ts": ".m2ts", "ts": ".ts", "webm": ".webm"}.get(kind, ".mp4")
    source = camcorder_source(tmp_path / f"source{suffix}", kind)
    if not source.seekable:  # as cut_segment_inputs does: one clip that seeks exactly, then the cuts
        source = inputs.clip_video(source, tmp_path, 25, 128, 64, 80)
    later = inputs.cut_video(source, tmp_path / "later.mp4", Segment(1, 30, 80), 25, 128, 64)
    assert read_indices(later) == list(range(first + 30, first + 80))


def test_looping_a_camcorder_ts_with_wrapping_timestamps_ends(tmp_path):
    """ffmpeg's -stream_loop never reached the frame count on this file: the job hung."""
    looped = inputs.clip_video(camcorder_source(tmp_path / "source.m2ts", "wrapping ts"), tmp_path, 25, 128, 64, 250,
                               Limits(60, 0.5))
    assert read_indices(looped.path) == [i % 100 for i in range(250)]


def test_audio_is_measured_by_decoding_not_by_the_containers_guess(tmp_path):
    wav = real_media.speech_wav(tmp_path / "speech.wav", "The parcel will arrive tomorrow.", 3.0)
    for audio in (real_media.adts_aac(wav, tmp_path / "s.aac"), real_media.vbr_mp3_without_xing(wav, tmp_path / "s.mp3")):
        decoded, seconds = inputs.read_audio("audio", audio, tmp_path / f"{audio.name}.wav", 30.0)
        assert abs(seconds - real_media.decoded_seconds(audio)) < 0.01
        assert probe.probe("audio", audio).duration_s < 0.8 * seconds  # what the container says
        assert abs(media_duration(decoded, "a") - seconds) < 0.01


def test_an_m4a_is_as_long_as_its_sample_table_says_not_its_decoded_padding(tmp_path):
    """AAC in MP4 (a phone's voice memo, the sample job's audio): decoding gives the last frame's padding too
    (7.744 s for 7.7 s here, one video frame more than the sound); the sample table is exact."""
    m4a = tmp_path / "memo.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=7.7",
                    "-ar", "16000", "-c:a", "aac", str(m4a)], check=True)
    assert real_media.decoded_seconds(m4a) > 7.72  # the padding the decoder adds
    decoded, seconds = inputs.read_audio("audio", m4a, tmp_path / "memo.wav", 30.0)
    assert seconds == pytest.approx(7.7, abs=1e-3)
    assert media_duration(decoded, "a") == pytest.approx(7.7, abs=1e-3)


def test_cut_audio_is_exact_and_padded_past_the_end(tmp_path):
    tone = make_tone(tmp_path / "tone.wav", 2.0)
    middle = inputs.cut_audio(tone, tmp_path / "mid.wav", 0.5, 1.0)
    tail = inputs.cut_audio(tone, tmp_path / "tail.wav", 1.5, 1.2)  # 0.5 s of audio, 0.7 s of silence
    assert abs(media_duration(middle, "a") - 1.0) < 1e-3
    assert abs(media_duration(tail, "a") - 1.2) < 1e-3


def test_crossfade_moves_from_the_previous_to_the_following_segment():
    black, white = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)
    shades = [int(blend_frame(black, white, k, Span(0, 3))[0, 0, 0]) for k in range(3)]
    assert shades == sorted(shades) and 50 < shades[0] < shades[1] < shades[2] < 205
    assert (blend_frame(white, white, 1, Span(0, 3)) == 255).all()  # identical frames pass through unchanged


def test_stitch_is_frame_exact_and_muxes_the_whole_audio(index_video, tmp_path):
    plan = plan_segments(200, 3, 8)
    clips = [inputs.cut_video(index_video, tmp_path / f"s{s.index}.mp4", s, 25, 128, 64)
             for s in plan.segments]
    audio = make_tone(tmp_path / "a.wav", 7.99)
    result = stitch(plan, clips, audio, tmp_path / "out.mp4")
    assert result.frames == frame_count(result.path) == 200
    assert read_indices(result.path) == list(range(200))
    assert abs(media_duration(result.path, "a") - 7.99) < 0.03


def test_stitch_refuses_a_segment_with_missing_frames(index_video, tmp_path):
    plan = plan_segments(100, 2, 8)
    clips = [inputs.cut_video(index_video, tmp_path / f"s{s.index}.mp4", s, 25, 128, 64)
             for s in plan.segments]
    short = inputs.cut_video(index_video, tmp_path / "short.mp4", Segment(1, 46, 90), 25, 128, 64)
    audio = make_tone(tmp_path / "a.wav", 4.0)
    with pytest.raises(JobFailed, match="has 44 frames, expected 54"):
        stitch(plan, [clips[0], short], audio, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()



def test_chunks_cover_every_frame_once_and_split_bodies_per_encoder():
    plan = plan_segments(1500, 2, 40)
    chunks = plan_chunks(plan, encoders=4)
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]
    assert chunks[0].start == 0 and chunks[-1].end == 1500
    # segment 1's arrival starts the cross-fade and 3 body pieces: one round of 4 encoders
    assert [c.sources for c in chunks] == [(0,)] * 4 + [(0, 1)] + [(1,)] * 3
    assert chunks[4].frames == 40  # the overlap is one cross-fade chunk
    short = plan_chunks(plan_segments(130, 2, 8), encoders=8)  # bodies of 61 frames: no piece under 40
    assert [c.frames for c in short] == [61, 8, 61]


def test_stitch_in_many_chunks_arriving_out_of_order_is_frame_exact_with_even_timestamps(tmp_path):
    source = make_index_video(tmp_path / "src.mp4", 500, 25)  # key frames 250 apart: chunks must seek
    plan = plan_segments(500, 3, 12)
    clips = [inputs.cut_video(source, tmp_path / f"s{s.index}.mp4", s, 25, 128, 64) for s in plan.segments]
    audio = make_tone(tmp_path / "a.wav", 20.0)
    stitcher = Stitcher(plan, tmp_path / "chunks", audio, OUTPUT, encoders=3)
    for segment in reversed(plan.segments):
        stitcher.add_segment(segment.index, SegmentVideo.whole(clips[segment.index]))
    result = stitcher.finish(tmp_path / "out.mp4")
    assert read_indices(result.path) == list(range(500))
    times = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                            "-of", "csv=p=0", str(result.path)], capture_output=True, text=True).stdout.split()
    assert [round(float(t.strip(",")) * 25, 3) for t in times] == [float(i) for i in range(500)]
    decode_errors = subprocess.run(["ffmpeg", "-v", "error", "-i", str(result.path), "-f", "null", "-"],
                                   capture_output=True, text=True).stderr
    assert decode_errors == ""
    assert not (tmp_path / "chunks").exists()  # the stitcher's working files are gone



def test_stitch_seeks_exactly_into_segments_with_b_frames_and_short_gops(index_video, tmp_path):
    plan = plan_segments(200, 2, 10)
    clips = []
    for segment in plan.segments:  # as another save node might write them: B-frames, a key frame every 7
        cut = inputs.cut_video(index_video, tmp_path / f"c{segment.index}.mp4", segment, 25, 128, 64)
        clip = tmp_path / f"s{segment.index}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(cut), "-c:v", "libx264", "-preset", "medium", "-bf", "3",
                        "-g", "7", "-crf", "8", str(clip)], check=True)
        clips.append(clip)
    result = stitch(plan, clips, make_tone(tmp_path / "a.wav", 8.0), tmp_path / "out.mp4", encoders=4)
    assert read_indices(result.path) == list(range(200))

def test_stitch_scales_segments_made_at_another_size(index_video, tmp_path):
    plan = plan_segments(120, 2, 8)
    clips = [inputs.cut_video(index_video, tmp_path / f"s{s.index}.mp4", s, 25, 256, 128)
             for s in plan.segments]
    result = stitch(plan, clips, make_tone(tmp_path / "a.wav", 4.8), tmp_path / "out.mp4")
    assert read_indices(result.path) == list(range(120))
    size = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                           "-of", "csv=p=0", str(result.path)], capture_output=True, text=True).stdout.strip()
    assert size == "128,64"


def _split_segments(index_video, plan, folder, odd_one: dict | None = None) -> list[SegmentVideo]:
    """Each segment of the plan in SaveSegmentVideo's split form, cut from the index video at 128x64;
    segment 0 written with `odd_one`'s size or x264 settings instead, if given."""
    videos = []
    for segment in plan.segments:
        odd = odd_one if odd_one and segment.index == 0 else {}
        width, height = odd.get("size", (128, 64))
        clip = inputs.cut_video(index_video, folder / f"s{segment.index}.mp4", segment, 25, width, height)
        files = write_split_segment(yuv420p_frames(clip, width, height), folder / f"seg{segment.index}",
                                    plan.overlap_with_previous(segment), plan.overlap_with_next(segment),
                                    width, height, preset=odd.get("preset", "veryfast"))
        videos.append(SegmentVideo(files.get("body"), files.get("head"), files.get("tail"), split=True))
    return videos


def test_stitch_copies_encoded_bodies_and_cross_fades_the_raw_overlaps(index_video, tmp_path):
    plan = plan_segments(200, 3, 8)
    folder = tmp_path / "it's here"  # a quote in the path of the bodies the join lists
    folder.mkdir()
    videos = _split_segments(index_video, plan, folder)
    stitcher = Stitcher(plan, tmp_path / "chunks", make_tone(tmp_path / "a.wav", 8.0), OUTPUT, encoders=3)
    for segment in (plan.segments[1], plan.segments[2], plan.segments[0]):
        stitcher.add_segment(segment.index, videos[segment.index])
    result = stitcher.finish(tmp_path / "out.mp4")
    assert result.frames_copied == 200 - 2 * 8  # every body copied; only the two overlaps were encoded
    assert read_indices(result.path) == list(range(200))
    decode_errors = subprocess.run(["ffmpeg", "-v", "error", "-i", str(result.path), "-f", "null", "-"],
                                   capture_output=True, text=True).stderr
    assert decode_errors == ""
    assert abs(media_duration(result.path, "a") - 8.0) < 0.03
    assert not (tmp_path / "chunks").exists()


@pytest.mark.parametrize("odd_one", [{"preset": "ultrafast"}, {"size": (256, 128)}])
def test_stitch_encodes_a_body_that_would_not_join(index_video, tmp_path, odd_one):
    """A body with other x264 settings (so other H.264 headers) or at another size is encoded, not copied."""
    plan = plan_segments(200, 3, 8)
    videos = _split_segments(index_video, plan, tmp_path, odd_one)
    result = stitch(plan, videos, make_tone(tmp_path / "a.wav", 8.0), tmp_path / "out.mp4", encoders=3)
    assert result.frames_copied == 200 - 2 * 8 - 64  # segment 0's body (64 frames) was encoded
    assert read_indices(result.path) == list(range(200))


def test_stitch_refuses_a_split_segment_with_a_short_body(index_video, tmp_path):
    plan = plan_segments(100, 2, 8)
    videos = _split_segments(index_video, plan, tmp_path)
    clip = inputs.cut_video(index_video, tmp_path / "short.mp4", plan.segments[1], 25, 128, 64)
    files = write_split_segment(yuv420p_frames(clip, 128, 64)[:-5], tmp_path / "short", 8, 0, 128, 64)
    videos[1] = SegmentVideo(files["body"], files["head"], split=True)
    with pytest.raises(JobFailed, match="seg_body.mp4 has 41 frames, expected 46"):
        stitch(plan, videos, make_tone(tmp_path / "a.wav", 4.0), tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()



def test_split_form_names_the_parts_a_segment_lacks(tmp_path):
    first, middle = tmp_path / "a_body.mp4", tmp_path / "b_head.y4m"
    assert SegmentVideo(first, tail=tmp_path / "a_tail.y4m", split=True).missing_parts(50, 0, 8) == []
    assert SegmentVideo(None, head=middle, split=True).missing_parts(50, 8, 8) == ["body", "tail"]
    assert SegmentVideo(None, head=middle, tail=middle, split=True).missing_parts(16, 8, 8) == []  # no body frames
    assert SegmentVideo.whole(first).missing_parts(50, 8, 8) == []


# -- fetching inputs -------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect-to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        body = b"x" * (4096 if self.path == "/big" else 10)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_base64_and_data_uris_decode(settings, tmp_path):
    raw = base64.b64encode(b"hello").decode()
    assert fetch_media("audio", raw, tmp_path / "a", settings).read_bytes() == b"hello"
    assert fetch_media("audio", "data:audio/wav;base64," + raw, tmp_path / "b", settings).read_bytes() == b"hello"
    browser = "data:video/webm;codecs=vp8,opus;base64," + raw  # MediaRecorder's type, parameters with a comma
    assert fetch_media("video", browser, tmp_path / "c", settings).read_bytes() == b"hello"
    spaced = 'data:video/webm; codecs="vp8, opus";base64,' + raw
    assert fetch_media("video", spaced, tmp_path / "d", settings).read_bytes() == b"hello"


@pytest.mark.parametrize("head", [b"\xff\xd8\xff\xe0", b"\xff\xfb\x90\x64", b"\xff\xf1\x50\x80"],
                         ids=["jpeg", "mp3 frame", "adts aac"])
def test_base64_starting_with_a_slash_is_not_a_path(settings, tmp_path, head):
    data = head + bytes(range(256)) * 4
    for text in (base64.b64encode(data).decode(), base64.encodebytes(data).decode().replace("\n", "\r\n")):
        assert text.startswith("/")
        assert fetch_media("image", text, tmp_path / "x", settings).read_bytes() == data


def test_errors_quote_only_the_start_of_a_value(settings, tmp_path):
    long_path = "/data/" + "x" * 3000
    with pytest.raises(JobInputError) as refused:
        fetch_media("image", long_path, tmp_path / "x", settings)
    assert "path /data/xxxx" in str(refused.value) and "(3006 characters)" in str(refused.value)
    assert len(str(refused.value)) < 300


def test_urls_to_loopback_are_refused_unless_allowed(settings, http_server, tmp_path):
    with pytest.raises(JobInputError, match="image: URL host 127.0.0.1 resolves to a non-public address"):
        fetch_media("image", http_server + "/small", tmp_path / "x", settings)
    allowed = settings.model_copy(update=dict(allow_private_urls=True))
    assert fetch_media("image", http_server + "/small", tmp_path / "y", allowed).read_bytes() == b"x" * 10


def test_every_redirect_is_checked_like_the_first_url(settings, http_server, tmp_path, monkeypatch):
    checked = []
    real_check = media_sources._check_host

    def check_all_but_the_test_server(field, url, settings):
        checked.append(url)
        if not url.startswith(http_server):  # the test server itself sits on loopback
            real_check(field, url, settings)

    monkeypatch.setattr(media_sources, "_check_host", check_all_but_the_test_server)
    with pytest.raises(JobInputError, match=r"image: URL host 169.254.169.254 resolves to a non-public address"):
        fetch_media("image", http_server + "/redirect-to-metadata", tmp_path / "r", settings)
    assert checked == [http_server + "/redirect-to-metadata", "http://169.254.169.254/latest/meta-data/"]


def test_downloads_stop_at_the_byte_cap(settings, http_server, tmp_path):
    capped = settings.model_copy(update=dict(allow_private_urls=True, max_input_mb=1000 / MB))
    with pytest.raises(JobInputError, match="video: download exceeds"):
        fetch_media("video", http_server + "/big", tmp_path / "z", capped)


def test_paths_must_stay_inside_the_allowed_roots(settings, media_dir, tmp_path):
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"secret")
    link = media_dir / "link.wav"
    link.symlink_to(outside)
    with pytest.raises(JobInputError, match="outside the allowed roots"):
        fetch_media("audio", str(link), tmp_path / "a", settings)
    with pytest.raises(JobInputError, match="outside the allowed roots"):
        fetch_media("audio", f"{media_dir}/../outside.wav", tmp_path / "b", settings)
    inside = media_dir / "in.wav"
    inside.write_bytes(b"ok")
    assert fetch_media("audio", str(inside), tmp_path / "c", settings).read_bytes() == b"ok"
