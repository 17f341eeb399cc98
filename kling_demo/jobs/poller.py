"""One poller for every running task: followers subscribe to a task's changes instead of polling it themselves.

A waiting job is then an entry in the poller's schedule, not a thread: the page waits on the event loop
(`Subscription.wait_async`), the CLI and recovery block in `Subscription.wait`. One scheduler thread keeps a
heap of due polls and hands each to a small pool (the HTTP call blocks), polling a task on its own schedule
(`schedule.next_poll_delay`; every SAFETY_NET_SECONDS when a webhook will say it ended) however many followers
it has. It tells the task's row (`on_status`) and rings its subscribers only when the status changes, an outage
begins or grows, or the task ends; a task nobody follows any more is dropped from the schedule.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..errors import KlingDemoError, ServiceUnavailable
from ..models import TaskStatus
from ..wavespeed.client import Prediction, WaveSpeedClient
from .notices import SAFETY_NET_SECONDS, Bell, Notices
from ..wavespeed.retry import retry_delay
from .schedule import next_poll_delay

log = logging.getLogger(__name__)
POLL_WORKERS = 8  # threads making poll requests; a poll takes milliseconds, so a few serve thousands of tasks


@dataclass(frozen=True)
class TaskState:
    """What the poller last learned about a task: its prediction, or the outage keeping it from asking."""

    prediction: Prediction
    next_poll_in: float  # seconds until the poller asks again (0 once the task ended)
    failures: int = 0  # failed polls in a row (an outage while > 0)
    outage_reason: str = ""
    outage_since: float = 0.0
    error: KlingDemoError | None = None  # a failure no retry mends (the task is gone, the key refused)

    @property
    def is_final(self) -> bool:
        return self.prediction.is_final or self.error is not None


class _Watch:
    """One followed task in the poller: its latest state, who follows it, when it is polled next."""

    def __init__(self, prediction: Prediction, client: WaveSpeedClient, expected: float | None, pushed: bool,
                 on_status: Callable[[TaskStatus], None] | None, now: float,
                 on_poll: Callable[[str, TaskStatus], None] | None = None) -> None:
        self.task_id = prediction.task_id
        self.client, self.expected, self.pushed = client, expected, pushed
        self.on_poll = on_poll
        self.on_status = on_status
        self.submitted_at = now
        self.state = TaskState(prediction, 0.0)
        self.due = now
        self.subscribers: set[Subscription] = set()
        self.polling = False


class Subscription(Bell):
    """One follower's view of a task: rung when its state changes; `state` is the latest."""

    def __init__(self, poller: "Poller", watch: _Watch) -> None:
        super().__init__()
        self._poller, self._watch = poller, watch

    @property
    def state(self) -> TaskState:
        """The latest state (clears the bell first, so a change after this read rings again)."""
        self.clear()
        return self._watch.state

    def close(self) -> None:
        self._poller._unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Poller:
    """The schedule of every followed task, one thread to run it and a few to make the calls; `close()` ends it."""

    def __init__(self, *, workers: int = POLL_WORKERS, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.polls = 0  # requests made, for figures
        self._watches: dict[str, _Watch] = {}
        self._clients: dict[tuple[str, str], tuple[WaveSpeedClient, int]] = {}  # account → (client, watches)
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def follow(self, prediction: Prediction, client: WaveSpeedClient, *, expected: float | None = None,
               notices: Notices | None = None, on_status: Callable[[TaskStatus], None] | None = None,
               on_poll: Callable[[str, TaskStatus], None] | None = None) -> Subscription:
        """Subscribe to `prediction`'s task, polling it with (a clone of) `client` until it ends or nobody follows.

        With `notices` (webhooks on) it is polled once soon, then only as a safety net; a webhook that came
        before this call is taken at once. `on_poll(task_id, status)` hears every status a poll reads, before
        the followers do (the key's slots learn from it)."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the poller is closed")
            watch = self._watches.get(prediction.task_id)
            if watch is None:
                now = self.clock()
                watch = _Watch(prediction, self._client_for(client), expected, notices is not None, on_status, now,
                               on_poll)
                self._watches[watch.task_id] = watch
                self._schedule(watch, now + next_poll_delay(0.0, expected))
            subscription = Subscription(self, watch)
            watch.subscribers.add(subscription)
            self._start()
        if notices is not None:
            notice = notices.watch(watch.task_id)
            notices.forget(watch.task_id)
            if notice.prediction is not None:
                self.deliver(notice.prediction)
        return subscription

    def join(self, task_id: str) -> Subscription | None:
        """Subscribe to a task someone here already follows, adding no poll of its own (a page watching another's
        task, perhaps paid with a key it does not hold); None when nobody follows it."""
        with self._wake:
            watch = self._watches.get(task_id)
            if watch is None or self._closed:
                return None
            subscription = Subscription(self, watch)
            watch.subscribers.add(subscription)
            return subscription

    def deliver(self, prediction: Prediction) -> bool:
        """A webhook's final prediction: hand it to the task's followers at once; False if nobody here follows it."""
        with self._wake:
            watch = self._watches.get(prediction.task_id)
            if watch is None:
                return False
            if not watch.state.is_final:
                self._publish(watch, TaskState(prediction, 0.0))
        return True

    def next_poll_in(self, subscription: Subscription) -> float:
        """Seconds until the subscribed task is polled again."""
        return max(0.0, subscription._watch.due - self.clock())

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- inside -----------------------------------------------------------------------------------------------

    def _client_for(self, client: WaveSpeedClient) -> WaveSpeedClient:
        account = client.account
        shared, users = self._clients.get(account) or (client.clone(), 0)
        self._clients[account] = (shared, users + 1)
        return shared

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._wake:
            watch = subscription._watch
            watch.subscribers.discard(subscription)
            if watch.subscribers or self._watches.get(watch.task_id) is not watch:
                return
            del self._watches[watch.task_id]  # its heap entry is skipped when it comes due
            account = watch.client.account
            shared, users = self._clients[account]
            if users > 1:
                self._clients[account] = (shared, users - 1)
                return
            del self._clients[account]
        shared.close()

    def _schedule(self, watch: _Watch, due: float) -> None:
        """Put the watch's next poll on the heap; wake the scheduler only if it is now the first one due (it
        sleeps until the first: waking it for every later poll cost a thread switch a poll)."""
        watch.due = due
        entry = (due, next(self._order), watch.task_id)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="poll")
            self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Hand every due poll to the pool; sleep until the next one is due or the schedule changes."""
        with self._wake:
            while not self._closed:
                now = self.clock()
                while self._heap and self._heap[0][0] <= now:
                    due, _, task_id = heapq.heappop(self._heap)
                    watch = self._watches.get(task_id)
                    if watch is None or watch.due != due or watch.polling or watch.state.is_final:
                        continue  # nobody follows it any more, or it was rescheduled
                    watch.polling = True
                    assert self._pool is not None
                    self._pool.submit(self._poll, watch)
                self._wake.wait(self._heap[0][0] - now if self._heap else None)

    def _poll(self, watch: _Watch) -> None:
        """One poll of one task; publish what changed and schedule the next one."""
        try:
            self.polls += 1
            prediction = watch.client.result(watch.task_id, attempts=1)
        except ServiceUnavailable as error:
            self._failed(watch, error)
            return
        except KlingDemoError as error:  # not found, refused key: no retry mends it
            with self._wake:
                watch.polling = False
                self._publish(watch, TaskState(watch.state.prediction, 0.0, error=error))
            return
        except Exception:  # a bug: say so, and keep the task on the schedule rather than lose it
            log.exception("poller: polling task %s failed unexpectedly", watch.task_id)
            self._failed(watch, ServiceUnavailable("The poll failed unexpectedly.", reason="an unexpected error"))
            return
        if watch.on_poll is not None:
            try:
                watch.on_poll(watch.task_id, prediction.status)
            except Exception:  # a listener's bug must not stop the task's polls
                log.exception("poller: the listener of task %s failed", watch.task_id)
        with self._wake:
            watch.polling = False
            previous = watch.state
            if previous.is_final:
                return  # a webhook ended it meanwhile
            changed = prediction.status != previous.prediction.status or previous.failures or prediction.is_final
            if not prediction.is_final:
                running = self.clock() - watch.submitted_at
                self._schedule(watch, self.clock() + (SAFETY_NET_SECONDS if watch.pushed
                                                      else next_poll_delay(running, watch.expected)))
            state = TaskState(prediction, 0.0 if prediction.is_final else watch.due - self.clock())
            if changed:
                self._publish(watch, state)
            else:
                watch.state = state
        if changed and not prediction.is_final and watch.on_status is not None:
            self._record(watch, prediction.status)

    def _failed(self, watch: _Watch, error: ServiceUnavailable) -> None:
        with self._wake:
            watch.polling = False
            previous = watch.state
            if previous.is_final:
                return
            failures = previous.failures + 1
            wait = retry_delay(failures, error.retry_after)
            log.info("task %s: WaveSpeed is not answering (%s); try %d in %.1f s", watch.task_id,
                     error.reason or "an unexpected answer", failures + 1, wait)
            self._schedule(watch, self.clock() + wait)
            self._publish(watch, TaskState(previous.prediction, wait, failures, error.reason or "an unexpected answer",
                                           previous.outage_since if previous.failures else self.clock()))

    def _publish(self, watch: _Watch, state: TaskState) -> None:
        watch.state = state
        for subscriber in watch.subscribers:
            subscriber.ring()

    def _record(self, watch: _Watch, status: TaskStatus) -> None:
        try:
            watch.on_status(status)  # type: ignore[misc]
        except Exception as error:  # noqa: BLE001 - the history's status lags; the task is still followed
            log.warning("journal: could not record the status of task %s (%s)", watch.task_id, type(error).__name__)
