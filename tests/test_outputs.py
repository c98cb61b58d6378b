"""Delivery of results of any size: a real S3-compatible server (moto in server mode), base64 limits,
the size model, and the volume's all-or-nothing copy."""

from __future__ import annotations

import base64
import errno
import logging
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
import requests

from local_platform.s3_server import S3Server
from worker.output import delivery as outputs
from worker.request.settings import WorkerSettings
from worker.request.errors import JobFailed, JobInputError
from worker.output.delivery import check_deliverable, deliver, estimate_mp4_bytes
from worker.output.stitch import OutputFormat

ACCESS_KEY = "AKIATESTKEYID0000042"
SECRET_KEY = "s3cr3t-Sup3rSecretValue/0123456789abcdefXYZ"
BUCKET = "results"
MB = 1024**2


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server as a real process on a free local port; yields its endpoint URL."""
    server = S3Server(BUCKET, ACCESS_KEY, SECRET_KEY)
    yield server.endpoint
    server.close()


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def make_mp4(path: Path, seconds: float, size: str = "320x240", noisy: bool = False, crf: int = 19,
             preset: str = "ultrafast") -> Path:
    """A real h264+aac mp4; noisy lossless frames make it big (about 12 MB a second at 640x360)."""
    vf = ["-vf", "noise=alls=80:allf=t"] if noisy else []
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25", "-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}",
                    *vf, "-t", str(seconds), "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


# A request's defaults: 512x512 at 25 fps, crf 19, veryfast, 192 kb/s AAC.
OUTPUT = OutputFormat(width=512, height=512, fps=25.0, crf=19, preset="veryfast", audio_bitrate_kbps=192)


@pytest.fixture()
def base(tmp_path) -> WorkerSettings:
    return WorkerSettings(job_work_dir=tmp_path / "jobs", output_volume_dir=tmp_path / "outputs")  # tmp_path plays /runpod-volume


def with_bucket(settings: WorkerSettings, endpoint_url: str, **extra) -> WorkerSettings:
    return settings.model_copy(update=dict(bucket_endpoint_url=endpoint_url, bucket_access_key_id=ACCESS_KEY,
                                           bucket_secret_access_key=SECRET_KEY, **extra))


def assert_no_secrets(text: str) -> None:
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text


# ---------------------------------------------------------------------------------------------- bucket


def test_large_result_goes_to_the_bucket_as_multipart_and_comes_back_byte_for_byte(s3_server, base, tmp_path,
                                                                                    caplog):
    caplog.set_level(logging.DEBUG, logger="worker")
    video = make_mp4(tmp_path / "result.mp4", 1, size="640x360", noisy=True, crf=0)
    assert video.stat().st_size > 10 * MB  # three 5 MB parts at least
    settings = with_bucket(base, f"{s3_server}/{BUCKET}", bucket_part_mb=5)

    check_deliverable("auto", OUTPUT, 25 * 3600, settings)  # an hour of video: the bucket takes anything
    delivery = deliver(video, "auto", "job-123", settings)

    assert delivery.video is None and delivery.video_path is None
    got = requests.get(delivery.video_url, timeout=30)
    assert got.status_code == 200
    assert got.content == video.read_bytes()
    assert got.headers["Content-Type"] == "video/mp4"
    head = s3_client(s3_server).head_object(Bucket=BUCKET, Key="videos/job-123.mp4")
    assert head["ContentType"] == "video/mp4"
    parts = int(head["ETag"].strip('"').split("-")[1])  # a multipart object's ETag ends in -<parts>
    assert parts >= 3
    assert_no_secrets(caplog.text)
    assert "videos/job-123.mp4" in caplog.text


def test_small_result_with_forced_bucket_prefix_and_path_in_the_endpoint(s3_server, base, tmp_path):
    video = make_mp4(tmp_path / "small.mp4", 1)
    settings = with_bucket(base, f"{s3_server}/{BUCKET}/team-a/", bucket_prefix="talk/out",
                           bucket_url_expiry_s=600)
    delivery = deliver(video, "bucket", "abc", settings)
    assert "X-Amz-Expires=600" in delivery.video_url
    got = requests.get(delivery.video_url, timeout=30)
    assert got.content == video.read_bytes() and got.headers["Content-Type"] == "video/mp4"
    keys = [o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket=BUCKET, Prefix="team-a/")["Contents"]]
    assert keys == ["team-a/talk/out/abc.mp4"]


def test_bucket_name_from_env_and_settings_from_env(s3_server, base, tmp_path, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.setenv("BUCKET_PREFIX", "/renders/")
    monkeypatch.setenv("BUCKET_URL_EXPIRY_S", "3600")
    monkeypatch.setenv("MAX_RESPONSE_MB", "9")
    settings = WorkerSettings.from_env()
    assert settings.bucket_configured and settings.bucket_prefix == "renders"
    assert settings.max_response_bytes == 9 * MB and settings.bucket_url_expiry_s == 3600
    assert_no_secrets(repr(settings))
    video = make_mp4(tmp_path / "small.mp4", 1)
    settings = settings.model_copy(update=dict(output_volume_dir=base.output_volume_dir))
    url = deliver(video, "auto", "env-job", settings).video_url
    assert requests.get(url, timeout=30).content == video.read_bytes()
    s3_client(s3_server).head_object(Bucket=BUCKET, Key="renders/env-job.mp4")


def test_upload_failure_is_a_clear_error_without_secrets(s3_server, base, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="worker")
    video = make_mp4(tmp_path / "small.mp4", 1)
    settings = with_bucket(base, f"{s3_server}/no-such-bucket")
    with pytest.raises(JobFailed) as info:
        deliver(video, "bucket", "j", settings)
    assert "no-such-bucket" in str(info.value) and "NoSuchBucket" in str(info.value)
    assert_no_secrets(str(info.value))
    assert_no_secrets(caplog.text)


def test_redact_hides_keys_and_url_credentials(base):
    settings = with_bucket(base, "https://user:pa55word@example.com/b")
    text = f"failed with {ACCESS_KEY} and {SECRET_KEY} at user:pa55word"
    redacted = outputs._redact(text, settings)
    assert_no_secrets(redacted)
    assert "pa55word" not in redacted


def test_bucket_target_forms(base):
    aws = outputs.bucket_target(with_bucket(base, "https://my-videos.s3.eu-west-1.amazonaws.com"))
    assert (aws.endpoint_url, aws.bucket, aws.region, aws.key_prefix) == (
        "https://s3.eu-west-1.amazonaws.com", "my-videos", "eu-west-1", "videos")
    r2 = outputs.bucket_target(with_bucket(base, "https://acct.r2.cloudflarestorage.com/clips",
                                           bucket_region="auto"))
    assert (r2.endpoint_url, r2.bucket, r2.region) == ("https://acct.r2.cloudflarestorage.com", "clips", "auto")
    named = outputs.bucket_target(with_bucket(base, "https://minio.local:9000", bucket_name="out"))
    assert (named.endpoint_url, named.bucket, named.region) == ("https://minio.local:9000", "out", "us-east-1")
    with pytest.raises(JobInputError, match="BUCKET_NAME"):
        check_deliverable("bucket", OUTPUT, 100, with_bucket(base, "https://minio.local:9000"))


def test_forced_bucket_without_configuration_names_the_env_vars(base):
    with pytest.raises(JobInputError) as info:
        check_deliverable("bucket", OUTPUT, 100, base)
    for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"):
        assert name in str(info.value)


# ---------------------------------------------------------------------------------------------- base64 / size


def test_too_big_for_a_response_names_the_env_vars_and_sizes(base):
    settings = base.model_copy(update=dict(output_volume_dir=Path("/nonexistent-volume/outputs")))
    frames = 25 * 600  # ten minutes at 512x512
    for destination in ("base64", "auto"):
        with pytest.raises(JobInputError) as info:
            check_deliverable(destination, OUTPUT, frames, settings)
        message = str(info.value)
        assert message.startswith("output: the result would be about ")
        assert "over the 15 MB a response can carry" in message
        for name in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "'volume'"):
            assert name in message
    # forced base64 is refused even where a volume exists
    with pytest.raises(JobInputError):
        check_deliverable("base64", OUTPUT, frames, base)


def test_auto_falls_back_to_the_volume_then_refuses(base):
    frames = 25 * 600
    check_deliverable("auto", OUTPUT, frames, base)  # volume's parent (tmp_path) exists
    no_volume = base.model_copy(update=dict(output_volume_dir=Path("/nonexistent/outputs")))
    check_deliverable("auto", OUTPUT, 25 * 5, no_volume)
    with pytest.raises(JobInputError, match="destination 'volume' needs a network volume"):
        check_deliverable("volume", OUTPUT, 10, no_volume)


@pytest.mark.parametrize("preset", ["ultrafast", "superfast", "veryfast", "medium"])
def test_size_model_is_conservative(tmp_path, preset):
    """testsrc2 (moving text and gradients) compresses worse than a talking head: the model still covers it."""
    video = make_mp4(tmp_path / "clip.mp4", 4, size="512x512", crf=19, preset=preset)
    estimate = estimate_mp4_bytes(512, 512, 100, 25.0, 19, 128, preset)  # make_mp4's aac is about 128 kb/s
    assert video.stat().st_size <= estimate < 3 * video.stat().st_size  # conservative, not absurd


def test_size_model_is_monotonic():
    frames = 100
    sizes = [estimate_mp4_bytes(512, 512, frames, 25.0, crf, 192) for crf in (0, 12, 18, 24, 30, 51)]
    assert sizes == sorted(sizes, reverse=True)
    assert estimate_mp4_bytes(512, 512, frames, 25.0, 12, 0) == pytest.approx(
        2 * estimate_mp4_bytes(512, 512, frames, 25.0, 18, 0), rel=0.01)
    assert estimate_mp4_bytes(512, 512, frames, 25.0, 0, 0) <= 512 * 512 * frames * 12 / 8 * 1.05


def test_base64_when_it_fits(base, tmp_path):
    video = make_mp4(tmp_path / "small.mp4", 1)
    delivery = deliver(video, "auto", "j", base)
    assert base64.b64decode(delivery.video) == video.read_bytes()
    assert delivery.video_url is None and delivery.video_path is None


def test_actual_file_over_the_limit_fails_clearly_with_base64(base, tmp_path, caplog):
    video = make_mp4(tmp_path / "small.mp4", 1)
    settings = base.model_copy(update=dict(max_response_mb=video.stat().st_size // 2 / MB))
    with pytest.raises(JobInputError) as info:
        deliver(video, "base64", "j", settings)
    assert "a response can carry; set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY" \
        in str(info.value)
    # auto mode with a volume puts it there instead
    delivery = deliver(video, "auto", "j2", settings)
    assert Path(delivery.video_path).read_bytes() == video.read_bytes()


# ---------------------------------------------------------------------------------------------- volume


def test_volume_delivery(base, tmp_path):
    video = make_mp4(tmp_path / "small.mp4", 1)
    delivery = deliver(video, "volume", "vol-job", base)
    assert delivery.video_path == str(base.output_volume_dir / "vol-job.mp4")
    assert Path(delivery.video_path).read_bytes() == video.read_bytes()
    assert sorted(p.name for p in base.output_volume_dir.iterdir()) == ["vol-job.mp4"]


def test_volume_delivery_leaves_no_partial_file_on_failure(base, tmp_path, monkeypatch):
    video = make_mp4(tmp_path / "small.mp4", 1)

    def copy_until_disk_full(src, dst, *args, **kwargs):
        with open(src, "rb") as source, open(dst, "wb") as target:
            target.write(source.read(1000))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", copy_until_disk_full)
    with pytest.raises(JobFailed, match="No space left on device"):
        deliver(video, "volume", "full", base)
    assert list(base.output_volume_dir.iterdir()) == []
