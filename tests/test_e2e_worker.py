"""End to end through the real runpod SDK (local API), real CPU ComfyUI instances and real ffmpeg."""

from __future__ import annotations

import json
import subprocess

import numpy as np

from media_samples.factory import (b64, frame_count, make_image, make_index_video, make_tone, media_duration,
                                 read_indices)
from local_platform.workers import WorkerApi, save_video

def video_job(worker: WorkerApi, frames: int, audio_s: float, **extra) -> dict:
    video = make_index_video(worker.media / f"index_{frames}.mp4", frames, 25)
    audio = make_tone(worker.media / f"tone_{audio_s}.wav", audio_s)
    return {"workflow": "restyle", "input_type": "video", "video": b64(video), "audio": str(audio),
            "width": 128, "height": 64, "fps": 25, **extra}


def stream_info(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_video_job_keeps_every_frame_in_order(worker, tmp_path):
    result = worker.runsync(video_job(worker, frames=150, audio_s=5.3))
    assert result["status"] == "COMPLETED", result
    output = result["output"]
    video = save_video(output, tmp_path / "out.mp4")

    expected = 133  # ceil(5.3 s x 25 fps)
    assert output["frames"] == expected and frame_count(video) == expected
    assert read_indices(video) == list(range(expected))  # through the cross-faded overlaps too
    assert abs(media_duration(video, "a") - 5.3) < 0.03
    streams = stream_info(video)
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    data = video.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart: the index must come first"

    assert output["gpu_count"] == 2 and output["segments_processed"] == 2
    first, second = output["segments"]
    assert (first["start_frame"], second["end_frame"]) == (0, expected)
    assert first["end_frame"] - second["start_frame"] == output["overlap_frames"] == 8
    assert first["instance"] != second["instance"]
    # restyle saves segments in SaveSegmentVideo's split form: both bodies copied, only the overlap encoded
    assert output["frames_copied"] == expected - 8
    for segment in (first, second):  # where each segment's ComfyUI time went, node by node
        nodes = segment["node_seconds"]
        assert any(name.endswith(" SaveSegmentVideo") for name in nodes), nodes
        assert 0 < sum(nodes.values()) <= segment["comfy_seconds"] + 0.05
    assert set(output["timings"]) == {"prepare", "generate", "stitch", "deliver", "total"}
    # frame 0 shows index 0, no cell lit: one colour, and said
    assert output["flat_frames"] == 1 and output["warnings"][0].startswith("1 of 133 frames are one colour")
    assert worker.leftover_job_files() == []


def test_frames_of_one_colour_are_counted_once_and_said(worker, tmp_path):
    """The output check: frames 50-89 of the source are black (the index drawn black on black), across the
    overlap of the two segments, and frame 0 (index 0: no cell lit) is one grey; the response counts each once
    and warns, and the job still succeeds."""
    black = ((0, 0, 0), (0, 0, 0))
    video = make_index_video(worker.media / "black_middle.mp4", 133, 25,
                             colours=lambda i: black if 50 <= i < 90 else ((16, 16, 16), (235, 235, 235)))
    audio = make_tone(worker.media / "tone_5.3.wav", 5.3)
    result = worker.runsync({"workflow": "restyle", "input_type": "video", "video": b64(video), "audio": str(audio),
                             "width": 128, "height": 64, "fps": 25})
    assert result["status"] == "COMPLETED", result
    output = result["output"]
    assert output["segments_processed"] == 2
    first, second = output["segments"]
    assert 50 < second["start_frame"] < first["end_frame"] < 90  # the black frames span the overlap
    assert output["flat_frames"] == 41
    assert output["warnings"] == ["41 of 133 frames are one colour (black or blank): check the video; where the "
                                  "inputs are not blank, the model failed on those frames"]
    frames = read_indices(save_video(output, tmp_path / "out.mp4"))
    assert frames[:50] == list(range(50)) and frames[90:] == list(range(90, 133))


def test_one_and_two_instances_give_the_same_frames(worker, tmp_path):
    one = worker.runsync(video_job(worker, frames=120, audio_s=4.0, gpu_count=1))["output"]
    two = worker.runsync(video_job(worker, frames=120, audio_s=4.0))["output"]
    assert (one["segments_processed"], two["segments_processed"]) == (1, 2)
    a, b = save_video(one, tmp_path / "one.mp4"), save_video(two, tmp_path / "two.mp4")
    assert read_indices(a) == read_indices(b) == list(range(100))
    pixels = [np.frombuffer(subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(p), "-f", "rawvideo",
                                            "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout,
                            dtype=np.uint8).astype(int) for p in (a, b)]
    assert np.abs(pixels[0] - pixels[1]).mean() < 2.0


def test_short_video_is_looped_to_the_audio_length(worker, tmp_path):
    output = worker.runsync(video_job(worker, frames=40, audio_s=3.0))["output"]
    video = save_video(output, tmp_path / "looped.mp4")
    assert read_indices(video) == [i % 40 for i in range(75)]


def test_image_job_with_a_fractional_number_of_frames(worker, tmp_path):
    image = make_image(worker.media / "face.png", 96, 96)
    audio = make_tone(worker.media / "speech.wav", 2.345)
    result = worker.runsync({"workflow": "still", "input_type": "image", "image": b64(image), "audio": b64(audio),
                             "width": 64, "height": 80, "fps": 24})
    output = result["output"]
    video = save_video(output, tmp_path / "still.mp4")
    assert output["frames"] == frame_count(video) == 57  # ceil(2.345 x 24) = ceil(56.28)
    assert abs(media_duration(video, "a") - 2.345) < 0.03
    streams = stream_info(video)
    assert (streams["video"]["width"], streams["video"]["height"]) == (64, 80)
    assert output["frames_copied"] == 0  # still saves whole segments, as any save node does: all encoded


def test_two_speakers_audio_is_mixed_and_the_longer_one_sets_the_length(worker, tmp_path):
    image = make_image(worker.media / "pair.png")
    first = make_tone(worker.media / "first.wav", 1.5, frequency=300)
    second = make_tone(worker.media / "second.wav", 2.2, frequency=500)
    output = worker.runsync({"workflow": "still", "input_type": "image", "person_count": "multi",
                             "image": b64(image), "audio": b64(first), "audio_2": b64(second),
                             "width": 64, "height": 64, "fps": 25})["output"]
    video = save_video(output, tmp_path / "pair.mp4")
    assert output["frames"] == frame_count(video) == 55
    assert abs(media_duration(video, "a") - 2.2) < 0.03


def test_volume_destination_returns_a_path(worker):
    output = worker.runsync(video_job(worker, frames=30, audio_s=1.0, output={"destination": "volume"}))["output"]
    assert output["video"] is None
    assert output["video_path"].startswith(str(worker.volume))
    assert read_indices(output["video_path"]) == list(range(25))
    assert not list(worker.volume.glob("*.partial"))
