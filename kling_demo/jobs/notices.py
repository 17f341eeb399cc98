"""Completion notices: a webhook's word that a task ended, handed to the job that follows it, at once.

A webhook arrives on a web server thread; the job that follows the task waits either in a worker thread
(the CLI, background recovery: `Notice.wait`) or, between page updates, as a coroutine on the event loop
(`Notice.wait_async`, so a waiting page holds no thread). Setting a notice wakes both kinds: the thread
through a `threading.Event`, each coroutine through its own `asyncio.Event` set with
`loop.call_soon_threadsafe`. Polling goes on at a slow pace as a safety net for a webhook that never comes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from ..wavespeed.client import Prediction

SAFETY_NET_SECONDS = 30.0  # with webhooks on, a task is still polled this often in case its webhook is lost
MAX_UNCLAIMED = 256  # notices for tasks nobody here follows yet, kept for a follower that starts later


class Bell:
    """Rung from any thread; wakes a thread blocked in `wait` and every coroutine in `wait_async` at once.

    It stays rung until `clear()`, so a ring between two waits is never missed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rung = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def is_set(self) -> bool:
        return self._rung.is_set()

    def ring(self) -> None:
        with self._lock:
            self._rung.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that page's event loop has closed: nobody is left to wake
                pass

    def clear(self) -> None:
        self._rung.clear()

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for a ring; True once rung (a Stop rings the bell a job waits on)."""
        return self._rung.wait(max(0.0, timeout))

    async def wait_async(self, timeout: float) -> bool:
        """Wait on the running event loop, holding no thread, up to `timeout` seconds; True once rung."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self._rung.is_set():
                return True
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
            return True
        except asyncio.TimeoutError:
            return self._rung.is_set()
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)


class Notice(Bell):
    """One task's final state, pushed by a webhook: set once, awaited by a thread or a coroutine."""

    def __init__(self) -> None:
        super().__init__()
        self.prediction: Prediction | None = None

    def set(self, prediction: Prediction) -> None:
        """Record the final prediction and wake every waiter (callable from any thread); the first one wins."""
        with self._lock:
            if self.prediction is not None:
                return
            self.prediction = prediction
        self.ring()


class Notices:
    """Task id → `Notice`, for the tasks this process follows (and a few it does not follow yet)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, Notice] = {}
        self._unclaimed: OrderedDict[str, Notice] = OrderedDict()

    def watch(self, task_id: str) -> Notice:
        """The notice a follower of `task_id` waits on; already set if the webhook came first."""
        with self._lock:
            notice = self._watched.get(task_id) or self._unclaimed.pop(task_id, None) or Notice()
            self._watched[task_id] = notice
            return notice

    def forget(self, task_id: str) -> None:
        """The follower is done with the task."""
        with self._lock:
            self._watched.pop(task_id, None)

    def deliver(self, prediction: Prediction) -> bool:
        """Hand a final prediction to its follower; False when nobody here follows the task (kept for a while)."""
        with self._lock:
            notice = self._watched.get(prediction.task_id)
            watched = notice is not None
            if notice is None:
                notice = self._unclaimed.pop(prediction.task_id, None) or Notice()
                self._unclaimed[prediction.task_id] = notice
                while len(self._unclaimed) > MAX_UNCLAIMED:
                    self._unclaimed.popitem(last=False)
        notice.set(prediction)
        return watched
