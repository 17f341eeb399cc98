"""Account levels: how many tasks a key runs at once, and how many it may submit per minute.

WaveSpeed caps the whole key (Bronze: 2 at once, 2 videos a minute): "if you submit one more, it
will wait" in `created`, and past the rate the API answers 429 and creates nothing.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict, deque

from kling_demo.sandbox.protocol import ApiError
from kling_demo.sandbox.tasks import Task


class Slots:
    """Per-key concurrency (0 = unlimited): tasks beyond the limit queue FIFO, and each takes a slot
    at the moment one freed, even when that is noticed later, so the timeline is exact."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[str, deque[Task]] = defaultdict(deque)
        self._running: dict[str, int] = defaultdict(int)
        self._ends: dict[str, list[float]] = defaultdict(list)  # the `limit` latest ends per key, ascending

    def add(self, task: Task) -> None:
        """Queue a new task; `start_waiting` gives it a slot."""
        self._waiting[task.owner].append(task)

    def release(self, task: Task, ended_epoch: float) -> None:
        """A started task ended at `ended_epoch`: its slot is free from then on."""
        self._running[task.owner] -= 1
        if self.limit:
            ends = self._ends[task.owner]
            bisect.insort(ends, ended_epoch)
            del ends[: -self.limit]

    def start_waiting(self) -> list[Task]:
        """Give free slots to waiting tasks, oldest first; return the tasks that started."""
        started = []
        for owner, queue in self._waiting.items():
            while queue and (not self.limit or self._running[owner] < self.limit):
                task = queue.popleft()
                task.started_epoch = max(task.created_epoch, self._slot_freed_at(owner))
                self._running[owner] += 1
                started.append(task)
        return started

    def _slot_freed_at(self, owner: str) -> float:
        """When a slot became free: with r tasks still running, the (limit − r)-th latest end."""
        if not self.limit:
            return -math.inf
        need = self.limit - self._running[owner]
        ends = self._ends[owner]
        return ends[-need] if len(ends) >= need else -math.inf


class RateLimit:
    """Per-key submissions per minute (0 = unlimited), over a sliding window of a minute (shorter in tests)."""

    def __init__(self, per_minute: int, window_seconds: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_seconds = window_seconds
        self._accepted: dict[str, deque[float]] = defaultdict(deque)

    def check(self, owner: str, now: float) -> None:
        """429 with Retry-After if `owner` already submitted `per_minute` videos in the last window."""
        if not self.per_minute:
            return
        window = self._accepted[owner]
        while window and window[0] <= now - self.window_seconds:
            window.popleft()
        if len(window) >= self.per_minute:
            retry_after = max(1, math.ceil(window[0] + self.window_seconds - now))
            per = "minute" if self.window_seconds == 60 else f"{self.window_seconds:g} s"
            raise ApiError(
                429,
                f"Too many requests: this key may submit {self.per_minute} videos per {per}; "
                f"try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
                error_code="rate_limited",
            )

    def record(self, owner: str, now: float) -> None:
        if self.per_minute:
            self._accepted[owner].append(now)
