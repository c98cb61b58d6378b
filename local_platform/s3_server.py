"""A real S3-compatible server for tests: moto in server mode, as its own process on a free local port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import boto3
import requests

ACCESS_KEY, SECRET_KEY = "test-access-key-id", "test-secret-access-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server with one bucket, reached with these credentials."""

    def __init__(self, bucket: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{self.endpoint}/moto-api/", timeout=2)
                break
            except requests.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("moto server did not start")
                time.sleep(0.2)
        self.client().create_bucket(Bucket=bucket)

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def keys(self) -> list[str]:
        return [o["Key"] for o in self.client().list_objects_v2(Bucket=self.bucket).get("Contents", [])]

    def worker_env(self, prefix: str = "videos") -> dict[str, str]:
        """The worker's BUCKET_* variables for this server."""
        return {"BUCKET_ENDPOINT_URL": f"{self.endpoint}/{self.bucket}", "BUCKET_ACCESS_KEY_ID": self.access_key,
                "BUCKET_SECRET_ACCESS_KEY": self.secret_key, "BUCKET_PREFIX": prefix}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
