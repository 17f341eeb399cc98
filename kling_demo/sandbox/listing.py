"""`POST /api/v3/predictions`: one key's recent tasks, filtered by model, status and time, in pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kling_demo.sandbox.protocol import ApiError
from kling_demo.sandbox.tasks import STATUSES, Task

DEFAULT_WINDOW_SECONDS = 24 * 3600
MAX_WINDOW_SECONDS = 7 * 24 * 3600
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


@dataclass(frozen=True)
class ListingQuery:
    """A validated listing request."""

    page: int
    page_size: int
    model: str | None
    status: str | None
    created_after: float
    created_before: float

    def matches(self, task: Task, status: str) -> bool:
        return (
            self.created_after <= task.created_epoch <= self.created_before
            and (self.model is None or task.model_id == self.model)
            and (self.status is None or status == self.status)
        )


def parse_listing(body: dict[str, Any], now: float) -> ListingQuery:
    """Read `{page, page_size, model?, status?, created_after?, created_before?}`; 400 names a bad field."""
    page = _positive_int(body, "page", 1)
    page_size = _positive_int(body, "page_size", DEFAULT_PAGE_SIZE)
    if page_size > MAX_PAGE_SIZE:
        raise ApiError(400, f"page_size: must be at most {MAX_PAGE_SIZE} (got {page_size})", error_code="invalid_parameter")
    model = _optional_text(body, "model")
    status = _optional_text(body, "status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status: must be one of {', '.join(STATUSES)} (got {status!r})", error_code="invalid_parameter")
    before = _instant(body, "created_before", now)
    after = _instant(body, "created_after", before - DEFAULT_WINDOW_SECONDS)
    if after > before:
        raise ApiError(400, "created_after: must not be later than created_before", error_code="invalid_parameter")
    if before - after > MAX_WINDOW_SECONDS:
        raise ApiError(400, "created_after: the window may span at most 7 days", error_code="invalid_parameter")
    return ListingQuery(page, page_size, model, status, after, before)


def _positive_int(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"{name}: must be a whole number of at least 1 (got {value!r})", error_code="invalid_parameter")
    return value


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name}: must be a string", error_code="invalid_parameter")
    return value


def _instant(body: dict[str, Any], name: str, default: float) -> float:
    """An ISO 8601 time as sent by WaveSpeed's own clients (e.g. 2025-01-31T12:00:00.000Z), as epoch seconds."""
    value = body.get(name)
    if value in (None, ""):
        return default
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ApiError(
            400,
            f"{name}: must be an ISO 8601 time with a zone, e.g. 2025-01-31T12:00:00.000Z (got {value!r})",
            error_code="invalid_parameter",
        )
    return moment.timestamp()
