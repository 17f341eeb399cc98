"""How many tasks one WaveSpeed key runs at once, counted in the app so extra jobs wait here, not at WaveSpeed.

WaveSpeed caps a whole key by account level (Bronze: 3 tasks at once); a task beyond it sits in `created`
while the visitor sees nothing move. Here a job takes a `Ticket` for its key and waits its turn, first come
first served, before it uploads anything. From the submit on, the slot belongs to the task (not the page):
whoever follows the task to its end, a live job or background recovery, gives it back with `finish()`.
Nothing here blocks: a waiting job waits on its ticket's `bell` (a coroutine on the page's event loop, or a
thread in the CLI), which rings whenever the line of its key moves (a slot freed, a job ahead left), and then
asks `Ticket.try_acquire()` again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import defaultdict, deque

from .notices import Bell

log = logging.getLogger(__name__)

BRONZE_CONCURRENCY = 3  # WaveSpeed's entry level; Silver runs 100 at once


def slot_key(api_key: str | None) -> str:
    """A short, one-way name for a key, so the slot table never holds a key itself."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


class ApiSlots:
    """Per-key counts of tasks at WaveSpeed, with a first-come queue of jobs waiting for one (limit 0: no cap)."""

    def __init__(self, limit: int = BRONZE_CONCURRENCY) -> None:
        self.limit = max(0, limit)
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Ticket]] = defaultdict(deque)
        self._holding: dict[str, int] = defaultdict(int)  # tickets that hold a slot but have no task yet
        self._tasks: dict[str, str] = {}  # task id → key id, for tasks at WaveSpeed not yet seen final

    def ticket(self, key: str) -> "Ticket":
        """Join the queue of `key` (a `slot_key`); the ticket holds a slot once `try_acquire()` returns 0."""
        ticket = Ticket(self, key)
        with self._lock:
            self._waiting[key].append(ticket)
        return ticket

    def running(self, key: str) -> int:
        """Slots of `key` in use: jobs about to submit plus tasks not yet seen to end."""
        with self._lock:
            return self._running(key)

    def adopt(self, key: str, task_id: str) -> None:
        """Count a task already at WaveSpeed (resumed, or recovered after a restart) until it ends."""
        with self._lock:
            self._tasks.setdefault(task_id, key)

    def finish(self, task_id: str) -> None:
        """The task ended (or nobody will follow it any more): its slot is free. Safe to call twice."""
        with self._lock:
            key = self._tasks.pop(task_id, None)
        if key is not None:
            self._ring(key)

    def _ring(self, key: str) -> None:
        """The line of `key` moved: wake every job waiting in it to look again (their places changed too)."""
        with self._lock:
            waiting = list(self._waiting.get(key, ()))
        for ticket in waiting:
            ticket.bell.ring()

    def _running(self, key: str) -> int:
        return self._holding[key] + sum(1 for owner in self._tasks.values() if owner == key)

    def _try_acquire(self, ticket: "Ticket") -> int:
        with self._lock:
            queue = self._waiting[ticket.key]
            position = queue.index(ticket)
            free = self.limit - self._running(ticket.key) if self.limit else position + 1
            if position >= free:
                return position + 1 - max(0, free)
            queue.remove(ticket)
            self._holding[ticket.key] += 1
            moved = bool(self.limit and queue)
        if moved:
            self._ring(ticket.key)  # everyone behind is one place further up
        return 0

    def _bind(self, ticket: "Ticket", task_id: str) -> None:
        with self._lock:
            self._holding[ticket.key] -= 1
            self._tasks[task_id] = ticket.key

    def _release(self, ticket: "Ticket", held: bool) -> None:
        with self._lock:
            if held:
                self._holding[ticket.key] -= 1
            else:
                try:
                    self._waiting[ticket.key].remove(ticket)
                except ValueError:
                    pass
        self._ring(ticket.key)


class Ticket:
    """One job's place in its key's queue; then its slot; then, once submitted, nothing (the task has it)."""

    def __init__(self, slots: ApiSlots, key: str) -> None:
        self.slots, self.key = slots, key
        self.state = "waiting"  # → "holding" → "bound" | "released"
        self.bell = Bell()  # rung when the line moves: time to `try_acquire()` again

    @property
    def limit(self) -> int:
        return self.slots.limit

    def try_acquire(self) -> int:
        """0 once this job holds a slot (it may submit now); else its place in line: 1 is next, so
        `place - 1` jobs will get a slot before this one."""
        if self.state == "holding":
            return 0
        if self.state != "waiting":
            raise RuntimeError(f"a {self.state} ticket cannot wait for a slot")
        self.bell.clear()  # before looking: a slot freed after this look rings again
        place = self.slots._try_acquire(self)
        if place == 0:
            self.state = "holding"
        return place

    def bind(self, task_id: str) -> None:
        """The submit created `task_id`: the slot is the task's now, freed by `ApiSlots.finish(task_id)`."""
        if self.state == "holding":
            self.slots._bind(self, task_id)
            self.state = "bound"

    def release(self) -> None:
        """Leave the queue, or give the slot back when nothing was submitted. No-op once bound."""
        if self.state in ("waiting", "holding"):
            self.slots._release(self, held=self.state == "holding")
            self.state = "released"
