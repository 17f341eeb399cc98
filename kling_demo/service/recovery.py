"""Finish paid tasks that nobody is watching: after a restart, a closed tab, or Stop.

Every task still running in the journal is polled to completion in the background and its
video downloaded into the data dir, so it appears in its owner's history. Only tasks paid
with the server's key can be resumed here; a visitor's own key is never stored, so those
wait until the visitor comes back and resumes them with the key entered again.

While WaveSpeed cannot be reached, a task is tried again with backoff until it is older than
`max_age_seconds`; every try and every give-up is logged with the task id.

Every follow is a coroutine on one event loop of its own (started at the first adoption): waiting for the
next poll, a webhook or the next try holds no thread, so a restart with hundreds of running tasks follows
them all at once; only a step that does I/O (a poll's answer, the download) takes one of a few pool threads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from ..errors import AlreadyFollowing, KlingDemoError, TaskFailed, TaskTimedOut
from ..jobs import steps
from ..jobs.runner import Stop, run_async
from ..wavespeed.retry import retry_delay
from ..jobs.steps import JobContext
from ..models import KeySource, TaskStatus
from ..store.journal import Journal, TaskRecord
from ..wavespeed import lost_tasks
from ..words import duration as format_seconds

log = logging.getLogger(__name__)
MAX_AGE_SECONDS = 24 * 3600.0  # the API keeps tasks 7 days; past a day, wait for a restart or the owner
T = TypeVar("T")


class Recovery:
    """Background followers for journal tasks: coroutines on one loop, their I/O steps in a few threads."""

    def __init__(self, journal: Journal, make_context: Callable[[str, str | None], JobContext], *, api_base: str,
                 sandbox: bool, max_workers: int = 4, max_age_seconds: float = MAX_AGE_SECONDS,
                 release_slot: Callable[[str], None] = lambda task_id: None) -> None:
        """`release_slot(task_id)` frees the key's WaveSpeed slot of a task this gives up on (see api_slots)."""
        self.journal = journal
        self.release_slot = release_slot
        self.make_context = make_context  # (owner, visitor key or None) → a JobContext
        self.api_base = api_base
        self.sandbox = sandbox
        self.max_age_seconds = max_age_seconds
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="recovery")
        self._loop: asyncio.AbstractEventLoop | None = None  # started at the first adoption
        self._active: set[str] = set()  # task ids adopted and not yet finished or given up
        self._lock = threading.Lock()
        self._closing = Stop()  # every follow's stop: close() ends their waits at once

    def resume_running(self, owner: str | None = None, api_key: str | None = None) -> int:
        """Adopt every running task (of one owner, or all) that this key can follow; returns how many.

        Without `api_key`, tasks paid with the server's key; with a visitor's key, that owner's own-key tasks."""
        adopted = 0
        for record in self.journal.running(owner=owner):
            if record.key_source != (KeySource.VISITOR if api_key else KeySource.SERVER):
                continue
            if record.api_base != self.api_base:
                if self.sandbox:
                    # The embedded sandbox keeps tasks in memory: a restart ends them for good.
                    self._row(record).fail("The local sandbox that ran this task was restarted; sandbox tasks do "
                                           "not survive a restart.", TaskStatus.LOST)
                continue
            self.adopt(record, api_key)
            adopted += 1
        return adopted

    def find_lost(self) -> int:
        """Look in the background for the tasks of submissions whose answer was lost (paid with the server's key,
        at this API, within the listing's 7 days); a task found gets its row and is followed. Returns how many.

        Only rows that say when their POST began and which uploaded image it carried are looked for: a task is
        theirs only if it was created while that POST could have been answered and shows that very image."""
        horizon = time.time() - lost_tasks.MAX_WINDOW_SECONDS + lost_tasks.CLOCK_MARGIN_SECONDS
        records = [record for record in self.journal.unknown_outcomes()
                   if record.key_source == KeySource.SERVER and record.api_base == self.api_base
                   and record.sent_at is not None and record.sent_at > horizon and record.sent.get("image")]
        for record in records:
            self._pool.submit(self._find_lost, record)
        return len(records)

    def _find_lost(self, record: TaskRecord) -> None:
        """Find one lost submission's task by its model, the time its POST began and its inputs, uploaded images
        included; adopt it if exactly one fits that no history holds or held."""
        ctx = self.make_context(record.owner, None)
        sent = {name: record.params[name] for name in ("prompt", "negative_prompt", "guidance_scale", "duration")
                if name in record.params}
        sent.update(record.sent)  # the image (and end image) URLs, as the POST carried them
        began = record.sent_at or 0.0
        try:
            # The task was created while the POST could still be answered: from its start to its timeouts.
            lookup = lost_tasks.find_submitted(ctx.client, ctx.spec, sent, since=began,
                                               until=began + sum(ctx.client.timeout), known=self.journal.has_task,
                                               required=tuple(record.sent))
            found = lookup.prediction
            if found is None:
                log.info("no task found for lost submission %s (%d matched)", record.task_id, lookup.matches)
                return
            ctx.records.existing(record.task_id).attach(found.task_id, found.status)  # type: ignore[union-attr]
            log.info("found task %s of a submission whose answer was lost; following it", found.task_id)
        except Exception:  # the listing or the journal failing leaves the row as it was
            log.exception("could not look for the task of a lost submission")
            return
        finally:
            ctx.client.close()
        adopted = self.journal.get(record.owner, found.task_id)
        if adopted is not None:
            self.adopt(adopted)

    def _row(self, record: TaskRecord):  # noqa: ANN202 - a TaskRow of the row's own owner and key
        return self.make_context(record.owner, None).records.existing(record.task_id)  # type: ignore[union-attr]

    def adopt(self, record: TaskRecord, api_key: str | None = None) -> None:
        """Follow one task in the background; a task already adopted, or followed by a live job, is skipped.

        `api_key` is a visitor's own key, held in memory only for this follow."""
        with self._lock:
            if record.task_id in self._active or self._closing.is_set():
                return
            self._active.add(record.task_id)
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="recovery-loop", daemon=True).start()
            loop = self._loop
        asyncio.run_coroutine_threadsafe(self._follow(record, api_key), loop)

    def following(self, task_id: str) -> bool:
        """Whether this task is followed in the background now (or waits here for its next try)."""
        with self._lock:
            return task_id in self._active

    async def _follow(self, record: TaskRecord, api_key: str | None) -> None:
        """Try to finish the task, again and again with backoff while the failure is worth retrying."""
        task_id = record.task_id
        try:
            for attempt in itertools.count(1):
                error = await self._attempt(record, api_key)
                if error is None or self._closing.is_set():
                    return
                retryable, age = error.retry_later, time.time() - record.created_at
                if not retryable or age > self.max_age_seconds:
                    limit = f"it is {format_seconds(age)} old (the limit is {format_seconds(self.max_age_seconds)})" \
                        if retryable else "this error is not worth retrying"
                    log.warning("gave up recovering task %s after %d attempt(s) (%s), as %s. It stays in the journal "
                                "and is tried again at the next start or when its owner returns.",
                                task_id, attempt, _why(error), limit)
                    self.release_slot(task_id)  # nobody follows it now, so nobody would see it end
                    return
                delay = retry_delay(attempt, getattr(error, "retry_after", None))
                log.info("recovering task %s: attempt %d failed (%s); next try in %.0f s", task_id, attempt,
                         _why(error), delay)
                await self._closing.bell.wait_async(delay)  # close() ends the wait (and cancels the follow)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a broken data dir: say so rather than die silently on the loop
            if self._closing.is_set():  # the pool was shut down under a step: not an error
                return
            log.exception("gave up recovering task %s after an unexpected error", task_id)
            self.release_slot(task_id)
        finally:
            with self._lock:
                self._active.discard(task_id)

    async def _attempt(self, record: TaskRecord, api_key: str | None) -> KlingDemoError | None:
        """Follow the task once to its end; returns the error that stopped it, or None when it ended."""
        ctx = self.make_context(record.owner, api_key)
        ctx.stop = self._closing  # close() ends a follow that is waiting on WaveSpeed, so the process can exit
        try:
            async for _ in run_async(steps.resume(record.task_id, ctx, duration=record.duration), self._in_pool,
                                     ctx.stop):
                pass
            log.info("recovered task %s into its owner's history", record.task_id)
        except AlreadyFollowing:
            log.debug("task %s is already followed by a live job", record.task_id)
        except TaskFailed as failure:
            log.info("task %s ended without a video: %s", record.task_id, failure.message)
        except KlingDemoError as error:
            return error
        finally:
            ctx.client.close()
        return None

    def _in_pool(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """One blocking step of a follow, in the pool (the loop only waits)."""
        return asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Stop following: waits end at once, running steps see the stop; tasks stay in the journal."""
        with self._lock:
            self._closing.set()
            loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(_cancel_all, loop)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """On the loop: cancel every follow, then stop the loop once they have unwound."""
    follows = asyncio.all_tasks(loop)
    for follow in follows:
        follow.cancel()

    async def stop_when_done() -> None:
        await asyncio.gather(*follows, return_exceptions=True)
        loop.stop()

    loop.create_task(stop_when_done())


def _why(error: KlingDemoError) -> str:
    """A failed attempt in a few words for the log (the visitor's long sentence is not needed there)."""
    if getattr(error, "reason", ""):
        return f"WaveSpeed not answering: {error.reason}"
    if isinstance(error, TaskTimedOut):
        return "the task was still running at the deadline"
    return str(error)
