"""How many tasks one WaveSpeed key runs at once, counted in the app so extra jobs wait here, not at WaveSpeed.

WaveSpeed caps a whole key by account level (Bronze: 2 tasks at once); a task beyond it sits in `created`
while the visitor sees nothing move. Here a job takes a `Ticket` for its key and waits its turn, first come
first served, before it uploads anything. From the submit on, the slot belongs to the task (not the page):
whoever follows the task to its end, a live job or background recovery, gives it back with `finish()`.
Nothing here blocks: a waiting job waits on its ticket's `bell` (a coroutine on the page's event loop, or a
thread in the CLI), which rings whenever the line of its key moves (a slot freed, a job ahead left), and then
asks `Ticket.try_acquire()` again.

The configured limit is a ceiling, not a fact about the account: the poller tells `seen()` every status it
reads. A task still `created` SETTLE_SECONDS after its submission shows that the account runs no more than
the key's other tasks there, so the key's limit drops to their number (at least 1), and the next jobs wait
here with their place in line. A 429 teaches nothing about it (it is the per-minute rate, which the job
waits out). A learned limit is put to the test again once it is RECHECK_SECONDS old: one task more than it
allows may go; each such task that runs while the others run raises it (up to the configured limit, where
it is forgotten), the first that waits in `created` settles it again. It never rises on a task going from
`created` to `processing`: that is what the key's own tasks do whenever one of them ends, and the app
often hears of the end a poll later, so it would look like more room on every hand-over.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

from ..models import TaskStatus
from .notices import Bell

log = logging.getLogger(__name__)

BRONZE_CONCURRENCY = 2  # WaveSpeed's entry level (2 at once, 2 videos a minute); Silver runs 300 at once
# A task still `created` this long after its submission waits for a slot of the account. (Assumed: WaveSpeed's
# own scheduling starts a task with a free slot sooner; the sandbox starts it at once.)
SETTLE_SECONDS = 5.0
RECHECK_SECONDS = 600.0  # a learned limit this old lets one task more through: has the account (or its use) changed?


def slot_key(api_key: str | None) -> str:
    """A short, one-way name for a key, so the slot table never holds a key itself."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


@dataclass
class _Task:
    """A task of a key at WaveSpeed, as its latest poll showed it."""

    key: str
    since: float  # submitted (or adopted) then, on the table's clock
    waiting: bool = False  # `created` at least SETTLE_SECONDS after `since`: waiting for a slot of the account
    processing: bool = False


@dataclass
class _Learned:
    """A limit learned from WaveSpeed for one key, and when a task waiting in `created` last showed it."""

    limit: int
    since: float


class ApiSlots:
    """Per-key counts of tasks at WaveSpeed, with a first-come queue of jobs waiting for one (limit 0: no cap,
    and nothing learned)."""

    def __init__(self, limit: int = BRONZE_CONCURRENCY, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(0, limit)  # the configured ceiling; `limit_for(key)` is the one in force
        self.clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Ticket]] = defaultdict(deque)
        self._holding: dict[str, int] = defaultdict(int)  # tickets that hold a slot but have no task yet
        self._tasks: dict[str, _Task] = {}  # task id → its key and latest status, for tasks not yet seen final
        self._learned: dict[str, _Learned] = {}  # key id → the lower limit WaveSpeed showed

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

    def limit_for(self, key: str) -> int:
        """How many tasks of `key` may be at WaveSpeed at once now: the configured limit, or what WaveSpeed showed."""
        with self._lock:
            return self._limit(key)

    def learned(self, key: str) -> int | None:
        """How many tasks at once WaveSpeed was seen to run for `key` when one of its tasks waited in `created`;
        None when nothing was learned, or the key was seen to run the configured limit again."""
        with self._lock:
            learned = self._learned.get(key)
            return learned.limit if learned is not None else None

    def others(self, key: str, task_id: str) -> int:
        """How many other tasks of `key` this app has at WaveSpeed besides `task_id` (running or waiting there)."""
        with self._lock:
            return sum(1 for other, task in self._tasks.items() if task.key == key and other != task_id)

    def adopt(self, key: str, task_id: str) -> None:
        """Count a task already at WaveSpeed (resumed, or recovered after a restart) until it ends."""
        with self._lock:
            self._tasks.setdefault(task_id, _Task(key, self.clock()))

    def finish(self, task_id: str) -> None:
        """The task ended (or nobody will follow it any more): its slot is free. Safe to call twice."""
        with self._lock:
            task = self._tasks.pop(task_id, None)
        if task is not None:
            self._ring(task.key)

    def seen(self, task_id: str, status: str) -> None:
        """A poll read `status` for the task: what it shows about its key's limit is learned (see the module)."""
        parsed = TaskStatus.parse(status)
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or parsed.is_final or not self.limit:
                return
            now = self.clock()
            task.waiting = parsed is TaskStatus.CREATED and now - task.since >= SETTLE_SECONDS
            task.processing = parsed is TaskStatus.PROCESSING
            before = self._limit(task.key)
            if task.waiting:
                self._lower(task.key, now)
            elif task.processing:
                self._raise(task.key, now)
            after = self._limit(task.key)
        if after != before:
            self._ring(task.key)  # the waiting jobs' places and words change

    def _lower(self, key: str, now: float) -> None:
        """A task of `key` waits in `created`: the account runs no more than its tasks that do not (at least 1).
        Unpolled tasks count as running, so an unknown errs towards the configured limit."""
        running = sum(1 for task in self._tasks.values() if task.key == key and not task.waiting)
        learned = self._learned.get(key)
        was = learned.limit if learned is not None else self.limit
        limit = min(was, max(1, running))
        if limit >= self.limit:
            return  # no lower than configured: nothing to learn
        self._learned[key] = _Learned(limit, now)
        if limit != was:
            log.info("WaveSpeed key %s: a task waits in 'created' while %d of its tasks run; at most %d at once "
                     "from now on (was %d)", key, running, limit, was)

    def _raise(self, key: str, now: float) -> None:
        """A task of `key` runs: with the learned limit put to the test, more running than it allows raise it."""
        learned = self._learned.get(key)
        if learned is None or now - learned.since < RECHECK_SECONDS:
            return
        running = sum(1 for task in self._tasks.values() if task.key == key and task.processing)
        if running <= learned.limit:
            return
        if running >= self.limit:
            del self._learned[key]
            log.info("WaveSpeed key %s: %d of its tasks run at once; back to the configured %d at once (was %d)",
                     key, running, self.limit, learned.limit)
        else:
            log.info("WaveSpeed key %s: %d of its tasks run at once, more than the %d it learned; still testing "
                     "one more", key, running, learned.limit)
            learned.limit = running  # still on test: one more may go, until one waits in `created`

    def _limit(self, key: str) -> int:
        learned = self._learned.get(key)
        if learned is None:
            return self.limit
        if self.clock() - learned.since >= RECHECK_SECONDS:
            return min(self.limit, learned.limit + 1)
        return learned.limit

    def _ring(self, key: str) -> None:
        """The line of `key` moved: wake every job waiting in it to look again (their places changed too)."""
        with self._lock:
            waiting = list(self._waiting.get(key, ()))
        for ticket in waiting:
            ticket.bell.ring()

    def _running(self, key: str) -> int:
        return self._holding[key] + sum(1 for task in self._tasks.values() if task.key == key)

    def _try_acquire(self, ticket: "Ticket") -> int:
        with self._lock:
            queue = self._waiting[ticket.key]
            position = queue.index(ticket)
            limit = self._limit(ticket.key)
            running = self._running(ticket.key)
            free = limit - running if limit else position + 1
            if position >= free:
                return position + 1 - max(0, free)
            queue.remove(ticket)
            self._holding[ticket.key] += 1
            moved = bool(limit and queue)
            learned = self._learned.get(ticket.key)
            if learned is not None and running >= learned.limit:
                log.info("WaveSpeed key %s: trying %d at once, one more than it was seen to run %.0f min ago",
                         ticket.key, running + 1, (self.clock() - learned.since) / 60)
        if moved:
            self._ring(ticket.key)  # everyone behind is one place further up
        return 0

    def _bind(self, ticket: "Ticket", task_id: str) -> None:
        with self._lock:
            self._holding[ticket.key] -= 1
            self._tasks[task_id] = _Task(ticket.key, self.clock())

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
        """The key's limit in force (see `ApiSlots.limit_for`)."""
        return self.slots.limit_for(self.key)

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
