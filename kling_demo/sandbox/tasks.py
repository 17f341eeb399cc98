"""Tasks and their renders: a task's status follows from the clock and from its (shared) render."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kling_demo.sandbox.protocol import iso
from kling_demo.sandbox.render import RenderCancelled, RenderedVideo, render_video

log = logging.getLogger(__name__)

STATUSES = ("created", "processing", "completed", "failed", "cancelled", "timeout")
FINAL_STATUSES = ("completed", "failed", "cancelled", "timeout")
CREATED_SHARE = 0.1  # share of inference_seconds a task stays "created" before "processing"
RENDER_WORKERS = 2


@dataclass
class RenderJob:
    """A render shared by every task with the same inputs; `finished_epoch` set when done."""

    future: Future
    finished_epoch: float | None = None


class RenderCache:
    """Renders by content hash on a small thread pool: identical inputs render once (it is deterministic).

    With a `store` folder, finished renders are also kept there and taken from there by any sandbox that
    shares it, across processes and restarts (a file appears there whole, or not at all)."""

    def __init__(self, folder: Path, store: Path | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.renders = 0
        self.render_cache_hits = 0
        self.render_store_hits = 0
        self.stopping = threading.Event()  # tells renders in progress to give up
        self._lock = threading.Lock()
        self._jobs: dict[str, RenderJob] = {}
        self._executor = ThreadPoolExecutor(max_workers=RENDER_WORKERS, thread_name_prefix="sandbox-render")

    def render_for(self, first_frame: bytes, end_frame: bytes | None, duration: int) -> RenderJob:
        """The render of these inputs: shared with identical earlier submissions unless that one failed."""
        key = _content_key(first_frame, end_frame, duration)
        output_path = self.folder / f"{key}.mp4"
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not (job.future.done() and job.future.exception() is not None):
                self.render_cache_hits += 1
                return job
            job = RenderJob(future=Future())
            self._jobs[key] = job
            stored = self._from_store(key, output_path)
            if stored is not None:
                self.render_store_hits += 1
                job.finished_epoch = time.time()
                job.future.set_result(stored)
                return job
            self.renders += 1

        def run() -> RenderedVideo:
            try:
                video = render_video(first_frame, output_path, duration, end_frame, threads=1, cancel=self.stopping)
                self._to_store(key, video)
                return video
            finally:
                job.finished_epoch = time.time()

        inner = self._executor.submit(run)
        inner.add_done_callback(lambda done: _copy_outcome(done, job.future))
        return job

    def _from_store(self, key: str, output_path: Path) -> RenderedVideo | None:
        """The stored render of `key`, linked (or copied) to `output_path`; None when there is none."""
        if self.store is None:
            return None
        try:
            shape = json.loads((self.store / f"{key}.json").read_text())
            _place(self.store / f"{key}.mp4", output_path)
            return RenderedVideo(path=output_path, width=int(shape["width"]), height=int(shape["height"]),
                                 frames=int(shape["frames"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _to_store(self, key: str, video: RenderedVideo) -> None:
        """Keep a finished render for other sandboxes: the video first, then the shape that marks it whole."""
        if self.store is None:
            return
        try:
            self.store.mkdir(parents=True, exist_ok=True)
            _place(video.path, self.store / f"{key}.mp4")
            shape = json.dumps({"width": video.width, "height": video.height, "frames": video.frames})
            partial = self.store / f".{key}.{os.getpid()}.{threading.get_ident()}.json"
            partial.write_text(shape)
            os.replace(partial, self.store / f"{key}.json")
        except OSError as error:
            log.debug("render %s not kept in the store: %s", key, error)

    def close(self) -> None:
        """Ask renders in progress to stop and wait for the workers."""
        self.stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _place(source: Path, target: Path) -> None:
    """`source` at `target` whole: a hard link (a copy across file systems), swapped in atomically."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def _content_key(first_frame: bytes, end_frame: bytes | None, duration: int) -> str:
    digest = hashlib.sha256()
    for part in (first_frame, end_frame or b"", str(duration).encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def _copy_outcome(source: Future, target: Future) -> None:
    if source.cancelled():
        target.set_exception(RuntimeError("render cancelled: sandbox stopping"))
    elif source.exception() is not None:
        if not isinstance(source.exception(), RenderCancelled):
            log.warning("sandbox render failed: %s", source.exception())
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


@dataclass(frozen=True)
class Ending:
    """How a task drawn by the fault dice ends, instead of by its render."""

    status: str  # failed, cancelled or timeout
    error: str


@dataclass
class Task:
    """One submitted prediction; its status follows from its slot, the clock and its render.

    A task waits in 'created' until its key has a free slot (`started_epoch` is set then, by
    `SandboxState`); from there it takes `inference_seconds`, or longer if its render does.
    """

    task_id: str
    model_id: str
    duration: int
    created_epoch: float
    inference_seconds: float
    render: RenderJob | None
    ending: Ending | None = None
    owner: str = ""  # the API key that submitted it: listings, balances and limits are per key
    inputs: dict[str, Any] = field(default_factory=dict)
    price: float = 0.0
    started_epoch: float | None = None  # when it took one of its key's slots
    webhook: str | None = None  # where to POST the final prediction
    origin: str = ""  # the base URL the submitter used: the webhook's URLs point there
    result_polls: int = 0
    settled: bool = False  # final, and its price charged or released
    held: bool = False  # SandboxConfig.hold_renders: does not end until the sandbox is released
    # In the output URL: knowing a task id is not enough to fetch its video.
    output_token: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)

    def state(self, now: float) -> tuple[str, float | None, str]:
        """(status, completed_at_epoch, error) at time `now`."""
        if self.started_epoch is None:
            return "created", None, ""
        due = math.inf if self.held else self.started_epoch + self.inference_seconds
        if self.ending is not None and now >= due:
            return self.ending.status, due, self.ending.error
        if self.render is not None and now >= due and self.render.future.done():
            finished = max(due, self.render.finished_epoch or due)
            error = self.render.future.exception()
            if error is not None:
                return "failed", finished, f"sandbox: render failed: {error}"
            return "completed", finished, ""
        if now < self.started_epoch + CREATED_SHARE * self.inference_seconds:
            return "created", None, ""
        return "processing", None, ""

    def to_data(self, base_url: str, now: float) -> dict[str, Any]:
        """The task as the WaveSpeed API shows it, with URLs on `base_url`."""
        status, completed_at, error = self.state(now)
        done = status == "completed"
        return {
            "id": self.task_id,
            "model": self.model_id,
            "outputs": [f"{base_url}/files/outputs/{self.output_token}/{self.task_id}.mp4"] if done else [],
            "urls": {"get": f"{base_url}/api/v3/predictions/{self.task_id}/result"},
            "has_nsfw_contents": [False] if done else [],
            "status": status,
            "created_at": iso(self.created_epoch),
            "error": error,
            "timings": {"inference": self._inference_ms(completed_at)},
            "input": dict(self.inputs),
        }

    def listing_item(self, base_url: str, now: float) -> dict[str, Any]:
        """The task as an item of `POST /api/v3/predictions`."""
        data = self.to_data(base_url, now)
        return {
            "id": data["id"],
            "model": data["model"],
            "outputs": data["outputs"],
            "status": data["status"],
            "created_at": data["created_at"],
            "executionTime": data["timings"]["inference"],
            "timings": data["timings"],
            "inputs": data["input"],
            "has_nsfw_contents": data["has_nsfw_contents"],
            "error": data["error"],
        }

    def _inference_ms(self, completed_at: float | None) -> int:
        if completed_at is None or self.started_epoch is None:
            return 0
        return int(round((completed_at - self.started_epoch) * 1000))

    def output(self, now: float) -> RenderedVideo | None:
        """The rendered video once the task shows 'completed', else None."""
        if self.render is None or self.state(now)[0] != "completed":
            return None
        return self.render.future.result()
