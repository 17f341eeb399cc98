"""The one place a job waits: its steps run, then the runner waits as long as the last update asks.

A job's generator never sleeps: each update says how long until its next step (`wait_seconds`) and what may end
that wait early (`wake`: the poller's subscription to its task, or its place in a key's line). The runner waits
in the caller's thread (`run`, the command line) or as a coroutine holding no thread (`run_async`, the page and
background recovery, with each step in a worker thread), and `Stop` rings whatever the job waits on at once.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

from ..models import JobUpdate, Wake
from .notices import Bell

T = TypeVar("T")
# Runs one blocking call off the loop and gives its result: anyio.to_thread.run_sync on Gradio's loop,
# an executor of a bounded pool elsewhere.
InThread = Callable[[Callable[[], T]], Awaitable[T]]


class Stop:
    """Set once (Stop pressed, a tab closed, the app closing); wakes every wait of the jobs it belongs to at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waits: set[Wake] = set()
        self.bell = Bell()  # what a job waits on when nothing else can end its wait early

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waits = list(self._waits)
        self.bell.ring()
        for wait in waits:
            wait.ring()  # type: ignore[attr-defined]

    @contextmanager
    def watching(self, wake: Wake) -> Iterator[Wake]:
        """While a job waits on `wake`, a stop rings it too."""
        with self._lock:
            self._waits.add(wake)
            stopped = self._event.is_set()
        if stopped:
            wake.ring()  # type: ignore[attr-defined]
        try:
            yield wake
        finally:
            with self._lock:
                self._waits.discard(wake)


def run(updates: Iterator[JobUpdate], stop: Stop, clock: Callable[[], float] = time.monotonic) -> Iterator[JobUpdate]:
    """Each update of `updates`, waiting in this thread between them as long as each asks (Stop ends it)."""
    for update in updates:
        due = clock() + update.wait_seconds
        yield update
        pause = due - clock()
        if pause > 0 and not stop.is_set():
            with stop.watching(update.wake or stop.bell) as wake:
                wake.wait(pause)


async def run_async(updates: Iterator[JobUpdate], in_thread: InThread, stop: Stop,
                    clock: Callable[[], float] = time.monotonic) -> AsyncIterator[JobUpdate]:
    """Each update of `updates`, its step in a worker thread, waiting on this loop between steps."""
    while True:
        update = await in_thread(lambda: next(updates, None))
        if update is None:
            return
        due = clock() + update.wait_seconds  # before the consumer spends time on it
        yield update
        pause = max(0.0, due - clock())
        with stop.watching(update.wake or stop.bell) as wake:
            await wake.wait_async(0.0 if stop.is_set() else pause)  # 0 s too: other jobs on this loop get a turn
