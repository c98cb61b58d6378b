"""Errors a user can act on: what was wrong, which field, what to do."""

from __future__ import annotations

from pydantic import ValidationError


SHOWN_CHARS = 80  # of a value quoted in an error: enough to recognise it, never a whole payload


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as an error may quote it: whole if short, else its start and its length. Payloads (base64
    media, long prompts) must never come back in an error."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class JobInputError(ValueError):
    """The request is wrong; `field` names the input at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class JobFailed(RuntimeError):
    """The request was fine but the work failed (ComfyUI, ffmpeg, an instance)."""


class WorkerUnhealthy(JobFailed):
    """No ComfyUI instance of this worker can serve (all failed to restart, or their GPU is in a state a
    restart cannot fix): the handler asks RunPod to replace the worker."""


class JobCancelled(RuntimeError):
    """The job was cancelled (RunPod cancel, or a sibling segment failed)."""


def describe_validation_error(exc: ValidationError, allowed_fields: list[str]) -> str:
    """One line per problem, each starting with the field's name."""
    lines = []
    for error in exc.errors():
        field = shorten(".".join(str(part) for part in error["loc"]) or "input")
        kind = error["type"]
        if kind == "extra_forbidden":
            lines.append(f"{field}: unknown field; allowed fields are {', '.join(allowed_fields)}")
        elif kind == "value_error":
            # Our own validators already start their message with the field name.
            lines.append(str(error["ctx"]["error"]) if "ctx" in error else error["msg"])
        else:
            got = error.get("input")
            shown = f" (got {shorten(repr(got))})" if got is not None and not isinstance(got, (dict, list)) else ""
            lines.append(f"{field}: {error['msg']}{shown}")
    return "; ".join(lines)
