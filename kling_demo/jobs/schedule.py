"""When to poll a running task: about once per second at most, densest around its expected end.

Kling renders take minutes, so a fixed 1 s poll (the SDK's default) spends most requests
on a task that cannot be done yet, while a fixed 3 s poll (peer Spaces) adds up to 3 s
to every job. We poll 1–2 s after submission (fast failures show at once), then back off
while the end is far away, and plan every poll on a 1 s grid that lands just after the
expected end, taken from the median of recent inference times for the same model and
duration. With no history yet we poll every second, then back off on long renders.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import defaultdict, deque


MIN_INTERVAL = 1.0
MAX_INTERVAL_FAR = 10.0  # while the expected end is still far away
MAX_INTERVAL_LATE = 5.0  # once a task runs past every expectation
UNKNOWN_FAST_PHASE = 30.0  # seconds of 1 s polling when nothing is known
GRID_OFFSET = 0.05  # poll just after the expected end, not just before it
# Polls run a little after their planned time; a poll this soon after a grid point is taken as that
# grid point run late, so the next grid point is kept (not skipped, which would leave a 2 s gap
# right where the render is expected to end).
GRID_SLACK = 0.2


def next_poll_delay(elapsed: float, expected: float | None) -> float:
    """Seconds to wait before the next poll of a task `elapsed` seconds after its submission."""
    if expected is None:
        if elapsed < MIN_INTERVAL:
            return MIN_INTERVAL - elapsed
        if elapsed < UNKNOWN_FAST_PHASE:
            return MIN_INTERVAL
        return min(MAX_INTERVAL_LATE, MIN_INTERVAL + (elapsed - UNKNOWN_FAST_PHASE) / 30.0)
    window_start = expected * 0.8 - 2.0
    window_end = expected * 1.25 + 10.0
    if elapsed >= window_end:
        return min(MAX_INTERVAL_LATE, MIN_INTERVAL + (elapsed - window_end) / 30.0)
    # With an expectation, every poll is planned on a 1 s grid anchored just after the expected end,
    # so planned polls are always at least 1 s apart and one of them lands right after the end.
    anchor = expected + GRID_OFFSET
    if elapsed < MIN_INTERVAL:
        return _grid_at_or_after(MIN_INTERVAL, anchor) - elapsed
    if elapsed + MIN_INTERVAL < window_start:
        # Halve the distance to the window each time, never faster than 1 s nor slower than 10 s.
        gap = min(MAX_INTERVAL_FAR, max(MIN_INTERVAL, (window_start - elapsed) / 2.0))
        if gap >= 2 * MIN_INTERVAL:  # the grid point just before still leaves at least 1 s
            return _grid_at_or_after(elapsed + gap, anchor) - 1.0 - elapsed
        return _grid_at_or_after(elapsed + gap, anchor) - elapsed
    past_grid_point = (elapsed - anchor) % 1.0
    if past_grid_point < GRID_SLACK:
        # A grid poll that ran a little late: the next grid point, not the one after it.
        return 1.0 - past_grid_point
    return _grid_at_or_after(elapsed + MIN_INTERVAL, anchor) - elapsed


def _grid_at_or_after(moment: float, anchor: float) -> float:
    """The first point of the 1 s grid through `anchor` at or after `moment`."""
    return anchor + math.ceil(moment - anchor - 1e-9)


class InferenceHistory:
    """Recent inference times per (model, duration), shared by all jobs of the process."""

    def __init__(self, keep: int = 20) -> None:
        self._times: dict[tuple[str, int], deque[float]] = defaultdict(lambda: deque(maxlen=keep))
        self._lock = threading.Lock()

    def record(self, model_id: str, duration: int, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._times[(model_id, duration)].append(seconds)

    def expected(self, model_id: str, duration: int) -> float | None:
        """Median of recent inference times, or None before the first one."""
        with self._lock:
            times = list(self._times.get((model_id, duration), ()))
        return statistics.median(times) if times else None

    def spread(self, model_id: str, duration: int) -> tuple[float, float] | None:
        """(fastest, slowest) of the recent inference times, or None before the first one."""
        with self._lock:
            times = list(self._times.get((model_id, duration), ()))
        return (min(times), max(times)) if times else None
