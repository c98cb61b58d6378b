"""What a template can bind for one segment: the slots, and their values from the request and the plan.

A template's bindings (workflows/NAME.bindings.json) send slots to node inputs. The slots are the fields
of SlotValues, and segment_values() (worker/render/slot_values.py) is the one place that fills them: a new
value a workflow can receive, a request field or one derived from the request, the template or the plan, is
a field here and a line there (plus the request field in worker/request/job_request.py). Templates may also
declare constant `params`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


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
    # For SaveSegmentVideo's split form (worker/media/segment_format.py): the frames shared with the previous and
    # the next segment, and the output's x264 settings, with which the segment's body is encoded.
    overlap_before: int
    overlap_after: int
    output_crf: int
    output_preset: str
    # SaveSegmentVideo's colour reference (a switch: a template links it to the reference image or the source
    # frames); None: the template's default.
    color_match: bool | None


SLOTS = tuple(field.name for field in fields(SlotValues))
