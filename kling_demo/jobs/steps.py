"""One generation job, start to finish: prepare → upload → submit → poll → download.

`generate()` is the one place that knows the order of steps. It yields a `JobUpdate` at
every step and never sleeps longer than it must: each update says how long to wait
(`wait_seconds`) and, once submitted, what ends the wait early (`wake`, its subscription to
the service's one poller, which polls every task), so an async caller waits without holding
a thread, while a plain `for` loop still works because the generator sleeps off what is left.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, TypeVar

from ..wavespeed import lost_tasks

from . import images

from ..store import files

from ..store import videos
from .slots import ApiSlots, Ticket
from ..service.budgets import Reservation, SpendGuard
from ..wavespeed.client import Prediction, Quote, WaveSpeedClient
from ..errors import (
    AlreadyFollowing,
    InputRejected,
    JobStopped,
    KlingDemoError,
    NothingSubmitted,
    RateLimited,
    ServiceUnavailable,
    StorageUnavailable,
    SubmissionOutcomeUnknown,
    TaskFailed,
    TaskOutOfReach,
    TaskTimedOut,
    TryLater,
)
from .inputs import check_duration, check_guidance, check_prompt, check_task_id
from ..store.journal import OUTCOME_UNKNOWN, Journal, is_intent_id, positive_int
from ..models import DEFAULT_MODEL, KeySource, ModelSpec, TaskStatus
from .notices import Bell, Notices
from .poller import Poller
from .schedule import MIN_INTERVAL, InferenceHistory, retry_delay
from ..service.prices import PriceGuard, money, quoted_cost

log = logging.getLogger(__name__)
T = TypeVar("T")
SLOT_CHECK_SECONDS = 15.0  # a job waiting for a free WaveSpeed slot is woken when one frees; this often anyway
LOST_LOOKUP_DELAYS = (1.0, 2.0, 4.0)  # after a lost submit answer, the listing is read again after these waits


class Stage(str, enum.Enum):
    PREPARING = "preparing"
    WAITING = "waiting"  # in the app, before anything is sent: for a free slot of the key, or after a 429
    UPLOADING = "uploading"
    SUBMITTED = "submitted"
    QUEUED = "queued"  # at WaveSpeed, status `created`: waiting for a slot of the account
    PROCESSING = "processing"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JobRequest:
    """What the visitor asked for, exactly as submitted (checked by `generate`)."""

    image: str | Path | None
    prompt: str | None
    negative_prompt: str | None = ""
    guidance_scale: object = 0.5
    duration: object = 5
    end_image: str | Path | None = None


@dataclass(frozen=True)
class JobUpdate:
    """One step of a job, ready to show to a person."""

    stage: Stage
    message: str
    elapsed: float
    task_id: str | None = None
    video_path: Path | None = None
    wait_seconds: float = 0.0
    inference_ms: int | None = None
    nsfw: bool | None = None
    changes: tuple[str, ...] = ()
    place: int | None = None  # while waiting in the app for a slot: 1 is next
    # Set while the poller or a webhook may end the wait early: an async caller awaits
    # `wake.wait_async(wait_seconds)` (a `poller.Subscription`), holding no thread.
    wake: Bell | None = field(default=None, compare=False, repr=False)

    @property
    def is_final(self) -> bool:
        return self.stage in (Stage.DONE, Stage.FAILED)


class Followers:
    """Task ids this process is already following, so no task is polled or downloaded twice."""

    def __init__(self) -> None:
        self._task_ids: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, task_id: str) -> bool:
        with self._lock:
            if task_id in self._task_ids:
                return False
            self._task_ids.add(task_id)
            return True

    def release(self, task_id: str) -> None:
        with self._lock:
            self._task_ids.discard(task_id)


@dataclass
class JobContext:
    """What a job needs from its surroundings. `journal` and `owner` make it durable."""

    client: WaveSpeedClient
    videos_dir: Path
    deadline_seconds: float = 30 * 60.0
    max_download_bytes: int = 500 * 1024 * 1024
    spec: ModelSpec = DEFAULT_MODEL
    history: InferenceHistory = field(default_factory=InferenceHistory)
    journal: Journal | None = None
    owner: str = ""
    key_source: KeySource = KeySource.SERVER  # whose key pays (the key itself is never kept)
    min_free_bytes: int = files.DEFAULT_MIN_FREE_BYTES  # refuse a job when the data dir has less room
    followers: Followers = field(default_factory=Followers)
    slots: ApiSlots = field(default_factory=lambda: ApiSlots(0))  # tasks at WaveSpeed per key (0: no cap)
    slot_key: str = ""  # `api_slots.slot_key` of the key that pays
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    # With webhooks on (and the server's key paying, whose account secret signs them): where WaveSpeed
    # reports the end of the task, and the registry that hands its notice to this job.
    webhook_url: str | None = None
    notices: Notices | None = None
    # On the server's key: quotes the price and reserves it against the budgets, or raises BudgetExceeded.
    spend_guard: SpendGuard | None = None
    # Live mode: quotes the price (kept with the task) and refuses when the paying key's balance is below it.
    price_guard: PriceGuard | None = None
    # The service's one poller for all running tasks; None: the job starts one of its own.
    poller: Poller | None = None


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def generate(request: JobRequest, ctx: JobContext) -> Iterator[JobUpdate]:
    """Run one job, yielding its progress; raises a `KlingDemoError` after a final FAILED update."""
    started = ctx.clock()
    task_id: str | None = None
    ticket: Ticket | None = None

    def update(stage: Stage, message: str, **extra: object) -> JobUpdate:
        return JobUpdate(stage, message, ctx.clock() - started, task_id=task_id, **extra)  # type: ignore[arg-type]

    try:
        yield update(Stage.PREPARING, "Checking your inputs…")
        with tempfile.TemporaryDirectory(prefix="kling-prep-") as work:
            spec = ctx.spec
            prompt = check_prompt(request.prompt, spec)
            negative = check_prompt(request.negative_prompt, spec, field="negative_prompt", required=False)
            guidance = check_guidance(request.guidance_scale, spec)
            duration = check_duration(request.duration, spec)
            # Both frames pass every check that decodes no pixels before either is decoded.
            images.check_before_decoding(request.image, spec.first_frame, role="first frame")
            if request.end_image:
                images.check_before_decoding(request.end_image, spec.end_frame, role="end frame")
            inputs: dict[str, object] = {"prompt": prompt, "guidance_scale": guidance, "duration": duration}
            if negative:
                inputs["negative_prompt"] = negative

            intent = _Intent(ctx, None)  # no row yet: withdrawing it is a no-op
            reservation: Reservation | None = None
            answer_lost: SubmissionOutcomeUnknown | None = None  # set once a task may exist: never withdrawn
            try:
                # Before anything costs the app memory or time (the price depends on the duration alone); every
                # way out below that submits nothing releases it.
                if ctx.spend_guard is not None:
                    reservation = ctx.spend_guard(inputs)
                first = images.prepare_image(request.image, spec.first_frame, role="first frame",
                                            work_dir=Path(work))
                end = None
                if request.end_image:
                    end = images.prepare_image(request.end_image, spec.end_frame, role="end frame",
                                              work_dir=Path(work))
                changes = first.changes + (end.changes if end else ())
                _check_stop(ctx, task_id)
                ticket = ctx.slots.ticket(ctx.slot_key)
                yield from _wait_for_slot(ticket, ctx, started)
                # Nothing is uploaded or paid for that the app could not record.
                files.check_room(ctx.videos_dir, ctx.min_free_bytes)
                params = {"prompt": prompt, "negative_prompt": negative, "guidance_scale": guidance,
                          "duration": duration, "end_image": end is not None}
                intent = _Intent.write(ctx, params, first, end)
                # After the budgets (a refused budget asks nothing more): the price to keep with the task, and
                # no upload or submission the paying key's balance cannot cover.
                quote = ctx.price_guard(inputs) if ctx.price_guard is not None else None
                intent.priced(quote)
                size_mb = (first.size_bytes + (end.size_bytes if end else 0)) / 1e6
                fixed = (" Fixed: " + "; ".join(changes) + ".") if changes else ""
                priced = f" Price: {money(quote.price, quote.currency)}." if quote else ""
                yield update(Stage.UPLOADING, f"Uploading {'both frames' if end else 'the first frame'} "
                                              f"({size_mb:.1f} MB)…{priced}{fixed}", changes=changes)
                payload: dict[str, object] = {"image": ctx.client.upload(first.path, first.mime_type), **inputs}
                if end:
                    payload["end_image"] = ctx.client.upload(end.path, end.mime_type)
                _check_stop(ctx, task_id)
                intent.sending(payload)  # the row says what is sent, and when, before it is (or nothing is sent)
                sent_at = time.time()
                try:
                    prediction = yield from _submit(payload, ctx, started)
                except SubmissionOutcomeUnknown as error:
                    answer_lost = error
                    prediction = yield from _find_lost({"negative_prompt": "", **payload}, ctx, started, sent_at)
            except BaseException as error:
                if answer_lost is not None:  # not found, or the search was cut short: the row says so
                    intent.outcome_unknown(error.message if isinstance(error, SubmissionOutcomeUnknown)
                                           else answer_lost.message)
                    raise
                intent.withdraw()  # refused, unreachable, or stopped: nothing was created
                if reservation is not None:
                    reservation.release()
                raise
            task_id = prediction.task_id
            if reservation is not None:
                reservation.attach(task_id)
            ticket.bind(task_id)  # the slot is the task's now, until it ends (whoever follows it)
            ctx.followers.claim(task_id)  # before the journal row has the task id, so recovery never races us
            intent.attach(prediction)
        yield from _follow(prediction, duration, ctx, started)
    except KlingDemoError as error:
        if task_id and not error.task_id:
            error.task_id = task_id
        raise
    finally:
        if ticket is not None:
            ticket.release()  # nothing was submitted: the slot goes to the next job (a no-op once bound)


def _wait_for_slot(ticket: Ticket, ctx: JobContext, started: float) -> Iterator[JobUpdate]:
    """Wait in the app, first come first served, until the key has a free slot at WaveSpeed.

    No thread sleeps here for an async caller: each update carries the ticket's bell as `wake` (rung when a
    slot frees or the line moves) and the deadline as `wait_seconds`; Stop ends the wait."""
    give_up_at = started + ctx.deadline_seconds
    while place := ticket.try_acquire():
        now = ctx.clock()
        if now >= give_up_at:
            raise TryLater(f"Every WaveSpeed slot of this key stayed busy for {format_seconds(now - started)}. "
                           "Nothing was uploaded or billed; try again later.")
        ahead = place - 1
        line = "you are next" if ahead == 0 else f"{ahead} job{'s' if ahead != 1 else ''} ahead of you"
        wait = max(MIN_INTERVAL, min(SLOT_CHECK_SECONDS, give_up_at - now))
        yield JobUpdate(Stage.WAITING, f"Waiting for a free WaveSpeed slot: {line}. This key runs "
                                       f"{_tasks(ticket.limit)} at once; nothing has been uploaded or billed yet.",
                        now - started, wait_seconds=wait, place=place, wake=ticket.bell)
        _sleep_until(ctx, now + wait, None, ticket.bell)


def _submit(payload: dict[str, object], ctx: JobContext, started: float) -> Generator[JobUpdate, None, Prediction]:
    """Submit once; after a 429 or a connection that never opened (both certainly created nothing), wait as
    told and submit again. Any other failure is final: a lost answer may have created a billed task."""
    give_up_at, failures = started + ctx.deadline_seconds, 0
    while True:
        try:
            return ctx.client.submit(ctx.spec, payload, attempts=1, webhook=ctx.webhook_url)
        except (RateLimited, NothingSubmitted) as error:
            failures += 1
            now = ctx.clock()
            wait = retry_delay(failures, error.retry_after)
            if now + wait >= give_up_at:
                raise
            if isinstance(error, RateLimited):
                why = "WaveSpeed is rate limiting this key (429)"
            else:
                why = f"WaveSpeed could not be reached ({error.reason or 'no connection'})"
            log.info("submit: %s; trying again in %.1f s (try %d)", why, wait, failures + 1)
            yield JobUpdate(Stage.WAITING, f"{why}; trying again in {max(1, round(wait))} s. Nothing was "
                                           "submitted yet.", now - started, wait_seconds=wait)
            _sleep_until(ctx, now + wait, None)


def _find_lost(sent: dict[str, object], ctx: JobContext, started: float,
               sent_at: float) -> Generator[JobUpdate, None, Prediction]:
    """The submit answer was lost: find the task among the key's recent tasks and return it, looking again after
    short waits (the listing may lag the submission). Raises SubmissionOutcomeUnknown when none, or several, fit."""
    yield JobUpdate(Stage.SUBMITTED, "WaveSpeed's answer to the submission was lost. Looking for the task among "
                                     "this key's recent tasks; nothing is submitted again.", ctx.clock() - started)
    matches = 0
    try:
        for delay in (0.0, *LOST_LOOKUP_DELAYS):
            if delay:
                now = ctx.clock()
                yield JobUpdate(Stage.SUBMITTED, f"The task is not listed yet; looking again in {delay:.0f} s. "
                                                 "Nothing is submitted again.", now - started, wait_seconds=delay)
                _sleep_until(ctx, now + delay, None)
            try:
                lookup = lost_tasks.find_submitted(ctx.client, ctx.spec, sent, since=sent_at, until=time.time(),
                                                   known=_known_task(ctx))
            except KlingDemoError as error:  # the listing failing is one more reason to look again
                log.info("lost submit answer: the task listing failed (%s)", error)
                continue
            if lookup.prediction is not None:
                log.info("lost submit answer: found task %s among the key's recent tasks", lookup.prediction.task_id)
                return lookup.prediction
            matches = lookup.matches
            if matches > 1:
                break  # waiting will not make two candidates one
    except JobStopped as stopped:
        raise SubmissionOutcomeUnknown("Stopped while looking for the task whose submission answer was lost. It "
                                       "may exist and be billed, so it was not resubmitted: check your WaveSpeed "
                                       "dashboard before trying again.") from stopped
    if matches > 1:
        why = f"{matches} recent tasks of this key match it, so none was picked"
    else:
        why = "no matching task was found among this key's recent tasks"
    raise SubmissionOutcomeUnknown(f"WaveSpeed's answer to the submission was lost, and {why}. The task may still "
                                   "exist and be billed, so it was not resubmitted: check your WaveSpeed dashboard "
                                   "before trying again.")


def _known_task(ctx: JobContext) -> Callable[[str], bool]:
    """Whether a task id is in the journal already (any owner's): such a task is someone's, not the lost one."""
    journal = ctx.journal
    return (lambda task_id: journal.has_task(task_id)) if journal is not None else (lambda task_id: False)


def resume(task_id: str, ctx: JobContext, *, duration: int | None = None) -> Iterator[JobUpdate]:
    """Follow a task submitted earlier (here or elsewhere) to its video; same updates as `generate`."""
    task_id = check_task_id(task_id)  # refused before it goes into an API path
    started = ctx.clock()
    try:
        if not ctx.followers.claim(task_id):
            raise AlreadyFollowing("This task is already being followed here; it will appear in your history when "
                                   "it finishes.", task_id=task_id)
        try:
            if is_intent_id(task_id):
                raise InputRejected("This entry never received a task id from WaveSpeed, so there is nothing to "
                                    "resume. Check your WaveSpeed dashboard for the task.", task_id=task_id)
            prediction = yield from _patiently(lambda: ctx.client.result(task_id, attempts=1), ctx, task_id,
                                               Stage.SUBMITTED, started, started + ctx.deadline_seconds)
            if not prediction.is_final:
                ctx.slots.adopt(ctx.slot_key, task_id)  # it runs at WaveSpeed: it counts until it ends
            known = duration or _declared_duration(prediction, ctx.spec)
            # A task fetched by id joins the visitor's history; an existing row stays as it is.
            _remember(ctx, prediction, {"prompt": "", "duration": known, "resumed": True})
            if known and not duration:
                _fill_duration(ctx, task_id, known)
        except BaseException:  # also a Stop or a closed page while WaveSpeed was not answering
            ctx.followers.release(task_id)
            raise
        with closing(_follow(prediction, known, ctx, started)) as updates:
            for update in updates:
                if update.stage is Stage.DONE and not known and update.video_path:
                    _fill_duration(ctx, task_id, _video_duration(update.video_path, ctx.spec))
                yield update
    except KlingDemoError as error:
        error.task_id = error.task_id or task_id
        raise


def _remember(ctx: JobContext, prediction: Prediction, params: dict[str, object]) -> None:
    """Write the task's journal row for its owner, if the job keeps one (an existing row is kept)."""
    if ctx.journal is None:
        return
    try:
        ctx.journal.record_submission(owner=ctx.owner, task_id=prediction.task_id, model=ctx.spec.model_id,
                                      api_base=ctx.client.base_url, key_source=ctx.key_source,
                                      status=prediction.status, params=params)
    except (OSError, sqlite3.Error) as error:  # the task is paid already: follow it anyway, without a row
        log.error("journal: task %s could not be recorded (%s: %s); it is followed without the journal",
                  prediction.task_id, type(error).__name__, error)
        ctx.journal = None


class _Intent:
    """The journal row of a submission in flight: written before the upload ("prepared"), told what the POST
    carries right before it is sent ("submitting"), given the task id after it."""

    def __init__(self, ctx: JobContext, intent_id: str | None, preview: Path | None = None) -> None:
        self.ctx, self.intent_id, self.preview = ctx, intent_id, preview

    @classmethod
    def write(cls, ctx: JobContext, params: dict[str, Any], first: images.PreparedImage,
              end: images.PreparedImage | None = None) -> "_Intent":
        """Record the submission to come; raises `StorageUnavailable` if the journal cannot take it."""
        if ctx.journal is None:
            return cls(ctx, None)
        preview: Path | None = None
        try:
            preview = images.save_preview(first, ctx.videos_dir)
            videos.keep_frames(preview, first, end)  # for "reuse these settings"
            intent_id = ctx.journal.record_intent(owner=ctx.owner, model=ctx.spec.model_id,
                                                  api_base=ctx.client.base_url, key_source=ctx.key_source,
                                                  params=params, first_frame=str(preview))
        except (OSError, sqlite3.Error) as error:
            log.warning("journal: cannot record a new submission (%s: %s); refusing it before anything is paid for",
                        type(error).__name__, error)
            if preview is not None:
                videos.remove_files([preview])
            raise StorageUnavailable(files.NO_ROOM_MESSAGE) from error
        return cls(ctx, intent_id, preview)

    def attach(self, prediction: Prediction) -> None:
        """Give the row its task id. If that fails the job goes on (the visitor sees the id); the log keeps it."""
        if self.ctx.journal is None or self.intent_id is None:
            return
        try:
            self.ctx.journal.attach_task(self.ctx.owner, self.intent_id, prediction.task_id, prediction.status)
        except (OSError, sqlite3.Error) as error:
            log.error("journal: task %s was submitted but could not be recorded (%s: %s); it is followed without "
                      "the journal", prediction.task_id, type(error).__name__, error)
            self.ctx.journal = None  # this job only: its later journal writes would fail the same way

    def sending(self, payload: dict[str, object]) -> None:
        """Right before the submit POST: record when it began and which uploaded images it carries, so that only
        this very task can be adopted if its answer is lost. Raises `StorageUnavailable` (nothing is sent) if the
        journal cannot take it."""
        if self.ctx.journal is None or self.intent_id is None:
            return
        images = {name: str(payload[name]) for name in ("image", "end_image") if payload.get(name)}
        try:
            self.ctx.journal.mark_sending(self.ctx.owner, self.intent_id, images)
        except (OSError, sqlite3.Error) as error:
            log.warning("journal: cannot record the submission about to be sent (%s: %s); refusing it before "
                        "anything is paid for", type(error).__name__, error)
            raise StorageUnavailable(files.NO_ROOM_MESSAGE) from error

    def priced(self, quote: Quote | None) -> None:
        """Keep WaveSpeed's quote with the entry; without it the task only lacks its cost in the history."""
        if quote is None or self.ctx.journal is None or self.intent_id is None:
            return
        try:
            self.ctx.journal.set_price(self.ctx.owner, self.intent_id, quote.price, quote.currency)
        except (OSError, sqlite3.Error) as error:
            log.warning("journal: could not keep the price of a submission (%s)", type(error).__name__)

    def outcome_unknown(self, reason: str) -> None:
        """The answer was lost: the entry stays in the history, saying a task may exist and be billed."""
        if self.ctx.journal is None or self.intent_id is None:
            return
        try:
            self.ctx.journal.fail(self.ctx.owner, self.intent_id, reason, status=OUTCOME_UNKNOWN)
        except (OSError, sqlite3.Error) as error:
            log.warning("journal: could not mark a submission as outcome unknown (%s)", type(error).__name__)

    def withdraw(self) -> None:
        """Nothing was created: the entry goes (at once, or at a later write if the disk is full: hidden till then)."""
        if self.ctx.journal is None or self.intent_id is None:
            return
        self.ctx.journal.withdraw_intent(self.ctx.owner, self.intent_id)
        if self.preview is not None:
            videos.remove_files([self.preview])  # with the frames kept beside it


def _declared_duration(prediction: Prediction, spec: ModelSpec) -> int | None:
    """The video length the API's answer states in its inputs, when it has them (the result usually does not)."""
    for key in ("input", "inputs"):
        fields = prediction.raw.get(key)
        if isinstance(fields, dict):
            duration = positive_int(fields.get("duration"))
            if duration in spec.durations:
                return duration
    return None


def _video_duration(video: Path, spec: ModelSpec) -> int | None:
    """The task's duration read from its downloaded video: the model's length closest to what plays."""
    try:
        seconds = images.video_seconds(video)
    except Exception as error:  # an unreadable file only means the length stays unknown
        log.info("could not read the length of %s: %s", video.name, error)
        return None
    closest = min(spec.durations, key=lambda allowed: abs(allowed - seconds))
    return closest if abs(closest - seconds) <= 1.0 else None


def _fill_duration(ctx: JobContext, task_id: str, duration: int | None) -> None:
    if ctx.journal is None or not duration:
        return
    try:
        ctx.journal.fill_duration(ctx.owner, task_id, duration)
    except (OSError, sqlite3.Error) as error:  # only the history's detail is missing
        log.warning("journal: could not record the duration of task %s (%s)", task_id, type(error).__name__)


def _follow(prediction: Prediction, duration: int | None, ctx: JobContext, started: float) -> Iterator[JobUpdate]:
    """Follow a claimed task through the shared poller until it ends, then download its video."""
    task_id = prediction.task_id
    own_poller = ctx.poller is None  # a context without a service (tests, scripts): a poller for this job alone
    poller = Poller() if own_poller else ctx.poller
    try:
        yield from _wait_and_download(prediction, duration, ctx, started, poller)
    except TaskFailed as failure:
        if ctx.journal is not None:
            ctx.journal.fail(ctx.owner, task_id, failure.message, status=failure.status)
        raise
    finally:
        if own_poller:
            poller.close()
        ctx.followers.release(task_id)


def _wait_and_download(prediction: Prediction, duration: int | None, ctx: JobContext, started: float,
                       poller: Poller) -> Iterator[JobUpdate]:
    """Wait for the poller (or a webhook) to see the task end, then download. Each update carries the
    subscription as `wake`: an async caller awaits it off any thread; a plain loop blocks on it here."""
    task_id, spec = prediction.task_id, ctx.spec

    def update(stage: Stage, message: str, **extra: object) -> JobUpdate:
        return JobUpdate(stage, message, ctx.clock() - started, task_id=task_id, **extra)  # type: ignore[arg-type]

    submitted_at = ctx.clock()
    deadline_at = submitted_at + ctx.deadline_seconds
    expected = ctx.history.expected(spec.model_id, duration) if duration else None
    hint = f" Renders like this usually take about {format_seconds(expected)}." if expected else ""
    with poller.follow(prediction, ctx.client, expected=expected, notices=ctx.notices, journal=ctx.journal,
                       owner=ctx.owner, on_poll=ctx.slots.seen) as task:  # waiting in `created` teaches the slots
        wait = max(MIN_INTERVAL, poller.next_poll_in(task))
        due = ctx.clock() + wait  # a caller that waited already (the page, on its loop) finds nothing left
        yield update(Stage.SUBMITTED, f"Submitted as task {task_id}. Waiting for WaveSpeed to start…{hint}",
                     wait_seconds=wait, wake=task)
        while True:
            _sleep_until(ctx, due, task_id, task)
            state = task.state
            if state.error is not None:
                raise state.error
            if state.prediction.is_final:
                prediction = state.prediction
                break
            now = ctx.clock()
            running = now - submitted_at
            if state.failures:
                if now >= deadline_at:
                    log.warning("task %s: gave up after WaveSpeed failed %d times in a row (%s) and the deadline "
                                "passed", task_id, state.failures, state.outage_reason)
                    raise TaskOutOfReach(
                        f"WaveSpeed has not answered for {format_seconds(now - state.outage_since)} "
                        f"({state.outage_reason}) and this job's time limit of {format_seconds(ctx.deadline_seconds)} "
                        "is up. " + _not_lost(ctx, task_id), task_id=task_id, reason=state.outage_reason)
                wait = min(max(MIN_INTERVAL, poller.next_poll_in(task)), max(MIN_INTERVAL, deadline_at - now))
                due = now + wait
                yield update(Stage.PROCESSING, f"WaveSpeed is not answering ({state.outage_reason}); still waiting "
                                               f"for task {task_id}, retrying in {max(1, round(wait))} s. Nothing "
                                               "needs to be submitted again.", wait_seconds=wait, wake=task)
                continue
            if running > ctx.deadline_seconds:
                raise TaskTimedOut(
                    f"Gave up waiting after {format_seconds(running)} (the limit is "
                    f"{format_seconds(ctx.deadline_seconds)}). The task may still finish and be billed. "
                    + _not_lost(ctx, task_id), task_id=task_id)
            wait = max(MIN_INTERVAL, poller.next_poll_in(task))
            due = now + wait
            if TaskStatus.parse(state.prediction.status) is TaskStatus.CREATED:
                stage, words = Stage.QUEUED, _queued_words(ctx)
            else:
                stage, words = Stage.PROCESSING, "WaveSpeed is rendering your video"
            yield update(stage, f"{words}… {format_seconds(running)} so far.{hint}", wait_seconds=wait, wake=task)

    ctx.slots.finish(task_id)  # final at WaveSpeed: the key's slot is free for the next job
    if prediction.status != TaskStatus.COMPLETED or not prediction.outputs:
        raise _ended_without_video(prediction)
    if prediction.inference_ms and duration:
        ctx.history.record(spec.model_id, duration, prediction.inference_ms / 1000.0)
    yield update(Stage.DOWNLOADING, "Finished. Downloading the video…", inference_ms=prediction.inference_ms)
    output_url = prediction.outputs[0]
    video_path = yield from _patiently(
        lambda: ctx.client.download(output_url, ctx.videos_dir, max_bytes=ctx.max_download_bytes, attempts=1),
        ctx, task_id, Stage.DOWNLOADING, started, deadline_at)
    video_path = videos.label(video_path, task_id, ctx.spec.model_id,
                              ctx.journal.get(ctx.owner, task_id) if ctx.journal else None)
    if ctx.journal is not None:
        ctx.journal.complete(ctx.owner, task_id, video_path=str(video_path), inference_ms=prediction.inference_ms)
    yield update(Stage.DONE, _done_message(prediction, ctx.clock() - started, _cost(ctx, task_id)), video_path=video_path,
                 inference_ms=prediction.inference_ms, nsfw=_nsfw(prediction))


def _queued_words(ctx: JobContext) -> str:
    """Only a number WaveSpeed showed (`ApiSlots.learned`), never the configured one, which did not hold."""
    learned = ctx.slots.learned(ctx.slot_key)
    if learned:
        return f"Queued at WaveSpeed (the account runs {_tasks(learned)} at once)"
    return "Queued at WaveSpeed, waiting for a free slot of the account"


def _tasks(count: int) -> str:
    return f"{count} task{'s' if count != 1 else ''}"


def _ended_without_video(prediction: Prediction) -> TaskFailed:
    """The error for a task that ended at WaveSpeed with anything but a video, saying how it ended."""
    status = TaskStatus.parse(prediction.status)
    detail = f" ({prediction.error})" if prediction.error else ""
    if status is TaskStatus.CANCELLED:
        message = f"WaveSpeed cancelled the task{detail}, so there is no video. Try again."
    elif status is TaskStatus.TIMEOUT:
        message = f"WaveSpeed timed the task out{detail} before it finished, so there is no video. Try again later."
    elif status is TaskStatus.DELETED:
        message = "WaveSpeed deleted the task (it keeps tasks for 7 days), so its video can no longer be fetched."
    elif status is TaskStatus.COMPLETED:
        status = TaskStatus.FAILED
        message = "WaveSpeed says the task completed but sent no video. Try again."
    else:
        status = TaskStatus.FAILED
        message = f"The generation failed: {prediction.error}" if prediction.error else \
            "The generation failed, and WaveSpeed gave no reason."
    return TaskFailed(message, task_id=prediction.task_id, status=status)


def _patiently(call: Callable[[], T], ctx: JobContext, task_id: str, stage: Stage, started: float,
               deadline_at: float) -> Generator[JobUpdate, None, T]:
    """`call()`, retried with backoff while WaveSpeed is unreachable or failing, until `deadline_at`.

    Each failure yields an update saying so, with the wait as `wait_seconds`: an async caller waits off
    the thread, and Stop ends the wait at once. Used as `result = yield from _patiently(...)`."""
    failures, outage_began = 0, ctx.clock()
    while True:
        try:
            return call()
        except ServiceUnavailable as error:
            failures += 1
            reason = error.reason or "an unexpected answer"
            now = ctx.clock()
            if now >= deadline_at:
                log.warning("task %s: gave up after WaveSpeed failed %d times in a row (%s) and the deadline passed",
                            task_id, failures, reason)
                raise TaskOutOfReach(
                    f"WaveSpeed has not answered for {format_seconds(now - outage_began)} ({reason}) and this "
                    f"job's time limit of {format_seconds(ctx.deadline_seconds)} is up. " + _not_lost(ctx, task_id),
                    task_id=task_id, reason=reason) from error
            wait = min(retry_delay(failures, error.retry_after), deadline_at - now)
            log.info("task %s: WaveSpeed is not answering (%s) at the %s stage; try %d in %.1f s", task_id, reason,
                     stage.value, failures + 1, wait)
            yield JobUpdate(stage, f"WaveSpeed is not answering ({reason}); still waiting for task {task_id}, "
                                   f"retrying in {max(1, round(wait))} s. Nothing needs to be submitted again.",
                            now - started, task_id=task_id, wait_seconds=wait)
            _sleep_until(ctx, now + wait, task_id)


def _not_lost(ctx: JobContext, task_id: str) -> str:
    """What becomes of a task this job stops following; never an invitation to pay for it again."""
    if ctx.journal is not None and ctx.journal.get(ctx.owner, task_id) is not None:
        return ("Nothing needs to be submitted again: the task is still followed in the background and will "
                "appear in your history when it finishes.")
    return "Nothing needs to be submitted again: resume it later by its task id."


def _cost(ctx: JobContext, task_id: str) -> str:
    """What the task cost, as the journal keeps it: WaveSpeed's quote at submission; "" when none was had."""
    record = ctx.journal.get(ctx.owner, task_id) if ctx.journal is not None else None
    return quoted_cost(record.price, record.currency) if record is not None else ""


def _done_message(prediction: Prediction, total: float, cost: str = "") -> str:
    parts = [f"Your video is ready after {format_seconds(total)}"]
    if prediction.inference_ms:
        parts.append(f"inference {prediction.inference_ms / 1000:.1f} s")
    if cost:
        parts.append(cost)
    parts.append(f"task {prediction.task_id}")
    message = " · ".join(parts) + "."
    if _nsfw(prediction):
        message += " WaveSpeed flagged this video as possibly not safe for work."
    return message


def _nsfw(prediction: Prediction) -> bool | None:
    return any(prediction.has_nsfw_contents) if prediction.has_nsfw_contents else None


def _check_stop(ctx: JobContext, task_id: str | None) -> None:
    if ctx.stop.is_set():
        raise JobStopped(_stopped_message(task_id), task_id=task_id)


def _stopped_message(task_id: str | None) -> str:
    if task_id:
        return ("Stopped waiting. The task was already submitted, so it may still finish and be billed; "
                "resume it later by its task id.")
    return "Stopped before anything was submitted; nothing was billed."


def _sleep_until(ctx: JobContext, due: float, task_id: str | None, notice: Bell | None = None) -> None:
    """Sleep until `due` on ctx.clock, waking at once if the visitor presses Stop (or, given a bell, when
    it rings: the task changed)."""
    remaining = due - ctx.clock()
    if notice is not None:
        if remaining > 0:
            notice.wait(remaining, ctx.stop)
    elif remaining > 0 and ctx.stop.wait(remaining):
        raise JobStopped(_stopped_message(task_id), task_id=task_id)
    _check_stop(ctx, task_id)
