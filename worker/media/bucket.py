"""The S3-compatible bucket (BUCKET_* settings): where it is, a client for it, files in and out, and
credentials kept out of every text. Results go there (worker/output/delivery.py), and so do a fanned-out
job's segment media and videos where they do not fit RunPod's request and result limits
(worker/render/remote.py, worker/segment_job.py), removed once read.

BUCKET_ENDPOINT_URL may name the bucket in its path (`https://host/<bucket>[/<prefix>]`, as RunPod's own
upload helper takes it) or, as virtual-hosted S3 does, in its host; BUCKET_NAME overrides either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from worker.request.errors import JobFailed, JobInputError
from worker.request.settings import WorkerSettings

log = logging.getLogger(__name__)
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # S3 signature v4 refuses longer


@dataclass(frozen=True)
class BucketTarget:
    endpoint_url: str
    bucket: str
    key_prefix: str  # no leading or trailing slash; may be empty
    region: str


def bucket_target(settings: WorkerSettings) -> BucketTarget:
    """Where uploads go, from the settings (see the module docstring for the rules)."""
    url = urlparse(settings.bucket_endpoint_url or "")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise JobInputError("output", "BUCKET_ENDPOINT_URL must be an http(s) URL such as "
                                      "https://<account>.r2.cloudflarestorage.com/<bucket>")
    host = url.hostname
    netloc = host if url.port is None else f"{host}:{url.port}"
    parts = [p for p in url.path.split("/") if p]
    extra: list[str] = []
    if settings.bucket_name:
        bucket, endpoint = settings.bucket_name, f"{url.scheme}://{netloc}{url.path.rstrip('/')}"
    elif parts:
        bucket, extra, endpoint = parts[0], parts[1:], f"{url.scheme}://{netloc}"
    elif ".s3." in host and not host.startswith("s3."):
        bucket, service = host.split(".s3.", 1)
        endpoint = f"{url.scheme}://s3.{service}" + (f":{url.port}" if url.port else "")
    else:
        raise JobInputError("output", "BUCKET_ENDPOINT_URL names no bucket: put it in the URL's path "
                                      "(https://host/<bucket>) or set BUCKET_NAME")
    region = settings.bucket_region
    if not region and ".s3." in host:
        region = host.split(".s3.", 1)[1].split(".")[0]
    if not region or region == "amazonaws":
        region = "us-east-1"
    prefix = "/".join(extra + [p for p in settings.bucket_prefix.split("/") if p])
    return BucketTarget(endpoint, bucket, prefix, region)


def _redact(text: str, settings: WorkerSettings) -> str:
    for secret in (settings.bucket_secret_access_key, settings.bucket_access_key_id,
                   urlparse(settings.bucket_endpoint_url or "").password,
                   urlparse(settings.bucket_endpoint_url or "").username):
        if secret:
            text = text.replace(secret, "***")
    return text


def _s3_client(settings: WorkerSettings, target: BucketTarget):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=target.endpoint_url, region_name=target.region,
        aws_access_key_id=settings.bucket_access_key_id, aws_secret_access_key=settings.bucket_secret_access_key,
        config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"},
                      s3={"addressing_style": "path"}, connect_timeout=20, read_timeout=120))


def put_file(path: Path, key: str, settings: WorkerSettings, content_type: str = "application/octet-stream",
             expiry_s: int = 3600) -> str:
    """Uploads `path` as `key` under the bucket's prefix and returns a presigned GET URL for it (expiry_s)."""
    target = bucket_target(settings)
    full_key = "/".join(p for p in (target.key_prefix, key) if p)
    try:
        client = _s3_client(settings, target)
        client.upload_file(str(path), target.bucket, full_key, ExtraArgs={"ContentType": content_type})
        return client.generate_presigned_url("get_object", Params={"Bucket": target.bucket, "Key": full_key},
                                             ExpiresIn=max(1, min(expiry_s, MAX_PRESIGN_EXPIRY_S)))
    except Exception as exc:  # boto3, botocore and s3transfer each raise their own kinds
        raise JobFailed(_redact(f"upload of {path.name} to bucket {target.bucket!r} failed: "
                                f"{type(exc).__name__}: {exc}", settings)) from None


def get_file(key: str, dest: Path, settings: WorkerSettings) -> Path:
    """Downloads `key` (as given to put_file) to dest."""
    target = bucket_target(settings)
    try:
        _s3_client(settings, target).download_file(target.bucket, "/".join(p for p in (target.key_prefix, key) if p),
                                                   str(dest))
    except Exception as exc:
        raise JobFailed(_redact(f"download of {key} from bucket {target.bucket!r} failed: {type(exc).__name__}: "
                                f"{exc}", settings)) from None
    return dest


def delete_keys(keys: list[str], settings: WorkerSettings) -> None:
    """Removes `keys` (as given to put_file) from the bucket; a failure is logged, not raised (the job's
    result does not depend on it)."""
    if not keys:
        return
    target = bucket_target(settings)
    try:
        client = _s3_client(settings, target)
        for key in keys:
            client.delete_object(Bucket=target.bucket, Key="/".join(p for p in (target.key_prefix, key) if p))
    except Exception as exc:
        log.warning("%s", _redact(f"could not remove {len(keys)} file(s) from bucket {target.bucket!r}: "
                                  f"{type(exc).__name__}: {exc}", settings))
