"""The running app in one room: backend, journal, render-time history, followers, visitor slots, recovery.

The page (`ui.py`) and the command line (`cli.py`) are front ends over one `Service`. They ask it to start a
job, resume a task, list a visitor's history or greet an arriving visitor; the rules of who may do what with
which key live here, so every route that spends money or reads a visitor's data passes the same checks.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import jobs, storage
from .api_slots import ApiSlots, slot_key
from .backend import Backend, open_backend
from .budgets import Budgets, Ledger, Limits
from .client import Prediction, WaveSpeedClient
from .config import Settings
from .errors import KeyRequired, NotYours
from .jobs import Followers, JobContext, JobRequest, JobUpdate, Stage
from .journal import Journal, TaskRecord
from .models import DEFAULT_MODEL, KeySource, ModelSpec
from .notices import Notices
from .poller import Poller
from .polling import InferenceHistory
from .recovery import Recovery
from .visitors import JobSlots
from .webhooks import Receiver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Visitor:
    """Who is asking: the owner whose history they see, and the key they brought (held in memory only)."""

    owner: str
    api_key: str | None = field(default=None, repr=False)
    # The operator at the command line owns the server's key, so may fetch any task of that key by id.
    operator: bool = False
    # Whom the server key's budgets count this visitor as (identity.spender_id); the owner id if not given.
    spender: str = ""

    @property
    def key_source(self) -> KeySource:
        return KeySource.VISITOR if self.api_key else KeySource.SERVER


class Job:
    """One job's updates. Closing it before its final update hands its task to background recovery."""

    def __init__(self, updates: Iterator[JobUpdate], ctx: JobContext, on_close: contextlib.ExitStack,
                 hand_over: "callable[[], None]") -> None:  # type: ignore[valid-type]
        self._updates = updates
        self._ctx = ctx
        self._on_close = on_close
        self._hand_over = hand_over
        self._closed = False
        self.last: JobUpdate | None = None

    def __iter__(self) -> Iterator[JobUpdate]:
        return self

    def __next__(self) -> JobUpdate:
        self.last = next(self._updates)
        return self.last

    def next_update(self) -> JobUpdate | None:
        """The next update, or None after the last one (for callers that run it in a worker thread)."""
        return next(self, None)

    def stop(self) -> None:
        """Stop waiting; a task already submitted keeps going and lands in the owner's history."""
        self._ctx.stop.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.stop.set()
        try:
            self._updates.close()
        finally:
            self._ctx.client.close()
            self._on_close.close()
            # Stopped, the tab went away, or WaveSpeed stayed unreachable past the deadline: a paid task that
            # did not end here still finishes into its owner's history. A stop can land while the submit
            # answer is on its way, before anyone saw a task id, so every running task of the owner is handed
            # over (rows of tasks that ended are not running; tasks a live job follows are skipped there).
            if self.last is None or self.last.stage is not Stage.DONE:
                self._hand_over()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Service:
    """Owns the parts of the running app; `close()` stops what it started."""

    def __init__(self, settings: Settings, backend: Backend | None = None, *, spec: ModelSpec = DEFAULT_MODEL,
                 background: bool = True) -> None:
        """`background=False` (the CLI) neither resumes old tasks at start nor follows stopped ones afterwards."""
        self.settings = settings
        self.spec = spec
        self.backend = backend or open_backend(settings)
        self.videos_dir = settings.videos_dir
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(settings.data_dir / "journal.sqlite3")  # an unreadable file is moved aside
        self.journal.settle_intents()  # submissions a stopped run left without an answer: outcome unknown
        storage.remove_orphan_parts(self.videos_dir)  # downloads a killed run left half-written
        if settings.retention_days is not None or settings.retention_gb is not None:
            self.journal.prune(max_age_days=settings.retention_days,
                               max_total_bytes=int(settings.retention_gb * 1e9) if settings.retention_gb else None)
        self.history = InferenceHistory()
        for duration, seconds in reversed(self.journal.inference_times(spec.model_id)):
            self.history.record(spec.model_id, duration, seconds)
        self.followers = Followers()
        self.slots = JobSlots()
        # Webhooks, when the app knows its public URL and the secret: a verified one wakes the task's follower.
        self.notices = Notices()
        self.poller = Poller()  # polls every running task on its schedule; jobs subscribe to their task
        self.webhooks = Receiver(settings.webhook_secret, self._pushed) \
            if settings.webhook_url and settings.webhook_secret else None
        self.budgets = Budgets(Ledger(self.journal.path), Limits(settings.visitor_budget_usd, settings.daily_budget_usd,
                                                                 settings.submits_per_minute), spec)
        # Tasks at WaveSpeed per key, the server's and each visitor's own: jobs beyond the account's level wait here.
        self.api_slots = ApiSlots(settings.api_concurrency)
        self.recovery = Recovery(self.journal, self.context, api_base=self.backend.base_url,
                                 sandbox=self.backend.is_sandbox, release_slot=self.api_slots.finish)
        self.background = background
        if background:
            recovered = self.recovery.resume_running()
            if recovered:
                log.info("resuming %d task(s) left running by the previous run", recovered)

    @property
    def is_sandbox(self) -> bool:
        return self.backend.is_sandbox

    def context(self, owner: str, api_key: str | None = None, spender: str | None = None) -> JobContext:
        """Everything one job needs, paying with `api_key` (a visitor's own) or else the server's key.

        A job that may submit on the server's key names its `spender`: its submit passes the budgets."""
        client = WaveSpeedClient(self.backend.base_url, api_key or self.backend.api_key,
                                 connect_timeout=self.settings.connect_timeout,
                                 read_timeout=self.settings.read_timeout)
        # A visitor's own key belongs to an account whose webhook secret we do not know: those tasks are polled.
        pushed = self.webhooks is not None and not api_key
        guard = self.budgets.guard(spender, client) if spender is not None and not api_key else None
        return JobContext(client=client, videos_dir=self.videos_dir, deadline_seconds=self.settings.deadline_seconds,
                          spend_guard=guard,
                          max_download_bytes=self.settings.max_download_bytes, spec=self.spec, history=self.history,
                          journal=self.journal, owner=owner,
                          key_source=KeySource.VISITOR if api_key else KeySource.SERVER,
                          min_free_bytes=self.settings.min_free_bytes, followers=self.followers,
                          webhook_url=self.settings.webhook_url if pushed else None,
                          notices=self.notices if pushed else None,
                          slots=self.api_slots, slot_key=slot_key(api_key or self.backend.api_key),
                          poller=self.poller)

    # -- what front ends ask for ---------------------------------------------------------------------------

    def arrive(self, visitor: Visitor) -> list[TaskRecord]:
        """A visitor opened the page: fetch their unfinished tasks now, and return their history."""
        self.recovery.resume_running(visitor.owner)
        return self.tasks(visitor)

    def tasks(self, visitor: Visitor, limit: int = 50) -> list[TaskRecord]:
        """The visitor's tasks, newest first."""
        return self.journal.for_owner(visitor.owner, limit=limit)

    def task(self, visitor: Visitor, task_id: str) -> TaskRecord | None:
        """One of the visitor's tasks; another owner's task is indistinguishable from a missing one."""
        return self.journal.get(visitor.owner, task_id)

    def generate(self, request: JobRequest, visitor: Visitor) -> Job:
        """Start a job for the visitor (not yet run: iterate the returned `Job`)."""
        self._require_key(visitor)
        on_close = contextlib.ExitStack()
        on_close.enter_context(self.slots.hold(visitor.owner, None if visitor.api_key
                                               else self.settings.max_jobs_per_visitor))
        ctx = self.context(visitor.owner, visitor.api_key, None if visitor.operator else self.spender(visitor))
        return Job(jobs.generate(request, ctx), ctx, on_close, lambda: self._hand_over(visitor))

    def resume(self, task_id: str, visitor: Visitor, *, duration: int | None = None) -> Job:
        """Follow a task to its video: one of the visitor's, or with their own key one submitted elsewhere.

        `duration` is the video's length when the caller knows it and the history does not."""
        record = self.task(visitor, task_id)
        if record is not None and record.video_path and Path(record.video_path).exists():
            return self._already_done(record)
        if record is None and not (visitor.api_key or visitor.operator):
            raise NotYours("This task is not in your history. To fetch a task submitted elsewhere, enter your own "
                           "WaveSpeed key first.", task_id=task_id)
        if record is not None and record.key_source == KeySource.VISITOR and not visitor.api_key:
            raise KeyRequired("This task was paid with your own key: enter it again to resume it (keys are never "
                              "stored).", task_id=task_id)
        use_key = visitor.api_key if record is None or record.key_source == KeySource.VISITOR else None
        ctx = self.context(visitor.owner, use_key)
        payer = Visitor(visitor.owner, use_key)
        return Job(jobs.resume(task_id, ctx, duration=record.duration if record and record.duration else duration), ctx,
                   contextlib.ExitStack(), lambda: self._hand_over(payer))

    def budget_line(self, visitor: Visitor) -> str:
        """How much of the server key's budget the visitor used, for the page; "" when none applies to them."""
        if visitor.api_key or visitor.operator:
            return ""
        return self.budgets.line(self.spender(visitor))

    @staticmethod
    def spender(visitor: Visitor) -> str:
        return visitor.spender or visitor.owner

    def moved(self, visitor: Visitor, task_id: str, video_path: Path) -> None:
        """The visitor moved a finished video (the CLI's --out): the history points at its new place."""
        self.journal.set_video_path(visitor.owner, task_id, str(video_path))

    def close(self) -> None:
        """Stop background recovery, the poller and the embedded sandbox, if one was started."""
        self.recovery.close()
        self.poller.close()
        self.backend.close()

    # -- rules ------------------------------------------------------------------------------------------------

    def _require_key(self, visitor: Visitor) -> None:
        if self.settings.require_user_key and not visitor.api_key:
            raise KeyRequired("This Space asks every visitor to bring their own WaveSpeed key: enter it under "
                              "“Your WaveSpeed key”. It is used for your requests only and never stored.")

    def _hand_over(self, visitor: Visitor) -> None:
        if self.background:
            self.recovery.resume_running(visitor.owner, visitor.api_key)

    def _pushed(self, data: dict[str, Any]) -> None:
        """A verified webhook: wake the job that follows its task, or, if none here does, follow it now."""
        prediction = Prediction.from_envelope({"data": data})
        if not prediction.is_final:
            return
        log.info("webhook: task %s ended (%s)", prediction.task_id, prediction.status)
        if self.poller.deliver(prediction):
            return
        self.notices.deliver(prediction)  # kept a while for a follower that starts later
        if not self.background:
            return
        for record in self.journal.running():
            if (record.task_id, record.key_source, record.api_base) == (prediction.task_id, KeySource.SERVER,
                                                                   self.backend.base_url):
                self.recovery.adopt(record)  # its follower finds the notice waiting

    def _already_done(self, record: TaskRecord) -> Job:
        done = JobUpdate(Stage.DONE, f"Task {record.task_id} is already in your history.", 0.0,
                         task_id=record.task_id, video_path=Path(record.video_path or ""))
        ctx = self.context(record.owner)
        return Job((update for update in (done,)), ctx, contextlib.ExitStack(), lambda: None)
