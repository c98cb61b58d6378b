"""Media too big for a request body, uploaded to an S3-compatible bucket and sent as a presigned URL.

Configured with the environment variables the worker uses for its results (README: "Environment
variables"): BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, and optionally
BUCKET_NAME, BUCKET_REGION; inputs go under BUCKET_INPUT_PREFIX (default `inputs`), their URLs valid for
BUCKET_INPUT_URL_EXPIRY_S (default a day). The bucket is named in the endpoint URL's path
(https://host/<bucket>[/<prefix>]), by BUCKET_NAME, or by an AWS virtual-host URL
(https://<bucket>.s3.<region>.amazonaws.com). boto3 is needed only here (`pip install ./client[bucket]`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # S3's limit for SigV4 URLs
VARIABLES = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")


class BucketError(RuntimeError):
    """The bucket is misconfigured or refused the upload (the message holds no secrets)."""


@dataclass(frozen=True)
class Bucket:
    endpoint_url: str
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty
    region: str
    access_key_id: str
    secret_access_key: str
    url_expiry_s: int

    def __repr__(self) -> str:  # never the keys
        return f"Bucket({self.endpoint_url}, {self.bucket!r}, prefix {self.prefix!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Bucket | None:
        """The bucket the environment configures; None if BUCKET_ENDPOINT_URL and both keys are not all set."""
        if not all(environ.get(name) for name in VARIABLES):
            return None
        url = urlparse(environ["BUCKET_ENDPOINT_URL"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BucketError("BUCKET_ENDPOINT_URL must be an http(s) URL such as https://<account>.r2.cloudflarestorage.com/<bucket>")
        host = url.hostname
        netloc = host if url.port is None else f"{host}:{url.port}"
        parts = [p for p in url.path.split("/") if p]
        extra: list[str] = []
        if environ.get("BUCKET_NAME"):
            bucket, endpoint = environ["BUCKET_NAME"], f"{url.scheme}://{netloc}{url.path.rstrip('/')}"
        elif parts:
            bucket, extra, endpoint = parts[0], parts[1:], f"{url.scheme}://{netloc}"
        elif ".s3." in host and not host.startswith("s3."):
            bucket, service = host.split(".s3.", 1)
            endpoint = f"{url.scheme}://s3.{service}" + (f":{url.port}" if url.port else "")
        else:
            raise BucketError("BUCKET_ENDPOINT_URL names no bucket: put it in the URL's path (https://host/<bucket>) "
                              "or set BUCKET_NAME")
        region = environ.get("BUCKET_REGION") or (host.split(".s3.", 1)[1].split(".")[0] if ".s3." in host else "")
        if not region or region == "amazonaws":
            region = "us-east-1"
        prefix = "/".join(extra + [p for p in environ.get("BUCKET_INPUT_PREFIX", "inputs").split("/") if p])
        expiry = int(environ.get("BUCKET_INPUT_URL_EXPIRY_S", 24 * 3600))
        return cls(endpoint, bucket, prefix, region, environ["BUCKET_ACCESS_KEY_ID"],
                   environ["BUCKET_SECRET_ACCESS_KEY"], max(1, min(expiry, MAX_PRESIGN_EXPIRY_S)))

    def upload(self, path: Path) -> str:
        """Uploads the file under a fresh key and returns a presigned GET URL for the worker to download."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise BucketError("uploading to a bucket needs boto3: pip install './client[bucket]' "
                              "(or pip install -r requirements/client.txt)") from None
        key = "/".join(p for p in (self.prefix, f"{uuid.uuid4().hex[:12]}-{path.name}") if p)
        try:
            client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                              retries={"max_attempts": 3, "mode": "standard"}))
            client.upload_file(str(path), self.bucket, key)
            return client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                 ExpiresIn=self.url_expiry_s)
        except Exception as exc:  # boto3, botocore and s3transfer each raise their own kinds
            message = f"upload of {path.name} to bucket {self.bucket!r} failed: {type(exc).__name__}: {exc}"
            for secret in (self.secret_access_key, self.access_key_id):
                message = message.replace(secret, "***")
            raise BucketError(message) from None
