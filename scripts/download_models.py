#!/usr/bin/env python3
"""Downloads the models in models/manifest.json from Hugging Face into <root>/<folder>/<file>.

    python scripts/download_models.py [--root DIR] [--optional] [--template NAME ...] [--dry-run]

Every required model (with --optional the optional ones too; with --template only those a workflow
uses) goes to --root (env MODELS_ROOT, default /runpod-volume/models; the Dockerfile uses /models when
BAKE_MODELS=1). Files already there are skipped, so running it again only fetches what is missing.

A download goes to <file>.partial and is renamed only after its size (when the manifest knows it
exactly) and sha256 (when the manifest has one) check out; an interrupted download resumes from the
.partial with an HTTP Range request. huggingface_hub's hf_hub_download is used when it is installed
(unless --no-hub), else plain HTTPS from $HF_ENDPOINT/<repo>/resolve/<revision>/<path>.
  HF_ENDPOINT   default https://huggingface.co (a mirror, or a local server in tests)
  HF_TOKEN      for gated or private repos; sent only as a header, never printed
Needs only the standard library and requests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.templates.model_files import ModelFile, load_manifest, model_files  # noqa: E402

CHUNK = 8 * 1024**2  # hashing
READ_CHUNK = 64 * 1024  # network reads: a dropped connection loses at most this much of what came
ATTEMPTS = 5
MB = 1024**2


class DownloadError(RuntimeError):
    pass


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def model_url(model: ModelFile) -> str:
    return f"{endpoint()}/{model.repo}/resolve/{quote(model.revision, safe='')}/{quote(model.path)}"


def exact_size(model: ModelFile) -> int | None:
    return None if model.size_is_estimate or not model.size_bytes else int(model.size_bytes)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(model: ModelFile, path: Path) -> None:
    size = path.stat().st_size
    want = exact_size(model)
    if want is not None and size != want:
        raise DownloadError(f"{model.relpath}: got {size} bytes, the manifest says {want}")
    if size == 0:
        raise DownloadError(f"{model.relpath}: the download is empty")
    if model.sha256 and sha256_of(path) != model.sha256.lower():
        raise DownloadError(f"{model.relpath}: sha256 differs from the manifest's {model.sha256}")


def is_present(model: ModelFile, dest: Path) -> bool:
    if not dest.is_file():
        return False
    want = exact_size(model)
    if want is not None and dest.stat().st_size != want:
        print(f"  {model.relpath}: {dest.stat().st_size} bytes, expected {want}: downloading again", flush=True)
        return False
    return dest.stat().st_size > 0


def fetch_https(model: ModelFile, partial: Path) -> None:
    """Into `partial`, resuming what is already there; retries dropped connections."""
    import requests

    headers = {"User-Agent": "runpod-infinitetalk-worker/download_models"}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = model_url(model)
    for attempt in range(1, ATTEMPTS + 1):
        have = partial.stat().st_size if partial.exists() else 0
        want = exact_size(model)
        if want is not None and have == want:
            return
        request_headers = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
        try:
            with requests.get(url, headers=request_headers, stream=True, timeout=(30, 300)) as response:
                if response.status_code == 416 and have:  # nothing after `have`: the file is complete
                    return
                if response.status_code in (401, 403, 404):
                    raise DownloadError(f"{model.relpath}: HTTP {response.status_code} from {url}"
                                        + ("" if token else " (gated or private? set HF_TOKEN)"))
                response.raise_for_status()
                mode = "ab" if have and response.status_code == 206 else "wb"
                if mode == "ab":
                    print(f"  resuming at {have / MB:.1f} MB", flush=True)
                with partial.open(mode) as out:
                    for chunk in response.iter_content(READ_CHUNK):
                        out.write(chunk)
            return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if attempt == ATTEMPTS:
                raise DownloadError(f"{model.relpath}: {type(exc).__name__} after {ATTEMPTS} attempts") from None
            print(f"  connection lost ({type(exc).__name__}); retrying ({attempt}/{ATTEMPTS})", flush=True)
            time.sleep(min(30, 2 ** attempt))
        except requests.HTTPError as exc:
            raise DownloadError(f"{model.relpath}: HTTP {exc.response.status_code} from {url}") from None


def fetch_hub(model: ModelFile, partial: Path, staging: Path) -> None:
    """Through huggingface_hub (resumable, its own retries), then moved to `partial`."""
    from huggingface_hub import hf_hub_download

    token = os.environ.get("HF_TOKEN") or None
    local = hf_hub_download(repo_id=model.repo, filename=model.path, revision=model.revision,
                            local_dir=str(staging), token=token)
    os.replace(local, partial)


def download(model: ModelFile, root: Path, use_hub: bool) -> str:
    dest = root / model.folder / model.file
    if is_present(model, dest):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    started = time.monotonic()
    if use_hub:
        fetch_hub(model, partial, root / ".hf-staging")
    else:
        fetch_https(model, partial)
    try:
        verify(model, partial)
    except DownloadError:
        partial.unlink(missing_ok=True)  # a wrong file must not be resumed from next time
        raise
    os.replace(partial, dest)
    seconds = time.monotonic() - started
    size = dest.stat().st_size
    return f"downloaded {size / MB:.1f} MB in {seconds:.1f} s ({size / MB / max(seconds, 1e-3):.1f} MB/s)"


def hub_available() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("MODELS_ROOT", "/runpod-volume/models")),
                        help="where <folder>/<file> go (env MODELS_ROOT; default /runpod-volume/models)")
    parser.add_argument("--manifest", type=Path, default=os.environ.get("MODELS_MANIFEST") or None,
                        help="env MODELS_MANIFEST; default models/manifest.json")
    parser.add_argument("--optional", action="store_true", help="also the optional models")
    parser.add_argument("--template", action="append", default=None,
                        help="only the models this workflow uses (repeatable)")
    parser.add_argument("--no-hub", action="store_true", help="plain HTTPS even if huggingface_hub is installed")
    parser.add_argument("--dry-run", action="store_true", help="list what would be downloaded")
    args = parser.parse_args(argv)

    models = model_files(load_manifest(args.manifest), args.template, include_optional=args.optional)
    use_hub = not args.no_hub and hub_available()
    total = sum(m.size_bytes or 0 for m in models)
    print(f"{len(models)} model file(s), about {total / 1024**3:.1f} GB, into {args.root} "
          f"(from {endpoint()}, {'huggingface_hub' if use_hub else 'HTTPS'})", flush=True)
    if args.dry_run:
        for m in models:
            state = "present" if is_present(m, args.root / m.folder / m.file) else "to download"
            print(f"  {m.relpath}  {(m.size_bytes or 0) / MB:.0f} MB  {m.repo}/{m.path}  [{state}]")
        return 0
    args.root.mkdir(parents=True, exist_ok=True)
    failures = []
    for i, m in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {m.relpath} <- {m.repo}/{m.path}", flush=True)
        try:
            print(f"  {download(m, args.root, use_hub)}", flush=True)
        except Exception as exc:  # report every file, then fail
            failures.append(m.relpath)
            print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
    shutil.rmtree(args.root / ".hf-staging", ignore_errors=True)
    if failures:
        print(f"{len(failures)} download(s) failed: {', '.join(failures)}; run again to resume", file=sys.stderr)
        return 1
    print("all models present", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
