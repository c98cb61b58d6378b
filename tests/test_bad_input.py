"""Malformed and hostile requests through the real worker API: each gets a clear error naming the field,
nothing is left behind, and the next good job succeeds."""

from __future__ import annotations

import base64
import subprocess

import pytest

from media_samples import real_media
from media_samples.factory import b64, make_image, make_index_video, make_tone
from local_platform.workers import WorkerApi
from worker.request.errors import JobInputError
from worker.request.job_request import parse_request


@pytest.fixture(scope="module")
def media(worker: WorkerApi) -> dict[str, str]:
    """Files the table refers to by name, made once."""
    folder = worker.media
    image = make_image(folder / "ok.png", 64, 64)
    audio = make_tone(folder / "ok.wav", 1.0)
    video = make_index_video(folder / "ok.mp4", 30, 25)
    video_with_sound = make_index_video(folder / "sound.mp4", 30, 25, with_audio_s=1.2)
    silent_wav = folder / "empty.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=16000:cl=mono", "-t", "0", str(silent_wav)], check=True)
    long_audio = make_tone(folder / "long.wav", 31.0)
    (folder / "outside_link.png").symlink_to("/etc/passwd")
    return {
        "IMAGE": b64(image), "AUDIO": b64(audio), "VIDEO": b64(video),
        "TRUNCATED_VIDEO": base64.b64encode(video_with_sound.read_bytes()[:2000]).decode(),
        "GARBAGE": base64.b64encode(bytes(range(256)) * 8).decode(),
        "VIDEO_ONLY": b64(video), "SILENT_WAV": b64(silent_wav), "LONG_AUDIO": b64(long_audio),
        "HUGE": base64.b64encode(b"\0" * (3 * 1024 * 1024)).decode(),
        "LINK": str(folder / "outside_link.png"),
        "DOTDOT": f"{folder}/../../etc/passwd",
        # what people send: an iPhone photo, an animated WebP, a broken JPEG (base64 "/9j/..."), a pasted essay
        "HEIC": b64(real_media.heic_photo(folder / "photo.heic")),
        "ANIMATED_WEBP": b64(real_media.animated_webp(folder / "anim.webp")),
        "BROKEN_JPEG": base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 300).decode(),
        "LONG_PROMPT": "a cat on a sofa, " * 1000,
        "LONG_PATH": "/" + "a" * 3000 + ".png",
    }


def good_job(media: dict) -> dict:
    return {"workflow": "still", "input_type": "image", "image": media["IMAGE"], "audio": media["AUDIO"],
            "width": 64, "height": 64}


# (what changes in a good job, the text the error must contain). Values in CAPITALS name media above.
CASES = [
    # broken or wrong media
    ({"image": "@@not base64@@"}, "image: not base64"),
    ({"image": "aGVsbG8gd29ybGQ"}, "image: not a readable image"),
    ({"audio": "GARBAGE"}, "audio: not a readable image, video or audio file"),
    ({"input_type": "video", "workflow": "restyle", "video": "TRUNCATED_VIDEO"}, "video: not a readable"),
    ({"audio": "IMAGE"}, "audio: expected audio, but the file has no audio stream"),
    ({"audio": "VIDEO_ONLY"}, "audio: expected audio, but the file has no audio stream"),
    ({"image": "AUDIO"}, "image: expected an image, but the file has no picture"),
    ({"input_type": "video", "workflow": "restyle", "video": "AUDIO"}, "video: expected a video, but the file has no video stream"),
    ({"input_type": "video", "workflow": "restyle", "video": "IMAGE"}, "video: expected a video, got a still image"),
    ({"image": "VIDEO"}, "image: expected a still image, got a video"),
    ({"audio": "data:audio/wav;base64,"}, "audio: the file is empty"),
    ({"audio": "SILENT_WAV"}, "audio: the audio has zero length"),
    ({"audio": "LONG_AUDIO"}, "audio: the audio lasts 31.0 s, over the 30 s limit (MAX_DURATION_S)"),
    ({"image": "HUGE"}, "image: larger than the 2 MB limit (MAX_INPUT_MB)"),
    ({"image": "HEIC"}, "image: unsupported format HEIC/HEIF (the iPhone's photo format), which this worker's ffmpeg "
                        "cannot decode; send a JPEG, PNG, WebP or AVIF image"),
    ({"image": "ANIMATED_WEBP"}, "image: unsupported format animated WebP (ffmpeg cannot decode its frames); send a"),
    ({"input_type": "video", "workflow": "restyle", "video": "ANIMATED_WEBP"},
     "video: unsupported format animated WebP (ffmpeg cannot decode its frames); send an MP4, MOV"),
    ({"image": "BROKEN_JPEG"}, "image: the picture could not be decoded ("),
    ({"audio": "data:audio/wav,RIFF"}, "audio: a data URI without ';base64,'"),
    ({"prompt": "LONG_PROMPT"}, "prompt: String should have at most 10000 characters (got 'a cat on a sofa"),
    # where media may come from
    ({"image": "http://127.0.0.1:8031/docs"}, "image: URL host 127.0.0.1 resolves to a non-public address"),
    ({"image": "http://[::1]:8031/docs"}, "image: URL host ::1 resolves to a non-public address"),
    ({"image": "http://10.1.2.3/face.png"}, "image: URL host 10.1.2.3 resolves to a non-public address"),
    ({"image": "http://169.254.169.254/latest/meta-data/"}, "resolves to a non-public address (169.254.169.254)"),
    ({"image": "file:///etc/passwd"}, "image: unsupported URL scheme 'file'"),
    ({"image": "ftp://example.com/a.png"}, "image: unsupported URL scheme 'ftp'"),
    ({"image": "/etc/passwd"}, "image: path /etc/passwd is outside the allowed roots"),
    ({"image": "DOTDOT"}, "is outside the allowed roots"),
    ({"image": "LONG_PATH"}, "image: path /aaaaaaaaaa"),
    ({"image": "LINK"}, "is outside the allowed roots"),
    # the request itself
    ({"workflow": "nope"}, "workflow: unknown workflow 'nope'; available:"),
    ({"colour": "red"}, "colour: unknown field; allowed fields are"),
    ({"fps": 500}, "fps: 1-60 (got 500)"),
    ({"width": 100}, "width: 64-2048, a multiple of 16 (got 100)"),
    ({"width": 7}, "width: 64-2048, a multiple of 16 (got 7)"),  # the whole rule at once
    ({"width": 16}, "width: 64-2048, a multiple of 16 (got 16)"),
    ({"widht": 512}, "widht: unknown field; did you mean `width`?"),
    ({"output": {"crff": 18}}, "output.crff: unknown field; did you mean `crf`?"),
    ({"denoise": 0}, "denoise: more than 0, at most 1 (got 0)"),
    ({"width": "wide"}, "width: Input should be a valid integer"),
    ({"seed": -1}, "seed: 0-9007199254740992 (got -1)"),
    ({"gpu_count": 0}, "gpu_count: 1-64 (got 0)"),
    ({"overlap_frames": 500}, "overlap_frames: 0-200 (got 500)"),
    ({"output": {"crf": 99}}, "output.crf: 0-51 (got 99)"),
    ({"output": {"destination": "ftp"}}, "output.destination: Input should be"),
    ({"input_type": "sideways"}, "input_type: Input should be 'image' or 'video'"),
    ({"image": None}, "image: required when input_type is 'image'"),
    ({"audio": None}, "audio: required"),
    ({"person_count": "multi"}, "audio_2: required when person_count is 'multi'"),
    ({"audio_2": "AUDIO"}, "audio_2: only used when person_count is 'multi'"),
    ({"input_type": "video", "video": "VIDEO"}, "input_type: workflow 'still' takes input_type 'image'"),
]


@pytest.mark.parametrize("change, message", CASES, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(CASES)])
def test_bad_input_is_refused_by_field_and_the_worker_keeps_serving(worker, media, change, message):
    job = good_job(media)
    for key, value in change.items():
        if value is None:
            job.pop(key)
        else:
            job[key] = media.get(value, value) if isinstance(value, str) else value
    result = worker.runsync(job)
    assert result["status"] == "FAILED", result
    assert message in result["error"], result["error"]
    # never the payload, never the worker's own paths
    assert len(result["error"]) < 1000 and str(worker.jobs) not in result["error"], result["error"]
    assert worker.leftover_job_files() == []
    assert worker.runsync(good_job(media))["status"] == "COMPLETED"


def test_an_input_that_is_not_an_object_is_refused():
    # The local API refuses such a body itself (422); RunPod hands it to the handler, which must say why.
    for value in ("just a string", ["a", "list"], None, 42):
        with pytest.raises(JobInputError, match="input: must be a JSON object"):
            parse_request(value)


def test_secrets_and_paths_of_the_worker_do_not_leak_into_errors(worker, media):
    job = {**good_job(media), "image": "/runpod-volume/../etc/shadow"}
    error = worker.runsync(job)["error"]
    assert "Traceback" not in error and "BUCKET_SECRET" not in error
