"""One of comfy_nodes' patch modules (wan_patches.py, t5_trim.py), loaded afresh without ComfyUI: comfy_nodes'
own __init__ (which imports ComfyUI) is left out; an empty package over the same folder stands in for it, so that
the module's relative imports (patching.py) resolve."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[2] / "comfy_nodes"
PACKAGE = "comfy_nodes_parts"


def load(name: str) -> types.ModuleType:
    """comfy_nodes/<name>.py as a new module (its global state fresh)."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(FOLDER)]
        sys.modules[PACKAGE] = package
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
