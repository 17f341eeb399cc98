"""Which job updates an API caller needs: every change it can act on, and the running time now and then.

While a task waits or renders, the job yields an update at every poll, and most of them only move the
running time on ("… 14 s so far." after "… 12 s so far."). Each one sent costs Gradio a postprocess on a
worker thread and an SSE message; an API caller has no bar to move, so such a tick is sent at most every
`API_TICK_SECONDS`. The page keeps every tick (its elapsed time and progress bar move with them).
"""

from __future__ import annotations

import re

from ..jobs.steps import JobUpdate, Stage

API_TICK_SECONDS = 10.0  # how often an API caller's running time is refreshed while nothing else changes
_WAITING_AT_WAVESPEED = (Stage.QUEUED, Stage.PROCESSING)
_NUMBERS = re.compile(r"\d+")


def only_time_moved(sent: JobUpdate, update: JobUpdate) -> bool:
    """True when `update` says what `sent` said but for its numbers (the running time), while a task waits
    or renders at WaveSpeed: same stage, task, video and fixes. An outage message differs in its words."""
    return (update.stage in _WAITING_AT_WAVESPEED and update.stage is sent.stage and update.task_id == sent.task_id
            and update.video_path == sent.video_path and update.changes == sent.changes
            and _NUMBERS.sub("#", update.message) == _NUMBERS.sub("#", sent.message))


def worth_sending(sent: JobUpdate | None, update: JobUpdate, every: float = API_TICK_SECONDS) -> bool:
    """Whether an API caller should get `update`, given the last update it was sent."""
    return sent is None or not only_time_moved(sent, update) or update.elapsed - sent.elapsed >= every
