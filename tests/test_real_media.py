"""Media as people really have it, through the real worker API (issue 16): phone photos and text-to-speech
audio as raw or MIME base64, audio whose container only estimates its length, camcorder MPEG-TS with
wrapped timestamps, MP4 edit lists, anamorphic PAL, browser recordings, colour at HD sizes, AVIF stills.
Each checks what a user would: every frame there (ceil(audio x fps)) and in order, the sound as long as
it is, the picture as an independent ffmpeg rendering shows it."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest

from media_samples import real_media
from media_samples.factory import frame_count, make_tone, media_duration, read_indices
from local_platform.workers import WorkerApi, save_video

FPS = 25


def completed(worker: WorkerApi, job: dict) -> dict:
    result = worker.runsync(job, timeout_s=600)
    assert result["status"] == "COMPLETED", result.get("error", result)
    assert worker.leftover_job_files() == []
    return result["output"]


def still_job(image: str, audio: str, **extra) -> dict:
    return {"workflow": "still", "input_type": "image", "image": image, "audio": audio, "width": 64, "height": 64,
            "fps": FPS, **extra}


def video_job(video: str, audio: str, **extra) -> dict:
    return {"workflow": "restyle", "input_type": "video", "video": video, "audio": audio, "width": 128,
            "height": 64, "fps": FPS, **extra}


@pytest.fixture(scope="module")
def speech(worker: WorkerApi):
    """Text-to-speech that ends in silence, as WAV, raw ADTS AAC and VBR MP3 without Xing header or ID3 tag."""
    wav = real_media.speech_wav(worker.media / "speech.wav", "Your order has shipped and will arrive on "
                                                               "Tuesday. Thank you for shopping with us.", 3.0)
    return {"wav": wav, "aac": real_media.adts_aac(wav, worker.media / "speech.aac"),
            "mp3": real_media.vbr_mp3_without_xing(wav, worker.media / "speech.mp3")}


# -- 1: raw base64 that starts with "/", MIME base64 ------------------------------------------------------

def test_phone_photo_and_speech_as_raw_base64_starting_with_a_slash(worker, speech, tmp_path):
    photo = real_media.phone_jpeg(worker.media / "photo.jpg")
    image, audio, audio_2 = (real_media.raw_base64(p) for p in (photo, speech["mp3"], speech["aac"]))
    assert image.startswith("/9j/") and audio.startswith("//") and audio_2.startswith("//")  # the premise
    output = completed(worker, still_job(image, audio, person_count="multi", audio_2=audio_2))
    seconds = max(real_media.decoded_seconds(speech["mp3"]), real_media.decoded_seconds(speech["aac"]))
    video = save_video(output, tmp_path / "out.mp4")
    assert output["frames"] == frame_count(video) == math.ceil(seconds * FPS)


def test_mime_base64_with_line_breaks(worker, speech, tmp_path):
    photo = real_media.phone_jpeg(worker.media / "photo_mime.jpg", 320, 240)
    image, audio = real_media.mime_base64(photo), real_media.mime_base64(speech["aac"])
    assert "\r\n" in image and image.startswith("/9j/")
    output = completed(worker, still_job(image, audio))
    video = save_video(output, tmp_path / "out.mp4")
    assert output["frames"] == frame_count(video) == math.ceil(real_media.decoded_seconds(speech["aac"]) * FPS)
    # the picture is the photo's, as ffmpeg renders it independently
    expected = real_media.rendered(photo, 64, 64, "crop=240:240")
    assert np.abs(real_media.rgb_frames(video, 64, 64)[0].astype(int) - expected).mean() < 12


# -- 3: audio whose container only estimates its length ------------------------------------------------------

@pytest.mark.parametrize("kind", ["aac", "mp3"])
def test_speech_whose_container_guesses_its_length_gets_a_video_as_long_as_the_sound(worker, speech, tmp_path, kind):
    audio = speech[kind]
    seconds = real_media.decoded_seconds(audio)
    assert real_media.declared_seconds(audio) < 0.8 * seconds  # the premise: the container's guess is 20%+ short
    output = completed(worker, still_job(real_media.raw_base64(real_media.phone_jpeg(worker.media / "p.jpg")),
                                         real_media.raw_base64(audio)))
    video = save_video(output, tmp_path / "out.mp4")
    assert output["frames"] == frame_count(video) == math.ceil(seconds * FPS)
    assert abs(media_duration(video, "a") - seconds) < 0.05


# -- 2: video whose first timestamp is not 0 ----------------------------------------------------------------

def test_camcorder_ts_with_wrapping_timestamps_is_cut_and_looped_to_a_longer_audio(worker, tmp_path):
    ts = real_media.camcorder_ts(worker.media / "camcorder.m2ts", 100)
    audio = make_tone(worker.media / "tone_6.wav", 6.0)
    output = completed(worker, video_job(real_media.raw_base64(ts), str(audio)))
    video = save_video(output, tmp_path / "out.mp4")
    assert read_indices(video) == [i % 100 for i in range(150)]


def test_camcorder_ts_starting_at_1_4_s_is_cut_from_its_first_frame(worker, tmp_path):
    ts = real_media.camcorder_ts(worker.media / "camcorder.ts", 120, wrap=False)
    output = completed(worker, video_job(real_media.raw_base64(ts), str(make_tone(worker.media / "t4.wav", 4.0))))
    assert read_indices(save_video(output, tmp_path / "out.mp4")) == list(range(100))


@pytest.mark.parametrize("kind, first", [("delay", 0), ("skip", 15)])
def test_mp4_with_an_edit_list_starts_at_its_first_shown_frame(worker, tmp_path, kind, first):
    mp4 = real_media.mp4_with_edit_list(worker.media / f"edit_{kind}.mp4", 100, FPS, kind)
    output = completed(worker, video_job(str(mp4), str(make_tone(worker.media / "t3.wav", 3.0))))
    assert read_indices(save_video(output, tmp_path / "out.mp4")) == list(range(first, first + 75))


# -- 4: anamorphic sources ------------------------------------------------------------------------------

def disc_size(frame: np.ndarray) -> tuple[int, int]:
    """Width and height of the bright disc in an RGB frame."""
    bright = frame.mean(axis=2) > 145
    columns, rows = np.flatnonzero(bright.any(axis=0)), np.flatnonzero(bright.any(axis=1))
    return columns[-1] - columns[0] + 1, rows[-1] - rows[0] + 1


def test_anamorphic_pal_is_scaled_as_it_is_displayed(worker, tmp_path):
    square = worker.media / "pal_square.png"
    pal = real_media.anamorphic_pal(worker.media / "pal.mp4", square)
    output = completed(worker, {**video_job(str(pal), str(make_tone(worker.media / "t1.wav", 1.0))),
                                "width": 512, "height": 288})
    frames = real_media.rgb_frames(save_video(output, tmp_path / "out.mp4"), 512, 288)
    width, height = disc_size(frames[12])
    assert abs(width / height - 1) < 0.05, (width, height)  # round, not squeezed to 0.7
    expected = real_media.rendered(square, 512, 288)  # the square-pixel original, scaled by ffmpeg alone
    assert np.abs(frames[12].astype(int) - expected).mean() < 6


# -- 5: browser recordings ------------------------------------------------------------------------------

def test_browser_recordings_without_duration_sent_as_data_uris_with_codecs(worker, speech, tmp_path):
    webm = real_media.browser_webm(worker.media / "recording.webm", 150)
    voice = real_media.browser_webm(worker.media / "voice.webm", 0, audio_only_from=speech["wav"])
    assert "duration" not in real_media.probe_json(webm, "-show_entries", "format=duration")["format"]  # premise
    output = completed(worker, video_job(real_media.data_uri(webm, "video/webm;codecs=vp8,opus"),
                                         real_media.data_uri(voice, "audio/webm;codecs=opus")))
    video = save_video(output, tmp_path / "out.mp4")
    seconds = real_media.decoded_seconds(voice)
    frames = math.ceil(seconds * FPS)
    assert output["frames"] == frame_count(video) == frames
    assert read_indices(video) == [i % 150 for i in range(frames)]
    assert abs(media_duration(video, "a") - seconds) < 0.05


# -- 7: colour ------------------------------------------------------------------------------------------

COLOURS = ["0xC8102E", "0x00843D", "0x0033A0", "0xE0AC69", "0xFFD700", "0x808080"]


def patch_centres(frame: np.ndarray, count: int) -> np.ndarray:
    height, width, _ = frame.shape
    bar = width // count
    return np.array([frame[height // 2 - 8:height // 2 + 8, i * bar + bar // 2 - 8:i * bar + bar // 2 + 8]
                     .reshape(-1, 3).mean(axis=0) for i in range(count)])


def test_hd_output_is_tagged_bt709_and_its_colours_are_the_pictures(worker, tmp_path):
    patches = real_media.colour_patches(worker.media / "patches.png", 1280, 720, COLOURS)
    output = completed(worker, {**still_job(str(patches), str(make_tone(worker.media / "t04.wav", 0.4))),
                                "width": 1280, "height": 720})
    video = save_video(output, tmp_path / "out.mp4")
    assert real_media.colour_tags(video) == {"color_space": "bt709", "color_primaries": "bt709",
                                             "color_transfer": "bt709", "color_range": "tv"}
    got = patch_centres(real_media.rgb_frames(video, 1280, 720)[5].astype(int), len(COLOURS))
    expected = patch_centres(real_media.rendered(patches, 1280, 720).astype(int), len(COLOURS))
    assert np.abs(got - expected).max() < 5, (got.round(), expected)


def test_a_bt601_source_keeps_its_colours_in_the_bt709_output(worker, tmp_path):
    """An SD camcorder clip (BT.601, tagged so) restyled at 1280x720: split-form bodies, cross-fades and all."""
    patches = real_media.colour_patches(worker.media / "patches_sd.png", 720, 576, COLOURS)
    clip = worker.media / "sd.mp4"
    real_media.ffmpeg("-loop", "1", "-i", str(patches), "-frames:v", "40", "-r", "25", "-vf",
                      "scale=out_color_matrix=bt601:out_range=tv,format=yuv420p", "-colorspace", "bt470bg",
                      "-color_primaries", "bt470bg", "-color_trc", "gamma28", "-c:v", "libx264", "-crf", "8", str(clip))
    output = completed(worker, {**video_job(str(clip), str(make_tone(worker.media / "t16.wav", 1.6))),
                                "width": 1280, "height": 720})
    video = save_video(output, tmp_path / "out.mp4")
    assert output["frames_copied"] > 0 and real_media.colour_tags(video)["color_space"] == "bt709"
    frames = real_media.rgb_frames(video, 1280, 720).astype(int)
    expected = patch_centres(real_media.rendered(clip, 1280, 720, "crop=720:405").astype(int), len(COLOURS))
    for frame in (frames[5], frames[20], frames[35]):  # a body, the cross-fade, the other body
        assert np.abs(patch_centres(frame, len(COLOURS)) - expected).max() < 6


# -- 8: AVIF ----------------------------------------------------------------------------------------------

def test_an_avif_still_is_an_image(worker, tmp_path):
    avif = real_media.avif_still(worker.media / "photo.avif", 320, 240)
    output = completed(worker, still_job(real_media.raw_base64(avif), str(make_tone(worker.media / "t05.wav", 0.5))))
    frame = real_media.rgb_frames(save_video(output, tmp_path / "out.mp4"), 64, 64)[0].astype(int)
    assert np.abs(frame - real_media.rendered(avif, 64, 64, "crop=240:240")).mean() < 12


def test_the_ffmpeg_of_a_job_has_no_leftover_processes(worker):
    leftovers = subprocess.run(["pgrep", "-f", str(worker.jobs)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
