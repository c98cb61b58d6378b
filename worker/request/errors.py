"""Errors a user can act on: what was wrong, which field, what to do."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ValidationError


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


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def rule_of(field) -> str | None:
    """A numeric field's whole rule for people: `64-2048, a multiple of 16`, `more than 0, at most 1`; None
    for a field without bounds. The client's `submit --help` states the same (tests/test_client_package.py)."""
    bounds = {type(m).__name__: m for m in field.metadata}
    low = bounds.get("Ge") or bounds.get("Gt")
    high = bounds.get("Le") or bounds.get("Lt")
    if low is None and high is None:
        return None
    ge, le = getattr(bounds.get("Ge"), "ge", None), getattr(bounds.get("Le"), "le", None)
    if ge is not None and le is not None:
        text = f"{_number(ge)}-{_number(le)}"
    else:
        parts = [f"at least {_number(ge)}" if ge is not None else None,
                 f"more than {_number(bounds['Gt'].gt)}" if "Gt" in bounds else None,
                 f"at most {_number(le)}" if le is not None else None,
                 f"less than {_number(bounds['Lt'].lt)}" if "Lt" in bounds else None]
        text = ", ".join(p for p in parts if p)
    if "MultipleOf" in bounds:
        text += f", a multiple of {_number(bounds['MultipleOf'].multiple_of)}"
    return text


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, object | None]:
    """(the model holding the field at `loc`, the field's info); None where `loc` leaves the models."""
    holder: type[BaseModel] | None = model
    for i, part in enumerate(loc):
        if holder is None or not isinstance(part, str) or part not in holder.model_fields:
            return (holder if i == len(loc) - 1 else None), None
        info = holder.model_fields[part]
        if i == len(loc) - 1:
            return holder, info
        annotation = info.annotation
        holder = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return None, None


BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of")


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem, each starting with the field's name; a number out of bounds gets its whole
    rule (`width: 64-2048, a multiple of 16 (got 7)`), an unknown field the nearest known name."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        field = shorten(".".join(str(part) for part in loc) or "input")
        kind = error["type"]
        holder, info = _field_at(model, loc)
        got = error.get("input")
        shown = f" (got {shorten(repr(got))})" if got is not None and not isinstance(got, (dict, list)) else ""
        if kind == "extra_forbidden":
            known = list(holder.model_fields) if holder is not None else []
            near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            lines.append(f"{field}: unknown field; did you mean `{near[0]}`?" if near else
                         f"{field}: unknown field; allowed fields are {', '.join(known)}")
        elif kind == "value_error":
            # Our own validators already start their message with the field name.
            lines.append(str(error["ctx"]["error"]) if "ctx" in error else error["msg"])
        elif kind in BOUND_ERRORS and info is not None and rule_of(info):
            lines.append(f"{field}: {rule_of(info)}{shown}")
        else:
            lines.append(f"{field}: {error['msg']}{shown}")
    return "; ".join(lines)
