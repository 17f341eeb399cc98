"""A running job as front ends hold it: its updates (run by the one runner), its progress, Stop, and its handing over.

Iterating a `Job` (the command line) or `updates_async()` (the page and the API) gives each update with its
progress view attached; a job that ends on an error gives a last FAILED update (a Stop: STOPPED) carrying the
error, and then raises it. `stop()` says what may exist at that very moment. Closing a job before its video
hands its task to background recovery, so nothing paid for is lost.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import AsyncIterator, Callable, Iterator

from ..errors import JobStopped, KlingDemoError
from ..jobs.progress import Tracker
from ..jobs.runner import InThread, run, run_async
from ..jobs.steps import JobContext
from ..models import Charge, Estimate, JobUpdate, Stage, StopReport


class Job:
    """One job's updates. A job may be stepped in a worker thread while the event loop closes it (Stop, a closed
    tab): the close then waits for that step to return and is finished by the thread that ran it, since a
    generator cannot be closed while it runs."""

    def __init__(self, updates: Iterator[JobUpdate], ctx: JobContext, *, expected: Estimate | None = None,
                 on_close: Callable[[], None] = lambda: None, hand_over: Callable[[], None] = lambda: None,
                 charge: Callable[[str], Charge | None] | None = None) -> None:
        """`charge` reads what the finished task was charged, for its DONE update (None: its quote stands)."""
        self._updates = _Guarded(updates, self)
        self._charge = charge
        self._ctx = ctx
        self._tracker = Tracker(expected)
        self._on_close = on_close
        self._hand_over = hand_over
        self._lock = threading.Lock()
        self._stepping = False
        self._close_asked = False
        self._closed = False
        self._when_closed: list[Callable[[], None]] = []
        self.last: JobUpdate | None = None
        self.error: KlingDemoError | None = None

    # -- what front ends use ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[JobUpdate]:
        """Every update, waiting between them in this thread; raises the error the job ended on, after its update."""
        yield from run(self._updates, self._ctx.stop)
        self._raise_ending()

    async def updates_async(self, in_thread: InThread) -> AsyncIterator[JobUpdate]:
        """Every update, each step in a worker thread and every wait on this loop (no thread held)."""
        async for update in run_async(self._updates, in_thread, self._ctx.stop):
            yield update
        self._raise_ending()

    def stop(self) -> StopReport:
        """Stop waiting, and say whether a task may exist now; a task already submitted lands in the history."""
        return self._ctx.sending.stop(self._ctx.stop)

    @property
    def stopped(self) -> bool:
        return self._ctx.stop.is_set()

    def close(self) -> None:
        """Stop the job and release what it holds, now or, if a step is running, as soon as it returns."""
        self._ctx.stop.set()  # a running step sees it at its next check
        with self._lock:
            self._close_asked = True
            if self._stepping:
                return
        self._finish()

    def on_closed(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the job is closed (its task handed over, its slot freed)."""
        self._when_closed.append(callback)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside -------------------------------------------------------------------------------------------------

    def _step(self) -> JobUpdate:
        """One step of the job (in whatever thread calls it); its update with the progress view attached."""
        with self._lock:
            if self._close_asked or self.error is not None:
                raise StopIteration
            self._stepping = True
        try:
            try:
                update = next(self._inner)
            except KlingDemoError as error:
                self.error = error
                stage = Stage.STOPPED if isinstance(error, JobStopped) else Stage.FAILED
                last = self.last
                update = JobUpdate(stage, last.elapsed if last else 0.0,
                                   task_id=error.task_id or (last.task_id if last else None),
                                   submission=self._ctx.sending.submission, error=error)
            if update.stage is Stage.DONE and update.task_id and self._charge is not None:
                update = dataclasses.replace(update, charge=self._charge(update.task_id))
            self.last = dataclasses.replace(update, progress=self._tracker.view(update))
            return self.last
        finally:
            with self._lock:
                self._stepping = False
                finish = self._close_asked
            if finish:
                self._finish()

    def _raise_ending(self) -> None:
        if self.error is not None:
            raise self.error

    def _finish(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            getattr(self._inner, "close", lambda: None)()  # a generator; a plain iterator (already done) has none
        finally:
            self._ctx.client.close()
            self._on_close()
            # Stopped, the tab went away, or WaveSpeed stayed unreachable past the deadline: a paid task that
            # did not end here still finishes into its owner's history. A stop can land while the submit
            # answer is on its way, before anyone saw a task id, so every running task of the owner is handed
            # over (rows of tasks that ended are not running; tasks a live job follows are skipped there).
            if self.last is None or self.last.stage is not Stage.DONE:
                self._hand_over()
            for callback in self._when_closed:
                callback()

    @property
    def _inner(self) -> Iterator[JobUpdate]:
        return self._updates.inner


class _Guarded:
    """The job's generator as the runner steps it: through `Job._step` (progress, endings, closing)."""

    def __init__(self, inner: Iterator[JobUpdate], job: Job) -> None:
        self.inner, self._job = inner, job

    def __iter__(self) -> "_Guarded":
        return self

    def __next__(self) -> JobUpdate:
        return self._job._step()
