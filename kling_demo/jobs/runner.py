"""Drive a job's updates from an event loop: its blocking steps in worker threads, its waits on the loop.

A job's generator yields an update that says how long to wait (`wait_seconds`) and, when a poller or a
webhook can end the wait early, a `wake` bell. Waiting here is a timer on the loop (or the bell's async
wait), so a thousand waiting jobs hold no thread; only a step that does I/O takes a worker for its duration.
The page (ui.py, on Gradio's loop) and background recovery (on its own loop) both follow tasks this way.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

from .steps import JobUpdate

T = TypeVar("T")
# Runs one blocking call off the loop and gives its result: anyio.to_thread.run_sync on Gradio's loop,
# an executor of a bounded pool elsewhere.
InThread = Callable[[Callable[[], T]], Awaitable[T]]


async def step_updates(updates: Iterator[JobUpdate], in_thread: InThread) -> AsyncIterator[JobUpdate]:
    """Each update of `updates`, waiting between them on this loop for as long as each one asks."""
    while True:
        update = await in_thread(lambda: next(updates, None))
        if update is None:
            return
        next_step = time.monotonic() + update.wait_seconds  # before the consumer spends time on it
        yield update
        pause = max(0.0, next_step - time.monotonic())
        if update.wake is not None:
            await update.wake.wait_async(pause)
        else:
            await asyncio.sleep(pause)  # 0 s too: other jobs on this loop get their turn
