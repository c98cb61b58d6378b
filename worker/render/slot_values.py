"""One segment's slot values (worker/templates/slots.py: SlotValues), from the request, the template and the plan."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from worker.planning.segment_plan import Segment, SegmentPlan
from worker.request.job_request import MEDIA_FIELDS, JobRequest
from worker.templates.slots import SlotValues
from worker.templates.template import TemplateParams, WorkflowTemplate


def segment_values(request: JobRequest, template: WorkflowTemplate, plan: SegmentPlan, segment: Segment,
                   filename_prefix: str, media: dict[str, str], params: TemplateParams) -> dict[str, Any]:
    """Every slot's value for one segment, by slot name; `media`: the uploaded file name of each media slot
    the template binds; `params`: the template's params for this segment (template.params_for)."""
    steps = request.steps or params.get("steps")
    return asdict(SlotValues(
        **{slot: media.get(slot) for slot in MEDIA_FIELDS},
        frames=segment.frames,
        generate_frames=template.grid.round_up(segment.frames),
        fps=request.fps,
        width=request.width,
        height=request.height,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        steps=request.steps,
        start_step=start_step(steps, request.denoise) if steps else 0,
        filename_prefix=filename_prefix,
        overlap_before=plan.overlap_with_previous(segment),
        overlap_after=plan.overlap_with_next(segment),
        output_crf=request.output.crf,
        output_preset=request.output.preset,
        color_match=request.seams.color_match,
    ))


def start_step(steps: int, denoise: float) -> int:
    """The first sampler step of a partial re-generation: denoise 1 starts at 0; at least one step is left."""
    return min(steps - 1, round(steps * (1.0 - denoise)))
