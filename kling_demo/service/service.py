"""The running app in one room: backend, journal, render-time history, followers, visitor slots, recovery.

The page (`ui.py`) and the command line (`cli.py`) are front ends over one `Service`. They ask it to start a
job, resume a task, list a visitor's history or greet an arriving visitor; the rules of who may do what with
which key live here, so every route that spends money or reads a visitor's data passes the same checks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..jobs import steps

from ..store import files

from ..store import videos
from ..jobs.slots import ApiSlots, slot_key
from .backend import Backend, open_backend
from .budgets import Budgets, Ledger, Limits
from ..wavespeed.client import Balance, Prediction, Quote, WaveSpeedClient
from ..config import Settings
from ..wavespeed.connections import Connections
from ..errors import AuthenticationFailed, InputRejected, KeyRequired, KlingDemoError, NotYours
from ..jobs.steps import Followers, JobContext, JobRequest, JobUpdate, Stage
from ..jobs.inputs import check_duration, check_guidance
from ..store.journal import Journal, TaskRecord
from ..models import DEFAULT_MODEL, KeySource, ModelSpec
from ..jobs.notices import Notices
from ..jobs.poller import Poller
from ..jobs.schedule import InferenceHistory
from .prices import FREE_IN_SANDBOX, PRICE_UNAVAILABLE, QuoteCache, money, price_guard, quoted_cost
from .recovery import Recovery
from .visitors import JobSlots, Throttle
from ..wavespeed.webhooks import Receiver

log = logging.getLogger(__name__)
RECENT_TASKS = 20  # tasks shown under "Your WaveSpeed tasks"
# Keys checked against WaveSpeed a minute, per browser and per address: a person pastes a key, maybe fixes it
# once; a script trying keys gets a handful a minute from each address.
KEY_CHECKS_PER_MINUTE = {"owner": 5, "address": 10}


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


@dataclass(frozen=True)
class FormFill:
    """What a history button puts back into the form; a frame is None where it leaves the form's own."""

    first_frame: Path | None
    prompt: str
    negative_prompt: str
    guidance_scale: float
    duration: int
    end_frame: Path | None
    clear_end_frame: bool  # the task had no end frame (or its last frame is the new first): clear the form's
    note: str  # one sentence for the page: what was filled, and what could not be


class Job:
    """One job's updates. Closing it before its final update hands its task to background recovery.

    A job may be stepped in a worker thread while the event loop closes it (Stop, a closed tab): the close
    then waits for that step to return and is finished by the thread that ran it, since a generator cannot
    be closed while it runs."""

    def __init__(self, updates: Iterator[JobUpdate], ctx: JobContext, on_close: contextlib.ExitStack,
                 hand_over: "callable[[], None]") -> None:  # type: ignore[valid-type]
        self._updates = updates
        self._ctx = ctx
        self._on_close = on_close
        self._hand_over = hand_over
        self._lock = threading.Lock()
        self._stepping = False
        self._close_asked = False
        self._closed = False
        self.last: JobUpdate | None = None

    def __iter__(self) -> Iterator[JobUpdate]:
        return self

    def __next__(self) -> JobUpdate:
        with self._lock:
            if self._close_asked:
                raise StopIteration
            self._stepping = True
        try:
            self.last = next(self._updates)
            return self.last
        finally:
            with self._lock:
                self._stepping = False
                finish = self._close_asked
            if finish:
                self._finish()

    def next_update(self) -> JobUpdate | None:
        """The next update, or None after the last one (for callers that run it in a worker thread)."""
        return next(self, None)

    def stop(self) -> None:
        """Stop waiting; a task already submitted keeps going and lands in the owner's history."""
        self._ctx.stop.set()

    def close(self) -> None:
        """Stop the job and release what it holds, now or, if a step is running, as soon as it returns."""
        self._ctx.stop.set()  # a running step sees it at its next check
        with self._lock:
            self._close_asked = True
            if self._stepping:
                return
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
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
        files.make_folder(self.videos_dir)  # a full or read-only disk: the app starts, refusing new jobs
        self.journal = Journal(settings.data_dir / "journal.sqlite3")  # an unreadable file is moved aside
        self.journal.settle_intents()  # submissions a stopped run left without an answer: outcome unknown
        files.remove_orphan_parts(self.videos_dir)  # downloads a killed run left half-written
        if settings.retention_days is not None or settings.retention_gb is not None:
            self.journal.prune(max_age_days=settings.retention_days,
                               max_total_bytes=int(settings.retention_gb * 1e9) if settings.retention_gb else None)
        self.history = InferenceHistory()
        for duration, seconds in reversed(self.journal.inference_times(spec.model_id)):
            self.history.record(spec.model_id, duration, seconds)
        self.followers = Followers()
        self.connections = Connections()  # every job of a key shares its connections (and keyless ones for files)
        self.slots = JobSlots()
        self.key_checks = Throttle(KEY_CHECKS_PER_MINUTE)
        # Webhooks, when the app knows its public URL and the secret: a verified one wakes the task's follower.
        self.notices = Notices()
        self.poller = Poller()  # polls every running task on its schedule; jobs subscribe to their task
        self.webhooks = Receiver(settings.webhook_secret, self._pushed) \
            if settings.webhook_url and settings.webhook_secret else None
        self.budgets = Budgets(Ledger(self.journal.path), Limits(settings.visitor_budget_usd, settings.daily_budget_usd,
                                                                 settings.submits_per_minute), spec)
        # Tasks at WaveSpeed per key, the server's and each visitor's own: jobs beyond the account's level wait here.
        self.api_slots = ApiSlots(settings.api_concurrency)
        self.quotes = QuoteCache()  # WaveSpeed's price quotes, shared by the page's price line and the jobs
        self.recovery = Recovery(self.journal, self.context, api_base=self.backend.base_url,
                                 sandbox=self.backend.is_sandbox, release_slot=self.api_slots.finish)
        self.background = background
        if background:
            recovered = self.recovery.resume_running()
            if recovered:
                log.info("resuming %d task(s) left running by the previous run", recovered)
            if self.recovery.find_lost():  # submissions whose answer was lost: their task may be listed now
                log.info("looking for the tasks of submissions whose answer was lost")

    @property
    def is_sandbox(self) -> bool:
        return self.backend.is_sandbox

    def context(self, owner: str, api_key: str | None = None, spender: str | None = None, *,
                operator: bool = False) -> JobContext:
        """Everything one job needs, paying with `api_key` (a visitor's own) or else the server's key.

        A job that may submit on the server's key names its `spender`: its submit passes the budgets. The
        `operator` (the command line) owns the server's key, so is told its balance as a visitor is theirs."""
        client = self._client(api_key)
        # A visitor's own key belongs to an account whose webhook secret we do not know: those tasks are polled.
        pushed = self.webhooks is not None and not api_key
        guard = self.budgets.guard(spender, client) if spender is not None and not api_key else None
        # The sandbox bills nothing: its jobs keep no price and never check a balance.
        priced = None if self.is_sandbox else price_guard(
            self.quotes, client, api_key or self.backend.api_key, self.spec,
            whose="Your" if api_key or operator else "This Space's", show_balance=self.settings.show_balance)
        return JobContext(client=client, videos_dir=self.videos_dir, deadline_seconds=self.settings.deadline_seconds,
                          spend_guard=guard, price_guard=priced,
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
        # The cap guards the server's key, per spender (the budgets' visitor, not a browser id anyone can mint);
        # the free sandbox and a visitor's own key have none.
        on_close.enter_context(self.slots.hold(self.spender(visitor), None if visitor.api_key or self.is_sandbox
                                               else self.settings.max_jobs_per_visitor))
        ctx = self.context(visitor.owner, visitor.api_key, None if visitor.operator else self.spender(visitor),
                           operator=visitor.operator)
        return Job(steps.generate(request, ctx), ctx, on_close, lambda: self._hand_over(visitor))

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
        return Job(steps.resume(task_id, ctx, duration=record.duration if record and record.duration else duration), ctx,
                   contextlib.ExitStack(), lambda: self._hand_over(payer))

    # -- the visitor's own key's tasks at WaveSpeed ("Your WaveSpeed tasks") --------------------------------

    def recent_tasks(self, visitor: Visitor, limit: int = RECENT_TASKS) -> list[Prediction]:
        """The recent tasks of this model on the visitor's own key (web and API runs, last 24 h), newest first.

        Only with their own key: the server key's tasks are every visitor's."""
        self._require_own_key(visitor, "list its tasks")
        with self._client(visitor.api_key) as client:
            return list(client.predictions(1, limit, model=self.spec.model_id).items)

    def adopt(self, task_id: str, visitor: Visitor) -> Job:
        """Bring one of the visitor's own key's tasks into their history (a resume by id, own key required)."""
        self._require_own_key(visitor, "bring its tasks into your history")
        return self.resume(task_id, visitor)

    @staticmethod
    def _require_own_key(visitor: Visitor, what: str) -> None:
        if not visitor.api_key:
            raise KeyRequired(f"Enter your own WaveSpeed key under “Your WaveSpeed key” to {what}; the tasks of "
                              "this Space's key are not shown.")

    def budget_line(self, visitor: Visitor) -> str:
        """How much of the server key's budget the visitor used, for the page; "" when none applies to them."""
        if visitor.api_key or visitor.operator:
            return ""
        return self.budgets.line(self.spender(visitor))

    # -- money: what the page and the CLI show ----------------------------------------------------------------

    def quote(self, visitor: Visitor, duration: object) -> Quote:
        """WaveSpeed's price for a video of `duration` on the key that would pay (cached briefly); raises a
        `KlingDemoError` when it cannot be had."""
        duration = check_duration(duration, self.spec)
        with self._client(visitor.api_key, quick=True) as client:
            return self.quotes.quote(client, visitor.api_key or self.backend.api_key, self.spec,
                                     {"duration": duration})

    def balance(self, visitor: Visitor) -> Balance:
        """The balance of the key that would pay; raises `AuthenticationFailed` for a key WaveSpeed refuses."""
        with self._client(visitor.api_key, quick=True) as client:
            return client.balance()

    def price_line(self, visitor: Visitor, duration: object) -> str:
        """The line beside Generate: the API's quote for what is about to be submitted, never a made-up one."""
        if self.is_sandbox:
            return f"{FREE_IN_SANDBOX}: nothing is billed."
        try:
            duration = check_duration(duration, self.spec)
        except KlingDemoError:
            return ""  # the duration's own check says what to change
        try:
            quote = self.quote(visitor, duration)
        except AuthenticationFailed:
            return f"{PRICE_UNAVAILABLE}: WaveSpeed rejected the key."
        except KlingDemoError as error:
            log.info("price line: no quote (%s)", type(error).__name__)
            return f"{PRICE_UNAVAILABLE} right now (WaveSpeed did not answer the quote)."
        payer = "your WaveSpeed key" if visitor.api_key else (
            "your own WaveSpeed key (enter it below)" if self.settings.require_user_key
            else "this Space's WaveSpeed key")
        line = f"Price: {money(quote.price, quote.currency)} for this {duration} s video, billed to {payer}."
        if not visitor.api_key and self.settings.show_balance and not self.settings.require_user_key:
            try:
                held = self.balance(Visitor(visitor.owner))
                line += f" Its balance: {money(held.amount, held.currency)}."
            except KlingDemoError as error:
                log.info("price line: no balance (%s)", type(error).__name__)
        return line

    def key_status(self, api_key: str | None, *, owner: str | None = None, address: str | None = None) -> str:
        """What the page says as soon as a visitor enters their own key (never the key itself).

        Checks are limited per `owner` and per `address` (KEY_CHECKS_PER_MINUTE), so the page is no oracle for
        guessing keys: past the limit WaveSpeed is asked nothing."""
        if not api_key:
            return ""
        if self.is_sandbox:
            return "Sandbox mode: nothing is billed, so keys are not checked."
        wait = self.key_checks.take(owner=owner, address=address)
        if wait is not None:
            return (f"Too many keys were checked from this browser or address in the last minute. This key was not "
                    f"checked; enter it again in {wait} s, or just generate: it is used when you do.")
        try:
            held = self.balance(Visitor("", api_key))
        except AuthenticationFailed:
            fallback = "" if self.settings.require_user_key else ", or clear the box to use this Space's key"
            return f"WaveSpeed rejected this key. Check it{fallback}."
        except KlingDemoError as error:
            log.info("key check: no answer (%s)", type(error).__name__)
            return "This key could not be checked right now (WaveSpeed did not answer); it is used when you generate."
        return f"Key accepted · balance {money(held.amount, held.currency)}"

    def spend_line(self, visitor: Visitor) -> str:
        """The visitor's spend so far: WaveSpeed's quotes of their completed videos."""
        if self.is_sandbox:
            return "Sandbox mode: nothing you make here is billed."
        totals = self.journal.spend(visitor.owner)
        if not totals:
            return "Spent so far: nothing yet."
        parts = [f"{money(total, currency)} on {count} video{'s' if count != 1 else ''}"
                 for currency, (total, count) in sorted(totals.items())]
        return "Spent so far: " + "; ".join(parts) + " (WaveSpeed's quotes at submission)."

    def cost(self, record: TaskRecord) -> str:
        """A task's cost for its history entry: free in the sandbox, else its quote ("" when none was had)."""
        return "free (sandbox)" if self.is_sandbox else quoted_cost(record.price, record.currency)

    def _client(self, api_key: str | None, *, quick: bool = False) -> WaveSpeedClient:
        """A client paying with `api_key` (a visitor's own) or else the server's key, on the shared connections;
        `quick` for a look-up while a person waits (short timeouts, one retry)."""
        timeouts = {"connect_timeout": self.settings.connect_timeout, "read_timeout": self.settings.read_timeout}
        if quick:
            timeouts = {"connect_timeout": min(5.0, self.settings.connect_timeout),
                        "read_timeout": min(10.0, self.settings.read_timeout), "max_attempts": 2}
        return WaveSpeedClient(self.backend.base_url, api_key or self.backend.api_key, connections=self.connections,
                               **timeouts)

    @staticmethod
    def spender(visitor: Visitor) -> str:
        return visitor.spender or visitor.owner

    def moved(self, visitor: Visitor, task_id: str, video_path: Path) -> None:
        """The visitor moved a finished video (the CLI's --out): the history points at its new place."""
        self.journal.set_video_path(visitor.owner, task_id, str(video_path))

    # -- the visitor's history: reuse a task's settings, continue from its last frame, delete it -------------

    def reuse(self, visitor: Visitor, task_id: str) -> FormFill:
        """The settings and frames of one of the visitor's tasks, to fill the form with."""
        record = self._own(visitor, task_id)
        if record.params.get("resumed") and not record.prompt:
            raise InputRejected("This task was fetched by its id: its settings were made elsewhere and are not "
                                "known here.", task_id=record.task_id)
        first, end = videos.kept_frames(record.first_frame)
        had_end = bool(record.params.get("end_image"))
        missing = [name for name, lost in (("first frame", first is None), ("end frame", had_end and end is None))
                   if lost]
        note = "The settings of this task are in the form."
        if missing:
            note += f" Its {' and '.join(missing)} {'was' if len(missing) == 1 else 'were'} not kept here: add " \
                    f"{'it' if len(missing) == 1 else 'them'} again."
        return self._fill(record, first, end if had_end else None, clear_end_frame=not had_end, note=note)

    def continue_from(self, visitor: Visitor, task_id: str) -> FormFill:
        """The last frame of one of the visitor's videos as a new first frame, with the task's prompt and settings."""
        record = self._own(visitor, task_id)
        video = Path(record.video_path) if record.video_path else None
        if video is None or not video.exists():
            raise InputRejected("This task has no video here to continue from (it has not finished, it failed, or "
                                "its video was removed).", task_id=record.task_id)
        try:
            last = videos.last_frame(video)
        except Exception as error:  # PyAV's errors: a video the app cannot decode
            log.warning("task %s: could not take the last frame of its video (%s)", record.task_id,
                        type(error).__name__)
            raise InputRejected("The last frame of this video could not be read.", task_id=record.task_id) from None
        return self._fill(record, last, None, clear_end_frame=True,
                          note="The last frame of this video is the new first frame; the prompt and settings are "
                               "kept and the end frame is cleared.")

    def delete(self, visitor: Visitor, task_id: str) -> str:
        """Delete one of the visitor's ended tasks from this app: its journal row, video and frames.

        A running task is refused (it would come back when it finishes). Nothing at WaveSpeed changes."""
        record = self._own(visitor, task_id)
        if record.is_running or record.status == "submitting":
            raise InputRejected("This task is still rendering: delete it once it has finished or failed.",
                                task_id=record.task_id)
        if not self.journal.forget(visitor.owner, record.task_id):
            raise InputRejected("This task could not be deleted now (it may have just started again); try later.",
                                task_id=record.task_id)
        videos.remove_files([Path(path) for path in (record.video_path, record.first_frame) if path])
        log.info("deleted task %s from its owner's history", record.task_id)
        if self.is_sandbox:
            return "Deleted from your history here, with its video and frames. This was the sandbox: nothing was billed."
        return ("Deleted from your history here, with its video and frames. At WaveSpeed the task and its video "
                "remain until WaveSpeed's retention ends (about 7 days), and its charge stands.")

    def close(self) -> None:
        """Stop background recovery, the poller and the embedded sandbox, if one was started."""
        self.recovery.close()
        self.poller.close()
        self.connections.close()
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

    def _own(self, visitor: Visitor, task_id: object) -> TaskRecord:
        """One of the visitor's own tasks; anything else (another owner's, a made-up id) is simply not theirs."""
        record = self.task(visitor, task_id) if isinstance(task_id, str) and task_id else None
        if record is None:
            raise NotYours("Select one of your tasks in your history first.")
        return record

    def _fill(self, record: TaskRecord, first: Path | None, end: Path | None, *, clear_end_frame: bool,
              note: str) -> FormFill:
        """The form's values from the task's settings; odd or missing ones fall back to the model's defaults."""
        params, spec = record.params, self.spec
        try:
            guidance = check_guidance(params.get("guidance_scale"), spec)
        except InputRejected:
            guidance = spec.guidance_default
        try:
            duration = check_duration(params.get("duration"), spec)
        except InputRejected:
            duration = spec.default_duration
        return FormFill(first, record.prompt, str(params.get("negative_prompt") or ""), guidance, duration, end,
                        clear_end_frame, note)

    def _already_done(self, record: TaskRecord) -> Job:
        done = JobUpdate(Stage.DONE, f"Task {record.task_id} is already in your history.", 0.0,
                         task_id=record.task_id, video_path=Path(record.video_path or ""))
        ctx = self.context(record.owner)
        return Job((update for update in (done,)), ctx, contextlib.ExitStack(), lambda: None)
