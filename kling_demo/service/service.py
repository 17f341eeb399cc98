"""The running app, and the only door for front ends: jobs, resumes, the history, money and who may do what.

The page (`web/`) and the command line (`cli.py`) are front ends over one `Service`. They ask it to start a
job, stop one, resume a task, list a visitor's history or greet an arriving visitor; the rules of who may do
what with which key live here, so every route that spends money or reads a visitor's data passes the same checks.
It answers with data (`kling_demo.models`) and its `voice` (`kling_demo.words`), chosen once for its backend.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from ..config import Settings
from ..errors import (AuthenticationFailed, InputRejected, KeyRequired, KlingDemoError, NotYours, TooManyRequests,
                      WebhookRejected)
from ..jobs import steps
from ..jobs.inputs import check_duration, check_guidance
from ..jobs.notices import Notices
from ..jobs.poller import Poller
from ..jobs.progress import estimate
from ..jobs.record import Records
from ..jobs.schedule import InferenceHistory
from ..jobs.slots import ApiSlots, slot_key
from ..jobs.steps import Followers, JobContext
from ..jobs import images
from ..jobs.inputs import check_prompt, check_task_id
from ..models import (DEFAULT_MODEL, Balance, BudgetRefusal, BudgetView, Charge, Estimate, FormFill, JobRequest,
                      JobUpdate, KeyCheck, KeySource, KeyState, ListedTask, ModelSpec, Payer, PriceView, Quote, Spend,
                      Stage, StopReport, Submission, TaskRecord)
from ..store import files, videos
from ..store.journal import Journal
from ..store.ledger import Ledger, Limits
from ..wavespeed.client import Prediction, WaveSpeedClient
from ..wavespeed.connections import Connections
from ..wavespeed.webhooks import Receiver
from ..words import Voice
from .backend import Backend, open_backend
from .money import Budgets, Charges, QuoteCache, price_guard, spend_of
from .recovery import Recovery
from .running import Job
from .visitors import JobSlots, KeyGuesses, Visitor, Visitors, visitor_key

log = logging.getLogger(__name__)
RECENT_TASKS = 20  # tasks shown under "Your WaveSpeed tasks"
# Keys checked against WaveSpeed a minute, per browser and per address: a person pastes a key, maybe fixes it
# once; a script trying keys gets a handful a minute from each address.
KEY_CHECKS_PER_MINUTE = {"owner": 5, "address": 10}
STOPS_REMEMBERED = 1024  # page tokens stopped before their job started, kept so the job never starts


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
        # Webhooks, when the app knows its public URL and the secret: a verified one wakes the task's follower.
        self.notices = Notices()
        self.poller = Poller()  # polls every running task on its schedule; jobs subscribe to their task
        self.webhooks = Receiver(settings.webhook_secret, self._pushed) \
            if settings.webhook_url and settings.webhook_secret else None
        # Tasks at WaveSpeed per key, the server's and each visitor's own: jobs beyond the account's level wait here.
        self.api_slots = ApiSlots(settings.api_concurrency)
        self.quotes = QuoteCache()  # WaveSpeed's price quotes, shared by the page's price line, budgets and jobs
        self.charges = Charges()  # what the server key's tasks were charged, from WaveSpeed's billing
        self.recovery = Recovery(self.journal, self.context, api_base=self.backend.base_url,
                                 sandbox=self.backend.is_sandbox, release_slot=self.api_slots.finish)
        self.background = background
        self.voice = Voice(sandbox=self.backend.is_sandbox, on_space=settings.on_space)
        self.budgets = Budgets(Ledger(self.journal.path), Limits(settings.visitor_budget_usd, settings.daily_budget_usd,
                                                                 settings.submits_per_minute), spec, self.quotes,
                               self.voice)
        self.visitors = Visitors(settings.owner_secret())
        self.key_guesses = KeyGuesses(self.visitors.secret, KEY_CHECKS_PER_MINUTE)  # keys asked about, limited
        self._live: dict[tuple[str, str], Job] = {}  # (owner, page token) → the job that page runs
        self._stopped_early: OrderedDict[tuple[str, str], StopReport] = OrderedDict()
        self._live_lock = threading.Lock()
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
        guard = self.budgets.guard(spender, client, self.backend.api_key) if spender is not None and not api_key \
            else None
        # The sandbox bills nothing: its jobs keep no price and never check a balance.
        priced = None if self.is_sandbox else price_guard(
            self.quotes, client, api_key or self.backend.api_key, self.spec,
            whose="Your" if api_key or operator else "This Space's" if self.settings.on_space else "This app's",
            show_balance=self.settings.show_balance)
        records = Records(self.journal, owner, self.spec.model_id, client.base_url,
                          KeySource.VISITOR if api_key else KeySource.SERVER, self.videos_dir)
        return JobContext(client=client, videos_dir=self.videos_dir, records=records,
                          deadline_seconds=self.settings.deadline_seconds, spend_guard=guard, price_guard=priced,
                          max_download_bytes=self.settings.max_download_bytes, spec=self.spec, history=self.history,
                          min_free_bytes=self.settings.min_free_bytes, followers=self.followers, voice=self.voice,
                          webhook_url=self.settings.webhook_url if pushed else None,
                          notices=self.notices if pushed else None,
                          slots=self.api_slots, slot_key=slot_key(api_key or self.backend.api_key),
                          poller=self.poller)

    def expected(self, duration: object) -> Estimate | None:
        """How long a render of this length should take: this app's recent median, else the model's typical time
        (the sandbox's setting in sandbox mode)."""
        if duration not in self.spec.durations:
            return None
        seconds = int(duration)  # type: ignore[call-overload]
        typical = self.settings.sandbox_inference_seconds if self.is_sandbox else self.spec.typical_seconds(seconds)
        return estimate(typical, self.history.expected(self.spec.model_id, seconds),
                        self.history.spread(self.spec.model_id, seconds))

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

    def generate(self, request: JobRequest, visitor: Visitor, *, token: str = "") -> Job:
        """Start a job for the visitor (not yet run: iterate the returned `Job`). A page names its job with a
        `token`, so that its Stop finds it (`stop`), even a Stop that arrives before the job starts."""
        self._require_key(visitor)
        self._try_key(visitor, visitor.api_key)
        on_close = ExitStack()
        # The cap guards the server's key, per spender (the budgets' visitor, not a browser id anyone can mint);
        # the free sandbox and a visitor's own key have none.
        on_close.enter_context(self.slots.hold(self.spender(visitor), None if visitor.api_key or self.is_sandbox
                                               else self.settings.max_jobs_per_visitor, self.voice.servers_key))
        ctx = self.context(visitor.owner, visitor.api_key, None if visitor.operator else self.spender(visitor),
                           operator=visitor.operator)
        job = Job(steps.generate(request, ctx), ctx, expected=self.expected(request.duration),
                  on_close=on_close.close, hand_over=lambda: self._hand_over(visitor),
                  charge=self._charge_reader(visitor.api_key))
        return self._track(self._vouched_by(job, visitor.owner, visitor.api_key), visitor, token)

    def resume(self, task_id: str, visitor: Visitor, *, duration: int | None = None, token: str = "",
               listed: bool = False) -> Job:
        """Follow a task to its video: one of the visitor's, or with their own key one submitted elsewhere.

        `duration` is the video's length when the caller knows it and the history does not; `listed`: the task was
        picked from the key's listing, whose prompt, settings and frames come into the history with it."""
        record = self.task(visitor, task_id)
        if record is not None and record.video_path and Path(record.video_path).exists():
            return self._already_done(record)
        if record is None and not (visitor.api_key or visitor.operator):
            raise NotYours("This task is not in your history. To fetch a task submitted elsewhere, enter your own "
                           f"{'WaveSpeed ' if not self.is_sandbox else ''}key first.", task_id=task_id)
        if record is not None and record.key_source == KeySource.VISITOR and not visitor.api_key:
            raise KeyRequired("This task was paid with your own key: enter it again to resume it (keys are never "
                              "stored).", task_id=task_id)
        use_key = visitor.api_key if record is None or record.key_source == KeySource.VISITOR else None
        self._try_key(visitor, use_key)
        ctx = self.context(visitor.owner, use_key)
        payer = Visitor(visitor.owner, use_key)
        known = record.duration if record and record.duration else duration
        job = Job(steps.resume(task_id, ctx, duration=known, listed=listed), ctx, expected=self.expected(known),
                  hand_over=lambda: self._hand_over(payer), charge=self._charge_reader(use_key))
        return self._track(self._vouched_by(job, visitor.owner, use_key), visitor, token)

    def stop(self, visitor: Visitor, token: str) -> StopReport:
        """Stop the visitor's job that `token` names, and say what may exist at this moment. A token whose job has
        not started yet is remembered, so that job never starts (nothing is submitted for it)."""
        key = (visitor.owner, token)
        with self._live_lock:
            job = self._live.get(key)
            if job is None:
                report = StopReport(Submission.NONE)
                self._stopped_early[key] = report
                while len(self._stopped_early) > STOPS_REMEMBERED:
                    self._stopped_early.popitem(last=False)
                return report
        return job.stop()

    def _track(self, job: Job, visitor: Visitor, token: str) -> Job:
        """Keep the page's job findable by its token while it runs (and stop it now if its Stop came first)."""
        if not token:
            return job
        key = (visitor.owner, token)
        with self._live_lock:
            early = self._stopped_early.pop(key, None)
            self._live[key] = job
        if early is not None:
            job.stop()
        job.on_closed(lambda: self._untrack(key, job))
        return job

    def _untrack(self, key: tuple[str, str], job: Job) -> None:
        with self._live_lock:
            if self._live.get(key) is job:
                del self._live[key]

    # -- a job seen again: a page that loads while the visitor has one in flight ---------------------------------

    def in_flight(self, visitor: Visitor) -> TaskRecord | None:
        """The visitor's newest task not yet ended at this API (being prepared, sent, or running), or None."""
        return next((record for record in self.tasks(visitor)
                     if record.in_flight and record.api_base == self.backend.base_url), None)

    def watch(self, visitor: Visitor, token: str = "", *, record: TaskRecord | None = None) -> Job | None:
        """Follow from one more page (a reload, a second tab, a return) the visitor's newest task in flight, or
        `record` (one of theirs a page showed a moment ago) as it is now; None when there is none. Whoever runs
        it goes on doing so (a page's job, or background recovery, which takes over a closed page's task); this
        watches it to its video, claiming and writing nothing. Named by `token` like a page's job: its Stop stops
        the watching only (the task goes on and lands in the history, as `voice.stopped` says)."""
        if record is None or record.owner != visitor.owner:
            record = self.in_flight(visitor)
        if record is None:
            return None
        ctx = self.context(visitor.owner)  # its key is never used: the watch asks WaveSpeed nothing
        charge = self._charge_reader(None) if record.key_source is KeySource.SERVER else None
        job = Job(steps.watch(record, ctx, followed=self._followed), ctx, expected=self.expected(record.duration),
                  charge=charge)  # its ending states the cost as a page's own job does
        return self._track(job, visitor, token)

    def _followed(self, task_id: str) -> bool:
        """Whether a job here (a page's, the command line's) or background recovery follows this task now."""
        return task_id in self.followers or self.recovery.following(task_id)

    # -- the visitor's own key's tasks at WaveSpeed ("Your WaveSpeed tasks") --------------------------------

    def recent_tasks(self, visitor: Visitor, limit: int = RECENT_TASKS) -> list[ListedTask]:
        """The recent tasks of this model on the visitor's own key (web and API runs, last 24 h), newest first.

        Only with their own key: the server key's tasks are every visitor's."""
        self._require_own_key(visitor, "list its tasks")
        self._try_key(visitor, visitor.api_key)
        with self._client(visitor.api_key) as client:
            listed = client.predictions(1, limit, model=self.spec.model_id).items
        self.key_guesses.accepted(visitor.owner, visitor.api_key)
        return [ListedTask(task.task_id, task.status, task.created_epoch, str(task.inputs.get("prompt") or "").strip(),
                           in_history=self.task(visitor, task.task_id) is not None) for task in listed]

    def adopt(self, task_id: str, visitor: Visitor, *, token: str = "") -> Job:
        """Bring one of the visitor's own key's tasks into their history (a resume by id, own key required), with
        the prompt, settings and frames its listing shows."""
        self._require_own_key(visitor, "bring its tasks into your history")
        return self.resume(task_id, visitor, token=token, listed=True)

    def _require_own_key(self, visitor: Visitor, what: str) -> None:
        if not visitor.api_key:
            raise KeyRequired(f"Enter your own WaveSpeed key under “Your WaveSpeed key” to {what}; the tasks of "
                              f"{self.voice.servers_key} are not shown.")

    # -- money: what the page and the CLI show (as data; the front ends word it with `voice`) --------------------

    def budget(self, visitor: Visitor) -> BudgetView | None:
        """How much of the server key's budgets the visitor used; None when none applies to them."""
        if visitor.api_key or visitor.operator:
            return None
        return self.budgets.view(self.spender(visitor))

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

    def price(self, visitor: Visitor, duration: object) -> PriceView | None:
        """The price of the next video on the key that would pay for it (None in sandbox mode, or for a duration
        its own check refuses). A visitor's own key is asked only within the key-check limit."""
        if self.is_sandbox:
            return None
        try:
            duration = check_duration(duration, self.spec)
        except KlingDemoError:
            return None
        payer = Payer.OWN_KEY if visitor.api_key else (
            Payer.OWN_KEY_NEEDED if self.settings.require_user_key else Payer.SERVER_KEY)
        if visitor.api_key and self.key_guesses.wait(visitor, visitor.api_key) is not None:
            return PriceView(duration, payer)  # the limit is reached: no quote on a key nobody vouched for
        try:
            quote = self.quote(visitor, duration)
        except AuthenticationFailed:
            if visitor.api_key:
                self.key_guesses.refused(visitor.owner, visitor.api_key)
            return PriceView(duration, payer, key_refused=True)
        except KlingDemoError as error:
            log.info("price: no quote (%s)", type(error).__name__)
            return PriceView(duration, payer)
        balance = None
        if payer is Payer.SERVER_KEY and self.settings.show_balance:
            try:
                balance = self.balance(Visitor(visitor.owner))
            except KlingDemoError as error:
                log.info("price: no balance (%s)", type(error).__name__)
        return PriceView(duration, payer, quote, balance=balance)

    def check_key(self, typed: str | None, visitor: Visitor) -> KeyCheck | None:
        """What WaveSpeed says of a key a visitor typed (never the key itself), with its balance now. Checks are
        limited per owner and per address (KEY_CHECKS_PER_MINUTE), so the page is no oracle for guessing keys; a
        key WaveSpeed already accepted for this owner is no guess, so showing its balance again is not limited."""
        try:
            api_key = visitor_key(typed, None)
        except InputRejected as problem:
            return KeyCheck(KeyState.MALFORMED, problem=problem.message)
        if not api_key:
            return None
        if self.is_sandbox:
            return KeyCheck(KeyState.NOT_USED)
        wait = self.key_guesses.wait(visitor, api_key)
        if wait is not None:
            return KeyCheck(KeyState.THROTTLED, retry_in=wait)
        try:
            held = self.balance(Visitor("", api_key))
        except AuthenticationFailed:
            self.key_guesses.refused(visitor.owner, api_key)
            return KeyCheck(KeyState.REFUSED)
        except KlingDemoError as error:
            log.info("key check: no answer (%s)", type(error).__name__)
            return KeyCheck(KeyState.UNCHECKED)
        self.key_guesses.accepted(visitor.owner, api_key)
        return KeyCheck(KeyState.ACCEPTED, balance=held)

    def _try_key(self, visitor: Visitor, api_key: str | None) -> None:
        """A job, a resume or a listing with the visitor's own key counts as a key check (`key_guesses`), since
        WaveSpeed's answer to it would tell a real key from a guess. Raises `TooManyRequests` past the limit."""
        if not api_key or self.is_sandbox:
            return
        wait = self.key_guesses.wait(visitor, api_key)
        if wait is not None:
            raise TooManyRequests(f"Too many new keys were tried from this browser or address in the last minute; "
                                  f"nothing was sent. Try again in {wait} s.")

    def _vouched_by(self, job: Job, owner: str, api_key: str | None) -> Job:
        """Remember the key as accepted once WaveSpeed took a task from it (the job got a task id)."""
        if api_key and not self.is_sandbox:
            def accepted() -> None:
                if job.last is not None and job.last.task_id and not isinstance(job.error, AuthenticationFailed):
                    self.key_guesses.accepted(owner, api_key)
            job.on_closed(accepted)
        return job

    def refusal(self, visitor: Visitor, duration: object) -> BudgetRefusal | None:
        """What would refuse the visitor's next video of `duration` on the server's key at this moment (a budget
        or the per-minute rate), before anything is clicked; None when it would go, or no limit applies to them
        (their own key, the operator). The job's own reservation still decides."""
        if visitor.api_key or visitor.operator or not self.budgets.limits.any:
            return None
        try:
            length: int | None = check_duration(duration, self.spec)
        except KlingDemoError:
            length = None
        quote = None
        if length is not None and self.budgets.limits.money:
            try:
                quote = self.quote(Visitor(visitor.owner), length)
            except KlingDemoError as error:  # the job refuses without a price; until then only the rate speaks
                log.info("refusal: no quote (%s)", type(error).__name__)
        return self.budgets.refusal(self.spender(visitor), quote, length)

    def running(self, visitor: Visitor) -> bool:
        """Whether a page of this owner runs a job now (its Generate stays as the job left it)."""
        with self._live_lock:
            return any(owner == visitor.owner for owner, _ in self._live) if visitor.owner else False

    def spend(self, visitor: Visitor) -> tuple[Spend, ...]:
        """What the visitor's tasks cost so far, per currency: WaveSpeed's charges where the key that paid can read
        them (the server's), else the quotes at submission; nothing in sandbox mode."""
        if self.is_sandbox:
            return ()
        records = self.journal.costed(visitor.owner)
        return spend_of(records, self.charges_of(records))

    def charge(self, record: TaskRecord) -> Charge | None:
        """What WaveSpeed's billing says the task cost, where this app may read it (a task of the server's key on
        this API), cached; None: its quote stands."""
        return self.charges_of([record]).get(record.task_id)

    def charges_of(self, records: list[TaskRecord]) -> dict[str, Charge]:
        """The charges known for these tasks, by task id (one billing search for those not cached)."""
        if self.is_sandbox:
            return {}
        readable = [record for record in records
                    if record.key_source is KeySource.SERVER and record.api_base == self.backend.base_url
                    and not record.is_intent]
        if not readable:
            return {}
        with self._client(None, quick=True) as client:
            return self.charges.of(client, self.backend.api_key, [record.task_id for record in readable],
                                   ended={record.task_id for record in readable if not record.in_flight})

    def _charge_reader(self, api_key: str | None) -> Callable[[str], Charge | None] | None:
        """What a job's DONE update asks for its task's charge: the server key's billing; with a visitor's own key
        (never kept, so never read again later) nothing, and the quote stands everywhere alike."""
        if api_key or self.is_sandbox:
            return None

        def read(task_id: str) -> Charge | None:
            with self._client(None, quick=True) as client:
                return self.charges.of(client, self.backend.api_key, [task_id], ended=[task_id]).get(task_id)

        return read

    # -- checks a front end can run before anything is paid for --------------------------------------------------

    def check_request(self, request: JobRequest) -> dict[str, str]:
        """Every input's problem ("" when it is fine), by the request's field name, from checks that decode no
        pixels: what the page shows under each input before anything is uploaded or paid for."""
        spec = self.spec
        checks = {
            "image": lambda: _refuse(images.quick_check_image(request.image, spec.first_frame, role="first frame")),
            "prompt": lambda: check_prompt(request.prompt, spec),
            "negative_prompt": lambda: check_prompt(request.negative_prompt, spec, field="negative_prompt",
                                                    required=False),
            "guidance_scale": lambda: check_guidance(request.guidance_scale, spec),
            "duration": lambda: check_duration(request.duration, spec),
            "end_image": lambda: _refuse(images.quick_check_image(request.end_image, spec.end_frame, role="end frame",
                                                                  required=False)),
        }
        problems = {}
        for name, check in checks.items():
            try:
                check()
                problems[name] = ""
            except KlingDemoError as error:
                problems[name] = str(error)
        return problems

    def check_frame(self, path: str | None, *, end: bool = False) -> str:
        """A dropped picture's problem at once ("" when it would do), from its header alone."""
        if not path:
            return ""
        limits, role = (self.spec.end_frame, "end frame") if end else (self.spec.first_frame, "first frame")
        return images.quick_check_image(path, limits, role=role, required=not end) or ""

    @staticmethod
    def check_task_id(task_id: object) -> str:
        return check_task_id(task_id)

    def end_frame(self, record: TaskRecord) -> Path | None:
        """The end frame a task was made with, as kept beside its first frame; None if it had none or it is gone."""
        return videos.kept_frames(record.first_frame)[1] if record.params.get("end_image") else None

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

    def place_video(self, visitor: Visitor, task_id: str | None, video: Path, target: Path | None) -> Path:
        """Move a finished video where its owner wants it (the command line's --out) and have the history point
        there; returns where it is now (where it was, if it could not be moved)."""
        if target is None:
            return video.resolve()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(video), str(target))
        except OSError as error:
            log.warning("could not move the video of task %s (%s)", task_id, error.strerror or type(error).__name__)
            return video.resolve()
        files.tidy(video)  # its own folder, now empty
        if task_id:
            self._records(visitor).existing(task_id).moved(target.resolve())
        return target.resolve()

    def _records(self, visitor: Visitor) -> Records:
        return Records(self.journal, visitor.owner, self.spec.model_id, self.backend.base_url, visitor.key_source,
                       self.videos_dir)

    # -- the visitor's history: reuse a task's settings, continue from its last frame, delete it -------------

    def reuse(self, visitor: Visitor, task_id: str) -> FormFill:
        """The settings and frames of one of the visitor's tasks, to fill the form with."""
        record = self._own(visitor, task_id)
        if record.params.get("resumed") and not record.prompt:
            raise InputRejected("This task was fetched by its id: its settings were made elsewhere and are not "
                                "known here.", task_id=record.task_id)
        first, end = videos.kept_frames(record.first_frame)
        had_end = bool(record.params.get("end_image"))
        missing = tuple(name for name, lost in (("first frame", first is None),
                                                ("end frame", had_end and end is None)) if lost)
        return self._fill(record, first, end if had_end else None, clear_end_frame=not had_end, missing=missing)

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
        return self._fill(record, last, None, clear_end_frame=True, from_last_frame=True)

    def delete(self, visitor: Visitor, task_id: str) -> None:
        """Delete one of the visitor's ended tasks from this app: its journal row, video and frames.

        A running task is refused (it would come back when it finishes). Nothing at WaveSpeed changes."""
        record = self._own(visitor, task_id)
        if record.status.in_flight:
            raise InputRejected("This task is still rendering: delete it once it has finished or failed.",
                                task_id=record.task_id)
        if not self.journal.forget(visitor.owner, record.task_id):
            raise InputRejected("This task could not be deleted now (it may have just started again); try later.",
                                task_id=record.task_id)
        files.remove_files([Path(path) for path in (record.video_path, record.first_frame) if path])
        log.info("deleted task %s from its owner's history", record.task_id)

    def close(self) -> None:
        """Stop background recovery, the poller and the embedded sandbox, if one was started."""
        self.recovery.close()
        self.poller.close()
        self.connections.close()
        self.backend.close()

    # -- rules ------------------------------------------------------------------------------------------------

    def _require_key(self, visitor: Visitor) -> None:
        if self.settings.require_user_key and not visitor.api_key:
            raise KeyRequired(f"{'This Space' if self.settings.on_space else 'This app'} asks every visitor to bring "
                              "their own WaveSpeed key: enter it under “Your WaveSpeed key”. It is used for your "
                              "requests only and never stored.")

    def _hand_over(self, visitor: Visitor) -> None:
        if self.background:
            self.recovery.resume_running(visitor.owner, visitor.api_key)

    def receive_webhook(self, headers: Any, body: bytes) -> dict[str, Any]:
        """A webhook as the route received it: verified, then acted on; raises `WebhookRejected` (nothing changed)."""
        if self.webhooks is None:
            raise WebhookRejected("This app takes no webhooks (no WAVESPEED_WEBHOOK_SECRET).")
        return self.webhooks.receive(headers, body)

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
              missing: tuple[str, ...] = (), from_last_frame: bool = False) -> FormFill:
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
                        clear_end_frame, missing, from_last_frame)

    def _already_done(self, record: TaskRecord) -> Job:
        done = JobUpdate(Stage.DONE, 0.0, task_id=record.task_id, submission=Submission.EXISTS,
                         video_path=Path(record.video_path or ""), already_done=True)
        return Job(iter((done,)), self.context(record.owner), charge=lambda _: self.charge(record))


def _refuse(problem: str | None) -> None:
    if problem:
        raise InputRejected(problem)


def read_history(settings: Settings, owner: str, limit: int = 50) -> list[TaskRecord]:
    """An owner's tasks in the data dir's journal, newest first, without starting a service (no backend, no
    network): what the command line's `history` lists."""
    return Journal(settings.data_dir / "journal.sqlite3").for_owner(owner, limit=limit)
