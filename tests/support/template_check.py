"""Checks an API-format workflow graph against the definitions of the node classes it uses.

The definitions come from a real ComfyUI's GET /object_info (core nodes) and from
workflows/custom_nodes_schema.json (custom nodes at their pinned commits). Every problem is one line
naming the node, its class and the input, so a failing test says what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from worker.planning.segment_plan import Segment, SegmentPlan
from worker.request.job_request import JobRequest
from worker.render.slot_values import segment_values
from worker.templates.template import TemplateSpec, WorkflowTemplate

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflows" / "custom_nodes_schema.json"
MANIFEST_PATH = REPO_ROOT / "models" / "manifest.json"

# Core loaders list the files of a model folder; a test instance has no models, so those combos come
# back empty and their values are checked against models/manifest.json instead.
CORE_MODEL_FOLDERS = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
}
UPLOAD_FLAGS = ("image_upload", "audio_upload", "video_upload")
VALUE_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass(frozen=True)
class InputDef:
    type: str  # INT, FLOAT, STRING, BOOLEAN, COMBO, or a link type such as IMAGE or WANVAE
    optional: bool = False
    min: float | None = None
    max: float | None = None
    options: tuple | None = None  # the choices of a COMBO, when they are a fixed list
    model_folder: str | None = None  # a COMBO listing a model folder's files
    upload: bool = False  # a COMBO listing the input folder (LoadImage, LoadAudio, LoadVideo)


@dataclass(frozen=True)
class NodeDef:
    inputs: dict[str, InputDef]
    outputs: tuple[str, ...]
    is_output: bool = False
    source: str = "core"


@dataclass
class Models:
    """The manifest's files by folder, and which templates each file says it is used by."""
    used_by: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = MANIFEST_PATH) -> "Models":
        manifest = json.loads(path.read_text())
        return cls({(m["folder"], m["file"]): set(m.get("used_by") or ()) for m in manifest["models"]})


def core_nodes(object_info: dict) -> dict[str, NodeDef]:
    return {name: _from_object_info(name, info) for name, info in object_info.items()}


def _from_object_info(class_type: str, info: dict) -> NodeDef:
    inputs = {}
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            optional = section == "optional"
            # Two spellings of a combo: the legacy [choices, {...}] and ["COMBO", {"options": choices}].
            if isinstance(kind, list) or kind == "COMBO":
                choices = tuple(kind if isinstance(kind, list) else opts.get("options", ()))
                folder = CORE_MODEL_FOLDERS.get((class_type, name))
                upload = any(opts.get(flag) for flag in UPLOAD_FLAGS)
                inputs[name] = InputDef("COMBO", optional, options=None if folder else choices,
                                        model_folder=folder, upload=upload)
            else:
                inputs[name] = InputDef(str(kind), optional, opts.get("min"), opts.get("max"))
    return NodeDef(inputs, tuple(info.get("output", ())), bool(info.get("output_node")))


def custom_nodes(path: Path = SCHEMA_PATH) -> dict[str, NodeDef]:
    nodes = {}
    for name, entry in json.loads(path.read_text())["nodes"].items():
        inputs = {}
        for input_name, e in entry["inputs"].items():
            options = tuple(e["options"]) if "options" in e else None
            inputs[input_name] = InputDef(e["type"], e.get("optional", False), e.get("min"), e.get("max"),
                                          options, e.get("model_folder"))
        nodes[name] = NodeDef(inputs, tuple(entry["outputs"]), entry.get("is_output", False),
                              f"{entry['repo']}@{entry['commit'][:12]}")
    return nodes


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def check_graph(name: str, graph: dict, spec: TemplateSpec, nodes: dict[str, NodeDef], models: Models,
                check_uploads: bool = False) -> list[str]:
    """Every problem ComfyUI would reject the graph for (or that would load the wrong model), one per line.

    check_uploads: whether upload combos must list the value (true once the media was really uploaded).
    """
    problems = []
    for node_id, node in graph.items():
        class_type = node.get("class_type")
        definition = nodes.get(class_type)
        where = f"node {node_id} ({class_type})"
        if definition is None:
            problems.append(f"{where}: unknown class_type, neither a core node of this ComfyUI nor described "
                            f"in {SCHEMA_PATH.name}")
            continue
        inputs = node.get("inputs", {})
        for input_name, expected in definition.inputs.items():
            if not expected.optional and input_name not in inputs:
                problems.append(f"{where}.{input_name}: required input is missing")
        for input_name, value in inputs.items():
            expected = definition.inputs.get(input_name)
            if expected is None:
                problems.append(f"{where}.{input_name}: {class_type} has no input {input_name!r} "
                                f"(it has {sorted(definition.inputs)})")
            elif is_link(value):
                problems += _check_link(graph, nodes, f"{where}.{input_name}", expected, value)
            else:
                problems += _check_value(name, f"{where}.{input_name}", expected, value, models, check_uploads)
    for slot, targets in spec.bindings.items():
        for target in targets:
            node = graph.get(target.node)
            definition = nodes.get(node["class_type"]) if node else None
            if node is None:
                problems.append(f"binding {slot!r}: node {target.node} is not in the graph")
            elif definition is not None and target.input not in definition.inputs:
                problems.append(f"binding {slot!r}: node {target.node} ({node['class_type']}) has no input "
                                f"{target.input!r}")
    if spec.output_node is not None:
        node = graph.get(spec.output_node)
        definition = nodes.get(node["class_type"]) if node else None
        if node is None:
            problems.append(f"output_node {spec.output_node} is not in the graph")
        elif definition is not None and not definition.is_output:
            problems.append(f"output_node {spec.output_node} ({node['class_type']}) is not an output node")
    return problems


def _check_link(graph: dict, nodes: dict[str, NodeDef], where: str, expected: InputDef, link: list) -> list[str]:
    source_id, index = link
    source = graph.get(source_id)
    if source is None:
        return [f"{where}: links to node {source_id}, which is not in the graph"]
    source_def = nodes.get(source.get("class_type"))
    if source_def is None:
        return []  # reported where that node itself is checked
    if not 0 <= index < len(source_def.outputs):
        return [f"{where}: links to output {index} of node {source_id} ({source['class_type']}), which has "
                f"{len(source_def.outputs)} output(s) {list(source_def.outputs)}"]
    produced = source_def.outputs[index]
    # A COMBO may be fed by any link (ComfyUI checks the value at run time); "*" matches every type.
    if expected.type == "COMBO" or "*" in (produced, expected.type):
        return []
    if produced not in expected.type.split(","):
        return [f"{where}: expects {expected.type} but node {source_id} ({source['class_type']}) output "
                f"{index} is {produced}"]
    return []


def _check_value(template: str, where: str, expected: InputDef, value, models: Models,
                 check_uploads: bool) -> list[str]:
    kind = expected.type
    if kind not in VALUE_TYPES:
        return [f"{where}: expects a link from a {kind} output, got the value {value!r}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: expects a BOOLEAN, got {value!r}"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: expects a STRING, got {value!r}"]
    if kind in ("INT", "FLOAT"):
        number_types = (int,) if kind == "INT" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            return [f"{where}: expects an {kind}, got {value!r}"]
        if expected.min is not None and value < expected.min or expected.max is not None and value > expected.max:
            return [f"{where}: {value!r} is outside [{expected.min}, {expected.max}]"]
        return []
    # COMBO
    if expected.model_folder is not None:
        users = models.used_by.get((expected.model_folder, value))
        if users is None:
            return [f"{where}: model {value!r} is not in models/manifest.json under folder "
                    f"{expected.model_folder!r}"]
        if template not in users:
            return [f"{where}: models/manifest.json does not list {template!r} in used_by of {value!r}"]
        return []
    if not isinstance(value, str):
        return [f"{where}: expects one of the COMBO's names, got {value!r}"]
    if expected.upload and not check_uploads:
        return []  # a placeholder until the worker uploads the segment's own file
    if value not in expected.options:
        hint = " (an empty list: a model folder combo missing from CORE_MODEL_FOLDERS?)" if not expected.options else ""
        return [f"{where}: {value!r} is not one of {list(expected.options)}{hint}"]
    return []


# ------------------------------------------------------------------------------- requests bound as a job binds them

# A typical request and the extremes one may ask for (worker/request/job_request.py bounds fps, width, height, seed, steps
# and denoise; the template bounds a segment's frame count), bound as a job binds a segment (worker/templates/slots.py).
REQUESTS = {
    "typical": {"fps": 25.0, "width": 832, "height": 480, "seed": 42, "steps": None,
                "prompt": "A woman explains a recipe, smiling, in a bright kitchen.", "negative_prompt": "blurry"},
    "shortest": {"fps": 1.0, "width": 64, "height": 64, "seed": 0, "steps": 1, "denoise": 0.01, "prompt": "",
                 "negative_prompt": "", "output": {"crf": 0, "preset": "ultrafast"}},
    "longest": {"fps": 60.0, "width": 2048, "height": 2048, "seed": 2**53, "steps": 200, "denoise": 1.0,
                "prompt": "word " * 2000, "negative_prompt": "noise " * 500, "output": {"crf": 51, "preset": "slower"}},
}
FRAMES = {"typical": 153, "shortest": "min", "longest": "max"}


def variants(template: WorkflowTemplate) -> list[tuple[str | None, float | None]]:
    """(quality preset, VRAM in GB; None: a CPU instance): every preset on every kind of device the template
    has settings for."""
    presets = list(template.spec.presets) or [None]
    devices = [None, 80.0] if template.spec.device_settings else [None]
    return [(preset, vram) for preset in presets for vram in devices]


def bind_case(template: WorkflowTemplate, case: str, uploaded: dict[str, str], preset: str | None,
              vram_gb: float | None) -> tuple[dict, dict]:
    """(graph, slot values) of the middle one of three segments (it binds both overlaps: SaveSegmentVideo's
    split form) of REQUESTS[case], with the segment's media as `uploaded` (slot -> file name)."""
    media = {slot: file for slot, file in uploaded.items() if template.binds(slot)}
    given = {"audio": "speech.wav", **{name: f"{name}.src" for name in media}}  # the request's media fields
    request = JobRequest(input_type=template.spec.input_type, person_count="multi" if "audio_2" in media else "single",
                         quality=preset, **given, **REQUESTS[case])
    limits = {"min": template.spec.min_segment_frames, "max": template.spec.max_segment_frames}
    frames = min(max(limits.get(FRAMES[case], FRAMES[case]), limits["min"]), limits["max"])
    overlap = min(template.spec.overlap_frames, frames // 2)
    first, segment = Segment(0, 0, frames), Segment(1, frames - overlap, 2 * frames - overlap)
    last = Segment(2, segment.end - overlap, segment.end - overlap + frames)
    plan = SegmentPlan(last.end, overlap, (first, segment, last))
    params = template.params_for(preset, vram_gb)
    values = segment_values(request, template, plan, segment, f"job-{case}_a1b2c3_seg1/out", media, params)
    return template.bind(values, params), values
