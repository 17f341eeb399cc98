"""The one retry rule: how long to wait after failed requests that are safe to repeat, and what Retry-After asks.

Capped doubling with jitter, so many waiting jobs do not retry in step, and never sooner than the server's
Retry-After (honoured up to a minute). The client's own retries of quick requests, the poller's and the job's
waits through an outage all use it, each on its own scale.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime
from typing import Callable

import requests

RETRY_FIRST = 1.0  # seconds after the first failure
RETRY_CAP = 15.0
RETRY_JITTER = 0.2
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is honoured only this far


def retry_delay(failures: int, retry_after: float | None = None, *, first: float = RETRY_FIRST,
                cap: float = RETRY_CAP, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after `failures` failed requests in a row: `first` doubling up to `cap`, ±20 %, and
    never sooner than the server's Retry-After (up to a minute)."""
    base = first * 2.0 ** min(max(failures, 1) - 1, 16)
    delay = min(cap, base * (1.0 + RETRY_JITTER * (2.0 * rng() - 1.0)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def retry_after_seconds(response: requests.Response) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), if any."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
