"""Workflow templates: an API-format ComfyUI graph plus a declaration of where request fields bind.

`workflows/NAME.json` is the graph exactly as ComfyUI's "Export (API)" writes it;
`workflows/NAME.bindings.json` says which node inputs receive each value of a segment (its media,
frame count, size, prompt ...: the slots of worker/templates/slots.py). Adding a workflow is adding these two files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.request.settings import WorkerSettings
from worker.request.errors import JobInputError
from worker.templates.frame_grid import FrameGrid
from worker.request.job_request import JobRequest
from worker.templates.slots import SLOTS

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"


class NodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str
    input: str


class DeviceRow(BaseModel):
    """Template values for the instances of one kind of device: the CPU, or a GPU with at least min_vram_gb
    (VRAM as NVML reports it, or COMFY_VRAM_LIMIT_GB where that is lower). The first row that fits wins."""

    model_config = ConfigDict(extra="forbid")
    device: Literal["cpu", "gpu"]
    min_vram_gb: float = Field(default=0.0, ge=0)
    params: dict[str, Any] = {}
    note: str = ""

    def fits(self, vram_gb: float | None) -> bool:
        if vram_gb is None:
            return self.device == "cpu"
        return self.device == "gpu" and vram_gb >= self.min_vram_gb

    @property
    def label(self) -> str:
        return "cpu" if self.device == "cpu" else f"gpu>={self.min_vram_gb:g}GB"


class MemoryCost(BaseModel):
    """What a segment of the template costs a ComfyUI instance beyond its idle footprint (worker/planning/memory.py):
    per frame, in bytes per pixel of the output (x width x height: a float32 RGB copy of a frame is 12 bytes a
    pixel, and nodes make several), and a fixed part whatever the length (e.g. model weights). RAM is learned
    from the template's own jobs once it has run at that size; these numbers plan the jobs before that. VRAM
    is never learned (ComfyUI keeps models resident whatever a job needs): GPU instances plan with these."""

    model_config = ConfigDict(extra="forbid")
    ram_bytes_per_pixel: float = Field(default=0.0, ge=0)
    ram_fixed_mb: float = Field(default=0.0, ge=0)
    vram_bytes_per_pixel: float = Field(default=0.0, ge=0)
    vram_fixed_mb: float = Field(default=0.0, ge=0)


class Speed(BaseModel):
    """A template's measured speed (worker/planning/estimate.py): seconds a window per preset on one GPU."""

    model_config = ConfigDict(extra="forbid")
    measured_on: str  # e.g. "NVIDIA H200, random weights, 832x480, docs/PERFORMANCE.md"
    width: int
    height: int
    seconds_per_window: dict[str, float]  # by preset ("default" where the template has none)
    load_s: float | None = None  # a cold instance's first job, over a warm one's

    @property
    def pixels(self) -> int:
        return self.width * self.height


class TemplateSpec(BaseModel):
    """The contents of a NAME.bindings.json file."""

    model_config = ConfigDict(extra="forbid")
    description: str
    input_type: Literal["image", "video"]
    person_counts: list[Literal["single", "multi"]] = ["single", "multi"]
    overlap_frames: int = Field(ge=0)
    max_segment_frames: int = Field(default=100_000, ge=1)
    min_segment_frames: int = Field(default=1, ge=1)
    # The frame counts the workflow generates: frames_offset + frames_quantum x k (see worker/templates/frame_grid.py).
    # `generate_frames` binds a segment's length rounded up to that grid; `frames` its exact length.
    frames_quantum: int = Field(default=1, ge=1)
    frames_offset: int = Field(default=0, ge=0)
    # Extra named values a template exposes (e.g. window_frames), bindable like the slots. A value of null
    # removes the input it binds (e.g. an optional link), so a preset can switch a node off.
    params: dict[str, Any] = {}
    # Named sets of params a request chooses with `quality` (default: default_preset). They may also set
    # `steps`, which the request's own `steps` overrides.
    presets: dict[str, dict[str, Any]] = {}
    default_preset: str | None = None
    # Params by the device an instance runs on (precision, block swap, attention ...): see DeviceRow.
    device_settings: list[DeviceRow] = []
    # What a segment costs an instance's memory; segments are planned to fit (worker/planning/learned.py).
    memory: MemoryCost = MemoryCost()
    # Switches: a param named here binds an optional link input: true links it to [node id, output index]
    # (e.g. a LoRA or block-swap node), false removes the input, so the node it names does not run.
    links: dict[str, tuple[str, int]] = {}
    # Params a request may not set (template_params), e.g. those the frame grid above depends on.
    locked_params: list[str] = []
    speed: Speed | None = None
    output_node: str | None = None
    bindings: dict[str, list[NodeInput]]


@dataclass(frozen=True)
class TemplateParams:
    """The params one segment binds, and where they came from (reported per segment)."""

    values: dict[str, Any]
    preset: str | None  # the quality preset, None where the template has none
    device: str | None  # the device row's label (e.g. "gpu>=80GB", "cpu"), None where the template has none

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


class TemplateError(ValueError):
    """A template or its declaration is inconsistent."""


class WorkflowTemplate:
    def __init__(self, name: str, graph: dict, spec: TemplateSpec):
        self.name = name
        self.graph = graph
        self.spec = spec
        problems = check_template(graph, spec)
        if problems:
            raise TemplateError(f"workflow {name!r}: " + "; ".join(problems))

    @property
    def load_s(self) -> float:
        """A cold instance's model loading, as the template declares it (`speed.load_s`; 0 where it does not)."""
        return (self.spec.speed.load_s or 0.0) if self.spec.speed else 0.0

    @property
    def settable_params(self) -> set[str]:
        """The params a request may set (template_params): every declared one that is not a slot."""
        spec = self.spec
        declared = set(spec.params).union(*spec.presets.values(), *(r.params for r in spec.device_settings))
        return declared - set(SLOTS) - set(spec.locked_params)

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        """JobInputError naming a request's template_params that this template does not have, or a switch
        given something other than true or false."""
        unknown = sorted(set(overrides) - self.settable_params)
        if unknown:
            known = ", ".join(sorted(self.settable_params)) or "none"
            raise JobInputError("template_params", f"workflow {self.name!r} has no param {', '.join(unknown)}; "
                                                   f"it has {known}")
        for name in set(overrides) & set(self.spec.links):
            if not isinstance(overrides[name], bool):
                raise JobInputError("template_params", f"{name} switches a node on or off: true or false, "
                                                       f"not {overrides[name]!r}")

    def params_for(self, preset: str | None, vram_gb: float | None,
                   overrides: dict[str, Any] | None = None) -> TemplateParams:
        """The template's params for one segment: its own, then the preset's, then the first device row that
        fits the instance (vram_gb None: a CPU instance), then the request's overrides. JobInputError if no
        row fits."""
        name = preset or self.spec.default_preset
        row = next((r for r in self.spec.device_settings if r.fits(vram_gb)), None)
        if self.spec.device_settings and row is None:
            smallest = min((r.min_vram_gb for r in self.spec.device_settings if r.device == "gpu"), default=None)
            where = "a CPU instance" if vram_gb is None else f"a GPU with {vram_gb:g} GB of VRAM"
            needs = f"a GPU with at least {smallest:g} GB" if smallest is not None else "a CPU"
            raise JobInputError("workflow", f"workflow {self.name!r} cannot run on {where}: it needs {needs}")
        values = {**self.spec.params, **(self.spec.presets[name] if name else {}), **(row.params if row else {}),
                  **(overrides or {})}
        return TemplateParams(values, name, row.label if row else None)

    def bind(self, values: dict[str, Any], params: TemplateParams | None = None) -> dict:
        """A copy of the graph with every bound input set from the slot values over the params (the template's
        own where none are given); values the template does not bind are ignored, a null param removes its input."""
        graph = copy.deepcopy(self.graph)
        merged = {**(params.values if params else self.spec.params), **{k: v for k, v in values.items() if v is not None}}
        for slot, targets in self.spec.bindings.items():
            if slot not in merged:
                continue
            value = merged[slot]
            if slot in self.spec.links:
                value = list(self.spec.links[slot]) if value else None
            for target in targets:
                if value is None:
                    graph[target.node]["inputs"].pop(target.input, None)
                else:
                    graph[target.node]["inputs"][target.input] = value
        return graph

    def binds(self, slot: str) -> bool:
        return slot in self.spec.bindings

    @property
    def grid(self) -> FrameGrid:
        return FrameGrid(self.spec.frames_quantum, self.spec.frames_offset, self.spec.min_segment_frames)


def check_template(graph: dict, spec: TemplateSpec) -> list[str]:
    """Structural problems: malformed nodes, links to missing nodes, bindings to missing inputs."""
    problems = []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            problems.append(f"node {node_id} is not an API-format node (class_type + inputs)")
            continue
        for input_name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                if str(value[0]) not in graph:
                    problems.append(f"node {node_id}.{input_name} links to missing node {value[0]}")
    declared = set(spec.params).union(*spec.presets.values(), *(row.params for row in spec.device_settings))
    for slot, targets in spec.bindings.items():
        if slot not in SLOTS and slot not in declared:
            problems.append(f"binding {slot!r} is neither a known slot {SLOTS} nor a declared param")
        for target in targets:
            node = graph.get(target.node)
            if node is None:
                problems.append(f"binding {slot!r} targets missing node {target.node}")
            elif target.input not in node.get("inputs", {}) and slot not in spec.links:  # a switch may be off
                problems.append(f"binding {slot!r} targets missing input {target.node}.{target.input}")
    settable = set(spec.bindings) | set(SLOTS)
    for where, values in [*((f"preset {n!r}", v) for n, v in spec.presets.items()),
                          *((f"device row {r.label!r}", r.params) for r in spec.device_settings)]:
        problems += [f"{where} sets {name!r}, which nothing binds" for name in values if name not in settable]
    for name, (node, _) in spec.links.items():
        if node not in graph:
            problems.append(f"link {name!r} names missing node {node}")
        if name not in spec.bindings:
            problems.append(f"link {name!r} binds nothing")
    if spec.default_preset is not None and spec.default_preset not in spec.presets:
        problems.append(f"default_preset {spec.default_preset!r} is not one of the presets {sorted(spec.presets)}")
    if spec.presets and spec.default_preset is None:
        problems.append("templates with presets name their default_preset")
    if "start_step" in spec.bindings and not all("steps" in p for p in spec.presets.values()) \
            and "steps" not in spec.params:
        problems.append("start_step is bound, so every preset (or params) must set steps")
    if spec.output_node is not None and spec.output_node not in graph:
        problems.append(f"output_node {spec.output_node} is not in the graph")
    media = "image" if spec.input_type == "image" else "video"
    if media not in spec.bindings:
        problems.append(f"input_type {spec.input_type!r} but no {media!r} binding")
    return problems


def load_template(name: str, directory: Path = WORKFLOWS_DIR) -> WorkflowTemplate:
    graph = json.loads((directory / f"{name}.json").read_text())
    spec = TemplateSpec.model_validate_json((directory / f"{name}.bindings.json").read_text())
    return WorkflowTemplate(name, graph, spec)


def available_templates(extra_dirs: tuple[Path, ...] = ()) -> dict[str, WorkflowTemplate]:
    """Every template of workflows/, then of extra_dirs (EXTRA_WORKFLOW_DIRS: e.g. a benchmark's own), by name
    (a template is a NAME.json with a NAME.bindings.json)."""
    return _load_all((WORKFLOWS_DIR, *extra_dirs))


@lru_cache(maxsize=None)
def _load_all(directories: tuple[Path, ...]) -> dict[str, WorkflowTemplate]:
    templates = {}
    for directory in directories:
        for path in sorted(directory.glob("*.bindings.json")):
            name = path.name[: -len(".bindings.json")]
            templates.setdefault(name, load_template(name, directory))
    return templates


def choose_template(request: JobRequest, settings: WorkerSettings) -> WorkflowTemplate:
    """The request's workflow, or the default for its input type and person count (DEFAULT_WORKFLOWS);
    JobInputError if there is no such template or it does not take this kind of input."""
    templates = available_templates(settings.extra_workflow_dirs)
    name = request.workflow or settings.default_workflow(request.input_type, request.person_count)
    template = templates.get(name)
    if template is None:
        raise JobInputError("workflow", f"unknown workflow {name!r}; available: {', '.join(templates)}")
    if template.spec.input_type != request.input_type:
        raise JobInputError("input_type", f"workflow {name!r} takes input_type {template.spec.input_type!r}, "
                                          f"not {request.input_type!r}")
    if request.person_count not in template.spec.person_counts:
        raise JobInputError("person_count", f"workflow {name!r} supports {template.spec.person_counts}")
    template.check_overrides(request.template_params)
    if request.seams.color_match and not template.binds("color_match"):
        raise JobInputError("seams.color_match", f"workflow {name!r} has no colour reference to match segments to "
                                                 "(its bindings link none); leave it unset or false")
    if request.quality is not None and request.quality not in template.spec.presets:
        offered = f"one of {', '.join(template.spec.presets)}" if template.spec.presets else "no quality presets"
        raise JobInputError("quality", f"workflow {name!r} has {offered}, not {request.quality!r}")
    return template
