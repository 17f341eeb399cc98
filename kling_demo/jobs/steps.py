"""One job, request to video: check → reserve → prepare → wait for a slot → record → upload → submit → follow →
download.

`generate()` is the one place that knows the order of the steps; `resume()` follows a task submitted earlier.
Both yield `JobUpdate`s (facts, worded at the edge) and never sleep: each update says how long until the next
step and what may end the wait early, and the runner (runner.py) does all the waiting. Every write of the task's
journal row goes through its `TaskRow` (record.py). `Sending` knows at every moment whether the submit request
may have left this process, which is what Stop reports.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Protocol, TypeVar

from ..errors import (
    AlreadyFollowing,
    DownloadFailed,
    InputRejected,
    JobStopped,
    KlingDemoError,
    NothingSubmitted,
    RateLimited,
    ServiceUnavailable,
    SubmissionOutcomeUnknown,
    TaskFailed,
    TaskKept,
    TaskOutOfReach,
    TaskTimedOut,
    TryLater,
)
from ..models import (DEFAULT_MODEL, JobRequest, JobUpdate, KeySource, ModelSpec, Quote, Stage, StopReport, Submission,
                      TaskRecord, TaskStatus)
from ..store import files, videos
from ..store.journal import is_intent_id, positive_int
from ..wavespeed import lost_tasks
from ..wavespeed.client import Prediction, WaveSpeedClient
from ..words import Voice, duration as format_seconds
from . import adoption, images
from .inputs import check_duration, check_guidance, check_prompt, check_task_id
from .notices import Notices
from .poller import Poller, Subscription
from .record import Records, TaskRow
from .runner import Stop
from ..wavespeed.retry import retry_delay
from .schedule import MIN_INTERVAL, InferenceHistory
from .slots import ApiSlots, Ticket

log = logging.getLogger(__name__)
T = TypeVar("T")
SLOT_CHECK_SECONDS = 15.0  # a job waiting for a free WaveSpeed slot is woken when one frees; this often anyway
LOST_LOOKUP_DELAYS = (1.0, 2.0, 4.0)  # after a lost submit answer, the listing is read again after these waits


class Reservation(Protocol):
    """An amount counted against the budgets (service.money): released if nothing was submitted."""

    def release(self) -> None: ...

    def attach(self, task_id: str) -> None: ...


SpendGuard = Callable[[dict[str, Any]], Reservation]  # quote and reserve on the server's key, or BudgetExceeded
PriceGuard = Callable[[dict[str, Any]], "Quote | None"]  # the quote to keep, or InsufficientBalance


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

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._task_ids


class Sending:
    """Whether this job's submission may have left the process: what Stop reports, exact at any moment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.submission = Submission.NONE
        self.task_id: str | None = None

    def begin(self, stop: Stop) -> None:
        """Right before the submit request: refused if Stop came first (then certainly nothing was sent)."""
        with self._lock:
            if stop.is_set():
                raise JobStopped("Stopped before anything was submitted.")
            self.submission = Submission.MAY_EXIST

    def answered(self, task_id: str) -> None:
        with self._lock:
            self.submission, self.task_id = Submission.EXISTS, task_id

    def nothing_created(self) -> None:
        """A 429, or a connection that never opened: the request certainly created nothing."""
        with self._lock:
            if self.submission is Submission.MAY_EXIST:
                self.submission = Submission.NONE

    def stop(self, stop: Stop) -> StopReport:
        """Stop the job and say what may exist at this very moment."""
        with self._lock:
            stop.set()
            return StopReport(self.submission, self.task_id)


@dataclass
class JobContext:
    """What a job needs from its surroundings; `records` makes it durable (its journal rows, under an owner)."""

    client: WaveSpeedClient
    videos_dir: Path
    records: Records | None = None  # None: a job that keeps no journal (a script's, a test's)
    deadline_seconds: float = 30 * 60.0
    max_download_bytes: int = 500 * 1024 * 1024
    spec: ModelSpec = DEFAULT_MODEL
    history: InferenceHistory = field(default_factory=InferenceHistory)
    min_free_bytes: int = files.DEFAULT_MIN_FREE_BYTES  # refuse a job when the data dir has less room
    followers: Followers = field(default_factory=Followers)
    slots: ApiSlots = field(default_factory=lambda: ApiSlots(0))  # tasks at WaveSpeed per key (0: no cap)
    slot_key: str = ""  # `slots.slot_key` of the key that pays
    stop: Stop = field(default_factory=Stop)
    sending: Sending = field(default_factory=Sending)
    clock: Callable[[], float] = time.monotonic
    voice: Voice = field(default_factory=Voice)  # names the backend in the job's error messages
    # With webhooks on (and the server's key paying, whose account secret signs them): where WaveSpeed
    # reports the end of the task, and the registry that hands its notice to this job.
    webhook_url: str | None = None
    notices: Notices | None = None
    spend_guard: SpendGuard | None = None  # on the server's key: budgets and the per-minute rate
    price_guard: PriceGuard | None = None  # live mode: the quote to keep; no submission the balance cannot pay
    poller: Poller | None = None  # the service's one poller; None: the job runs one of its own

    def __post_init__(self) -> None:
        if self.records is None:
            self.records = Records(None, "", self.spec.model_id, self.client.base_url, KeySource.SERVER,
                                   self.videos_dir)

    @property
    def owner(self) -> str:
        return self.records.owner  # type: ignore[union-attr]


class _Facts:
    """What the job knows so far, carried on every update it yields."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.started = ctx.clock()
        self.task_id: str | None = None
        self.fixes: tuple[str, ...] = ()
        self.price: Quote | None = None

    def update(self, stage: Stage, **facts: Any) -> JobUpdate:
        return JobUpdate(stage, self.ctx.clock() - self.started, task_id=self.task_id,
                         submission=self.ctx.sending.submission, fixes=self.fixes, price=self.price, **facts)

    def check_stop(self) -> None:
        if self.ctx.stop.is_set():
            raise JobStopped("Stopped.", task_id=self.task_id, submission=self.ctx.sending.submission)


def generate(request: JobRequest, ctx: JobContext) -> Iterator[JobUpdate]:
    """Run one job, yielding its progress; raises a `KlingDemoError` when it ends without a video."""
    job = _Facts(ctx)
    ticket: Ticket | None = None
    try:
        job.check_stop()  # stopped before it started (a page's Stop can overtake its Generate): nothing happens
        yield job.update(Stage.PREPARING)
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

            row = TaskRow(ctx.records, None)  # type: ignore[arg-type]  # no row yet: withdrawing it is a no-op
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
                job.fixes = first.changes + (end.changes if end else ())
                job.check_stop()
                ticket = ctx.slots.ticket(ctx.slot_key)
                yield from _wait_for_slot(ticket, job)
                # Nothing is uploaded or paid for that the app could not record.
                files.check_room(ctx.videos_dir, ctx.min_free_bytes)
                params = {"prompt": prompt, "negative_prompt": negative, "guidance_scale": guidance,
                          "duration": duration, "end_image": end is not None}
                row = ctx.records.intend(params, first, end)  # type: ignore[union-attr]
                # After the budgets (a refused budget asks nothing more): the price to keep with the task, and
                # no upload or submission the paying key's balance cannot cover.
                job.price = ctx.price_guard(inputs) if ctx.price_guard is not None else None
                row.priced(job.price)
                yield job.update(Stage.UPLOADING, frames=2 if end else 1,
                                 upload_mb=(first.size_bytes + (end.size_bytes if end else 0)) / 1e6)
                payload: dict[str, object] = {"image": ctx.client.upload(first.path, first.mime_type), **inputs}
                if end:
                    payload["end_image"] = ctx.client.upload(end.path, end.mime_type)
                job.check_stop()
                row.sending(payload)  # the row says what is sent, and when, before it is (or nothing is sent)
                sent_at = time.time()
                try:
                    prediction = yield from _submit(payload, job)
                except SubmissionOutcomeUnknown as error:
                    answer_lost = error
                    prediction = yield from _find_lost({"negative_prompt": "", **payload}, job, sent_at)
            except BaseException as error:
                if answer_lost is not None:  # not found, or the search was cut short: the row says so
                    row.outcome_unknown(error.message if isinstance(error, SubmissionOutcomeUnknown)
                                        else answer_lost.message)
                    raise
                row.withdraw()  # refused, unreachable, or stopped: nothing was created
                if reservation is not None:
                    reservation.release()
                raise
            job.task_id = prediction.task_id
            ctx.sending.answered(prediction.task_id)
            if reservation is not None:
                reservation.attach(job.task_id)
            ticket.bind(job.task_id)  # the slot is the task's now, until it ends (whoever follows it)
            ctx.followers.claim(job.task_id)  # before the row has the task id, so recovery never races us
            row.attach(prediction.task_id, prediction.status)
        yield from _follow(prediction, duration, row, job)
    except KlingDemoError as error:
        if job.task_id and not error.task_id:
            error.task_id = job.task_id
        raise
    finally:
        if ticket is not None:
            ticket.release()  # nothing was submitted: the slot goes to the next job (a no-op once bound)


def _wait_for_slot(ticket: Ticket, job: _Facts) -> Iterator[JobUpdate]:
    """Wait in the app, first come first served, until the key has a free slot at WaveSpeed. Each update carries
    the ticket's bell as `wake` (rung when a slot frees or the line moves); Stop ends the wait."""
    ctx = job.ctx
    give_up_at = job.started + ctx.deadline_seconds
    while place := ticket.try_acquire():
        now = ctx.clock()
        if now >= give_up_at:
            raise TryLater(f"Every {ctx.voice.service} slot of this key stayed busy for "
                           f"{format_seconds(now - job.started)}. Nothing was uploaded"
                           f"{ctx.voice.billed(' or billed')}; try again later.")
        wait = max(MIN_INTERVAL, min(SLOT_CHECK_SECONDS, give_up_at - now))
        yield job.update(Stage.WAITING, place=place, slot_limit=ticket.limit, wait_seconds=wait, wake=ticket.bell)
        job.check_stop()


def _submit(payload: dict[str, object], job: _Facts) -> Generator[JobUpdate, None, Prediction]:
    """Submit once; after a 429 or a connection that never opened (both certainly created nothing), wait as
    told and submit again. Any other failure is final: a lost answer may have created a billed task."""
    ctx = job.ctx
    give_up_at, failures = job.started + ctx.deadline_seconds, 0
    while True:
        ctx.sending.begin(ctx.stop)
        try:
            return ctx.client.submit(ctx.spec, payload, attempts=1, webhook=ctx.webhook_url)
        except (RateLimited, NothingSubmitted) as error:
            ctx.sending.nothing_created()
            failures += 1
            wait = retry_delay(failures, error.retry_after)
            if ctx.clock() + wait >= give_up_at:
                raise
            limited = isinstance(error, RateLimited)
            log.info("submit: %s; trying again in %.1f s (try %d)",
                     "rate limited (429)" if limited else f"unreachable ({error.reason})", wait, failures + 1)
            yield job.update(Stage.WAITING, rate_limited=limited, retry_in=wait, wait_seconds=wait,
                             outage=None if limited else (getattr(error, "reason", "") or "no connection"))
            job.check_stop()
        except KlingDemoError as error:
            if not isinstance(error, SubmissionOutcomeUnknown):
                ctx.sending.nothing_created()  # a refusal (400, 401, 402): the API created nothing
            raise


def _find_lost(sent: dict[str, object], job: _Facts, sent_at: float) -> Generator[JobUpdate, None, Prediction]:
    """The submit answer was lost: find the task among the key's recent tasks and return it, looking again after
    short waits (the listing may lag the submission). Raises SubmissionOutcomeUnknown when none, or several, fit."""
    ctx, voice = job.ctx, job.ctx.voice
    yield job.update(Stage.SEARCHING)
    matches = 0
    try:
        for delay in (0.0, *LOST_LOOKUP_DELAYS):
            if delay:
                yield job.update(Stage.SEARCHING, retry_in=delay, wait_seconds=delay)
                job.check_stop()
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
        raise SubmissionOutcomeUnknown(
            "Stopped while looking for the task whose submission answer was lost. It may exist"
            f"{voice.billed(' and be billed')}, so it was not resubmitted; it is looked for in the background and "
            "appears in your history if it is found.") from stopped
    why = (f"{matches} recent tasks of this key match it, so none was picked" if matches > 1
           else "no matching task was found among this key's recent tasks")
    raise SubmissionOutcomeUnknown(
        f"{voice.service_first}'s answer to the submission was lost, and {why}. The task may still exist"
        f"{voice.billed(' and be billed')}, so it was not resubmitted: check your {voice.service} dashboard before "
        "trying again.")


def _known_task(ctx: JobContext) -> Callable[[str], bool]:
    """Whether a task id is in the journal already (any owner's, deleted ones too): such a task is someone's."""
    journal = ctx.records.journal  # type: ignore[union-attr]
    return (lambda task_id: journal.has_task(task_id)) if journal is not None else (lambda task_id: False)


def resume(task_id: str, ctx: JobContext, *, duration: int | None = None, listed: bool = False) -> Iterator[JobUpdate]:
    """Follow a task submitted earlier (here or elsewhere) to its video; the same updates as `generate`. `listed`:
    the task was picked from its key's listing, whose settings and frames its new history row keeps."""
    task_id = check_task_id(task_id)  # refused before it goes into an API path
    job = _Facts(ctx)
    job.task_id = task_id
    ctx.sending.answered(task_id)
    try:
        if not ctx.followers.claim(task_id):
            raise AlreadyFollowing("This task is already being followed here; it will appear in your history when "
                                   "it finishes.", task_id=task_id)
        try:
            if is_intent_id(task_id):
                raise InputRejected(f"This entry never received a task id from {ctx.voice.service}, so there is "
                                    f"nothing to resume. Check your {ctx.voice.service} dashboard for the task.",
                                    task_id=task_id)
            prediction = yield from _patiently(lambda: ctx.client.result(task_id, attempts=1), job, Stage.SUBMITTED,
                                               job.started + ctx.deadline_seconds)
            if not prediction.is_final:
                ctx.slots.adopt(ctx.slot_key, task_id)  # it runs at WaveSpeed: it counts until it ends
            records: Records = ctx.records  # type: ignore[assignment]
            settings, preview = ({}, None)
            if listed and records.journal is not None and not records.existing(task_id).kept:  # a new row
                settings, preview = adoption.listed(ctx.client, ctx.spec, ctx.videos_dir, task_id)
            known = duration or _declared_duration(prediction, ctx.spec) or settings.get("duration")
            # A task fetched by id joins the visitor's history; an existing row stays as it is.
            row = records.fetched(task_id, prediction.status,
                                  {"prompt": "", **settings, "duration": known, "resumed": True}, preview)
            job.price = _kept_price(row)
            if known and not duration:
                row.fill_duration(known)
        except BaseException:  # also a Stop or a closed page while WaveSpeed was not answering
            ctx.followers.release(task_id)
            raise
        with closing(_follow(prediction, known, row, job)) as updates:
            for update in updates:
                if update.stage is Stage.DONE and not known and update.video_path:
                    row.fill_duration(_video_duration(update.video_path, ctx.spec))
                yield update
    except KlingDemoError as error:
        error.task_id = error.task_id or task_id
        raise


def _kept_price(row: TaskRow) -> Quote | None:
    record = row.record
    return Quote(record.price, record.currency or "USD") if record is not None and record.price is not None else None


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
        seconds = videos.video_seconds(video)
    except Exception as error:  # an unreadable file only means the length stays unknown
        log.info("could not read the length of %s: %s", video.name, error)
        return None
    closest = min(spec.durations, key=lambda allowed: abs(allowed - seconds))
    return closest if abs(closest - seconds) <= 1.0 else None


def _follow(prediction: Prediction, duration: int | None, row: TaskRow, job: _Facts) -> Iterator[JobUpdate]:
    """Follow a claimed task through the shared poller until it ends, then download its video."""
    ctx, task_id = job.ctx, prediction.task_id
    own_poller = ctx.poller is None  # a context without a service (tests, scripts): a poller for this job alone
    poller = Poller() if own_poller else ctx.poller
    try:
        yield from _wait_and_download(prediction, duration, row, job, poller)  # type: ignore[arg-type]
    except TaskFailed as failure:
        row.fail(failure.message, failure.status)
        raise
    finally:
        if own_poller:
            poller.close()  # type: ignore[union-attr]
        ctx.followers.release(task_id)


def _wait_and_download(prediction: Prediction, duration: int | None, row: TaskRow, job: _Facts,
                       poller: Poller) -> Iterator[JobUpdate]:
    """Wait for the poller (or a webhook) to see the task end, then download. Each update carries the
    subscription as `wake`, so the runner's wait ends as soon as the task changes."""
    ctx, task_id, spec = job.ctx, prediction.task_id, job.ctx.spec
    submitted_at = ctx.clock()
    deadline_at = submitted_at + ctx.deadline_seconds
    expected = ctx.history.expected(spec.model_id, duration) if duration else None
    with poller.follow(prediction, ctx.client, expected=expected, notices=ctx.notices, on_status=row.running,
                       on_poll=ctx.slots.seen) as task:  # waiting in `created` teaches the slots
        wait = max(MIN_INTERVAL, poller.next_poll_in(task))
        yield job.update(Stage.SUBMITTED, expected=expected, wait_seconds=wait, wake=task)
        while True:
            job.check_stop()
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
                        f"{ctx.voice.service_first} has not answered for {format_seconds(now - state.outage_since)} "
                        f"({state.outage_reason}) and this job's time limit of {format_seconds(ctx.deadline_seconds)} "
                        "is up. " + _not_lost(row), task_id=task_id, reason=state.outage_reason)
                wait = min(max(MIN_INTERVAL, poller.next_poll_in(task)), max(MIN_INTERVAL, deadline_at - now))
                yield job.update(Stage.PROCESSING, outage=state.outage_reason, retry_in=wait, running_for=running,
                                 wait_seconds=wait, wake=task)
                continue
            if running > ctx.deadline_seconds:
                raise TaskTimedOut(
                    f"Gave up waiting after {format_seconds(running)} (the limit is "
                    f"{format_seconds(ctx.deadline_seconds)}). The task may still finish"
                    f"{ctx.voice.billed(' and be billed')}. " + _not_lost(row), task_id=task_id)
            wait = max(MIN_INTERVAL, poller.next_poll_in(task))
            if state.prediction.status is TaskStatus.CREATED:
                yield job.update(Stage.QUEUED, running_for=running, expected=expected, wait_seconds=wait, wake=task,
                                 queued_behind=ctx.slots.others(ctx.slot_key, task_id) or None,
                                 slot_limit=ctx.slots.learned(ctx.slot_key))
            else:
                yield job.update(Stage.PROCESSING, running_for=running, expected=expected, wait_seconds=wait,
                                 wake=task)

    ctx.slots.finish(task_id)  # final at WaveSpeed: the key's slot is free for the next job
    if prediction.status is not TaskStatus.COMPLETED or not prediction.outputs:
        raise _ended_without_video(prediction, ctx.voice)
    if prediction.inference_ms and duration:
        ctx.history.record(spec.model_id, duration, prediction.inference_ms / 1000.0)
    yield job.update(Stage.DOWNLOADING, inference_ms=prediction.inference_ms)
    output_url = prediction.outputs[0]
    video_path = yield from _patiently(
        lambda: ctx.client.download(output_url, ctx.videos_dir, max_bytes=ctx.max_download_bytes, attempts=1,
                                    save=files.partial_file),
        job, Stage.DOWNLOADING, deadline_at)
    video_path = videos.label(video_path, task_id, spec.model_id, row.record)
    row.complete(video_path, prediction.inference_ms)
    yield job.update(Stage.DONE, video_path=video_path, inference_ms=prediction.inference_ms,
                     nsfw=any(prediction.has_nsfw_contents) if prediction.has_nsfw_contents else None)


def _ended_without_video(prediction: Prediction, voice: Voice) -> TaskFailed:
    """The error for a task that ended at WaveSpeed with anything but a video, saying how it ended."""
    status, service = prediction.status, voice.service_first
    detail = f" ({prediction.error})" if prediction.error else ""
    if status is TaskStatus.CANCELLED:
        message = f"{service} cancelled the task{detail}, so there is no video. Try again."
    elif status is TaskStatus.TIMEOUT:
        message = f"{service} timed the task out{detail} before it finished, so there is no video. Try again later."
    elif status is TaskStatus.DELETED:
        message = f"{service} deleted the task (it keeps tasks for 7 days), so its video can no longer be fetched."
    elif status is TaskStatus.COMPLETED:
        status = TaskStatus.FAILED
        message = f"{service} says the task completed but sent no video. Try again."
    else:
        status = TaskStatus.FAILED
        # Not "The generation failed": the page heads it "Failed" already.
        message = (f"{service} could not make this video: {prediction.error}" if prediction.error else
                   f"{service} could not make this video and gave no reason.")
    return TaskFailed(message, task_id=prediction.task_id, status=status)


def _patiently(call: Callable[[], T], job: _Facts, stage: Stage, deadline_at: float) -> Generator[JobUpdate, None, T]:
    """`call()`, retried with backoff while WaveSpeed is unreachable or failing, until `deadline_at`. Each failure
    yields an update saying so, with the wait; used as `result = yield from _patiently(...)`."""
    ctx, task_id = job.ctx, job.task_id
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
                    f"{ctx.voice.service_first} has not answered for {format_seconds(now - outage_began)} ({reason}) "
                    f"and this job's time limit of {format_seconds(ctx.deadline_seconds)} is up. "
                    "Nothing needs to be submitted again: resume it later by its task id.",
                    task_id=task_id, reason=reason) from error
            wait = min(retry_delay(failures, error.retry_after), deadline_at - now)
            log.info("task %s: WaveSpeed is not answering (%s) at the %s stage; try %d in %.1f s", task_id, reason,
                     stage.value, failures + 1, wait)
            yield job.update(stage, outage=reason, retry_in=wait, wait_seconds=wait)
            job.check_stop()


def _not_lost(row: TaskRow) -> str:
    """What becomes of a task this job stops following; never an invitation to pay for it again."""
    if row.kept:
        return ("Nothing needs to be submitted again: the task is still followed in the background and will "
                "appear in your history when it finishes.")
    return "Nothing needs to be submitted again: resume it later by its task id."



# -- a task someone else follows, watched from one more page ----------------------------------------------------

ROW_CHECK_SECONDS = 0.5  # a watched task's row is read again this often while no poll of it rings (and at its end)
FOLLOWER_GRACE_SECONDS = 3.0  # a task nobody here follows for this long is not waited for (a handover takes less)


def watch(record: TaskRecord, ctx: JobContext, *, followed: Callable[[str], bool]) -> Iterator[JobUpdate]:
    """Follow a task that someone else follows here (the job of a page that reloaded or is open in another tab,
    background recovery) to its ending, without claiming it and writing nothing: its progress from the poller's
    watch of it, its ending from its journal row, which its follower writes. `followed(task_id)` says whether
    anyone still follows it; a task nobody follows is not waited for. The same updates as `generate`, timed from
    the task's own start; raises the error the task ended on."""
    job = _Facts(ctx)
    job.started -= max(0.0, time.time() - record.created_at)  # its elapsed time counts from its row, not from now
    job.price = record.quote
    record = yield from _until_answered(record, job)
    if not record.is_intent:
        job.task_id = record.task_id
        ctx.sending.answered(record.task_id)
        record = yield from _until_ended(record, job, followed)
    yield _watched_ending(record, job)


def _until_answered(record: TaskRecord, job: _Facts) -> Generator[JobUpdate, None, TaskRecord]:
    """While the row has no task id, its page prepares or sends the submission; returns the row once it has its
    id (or ended without one). A row that goes away was withdrawn: nothing was sent."""
    ctx = job.ctx
    while record.is_intent and record.in_flight:
        submitting = record.status is TaskStatus.SUBMITTING
        if submitting:
            ctx.sending.submission = Submission.MAY_EXIST
        yield job.update(Stage.SUBMITTING if submitting else Stage.PREPARING, wait_seconds=ROW_CHECK_SECONDS)
        job.check_stop()
        now = ctx.records.current(record)  # type: ignore[union-attr]
        if now is None:
            ctx.sending.nothing_created()
            raise JobStopped("The page that prepared this submission stopped before anything was sent.",
                             submission=Submission.NONE)
        record = now
    return record


def _until_ended(record: TaskRecord, job: _Facts, followed: Callable[[str], bool]
                 ) -> Generator[JobUpdate, None, TaskRecord]:
    """Wait for the task's row to end, saying what the poller sees of it meanwhile; returns the ended row."""
    ctx, task_id = job.ctx, record.task_id
    expected = ctx.history.expected(ctx.spec.model_id, record.duration) if record.duration else None
    submitted_at = ctx.clock() - max(0.0, time.time() - (record.sent_at or record.created_at))
    task: Subscription | None = None
    alone_since: float | None = None
    first = True
    try:
        while record.in_flight:
            if task is None and ctx.poller is not None:
                task = ctx.poller.join(task_id)  # whoever follows it polls it; a handover may leave a moment
            now = ctx.clock()
            alone_since = None if followed(task_id) else (now if alone_since is None else alone_since)
            if alone_since is not None and now - alone_since >= FOLLOWER_GRACE_SECONDS:
                raise TaskKept(_unfollowed(record), task_id=task_id)
            running = now - submitted_at
            if running > ctx.deadline_seconds:
                raise TaskTimedOut(f"Stopped watching after {format_seconds(running)} (the limit is "
                                   f"{format_seconds(ctx.deadline_seconds)}). The task may still finish"
                                   f"{ctx.voice.billed(' and be billed')}. "
                                   + _not_lost(ctx.records.existing(task_id)),  # type: ignore[union-attr]
                                   task_id=task_id)
            yield _watched_update(record, task, job, running, expected, first)
            first = False
            job.check_stop()
            record = ctx.records.current(record) or record  # type: ignore[union-attr]  # unreadable: as it was
    finally:
        if task is not None:
            task.close()
    return record


def _watched_update(record: TaskRecord, task: Subscription | None, job: _Facts, running: float,
                    expected: float | None, first: bool) -> JobUpdate:
    """What the watched task is doing: as the poller last saw it, or else as its row says."""
    ctx = job.ctx
    state = task.state if task is not None else None
    if state is not None and state.error is not None:
        raise state.error
    if state is not None and state.prediction.is_final:  # its follower fetches the video (or records the failure)
        done = state.prediction.status is TaskStatus.COMPLETED
        return job.update(Stage.DOWNLOADING if done else Stage.PROCESSING, running_for=running,
                          inference_ms=state.prediction.inference_ms, wait_seconds=ROW_CHECK_SECONDS)
    wait = ROW_CHECK_SECONDS
    if task is not None:
        wait = max(MIN_INTERVAL, ctx.poller.next_poll_in(task))  # type: ignore[union-attr]
    if state is not None and state.failures:
        return job.update(Stage.PROCESSING, outage=state.outage_reason, retry_in=wait, running_for=running,
                          wait_seconds=wait, wake=task)
    status = state.prediction.status if state is not None else record.status
    stage = Stage.PROCESSING if status is not TaskStatus.CREATED else Stage.SUBMITTED if first else Stage.QUEUED
    return job.update(stage, running_for=running, expected=expected, wait_seconds=wait, wake=task)


def _watched_ending(record: TaskRecord, job: _Facts) -> JobUpdate:
    """The watched task's ending as its row has it: its video, or the error it ended on."""
    video = Path(record.video_path) if record.video_path else None
    if record.status is TaskStatus.COMPLETED and video is not None and video.exists():
        done = job.update(Stage.DONE, video_path=video, inference_ms=record.inference_ms)
        if record.finished_at:  # ready after what it took, even when this page came later
            done = dataclasses.replace(done, elapsed=max(0.0, record.finished_at - record.created_at))
        return done
    if record.status is TaskStatus.UNKNOWN:
        raise SubmissionOutcomeUnknown(record.error or "The answer to the submission was lost: a task may exist.")
    if record.status is TaskStatus.COMPLETED:
        raise DownloadFailed(f"The task finished, but its video is not here: press Resume with task {record.task_id} "
                             "to fetch it.", task_id=job.task_id)
    raise TaskFailed(record.error or "The task ended without a video.", task_id=job.task_id, status=record.status)


def _unfollowed(record: TaskRecord) -> str:
    """Why a watched task is not waited for: nothing here follows it now."""
    resume = f"press Resume with task {record.task_id} to fetch its video"
    if record.key_source is KeySource.VISITOR:
        return (f"This task was paid with your own key, which this app never keeps, so nothing here follows it "
                f"while your key is not entered: enter it and {resume}.")
    return f"Nothing here follows this task right now: {resume}."
