"""Regenerates workflows/custom_nodes_schema.json from a real ComfyUI's GET /object_info, so the static
template check (tests/support/template_check.py) describes the custom nodes exactly as the pinned commits define them.

    .venv/bin/python scripts/update_node_schema.py [--url http://127.0.0.1:8188] [--models DIR] [--check]

Without --url it starts a CPU ComfyUI of its own (COMFYUI_PATH; the custom nodes of models/manifest.json
installed by scripts/install_custom_nodes.sh) with the model files under DIR (default: the random weights
that tests use, made by scripts/make_random_weights.py), since a COMBO that lists a model folder is
recognised by listing exactly that folder's files. --check compares instead of writing (exit 1 on a
difference). Run it after changing a custom node's commit in models/manifest.json, then the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCHEMA = REPO / "workflows" / "custom_nodes_schema.json"
MANIFEST = REPO / "models" / "manifest.json"
COMMENT = ("Inputs and outputs of the custom node classes the workflows use, as GET /object_info of ComfyUI "
           "0.3.75 reports them with each node pack at the commit models/manifest.json pins. COMBO inputs list "
           "their options, or name the ComfyUI model folder whose files they list (model_folder); those are "
           "checked against models/manifest.json. Written by scripts/update_node_schema.py: do not edit by hand.")


def used_classes(workflow_dirs: list[Path]) -> set[str]:
    return {node["class_type"] for d in workflow_dirs for graph in sorted(d.glob("*.json"))
            if not graph.name.endswith((".bindings.json", "_schema.json"))
            for node in json.loads(graph.read_text()).values()}


def model_folders(manifest: dict) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for model in manifest["models"]:
        folders.setdefault(model["folder"], set()).add(model["file"])
    return folders


def describe_input(spec: list, folders: dict[str, set[str]], optional: bool) -> dict:
    kind, options = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    entry: dict = {}
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        folder = next((name for name, files in sorted(folders.items()) if set(choices) == files), None)
        entry["type"] = "COMBO"
        if folder is not None:
            entry["model_folder"] = folder
        else:
            entry["options"] = list(choices)
    else:
        entry["type"] = str(kind)
        for key in ("min", "max"):
            if key in options:
                entry[key] = options[key]
    if "default" in options and entry["type"] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") \
            and "model_folder" not in entry:
        entry["default"] = options["default"]
    entry["optional"] = optional
    return entry


def schema_from_object_info(object_info: dict, classes: set[str], manifest: dict) -> dict:
    """The schema file's contents for the custom-node classes among `classes` (those whose python_module
    is a node pack of the manifest)."""
    packs = {node["name"]: node for node in manifest.get("custom_nodes", [])}
    folders = model_folders(manifest)
    nodes = {}
    for class_type in sorted(classes):
        info = object_info.get(class_type)
        if info is None:
            continue
        module = info.get("python_module", "")
        pack = packs.get(module.removeprefix("custom_nodes.").split(".")[0]) if module.startswith("custom_nodes.") else None
        if pack is None:
            continue
        inputs = {}
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                inputs[name] = describe_input(spec, folders, section == "optional")
        nodes[class_type] = {"repo": pack["repo"], "commit": pack["commit"], "inputs": inputs,
                             "outputs": list(info.get("output", []))}
    return {"comment": COMMENT, "nodes": nodes}


def fetch_object_info(url: str) -> dict:
    """GET /object_info after one empty prompt: the worker's nodes patch the wrapper when ComfyUI takes a prompt
    (comfy_nodes/wan_patches.py: attention_mode "cudnn_fp8" among WanVideoModelLoader's choices), as before any
    job's graph is checked. The empty prompt itself is refused (it has no outputs) and runs nothing."""
    requests.post(f"{url}/prompt", json={"prompt": {}}, timeout=60)
    response = requests.get(f"{url}/object_info", timeout=120)
    response.raise_for_status()
    return response.json()


def start_comfyui(models: Path, port: int):
    from comfy_manager import ComfyInstance, PoolSettings
    from comfy_manager.instance import InstanceSpec
    settings = PoolSettings.from_env()
    spec = InstanceSpec(index=0, port=port, gpu=None, root=Path(tempfile.mkdtemp(prefix="node-schema-")))
    instance = ComfyInstance(spec, settings.comfy_path, settings.python,
                             ["--extra-model-paths-config", str(models / "extra_model_paths.yaml")])
    instance.start()
    instance.wait_ready(time.monotonic() + 300)
    return instance


def default_models_dir() -> Path:
    return Path(os.environ.get("RANDOM_WEIGHTS_DIR", Path.home() / ".cache" / "comfy-worker" / "random-weights"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running ComfyUI to read (default: start one)")
    parser.add_argument("--models", type=Path, default=default_models_dir(),
                        help="model folders the started ComfyUI lists (default: RANDOM_WEIGHTS_DIR)")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args()

    manifest = json.loads(MANIFEST.read_text())
    instance = None if args.url else start_comfyui(args.models, args.port)
    try:
        object_info = fetch_object_info(args.url or instance.url)
    finally:
        if instance is not None:
            instance.stop()
    schema = schema_from_object_info(object_info, used_classes([REPO / "workflows"]), manifest)
    text = json.dumps(schema, indent=1) + "\n"
    if args.check:
        if SCHEMA.read_text() != text:
            print(f"{SCHEMA} differs from the nodes ComfyUI reports: run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{SCHEMA} matches")
        return 0
    SCHEMA.write_text(text)
    print(f"wrote {SCHEMA}: {len(schema['nodes'])} node classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
