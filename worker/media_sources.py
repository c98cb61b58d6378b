"""Turns a media field (base64, data URI, http(s) URL or allowed path) into a file in the job folder."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import requests

from worker.config import WorkerSettings
from worker.errors import JobInputError

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")


def fetch_media(field: str, value: str, dest: Path, settings: WorkerSettings) -> Path:
    """Writes the field's bytes to dest (never more than settings.max_input_bytes) and returns dest."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        _download(field, value, dest, settings)
    elif "://" in value[:16]:
        raise JobInputError(field, f"unsupported URL scheme {value.split('://')[0]!r}; use http(s), base64 or a path")
    elif value.startswith("/"):
        _copy_allowed_path(field, value, dest, settings)
    else:
        _decode_base64(field, value, dest, settings)
    if dest.stat().st_size == 0:
        raise JobInputError(field, "the file is empty")
    return dest


def _decode_base64(field: str, value: str, dest: Path, settings: WorkerSettings) -> None:
    match = _DATA_URI.match(value)
    payload = value[match.end():] if match else value
    if not payload.strip():
        dest.write_bytes(b"")  # reported as an empty file by the caller
        return
    if len(payload) * 3 // 4 > settings.max_input_bytes:
        raise JobInputError(field, f"larger than the {settings.max_input_bytes // 1024**2} MB limit (MAX_INPUT_MB)")
    if not _BASE64_CHARS.match(payload[:1000]):
        raise JobInputError(field, "not base64, a data URI, an http(s) URL or an absolute path")
    try:
        payload = "".join(payload.split())
        if "-" in payload or "_" in payload:
            data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        else:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobInputError(field, f"invalid base64 ({exc})") from None
    dest.write_bytes(data)


def _copy_allowed_path(field: str, value: str, dest: Path, settings: WorkerSettings) -> None:
    path = Path(value).resolve()  # follows symlinks, so a link cannot lead out of the roots
    if not any(path.is_relative_to(root) for root in settings.allowed_input_roots):
        roots = ", ".join(str(r) for r in settings.allowed_input_roots)
        raise JobInputError(field, f"path {value} is outside the allowed roots ({roots}; ALLOWED_INPUT_ROOTS)")
    if not path.is_file():
        raise JobInputError(field, f"no file at {value}")
    if path.stat().st_size > settings.max_input_bytes:
        raise JobInputError(field, f"larger than the {settings.max_input_bytes // 1024**2} MB limit (MAX_INPUT_MB)")
    shutil.copyfile(path, dest)


def _check_host(field: str, url: str, settings: WorkerSettings) -> None:
    host = urlparse(url).hostname
    if not host:
        raise JobInputError(field, f"URL has no host: {url}")
    if settings.allow_private_urls:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise JobInputError(field, f"cannot resolve host {host!r}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise JobInputError(field, f"URL host {host} resolves to a non-public address ({ip}); refused")


def _download(field: str, url: str, dest: Path, settings: WorkerSettings) -> None:
    """Streams the URL to dest with a byte cap; each redirect is checked like the first URL."""
    session = requests.Session()
    for _ in range(5):
        _check_host(field, url, settings)
        try:
            response = session.get(url, stream=True, timeout=settings.download_timeout_s, allow_redirects=False)
        except requests.RequestException as exc:
            raise JobInputError(field, f"download failed: {exc}") from None
        if response.is_redirect:
            url = requests.compat.urljoin(url, response.headers["location"])
            if not url.startswith(("http://", "https://")):
                raise JobInputError(field, f"redirect to an unsupported URL: {url}")
            continue
        break
    else:
        raise JobInputError(field, "too many redirects")
    with response:
        if not response.ok:
            raise JobInputError(field, f"download answered HTTP {response.status_code}")
        written = 0
        with open(dest, "wb") as f:
            for chunk in response.iter_content(chunk_size=1 << 20):
                written += len(chunk)
                if written > settings.max_input_bytes:
                    raise JobInputError(
                        field, f"download exceeds the {settings.max_input_bytes // 1024**2} MB limit (MAX_INPUT_MB)")
                f.write(chunk)
