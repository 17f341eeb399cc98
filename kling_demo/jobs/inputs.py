"""Checks of what a visitor asks for, besides the images (images.py): prompt, guidance, duration, task id.

One place for them, used by the job before anything is paid for and by the page's instant validator."""

from __future__ import annotations

import math
import re

from ..errors import InputRejected
from ..models import ModelSpec


def check_prompt(prompt: object, spec: ModelSpec, *, field: str = "prompt", required: bool = True) -> str:
    """Return the trimmed prompt, or refuse it when empty (if required), not text, or over the length cap."""
    name = field.replace("_", " ")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InputRejected(f"The {name} must be text, not {type(prompt).__name__}.")
    text = prompt.strip()
    if required and not text:
        raise InputRejected(f"The {name} is empty — describe what should happen in the video.")
    cap = spec.max_chars(field)
    if len(text) > cap:
        raise InputRejected(f"The {name} is {len(text)} characters long; the limit is {cap} characters — "
                            "shorten it.")
    return text


def check_guidance(value: object, spec: ModelSpec) -> float:
    """Return the guidance scale as a float, refusing anything that is not a number in the spec's range."""
    allowed = f"a number from {spec.guidance_min:g} to {spec.guidance_max:g}"
    guidance = _as_number(value)
    if guidance is None or not spec.guidance_min <= guidance <= spec.guidance_max:
        raise InputRejected(f"Guidance scale must be {allowed}; got {value!r:.40}.")
    return guidance


def check_duration(value: object, spec: ModelSpec) -> int:
    """Return the duration in whole seconds, refusing anything but one of the spec's durations."""
    allowed = " or ".join(str(seconds) for seconds in spec.durations)
    seconds = _as_number(value)
    if seconds is None or seconds not in spec.durations:
        raise InputRejected(f"Duration must be {allowed} seconds; got {value!r:.40}.")
    return int(seconds)


TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_task_id(task_id: object) -> str:
    """Return the trimmed task id, refusing anything but 1 to 128 letters, digits, - and _ before it reaches a URL."""
    text = task_id.strip() if isinstance(task_id, str) else ""
    if not text:
        raise InputRejected("Enter the task id to resume.")
    if len(text) > 128:
        raise InputRejected(f"A task id is at most 128 characters long, not {len(text)}; check what you pasted.")
    if not TASK_ID_PATTERN.fullmatch(text):
        raise InputRejected("A task id has only letters, digits, - and _; check what you pasted.")
    return text


def _as_number(value: object) -> float | None:
    """A finite float from a number or numeric text; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
