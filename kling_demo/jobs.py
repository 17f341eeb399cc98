"""One generation job, start to finish: prepare → upload → submit → poll → download.

`generate()` is the one place that knows the order of steps. It yields a `JobUpdate` at
every step and never sleeps longer than it must: each update says when the next poll is
due (`wait_seconds`), so an async caller can wait without holding a thread, while a plain
`for` loop still works because the generator sleeps off whatever is left.
"""

from __future__ import annotations

import enum
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import media
from .client import Prediction, WaveSpeedClient
from .errors import AlreadyFollowing, JobStopped, KlingDemoError, TaskFailed, TaskTimedOut
from .journal import Journal
from .models import DEFAULT_MODEL, ModelSpec
from .polling import InferenceHistory, next_poll_delay

log = logging.getLogger(__name__)


class Stage(str, enum.Enum):
    PREPARING = "preparing"
    UPLOADING = "uploading"
    SUBMITTED = "submitted"
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
    key_source: str = "server"  # whose key pays: "server" or "visitor" (the key itself is never kept)
    followers: Followers = field(default_factory=Followers)
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def generate(request: JobRequest, ctx: JobContext) -> Iterator[JobUpdate]:
    """Run one job, yielding its progress; raises a `KlingDemoError` after a final FAILED update."""
    started = ctx.clock()
    task_id: str | None = None

    def update(stage: Stage, message: str, **extra: object) -> JobUpdate:
        return JobUpdate(stage, message, ctx.clock() - started, task_id=task_id, **extra)  # type: ignore[arg-type]

    try:
        yield update(Stage.PREPARING, "Checking your inputs…")
        with tempfile.TemporaryDirectory(prefix="kling-prep-") as work:
            spec = ctx.spec
            prompt = media.check_prompt(request.prompt, spec)
            negative = media.check_prompt(request.negative_prompt, spec, field="negative_prompt", required=False)
            guidance = media.check_guidance(request.guidance_scale, spec)
            duration = media.check_duration(request.duration, spec)
            # Both frames pass every check that decodes no pixels before either is decoded.
            media.check_before_decoding(request.image, spec.first_frame, role="first frame")
            if request.end_image:
                media.check_before_decoding(request.end_image, spec.end_frame, role="end frame")
            first = media.prepare_image(request.image, spec.first_frame, role="first frame", work_dir=Path(work))
            end = None
            if request.end_image:
                end = media.prepare_image(request.end_image, spec.end_frame, role="end frame", work_dir=Path(work))
            changes = first.changes + (end.changes if end else ())
            _check_stop(ctx, task_id)

            size_mb = (first.size_bytes + (end.size_bytes if end else 0)) / 1e6
            fixed = (" Fixed: " + "; ".join(changes) + ".") if changes else ""
            yield update(Stage.UPLOADING, f"Uploading {'both frames' if end else 'the first frame'} "
                                          f"({size_mb:.1f} MB)…{fixed}", changes=changes)
            payload: dict[str, object] = {
                "image": ctx.client.upload(first.path, first.mime_type),
                "prompt": prompt,
                "guidance_scale": guidance,
                "duration": duration,
            }
            if negative:
                payload["negative_prompt"] = negative
            if end:
                payload["end_image"] = ctx.client.upload(end.path, end.mime_type)
            _check_stop(ctx, task_id)
            prediction = ctx.client.submit(spec, payload)
            task_id = prediction.task_id
            ctx.followers.claim(task_id)  # before the journal row exists, so recovery never races us
            if ctx.journal is not None:
                first_frame = media.save_preview(first, ctx.videos_dir)
                params = {"prompt": prompt, "negative_prompt": negative, "guidance_scale": guidance,
                          "duration": duration, "end_image": end is not None}
                _remember(ctx, prediction, params, first_frame=str(first_frame))
        yield from _follow(prediction, duration, ctx, started)
    except KlingDemoError as error:
        if task_id and not error.task_id:
            error.task_id = task_id
        yield update(Stage.FAILED, str(error))
        raise


def resume(task_id: str, ctx: JobContext, *, duration: int | None = None) -> Iterator[JobUpdate]:
    """Follow a task submitted earlier (here or elsewhere) to its video; same updates as `generate`."""
    started = ctx.clock()
    try:
        if not ctx.followers.claim(task_id):
            raise AlreadyFollowing("This task is already being followed here; it will appear in your history when "
                                   "it finishes.", task_id=task_id)
        try:
            prediction = ctx.client.result(task_id)
            # A task fetched by id joins the visitor's history; an existing row stays as it is.
            _remember(ctx, prediction, {"prompt": "", "duration": duration, "resumed": True})
        except KlingDemoError:
            ctx.followers.release(task_id)
            raise
        yield from _follow(prediction, duration, ctx, started)
    except KlingDemoError as error:
        error.task_id = error.task_id or task_id
        yield JobUpdate(Stage.FAILED, str(error), ctx.clock() - started, task_id=task_id)
        raise


def _remember(ctx: JobContext, prediction: Prediction, params: dict[str, object], *,
              first_frame: str | None = None) -> None:
    """Write the task's journal row for its owner, if the job keeps one (an existing row is kept)."""
    if ctx.journal is None:
        return
    ctx.journal.record_submission(owner=ctx.owner, task_id=prediction.task_id, model=ctx.spec.model_id,
                                  api_base=ctx.client.base_url, key_source=ctx.key_source,
                                  status=prediction.status, params=params, first_frame=first_frame)


def _follow(prediction: Prediction, duration: int | None, ctx: JobContext, started: float) -> Iterator[JobUpdate]:
    """Poll a claimed task until it ends, then download its video, keeping the journal up to date."""
    task_id = prediction.task_id
    try:
        yield from _poll_and_download(prediction, duration, ctx, started)
    except TaskFailed as failure:
        if ctx.journal is not None:
            ctx.journal.fail(ctx.owner, task_id, failure.message)
        raise
    finally:
        ctx.followers.release(task_id)


def _poll_and_download(prediction: Prediction, duration: int | None, ctx: JobContext,
                       started: float) -> Iterator[JobUpdate]:
    task_id, spec, journal = prediction.task_id, ctx.spec, ctx.journal

    def update(stage: Stage, message: str, **extra: object) -> JobUpdate:
        return JobUpdate(stage, message, ctx.clock() - started, task_id=task_id, **extra)  # type: ignore[arg-type]

    submitted_at = ctx.clock()
    expected = ctx.history.expected(spec.model_id, duration) if duration else None
    hint = f" Renders like this usually take about {format_seconds(expected)}." if expected else ""
    wait = next_poll_delay(0.0, expected)
    next_poll_at = ctx.clock() + wait
    yield update(Stage.SUBMITTED, f"Submitted as task {task_id}. Waiting for WaveSpeed to start…{hint}",
                 wait_seconds=wait)

    while not prediction.is_final:
        _sleep_until(ctx, next_poll_at, task_id)
        running = ctx.clock() - submitted_at
        if running > ctx.deadline_seconds:
            raise TaskTimedOut(
                f"Gave up waiting after {format_seconds(running)} (the limit is "
                f"{format_seconds(ctx.deadline_seconds)}). The task may still finish and be billed; "
                "resume it later by its task id.", task_id=task_id)
        previous_status, prediction = prediction.status, ctx.client.result(task_id)
        if prediction.is_final:
            break  # the journal says "completed" only once the video is safely on disk
        if journal is not None and prediction.status != previous_status:
            journal.set_status(ctx.owner, task_id, prediction.status)
        running = ctx.clock() - submitted_at
        wait = next_poll_delay(running, expected)
        next_poll_at = ctx.clock() + wait
        state = "Your task is waiting in WaveSpeed's queue" if prediction.status == "created" else \
            "WaveSpeed is rendering your video"
        yield update(Stage.PROCESSING, f"{state}… {format_seconds(running)} so far.{hint}",
                     wait_seconds=wait)

    if prediction.status != "completed" or not prediction.outputs:
        reason = prediction.error or f"the task ended with status {prediction.status!r} and no video"
        raise TaskFailed(f"The generation failed: {reason}", task_id=task_id)
    if prediction.inference_ms and duration:
        ctx.history.record(spec.model_id, duration, prediction.inference_ms / 1000.0)
    yield update(Stage.DOWNLOADING, "Finished. Downloading the video…", inference_ms=prediction.inference_ms)
    video_path = ctx.client.download(prediction.outputs[0], ctx.videos_dir, max_bytes=ctx.max_download_bytes)
    if journal is not None:
        journal.complete(ctx.owner, task_id, video_path=str(video_path), inference_ms=prediction.inference_ms)
    yield update(Stage.DONE, _done_message(prediction, ctx.clock() - started), video_path=video_path,
                 inference_ms=prediction.inference_ms, nsfw=_nsfw(prediction))


def _done_message(prediction: Prediction, total: float) -> str:
    parts = [f"Your video is ready after {format_seconds(total)}"]
    if prediction.inference_ms:
        parts.append(f"inference {prediction.inference_ms / 1000:.1f} s")
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


def _sleep_until(ctx: JobContext, due: float, task_id: str | None) -> None:
    """Sleep until `due` on ctx.clock, waking at once if the visitor presses Stop."""
    remaining = due - ctx.clock()
    if remaining > 0 and ctx.stop.wait(remaining):
        raise JobStopped(_stopped_message(task_id), task_id=task_id)
    _check_stop(ctx, task_id)
