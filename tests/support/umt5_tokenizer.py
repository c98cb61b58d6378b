"""umt5's tokenizer.json for the wrapper's text encoder: a wrapper unpacked from the offline archive lacks it (see
../shared/custom_nodes/README.md), and ../shared holds a stand-in with umt5's layout. Tests that run the wrapper's
umt5 code (test_infinitetalk, test_t5_trim) call ensure() first, whatever order they run in."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_TOKENIZER = REPO.parent / "shared" / "custom_nodes" / "standin-umt5-tokenizer" / "tokenizer.json.gz"


def ensure(comfy_path: Path) -> None:
    """The stand-in put where the wrapper reads the tokenizer, unless a file is there (a GitHub clone has the real
    one, which is left alone)."""
    target = comfy_path / "custom_nodes" / "ComfyUI-WanVideoWrapper" / "configs" / "T5_tokenizer" / "tokenizer.json"
    if target.exists():
        return
    if not SHARED_TOKENIZER.exists():
        pytest.fail(f"{target} is missing and there is no stand-in at {SHARED_TOKENIZER}: install the wrapper "
                    "from GitHub (scripts/install_custom_nodes.sh without CUSTOM_NODES_ARCHIVES)")
    partial = target.with_suffix(".json.partial")  # renamed when whole: an interrupted copy is never taken
    with gzip.open(SHARED_TOKENIZER) as source, open(partial, "wb") as out:
        shutil.copyfileobj(source, out)
    os.replace(partial, target)
