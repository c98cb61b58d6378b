"""Turns a media field (base64, data URI, http(s) URL or allowed path) into a file in the job folder.

Which form a value has is decided from its text alone: an http(s) URL; a data URI (`data:<type>[;<params>];base64,`,
as browsers write them, e.g. `data:video/webm;codecs=vp8,opus;base64,...`); an absolute path; otherwise base64,
with or without line breaks (MIME writes one every 76 characters). Base64 may begin with "/" too: a JPEG's
does ("/9j/"), and so does that of every MP3 without an ID3 tag and every raw ADTS AAC stream ("//"), since
all start with the byte 0xFF. So a value that starts with "/" is a path only if it could be one (no line
break, under PATH_MAX) and does not decode to the start of such a file (see _starts_like_media).
Errors never quote more than the start of a value (errors.shorten).
"""

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

from worker.request.settings import WorkerSettings
from worker.request.errors import JobInputError, shorten

# Up to the first ";base64,": the media type and any parameters, which may hold commas (codecs=vp8,opus).
_DATA_URI = re.compile(r"^data:[^\r\n]{0,256}?;base64,", re.IGNORECASE)
_DATA_URI_OTHER = re.compile(r"^data:[^,]{0,256},", re.IGNORECASE)  # percent-encoded: not for media
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
PATH_MAX = 4096


def fetch_media(field: str, value: str, dest: Path, settings: WorkerSettings) -> Path:
    """Writes the field's bytes to dest (never more than settings.max_input_bytes) and returns dest."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        _download(field, value, dest, settings)
    elif "://" in value[:16]:
        raise JobInputError(field, f"unsupported URL scheme {value.split('://')[0]!r}; use http(s), base64 or a path")
    elif _is_path(value):
        _copy_allowed_path(field, value, dest, settings)
    elif _DATA_URI_OTHER.match(value) and not _DATA_URI.match(value):
        raise JobInputError(field, "a data URI without ';base64,'; send the media base64-encoded "
                                   "(data:<type>;base64,...)")
    else:
        _decode_base64(field, value, dest, settings)
    if dest.stat().st_size == 0:
        raise JobInputError(field, "the file is empty")
    return dest


def _is_path(value: str) -> bool:
    """Whether a value is meant as a path: it starts with "/", could be one, and is not base64 of a file
    that starts with 0xFF."""
    if not value.startswith("/") or len(value) >= PATH_MAX or any(c in value for c in "\r\n"):
        return False
    return not _starts_like_media(value)


def _starts_like_media(value: str) -> bool:
    """Whether the first base64 characters decode to the start of a JPEG (FF D8 FF) or of an MPEG audio or
    ADTS AAC frame (an 11-bit sync word: FF Ex / FF Fx)."""
    try:
        head = base64.b64decode(value[:4], validate=True)
    except (binascii.Error, ValueError):
        return False
    return head[0] == 0xFF and (head[1:3] == b"\xd8\xff" or head[1] >= 0xE0)


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
        raise JobInputError(field, f"path {shorten(value)} is outside the allowed roots ({roots}; ALLOWED_INPUT_ROOTS)")
    if not path.is_file():
        raise JobInputError(field, f"no file at {shorten(value)}")
    if path.stat().st_size > settings.max_input_bytes:
        raise JobInputError(field, f"larger than the {settings.max_input_bytes // 1024**2} MB limit (MAX_INPUT_MB)")
    shutil.copyfile(path, dest)


def _check_host(field: str, url: str, settings: WorkerSettings) -> None:
    host = urlparse(url).hostname
    if not host:
        raise JobInputError(field, f"URL has no host: {shorten(url)}")
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
            raise JobInputError(field, f"download failed: {shorten(str(exc), 300)}") from None
        if response.is_redirect:
            url = requests.compat.urljoin(url, response.headers["location"])
            if not url.startswith(("http://", "https://")):
                raise JobInputError(field, f"redirect to an unsupported URL: {shorten(url)}")
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
