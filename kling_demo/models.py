"""The model's id and parameter limits as data: new Kling variants are new specs, not new code."""

from __future__ import annotations

import enum
from dataclasses import dataclass

MB = 1024 * 1024


class TaskStatus(str, enum.Enum):
    """Every state a task's row can be in: WaveSpeed's statuses, and the states only this app knows."""

    # This app's own, before or around the submission:
    SUBMITTING = "submitting"  # the intent row: the submit request is on its way, no task id yet
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
        return self not in (TaskStatus.CREATED, TaskStatus.PROCESSING, TaskStatus.SUBMITTING)


WIRE_STATUSES = frozenset({TaskStatus.CREATED, TaskStatus.PROCESSING, TaskStatus.COMPLETED, TaskStatus.FAILED,
                           TaskStatus.CANCELLED, TaskStatus.TIMEOUT, TaskStatus.DELETED})
RUNNING_STATUSES = (TaskStatus.CREATED, TaskStatus.PROCESSING)


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
