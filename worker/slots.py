"""What a template can bind for one segment: the slots, and their values from the request and the plan.

A template's bindings (workflows/NAME.bindings.json) send slots to node inputs. The slots are the fields
of SlotValues, and segment_values() is the one place that fills them: a new value a workflow can receive,
a request field or one derived from the request, the template or the plan, is a field here and a line
there (plus the request field in worker/request.py). Templates may also declare constant `params`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from worker.planner import Segment, SegmentPlan
from worker.request import MEDIA_FIELDS, JobRequest

if TYPE_CHECKING:
    from worker.templates import TemplateParams, WorkflowTemplate


@dataclass(frozen=True)
class SlotValues:
    # The segment's media as uploaded to its instance (file names there); None where the job has none.
    image: str | None
    video: str | None
    audio: str | None
    audio_2: str | None
    # Its length: `frames` exactly; `generate_frames` rounded up to the frame counts the template generates.
    frames: int
    generate_frames: int
    # The request's rendering fields.
    fps: float
    width: int
    height: int
    prompt: str | None  # None: the template's own
    negative_prompt: str | None
    seed: int
    steps: int | None  # None: the preset's or the template's own
    # Video templates: the sampler step to start from, round(steps x (1 - denoise)), below steps.
    start_step: int
    # Where the save node writes: a folder of its own in the instance's output folder.
    filename_prefix: str
    # For SaveSegmentVideo's split form (worker/segment_format.py): the frames shared with the previous and
    # the next segment, and the output's x264 settings, with which the segment's body is encoded.
    overlap_before: int
    overlap_after: int
    output_crf: int
    output_preset: str


SLOTS = tuple(field.name for field in fields(SlotValues))


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
    ))


def start_step(steps: int, denoise: float) -> int:
    """The first sampler step of a partial re-generation: denoise 1 starts at 0; at least one step is left."""
    return min(steps - 1, round(steps * (1.0 - denoise)))
