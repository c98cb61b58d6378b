"""Static checks of every workflow template in workflows/ against the real node definitions.

Core nodes are described by a real CPU ComfyUI's GET /object_info (the `pool` fixture), custom nodes by
workflows/custom_nodes_schema.json (read from their code at the pinned commit), model file names by
models/manifest.json. Each template is checked as written and again after binding realistic segment
values, with the segment's media really uploaded, so the loaders' own file lists must contain them.
Nothing runs a model: this catches broken wiring, typos and out-of-range values without a GPU.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest
import requests

from comfy_manager import ComfyClient
from media_samples.factory import make_image, make_index_video, make_tone
from tests.support.template_check import (MANIFEST_PATH, REQUESTS, SCHEMA_PATH, Models, bind_case, check_graph, core_nodes,
                                  custom_nodes, variants)
from worker.templates.template import WORKFLOWS_DIR, TemplateSpec, load_template

TEMPLATE_NAMES = sorted(p.name[: -len(".bindings.json")] for p in WORKFLOWS_DIR.glob("*.bindings.json"))

def fetch_object_info(url: str) -> dict:
    response = requests.get(f"{url}/object_info", timeout=60)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def instance(pool):
    return pool.instances[0]


@pytest.fixture(scope="module")
def nodes(instance):
    return {**core_nodes(fetch_object_info(instance.url)), **custom_nodes()}


@pytest.fixture(scope="module")
def models():
    return Models.load()


@pytest.fixture(scope="module")
def uploaded(instance, tmp_path_factory):
    """The media a segment uploads (PNG image, mp4 of its frames, WAV slices), on the real instance."""
    folder = tmp_path_factory.mktemp("static_media")
    files = {
        "image": make_image(folder / "image.png"),
        "video": make_index_video(folder / "video.mp4", frames=10, fps=25.0),
        "audio": make_tone(folder / "audio.wav", seconds=0.4),
        "audio_2": make_tone(folder / "audio_2.wav", seconds=0.4, frequency=660),
    }
    client = ComfyClient(instance.url)
    tag = uuid.uuid4().hex[:8]
    names = {slot: client.upload(path, f"static_{tag}_{slot}{path.suffix}") for slot, path in files.items()}
    yield names
    for name in names.values():
        (instance.input_dir / name).unlink(missing_ok=True)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_matches_node_definitions(name, nodes, models):
    template = load_template(name)  # also runs worker.templates.template' own structural check
    problems = check_graph(name, template.graph, template.spec, nodes, models)
    assert not problems, f"workflow {name!r}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("case", sorted(REQUESTS))
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_bound_request_is_accepted(name, case, instance, uploaded, models):
    template = load_template(name)
    # Fetched after the uploads: LoadImage / LoadAudio / LoadVideo must list the segment's files.
    nodes = {**core_nodes(fetch_object_info(instance.url)), **custom_nodes()}
    for preset, vram_gb in variants(template):  # every quality preset, on a CPU and on a GPU instance
        graph, values = bind_case(template, case, uploaded, preset, vram_gb)
        problems = check_graph(name, graph, template.spec, nodes, models, check_uploads=True)
        shown = {k: v for k, v in values.items() if k not in ("prompt", "negative_prompt")}
        assert not problems, (f"workflow {name!r} bound to the {case} request {shown}, preset {preset}, "
                              f"VRAM {vram_gb}:\n  " + "\n  ".join(problems))


def test_manifest_and_schema_agree_with_the_templates():
    manifest = json.loads(MANIFEST_PATH.read_text())
    schema = json.loads(SCHEMA_PATH.read_text())["nodes"]
    graphs = {name: json.loads((WORKFLOWS_DIR / f"{name}.json").read_text()) for name in TEMPLATE_NAMES}
    problems = []
    for model in manifest["models"]:
        if not model["source"].get("repo") or not model["source"].get("path"):
            problems.append(f"model {model['file']}: source needs repo and path")
        for name in model["used_by"]:
            values = [v for node in graphs.get(name, {}).values() for v in node["inputs"].values()]
            if name not in graphs:
                problems.append(f"model {model['file']}: used_by names {name!r}, which is not a template")
            elif model["file"] not in values:
                problems.append(f"model {model['file']}: used_by names {name!r}, whose graph does not load it")
    pinned = {node["repo"]: node["commit"] for node in manifest["custom_nodes"]}
    for class_type, entry in schema.items():
        if pinned.get(entry["repo"]) != entry["commit"]:
            problems.append(f"{class_type}: described at {entry['repo']}@{entry['commit']}, but the manifest pins "
                            f"{pinned.get(entry['repo'])}")
    assert not problems, "\n".join(problems)


def test_broken_template_is_reported(nodes, models):
    """Each deliberate mistake yields a problem naming its node and input, so the checks above can fail."""
    template = load_template("infinitetalk_image_single")
    graph = copy.deepcopy(template.graph)
    graph["12"]["inputs"]["image_1"] = ["99", 0]  # link to a missing node
    graph["21"]["inputs"]["model"] = ["10", 0]  # a WANVAE where a WANVIDEOMODEL belongs
    graph["22"]["inputs"]["samples"] = ["21", 5]  # WanVideoSampler has two outputs
    graph["18"]["inputs"]["fps"] = 500.0  # MultiTalkWav2VecEmbeds allows 1..60
    graph["14"]["inputs"]["quantization"] = "fp4"  # not a combo option
    graph["13"]["inputs"]["model"] = "missing.safetensors"  # not in the manifest
    del graph["21"]["inputs"]["steps"]  # required
    spec_data = template.spec.model_dump()
    spec_data["bindings"]["seed"] = [{"node": "21", "input": "sed"}]  # binding to a missing input
    problems = check_graph(template.name, graph, TemplateSpec.model_validate(spec_data), nodes, models)

    expected = [("node 12 (WanVideoClipVisionEncode).image_1", "node 99"),
                ("node 21 (WanVideoSampler).model", "expects WANVIDEOMODEL"),
                ("node 22 (WanVideoPassImagesFromSamples).samples", "output 5"),
                ("node 18 (MultiTalkWav2VecEmbeds).fps", "500.0 is outside [1.0, 60.0]"),
                ("node 14 (WanVideoModelLoader).quantization", "'fp4' is not one of"),
                ("node 13 (MultiTalkModelLoader).model", "'missing.safetensors' is not in models/manifest.json"),
                ("node 21 (WanVideoSampler).steps", "required input is missing"),
                ("binding 'seed': node 21 (WanVideoSampler)", "no input 'sed'")]
    for where, what in expected:
        assert any(where in p and what in p for p in problems), f"no problem '{where} ... {what}' in {problems}"
    assert len(problems) == len(expected), problems

    # A core node's range comes from the real /object_info: ImageScale allows widths up to 16384.
    still = load_template("still")
    graph = copy.deepcopy(still.graph)
    graph["2"]["inputs"]["width"] = 99999
    assert check_graph("still", graph, still.spec, nodes, models) == [
        "node 2 (ImageScale).width: 99999 is outside [0, 16384]"]


def test_bound_media_must_really_be_uploaded(instance, uploaded, models):
    """After binding, a loader's file must be one ComfyUI lists in its input folder, not just any name."""
    template = load_template("infinitetalk_image_single")
    graph = template.bind({**REQUESTS["typical"], "image": uploaded["image"], "audio": "never_uploaded.wav"})
    nodes = {**core_nodes(fetch_object_info(instance.url)), **custom_nodes()}
    problems = check_graph(template.name, graph, template.spec, nodes, models, check_uploads=True)
    assert len(problems) == 1 and problems[0].startswith(
        "node 5 (LoadAudio).audio: 'never_uploaded.wav' is not one of"), problems
