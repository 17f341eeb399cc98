"""Find the task a lost submit answer created, among the key's recent tasks (`POST /api/v3/predictions`).

A submission whose answer never arrived may still have created a billed task. The listing shows the key's
tasks with the inputs they were sent; a task of this model, created in the window around the submission,
whose echoed inputs agree with what was sent, is that task. Only an exact, single match is adopted: a listing
without inputs, or two tasks that both fit, is never guessed between.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from .client import Prediction, WaveSpeedClient
from ..models import ModelSpec

log = logging.getLogger(__name__)

CLOCK_MARGIN_SECONDS = 30.0  # WaveSpeed's clock and ours may differ a little
MAX_WINDOW_SECONDS = 7 * 24 * 3600.0  # the listing's own limit
PAGE_SIZE = 100  # the listing's largest page
MAX_PAGES = 5
# Fields compared when both sides have them; prompt and duration must be echoed for any match at all.
COMPARED_FIELDS = ("prompt", "negative_prompt", "guidance_scale", "duration", "image", "end_image")
REQUIRED_FIELDS = ("prompt", "duration")


@dataclass(frozen=True)
class Lookup:
    """What the search found: the one matching task, or how many matched (0, or more than one: none adopted)."""

    prediction: Prediction | None
    matches: int


def find_submitted(client: WaveSpeedClient, spec: ModelSpec, sent: dict[str, Any], *, since: float, until: float,
                   known: Callable[[str], bool] = lambda task_id: False, required: tuple[str, ...] = ()) -> Lookup:
    """Look for the one task of `spec` created between `since` and `until` (Unix seconds, widened by a small
    margin) whose inputs agree with `sent`; tasks `known` already (in some history) are left out. Fields named in
    `required` must be echoed by the listing (and agree), not only compared when they are."""
    after = max(since - CLOCK_MARGIN_SECONDS, until + CLOCK_MARGIN_SECONDS - MAX_WINDOW_SECONDS + 1)
    matches: list[Prediction] = []
    for page in range(1, MAX_PAGES + 1):
        listing = client.predictions(page, PAGE_SIZE, model=spec.model_id, created_after=after,
                                     created_before=until + CLOCK_MARGIN_SECONDS)
        matches += [item for item in listing.items
                    if same_request(item.inputs, sent, required) and not known(item.task_id)]
        if len(listing.items) < PAGE_SIZE:
            break
    found = matches[0] if len(matches) == 1 else None
    if len(matches) > 1:
        log.warning("lost submit answer: %d tasks match it (%s); none is adopted", len(matches),
                    ", ".join(item.task_id for item in matches[:5]))
    return Lookup(found, len(matches))


def same_request(echoed: dict[str, Any], sent: dict[str, Any], required: tuple[str, ...] = ()) -> bool:
    """True when the task's echoed inputs show the prompt, the duration and every field in `required`, and agree
    on every field both sides have (a listing may leave out an inline image). Pass an empty negative prompt as "",
    so a task with one differs."""
    if any(name not in echoed for name in (*REQUIRED_FIELDS, *required)):
        return False
    return all(_same(echoed[name], sent[name]) for name in COMPARED_FIELDS if name in sent and name in echoed)


def _same(echoed: object, sent: object) -> bool:
    if isinstance(sent, bool) or isinstance(echoed, bool):
        return echoed == sent
    if isinstance(sent, (int, float)):
        try:
            return math.isclose(float(echoed), float(sent), abs_tol=1e-6)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    return (echoed or "") == (sent or "")  # an empty negative prompt may be sent or left out
