"""The shared vocabulary as data: the model's limits, a task's states, a job's request and updates, money.

New Kling variants are new specs, not new code. Everything a front end shows is made from these facts at the
edge (`words`, and the page's views); nothing here is a sentence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MB = 1024 * 1024


class TaskStatus(str, enum.Enum):
    """Every state a task's row can be in: WaveSpeed's statuses, and the states only this app knows."""

    # This app's own, before or around the submission:
    PREPARED = "prepared"  # the intent row, written before the upload: nothing was sent
    UNSENT = "unsent"  # a prepared row a stopped run left: never shown, deleted an hour later
    SUBMITTING = "submitting"  # the intent row once the submit request began: a task may exist, no id yet
    UNKNOWN = "unknown"  # the submit answer never came: a task may exist and be billed
    # WaveSpeed's:
    CREATED = "created"  # accepted; may wait here for a slot of the account
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    DELETED = "deleted"  # the SDK treats it as final too
    # This app's own, after:
    LOST = "lost"  # the server that ran it is gone (a restarted embedded sandbox)

    def __str__(self) -> str:  # its wire text in messages and logs, as the API writes it
        return self.value

    @classmethod
    def parse(cls, raw: object) -> "TaskStatus":
        """A status as WaveSpeed sends it; anything else counts as still running, so it is polled again."""
        try:
            status = cls(str(raw or "created").strip().lower())
        except ValueError:
            return cls.PROCESSING
        return status if status in WIRE_STATUSES else cls.PROCESSING

    @classmethod
    def from_row(cls, raw: object) -> "TaskStatus":
        """A status as the journal keeps it; an unreadable one reads as failed (ended, shown, never followed)."""
        try:
            return cls(str(raw or "").strip().lower())
        except ValueError:
            return cls.FAILED

    @property
    def is_running(self) -> bool:
        """At WaveSpeed and not ended: followed until it ends."""
        return self in (TaskStatus.CREATED, TaskStatus.PROCESSING)

    @property
    def is_final(self) -> bool:
        """Ended, as far as anyone can know (an unknown outcome included)."""
        return self not in IN_FLIGHT_STATUSES

    @property
    def in_flight(self) -> bool:
        """Not ended: running at WaveSpeed, or a submission being prepared or sent (it must not be deleted)."""
        return self in IN_FLIGHT_STATUSES

    @property
    def is_intent(self) -> bool:
        """A row whose submission has no task id (yet, or ever)."""
        return self in INTENT_STATUSES


WIRE_STATUSES = frozenset({TaskStatus.CREATED, TaskStatus.PROCESSING, TaskStatus.COMPLETED, TaskStatus.FAILED,
                           TaskStatus.CANCELLED, TaskStatus.TIMEOUT, TaskStatus.DELETED})
RUNNING_STATUSES = (TaskStatus.CREATED, TaskStatus.PROCESSING)
IN_FLIGHT_STATUSES = (TaskStatus.PREPARED, TaskStatus.SUBMITTING, TaskStatus.CREATED, TaskStatus.PROCESSING)
INTENT_STATUSES = (TaskStatus.PREPARED, TaskStatus.SUBMITTING, TaskStatus.UNSENT)


class Submission(str, enum.Enum):
    """Whether a job's submit request may have created a task: what Stop and every ending say about money."""

    NONE = "none"  # nothing was sent: no task, nothing billed
    MAY_EXIST = "may_exist"  # the submit request left (or may have): a task may exist and be billed
    EXISTS = "exists"  # WaveSpeed answered with a task id


class KeySource(str, enum.Enum):
    """Whose key pays for a task: the server's, or a visitor's own (the key itself is never kept)."""

    SERVER = "server"
    VISITOR = "visitor"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_row(cls, raw: object) -> "KeySource":
        """As the journal keeps it; anything unreadable counts as a visitor's own key (never followed without it)."""
        try:
            return cls(str(raw or ""))
        except ValueError:
            return cls.VISITOR


@dataclass(frozen=True)
class ImageLimits:
    """Documented limits for one image parameter of a model."""

    formats: tuple[str, ...] = ("JPEG", "PNG")  # Pillow format names
    max_bytes: int = 10 * MB
    min_side: int = 300
    # Not an API limit but ours: the largest picture we decode in full. Kling renders 720p–1080p video
    # (a ~1–2 MP frame), so 16 MP is already 8× what the model can use, and it holds a decoded frame to
    # 64 MB (4 bytes a pixel). JPEGs above it are decoded at 1/2–1/8 scale instead; other formats are refused.
    max_pixels: int = 16_000_000
    # Width / height bounds; None means the API documents no bound.
    min_aspect: float | None = None
    max_aspect: float | None = None

    def aspect_ok(self, width: int, height: int) -> bool:
        ratio = width / height
        if self.min_aspect is not None and ratio < self.min_aspect - 1e-9:
            return False
        if self.max_aspect is not None and ratio > self.max_aspect + 1e-9:
            return False
        return True


@dataclass(frozen=True)
class ModelSpec:
    """One WaveSpeed image-to-video model: its id, parameters and their limits."""

    model_id: str
    title: str
    first_frame: ImageLimits
    end_frame: ImageLimits
    durations: tuple[int, ...] = (5, 10)
    default_duration: int = 5
    guidance_min: float = 0.0
    guidance_max: float = 1.0
    guidance_default: float = 0.5
    # The model's own schema on WaveSpeed caps `prompt` at 2,000 characters and `negative_prompt` at 2,500;
    # the API refuses longer ones after the upload, so they are checked before anything is sent.
    prompt_max_chars: int = 2000
    negative_prompt_max_chars: int = 2500
    # Seconds a render usually takes at WaveSpeed, per duration: the progress bar's estimate before this
    # app has timed a render of its own (then the median of its recent renders is used instead).
    typical_render_seconds: tuple[tuple[int, float], ...] = ()

    def typical_seconds(self, duration: int) -> float | None:
        """The documented or guessed typical render time for a video of `duration` seconds, if known."""
        return dict(self.typical_render_seconds).get(duration)

    def max_chars(self, field: str) -> int:
        """The length cap of a text field (`prompt` or `negative_prompt`)."""
        return self.negative_prompt_max_chars if field == "negative_prompt" else self.prompt_max_chars

    @property
    def submit_path(self) -> str:
        return f"/api/v3/{self.model_id}"


KLING_V2_I2V_MASTER = ModelSpec(
    model_id="kwaivgi/kling-v2.0-i2v-master",
    title="Kling 2.0 Master · image-to-video",
    first_frame=ImageLimits(min_aspect=1 / 2.5, max_aspect=2.5),
    end_frame=ImageLimits(),
    # A guess, to be replaced by this app's own timings: WaveSpeed publishes no render times for this model;
    # third-party runs of other Kling versions took 80–150 s for a 5 s clip, and 2.0 Master is slower
    # (see shared/wavespeed-api.md, "Output files"). Longer clips take about twice as long.
    typical_render_seconds=((5, 150.0), (10, 300.0)),
)

DEFAULT_MODEL = KLING_V2_I2V_MASTER
MODELS: dict[str, ModelSpec] = {spec.model_id: spec for spec in (KLING_V2_I2V_MASTER,)}


# --- a job: what was asked, and what it reports ---------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """What the visitor asked for, exactly as submitted (checked by the job before anything is paid for)."""

    image: str | Path | None
    prompt: str | None
    negative_prompt: str | None = ""
    guidance_scale: object = 0.5
    duration: object = 5
    end_image: str | Path | None = None


class Stage(str, enum.Enum):
    """Where a job is; the job alone says so (a front end never makes one up)."""

    PREPARING = "preparing"
    WAITING = "waiting"  # in the app, nothing sent: for a free slot of the key, or after a 429
    UPLOADING = "uploading"
    SEARCHING = "searching"  # the submit answer was lost: looking for the task among the key's recent tasks
    SUBMITTING = "submitting"  # watched from another page: the submit request left, its answer (the task id) not yet
    SUBMITTED = "submitted"
    QUEUED = "queued"  # at WaveSpeed, status `created`: waiting for a slot of the account
    PROCESSING = "processing"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"  # the job ended on an error (`JobUpdate.error`)
    STOPPED = "stopped"  # the visitor stopped it (`JobUpdate.submission` says what may exist)

    @property
    def is_final(self) -> bool:
        return self in (Stage.DONE, Stage.FAILED, Stage.STOPPED)

    @property
    def at_wavespeed(self) -> bool:
        """The task exists and is waiting or rendering there."""
        return self in (Stage.SUBMITTED, Stage.QUEUED, Stage.PROCESSING)


@dataclass(frozen=True)
class Quote:
    """What one run costs, as WaveSpeed's `/model/price` answers it."""

    price: float
    currency: str = "USD"


@dataclass(frozen=True)
class Balance:
    """What a key's account holds, as WaveSpeed's `/balance` answers it."""

    amount: float
    currency: str = "USD"


@dataclass(frozen=True)
class Charge:
    """What WaveSpeed's itemised billing says one task cost its key: the task's deducts less its refunds.

    WaveSpeed deducts when a task is created and settles when it ends: `settled` is True once every record's
    order is "done"; while one is still "pre" the amount is provisional (a refund may follow)."""

    amount: float
    settled: bool
    currency: str = "USD"

    @property
    def refunded(self) -> bool:
        """Nothing is charged net: the task's price came back (WaveSpeed refunds a task that ended without a video)."""
        return self.amount < 0.005


class Payer(str, enum.Enum):
    """Whose key pays for the next video."""

    OWN_KEY = "own"  # the visitor's own key
    SERVER_KEY = "server"  # the app's (a Space's) key
    OWN_KEY_NEEDED = "needed"  # the app asks every visitor for their own key, and none was given


@dataclass(frozen=True)
class PriceView:
    """The price of the next video as the key that would pay for it is quoted, or why there is none."""

    duration: int
    payer: Payer
    quote: Quote | None = None
    key_refused: bool = False  # WaveSpeed rejected the key that would pay
    balance: Balance | None = None  # the paying account's balance, where it may be shown


class KeyState(str, enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # WaveSpeed rejected it
    UNCHECKED = "unchecked"  # WaveSpeed did not answer
    THROTTLED = "throttled"  # too many keys were checked from this browser or address
    MALFORMED = "malformed"  # it could not be a key (spaces, control characters)
    NOT_USED = "not_used"  # the free sandbox checks no key


@dataclass(frozen=True)
class KeyCheck:
    """What WaveSpeed said of a key a visitor typed (never the key itself)."""

    state: KeyState
    balance: Balance | None = None
    retry_in: int | None = None  # throttled: seconds until another check is allowed
    problem: str = ""  # malformed: what is wrong with it


@dataclass(frozen=True)
class BudgetView:
    """How much of the server key's budgets a visitor used in the last 24 hours (None: no such limit)."""

    spent: float
    limit: float | None
    app_spent: float
    app_limit: float | None


class Limit(str, enum.Enum):
    """A limit on what visitors may spend on the server's key."""

    VISITOR = "visitor"  # one spender's budget in money, per rolling 24 hours
    APP = "app"  # the whole app's budget in money, per rolling 24 hours
    RATE = "rate"  # one spender's submissions per minute


@dataclass(frozen=True)
class BudgetRefusal:
    """Why the next video on the server's key is refused, as the ledger stood at `at` (Unix time).

    `used` and `cap` are dollars per 24 hours for a budget; for the rate, `cap` is the submissions allowed a
    minute and `submitted` how many there were in the last one. `frees_at` is when enough has left the window for
    the video to fit (None: never, as the price is above the limit itself or the limit is 0)."""

    limit: Limit
    cap: float
    used: float = 0.0
    price: float | None = None  # the video's price (None: the quote could not be had)
    duration: int | None = None  # the video's length, when known
    frees_at: float | None = None
    submitted: int = 0
    at: float = 0.0
    shorter: bool = False  # a shorter video exists, and costs less

    @property
    def wait(self) -> float | None:
        """Seconds from `at` until the limit frees, or None when it does not."""
        return max(0.0, self.frees_at - self.at) if self.frees_at is not None else None


@dataclass(frozen=True)
class Spend:
    """What an owner's tasks cost so far, in one currency: WaveSpeed's charges where its billing could be read,
    else the quotes at submission (said to be quotes)."""

    currency: str = "USD"
    charged: float = 0.0  # the sum of the charges read from WaveSpeed's billing
    charged_tasks: int = 0
    refunded_tasks: int = 0  # of those, tasks whose whole price was refunded (they ended without a video)
    quoted: float = 0.0  # the sum of the quotes of tasks whose charge is not known here
    quoted_tasks: int = 0

    @property
    def total(self) -> float:
        return self.charged + self.quoted

    @property
    def tasks(self) -> int:
        return self.charged_tasks + self.quoted_tasks


class Step(str, enum.Enum):
    """The steps a visitor sees in order; each stays on screen, ticked, once it is passed."""

    CHECK = "Check"
    WAIT = "Wait for a slot"
    UPLOAD = "Upload"
    RENDER = "Render"
    DOWNLOAD = "Download"


class EstimateSource(str, enum.Enum):
    TYPICAL = "typical"  # the model's documented typical time (or the sandbox's setting)
    HISTORY = "history"  # the median of this app's recent renders of the same model and duration


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: EstimateSource
    slowest: float | None = None  # the longest of this app's recent renders of the same kind, when it has some
    fastest: float | None = None  # the shortest of them


@dataclass(frozen=True)
class ProgressView:
    """How far along a job is at one moment: the bar, the steps, and the time left."""

    fraction: float  # 0..1 of the bar
    stage: Stage
    elapsed: float  # since the job started
    rendering_for: float | None  # since submission, once submitted
    remaining: float | None  # expected seconds left, None when unknown or already late
    late: bool  # running longer than usual
    place: int | None  # place in this app's line while waiting for a slot (1: next)
    steps: tuple[tuple[Step, bool, bool], ...]  # (step, passed, current)
    estimate: Estimate | None

    @property
    def ended(self) -> bool:
        return self.stage.is_final


class Wake(Protocol):
    """What a waiting job may be woken by early (a poller subscription, a slot's line, a stop)."""

    def wait(self, timeout: float) -> bool: ...

    async def wait_async(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class JobUpdate:
    """One moment of a job, as facts; `words` and the page's views turn them into sentences.

    Each field that does not apply is left at its default. `wait_seconds` and `wake` are for the runner: how long
    until the job wants its next step, and what may end that wait early."""

    stage: Stage
    elapsed: float  # since the job started
    task_id: str | None = None
    submission: Submission = Submission.NONE  # whether a task may exist (and be billed) at this moment
    video_path: Path | None = None
    fixes: tuple[str, ...] = ()  # what was fixed in the input without changing the picture
    frames: int = 0  # uploading: 1 or 2
    upload_mb: float = 0.0
    price: Quote | None = None  # WaveSpeed's quote for this task (kept with it)
    charge: Charge | None = None  # what WaveSpeed's billing charged, once known
    place: int | None = None  # waiting for a slot of the key: 1 is next
    slot_limit: int | None = None  # the key's tasks at once, as this app knows it
    rate_limited: bool = False  # waiting after WaveSpeed answered 429 (nothing was created)
    outage: str | None = None  # WaveSpeed is not answering, and how ("connection refused")
    retry_in: float | None = None  # seconds until the next try (an outage, a 429, a lost task's next look)
    running_for: float | None = None  # since the task was submitted
    expected: float | None = None  # renders like this usually take this long here (this app's own median)
    queued_behind: int | None = None  # queued at WaveSpeed while this many other tasks of the key run
    inference_ms: int | None = None
    nsfw: bool | None = None
    already_done: bool = False  # a resume that found the video already in the history
    error: Any = None  # the KlingDemoError a FAILED or STOPPED job ended on
    progress: ProgressView | None = None  # set by the service as the job runs
    wait_seconds: float = 0.0
    wake: Wake | None = field(default=None, compare=False, repr=False)

    @property
    def is_final(self) -> bool:
        return self.stage.is_final


@dataclass(frozen=True)
class StopReport:
    """What Stop found: whether a task may exist at that moment, and its id once known."""

    submission: Submission
    task_id: str | None = None
    ended: bool = False  # the job had already ended: nothing was stopped


# --- the history ----------------------------------------------------------------------------------------------

INTENT_PREFIX = "intent-"  # the row id of a submission that has no task id (yet, or ever)


def is_intent_id(task_id: str) -> bool:
    return task_id.startswith(INTENT_PREFIX)


def positive_int(value: object) -> int | None:
    """`value` as a whole number above zero, or None for anything else (null, text, NaN, a list…)."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number > 0 else None


@dataclass(frozen=True)
class TaskRecord:
    """One submitted task as the journal remembers it (status and key source parsed once, where it is read)."""

    task_id: str
    owner: str
    model: str
    api_base: str
    key_source: KeySource
    params: dict[str, Any]
    first_frame: str | None
    status: TaskStatus
    created_at: float
    updated_at: float
    finished_at: float | None
    inference_ms: int | None
    video_path: str | None
    error: str
    price: float | None = None
    currency: str | None = None
    sent_at: float | None = None
    sent: dict[str, str] = field(default_factory=dict)

    @property
    def is_running(self) -> bool:
        return self.status.is_running

    @property
    def in_flight(self) -> bool:
        """Not ended: running at WaveSpeed, or a submission being prepared or sent."""
        return self.status.in_flight

    @property
    def prompt(self) -> str:
        return str(self.params.get("prompt", ""))

    @property
    def duration(self) -> int | None:
        return positive_int(self.params.get("duration"))

    @property
    def is_intent(self) -> bool:
        """An entry whose submission never got a task id (still submitting, or outcome unknown)."""
        return is_intent_id(self.task_id)

    @property
    def resumed(self) -> bool:
        """Fetched by its id: its settings were made elsewhere and are not known here."""
        return bool(self.params.get("resumed")) and not self.prompt

    @property
    def quote(self) -> "Quote | None":
        return Quote(self.price, self.currency or "USD") if self.price is not None else None


@dataclass(frozen=True)
class ListedTask:
    """One of a key's recent tasks at WaveSpeed, as its listing shows it (for "Your WaveSpeed tasks")."""

    task_id: str
    status: TaskStatus
    created_epoch: float | None
    prompt: str = ""
    in_history: bool = False  # already in this visitor's history here


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
    missing: tuple[str, ...] = ()  # frames the task had that were not kept here ("first frame", "end frame")
    from_last_frame: bool = False  # "continue from the last frame": the first frame is the video's last
