"""What the worker's patches of another package's code share (wan_patches.py, t5_trim.py): finding a class that
ComfyUI loaded, and applying the patches when ComfyUI takes a prompt. Needs neither ComfyUI nor torch (the tests
load these modules without them)."""

from __future__ import annotations

import logging
import sys
from typing import Callable


def find_class(class_name: str, module_suffix: str) -> type | None:
    """The class `class_name` of a loaded module whose name ends with `module_suffix` (ComfyUI names a custom node
    package's modules after its folder's path), or None while there is none."""
    for name, module in list(sys.modules.items()):
        if module is not None and name.endswith(module_suffix) and isinstance(getattr(module, class_name, None), type):
            return getattr(module, class_name)
    return None


def find_module(module_suffix: str, attribute: str):
    """A loaded module whose name ends with `module_suffix` and that has `attribute`, or None while there is none."""
    for name, module in list(sys.modules.items()):
        if module is not None and name.endswith(module_suffix) and hasattr(module, attribute):
            return module
    return None


def prompt_handler(apply: Callable[[], set[str]], announce: Callable[[set[str]], str], what: str,
                   log: logging.Logger) -> Callable[[dict], dict]:
    """A PromptServer on-prompt handler that runs apply() before every prompt (by the first one every custom node
    package is loaded, in whatever order ComfyUI loaded them) and prints announce(names) for the patches it newly
    applied. A failure is logged, never raised: a patch must never stop a prompt."""
    announced: set[str] = set()

    def on_prompt(json_data):
        try:
            new = set(apply()) - announced
            announced.update(new)
            if new:
                print(f"[runpod worker] {announce(new)}", flush=True)
        except Exception:
            log.exception("applying %s failed", what)
        return json_data

    return on_prompt
