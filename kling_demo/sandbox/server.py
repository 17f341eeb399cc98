"""A local, WaveSpeed-compatible API that renders a real (non-AI) MP4, with seeded fault injection.

`create_app` builds the FastAPI app; `start_sandbox` serves it with uvicorn on a loopback port in a
daemon thread. Routes, envelopes and statuses follow the WaveSpeed v3 protocol closely enough that
the official `wavespeed` SDK runs against it unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import logging
import mimetypes
import random
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from kling_demo.models import MB, MODELS, ImageLimits, ModelSpec
from kling_demo.sandbox.render import RenderCancelled, RenderedVideo, render_video

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "502", "503", "drop")
CREATED_SHARE = 0.1  # share of inference_seconds a task stays "created" before "processing"
MAX_UPLOAD_BYTES = 200 * MB  # the SDK's own cap for a single upload
RENDER_WORKERS = 2


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves: task duration, seeded fault shares, the accepted key, storage."""

    inference_seconds: float = 6.0
    fault_rate: float = 0.0
    lost_answer_rate: float = 0.0
    task_failure_rate: float = 0.0
    api_key: str | None = None  # None: any non-empty bearer token passes; set: only this one
    seed: int | None = None
    data_dir: Path | None = None  # where uploads/outputs live; None → a temp dir removed on stop
    sync_wait_seconds: float = 30.0  # enable_sync_mode holds the POST at most this long


class ApiError(Exception):
    """An answer in WaveSpeed's error envelope: the HTTP status repeated in `code`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# --- dropped connections ---------------------------------------------------------------------

# Live uvicorn transports keyed by (client host, client port, server host, server port), so a
# route can close its own connection without answering: a real connection-level failure.
_TRANSPORTS: dict[tuple[Any, ...], Any] = {}
_TRANSPORTS_LOCK = threading.Lock()


class DroppableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that registers its transport so the app can drop the connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._drop_key = (*(self.client or ("", 0)), *(self.server or ("", 0)))
        with _TRANSPORTS_LOCK:
            _TRANSPORTS[self._drop_key] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        with _TRANSPORTS_LOCK:
            _TRANSPORTS.pop(getattr(self, "_drop_key", None), None)
        super().connection_lost(exc)


class DroppedConnection(Response):
    """Closes the connection without sending a status line, as a crashed proxy would."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client, server = scope.get("client") or ("", 0), scope.get("server") or ("", 0)
        with _TRANSPORTS_LOCK:
            transport = _TRANSPORTS.get((*client, *server))
        if transport is not None:
            transport.abort()
            for _ in range(3):  # let uvicorn notice the loss so it does not answer 500
                await asyncio.sleep(0)
            return
        # Not served by DroppableH11Protocol: promise a body, then end without it.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024")]})


# --- tasks -----------------------------------------------------------------------------------


@dataclass
class RenderJob:
    """A render shared by every task with the same inputs; `finished_epoch` set when done."""

    future: Future
    finished_epoch: float | None = None


@dataclass
class Task:
    """One submitted prediction; its status is derived from the clock and its render."""

    task_id: str
    model_id: str
    duration: int
    created_epoch: float
    inference_seconds: float
    simulated_failure: bool
    render: RenderJob | None
    result_polls: int = 0

    def state(self, now: float) -> tuple[str, float | None, str]:
        """(status, completed_at_epoch, error) at time `now`."""
        due = self.created_epoch + self.inference_seconds
        if self.simulated_failure and now >= due:
            return "failed", due, "sandbox: simulated failure (task_failure_rate)"
        if self.render is not None and now >= due and self.render.future.done():
            finished = max(due, self.render.finished_epoch or due)
            error = self.render.future.exception()
            if error is not None:
                return "failed", finished, f"sandbox: render failed: {error}"
            return "completed", finished, ""
        if now < self.created_epoch + CREATED_SHARE * self.inference_seconds:
            return "created", None, ""
        return "processing", None, ""

    def to_data(self, base_url: str, now: float) -> dict[str, Any]:
        """The task as the WaveSpeed API shows it, with URLs on `base_url`."""
        status, completed_at, error = self.state(now)
        done = status == "completed"
        return {
            "id": self.task_id,
            "model": self.model_id,
            "outputs": [f"{base_url}/files/outputs/{self.task_id}.mp4"] if done else [],
            "urls": {"get": f"{base_url}/api/v3/predictions/{self.task_id}/result"},
            "has_nsfw_contents": [False] if done else [],
            "status": status,
            "created_at": _iso(self.created_epoch),
            "error": error,
            "timings": {"inference": int(round((completed_at - self.created_epoch) * 1000)) if completed_at else 0},
        }


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Upload:
    """A file slot: created by a ticket (bytes arrive by PUT) or by a binary upload."""

    token: str
    filename: str
    content_type: str
    declared_size: int | None
    path: Path
    stored: bool = False


@dataclass
class Counters:
    submissions: int = 0
    result_polls: int = 0
    uploads: int = 0
    upload_tickets: int = 0
    faults_injected: int = 0
    lost_answers: int = 0
    renders: int = 0
    render_cache_hits: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in FAULT_KINDS})


class SandboxState:
    """Everything the routes share: tasks, uploads, the render cache, seeded dice and counters."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._owns_data_dir = config.data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="kling-sandbox-")) if config.data_dir is None else Path(config.data_dir)
        (self.data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "outputs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        self.uploads: dict[str, Upload] = {}
        self.renders: dict[str, RenderJob] = {}
        self.counters = Counters()
        self.signing_key = secrets.token_bytes(16)
        # Separate seeded streams, so e.g. polling more often does not change which tasks fail.
        seed = config.seed
        self.fault_dice = random.Random(None if seed is None else f"{seed}:faults")
        self.lost_answer_dice = random.Random(None if seed is None else f"{seed}:lost-answers")
        self.task_failure_dice = random.Random(None if seed is None else f"{seed}:task-failures")
        self.executor = ThreadPoolExecutor(max_workers=RENDER_WORKERS, thread_name_prefix="sandbox-render")
        self.closed = False
        self.stopping = threading.Event()  # tells renders in progress to give up

    # faults
    def draw_fault(self, allowed: tuple[str, ...] = FAULT_KINDS) -> str | None:
        """Roll for a fault on one faultable request; count and return its kind, or None."""
        if self.config.fault_rate <= 0:
            return None
        with self.lock:
            if self.fault_dice.random() >= self.config.fault_rate:
                return None
            kind = self.fault_dice.choice(allowed)
            self.counters.faults_injected += 1
            self.counters.faults_by_kind[kind] += 1
        log.info("sandbox: injecting fault %s", kind)
        return kind

    def draw_lost_answer(self) -> bool:
        if self.config.lost_answer_rate <= 0:
            return False
        with self.lock:
            lost = self.lost_answer_dice.random() < self.config.lost_answer_rate
            if lost:
                self.counters.faults_injected += 1
                self.counters.lost_answers += 1
        return lost

    def draw_task_failure(self) -> bool:
        if self.config.task_failure_rate <= 0:
            return False
        with self.lock:
            return self.task_failure_dice.random() < self.config.task_failure_rate

    # renders
    def render_for(self, first_frame: bytes, end_frame: bytes | None, duration: int) -> RenderJob:
        """The render of these inputs: shared with identical earlier submissions (it is deterministic)."""
        digest = hashlib.sha256()
        for part in (first_frame, end_frame or b"", str(duration).encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        key = digest.hexdigest()[:32]
        with self.lock:
            job = self.renders.get(key)
            if job is not None and not (job.future.done() and job.future.exception() is not None):
                self.counters.render_cache_hits += 1
                return job
            self.counters.renders += 1
            output_path = self.data_dir / "outputs" / f"{key}.mp4"
            job = RenderJob(future=Future())
            self.renders[key] = job

        def run() -> RenderedVideo:
            try:
                return render_video(first_frame, output_path, duration, end_frame, threads=1, cancel=self.stopping)
            finally:
                job.finished_epoch = time.time()

        inner = self.executor.submit(run)
        inner.add_done_callback(lambda done: _copy_outcome(done, job.future))
        return job

    def stats(self) -> dict[str, Any]:
        """Counters and tasks per status, as served at GET /sandbox/stats."""
        now = time.time()
        with self.lock:
            per_status = {"created": 0, "processing": 0, "completed": 0, "failed": 0}
            for task in self.tasks.values():
                status = task.state(now)[0]
                per_status[status] = per_status.get(status, 0) + 1
            counters = asdict(self.counters)
        config = {key: value for key, value in asdict(self.config).items() if key not in ("api_key", "data_dir")}
        return {**counters, "tasks": per_status, "config": config}

    def task_rows(self) -> list[dict[str, Any]]:
        """One row per task for benchmarks, oldest first."""
        now = time.time()
        with self.lock:
            tasks = sorted(self.tasks.values(), key=lambda task: task.created_epoch)
            rows = []
            for task in tasks:
                status, completed_at, _ = task.state(now)
                rows.append(
                    {
                        "id": task.task_id,
                        "status": status,
                        "created_at_epoch": task.created_epoch,
                        "completed_at_epoch": completed_at,
                        "duration": task.duration,
                        "result_polls": task.result_polls,
                    }
                )
        return rows

    def close(self) -> None:
        """Stop rendering and remove the temporary data directory; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.stopping.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _copy_outcome(source: Future, target: Future) -> None:
    if source.cancelled():
        target.set_exception(RuntimeError("render cancelled: sandbox stopping"))
    elif source.exception() is not None:
        if not isinstance(source.exception(), RenderCancelled):
            log.warning("sandbox render failed: %s", source.exception())
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


# --- request helpers -------------------------------------------------------------------------


def _envelope(data: Any, status: int = 200, message: str = "success") -> JSONResponse:
    return JSONResponse({"code": status, "message": message, "data": data}, status_code=status)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _fault_response(kind: str) -> Response:
    if kind == "drop":
        return DroppedConnection()
    status = int(kind)
    messages = {429: "Too many requests (sandbox fault injection)", 500: "Internal server error (sandbox fault injection)"}
    message = messages.get(status, f"Upstream unavailable (sandbox fault injection, HTTP {status})")
    response = _envelope(None, status, message)
    if status == 429:
        response.headers["Retry-After"] = "1"
    return response


def _aspect_text(ratio: float) -> str:
    return f"{round(ratio, 2):g}:1" if ratio >= 1 else f"1:{round(1 / ratio, 2):g}"


def _limits_text(limits: ImageLimits) -> str:
    return " or ".join(limits.formats)


def _decode_image_field(name: str, value: Any, state: SandboxState) -> bytes:
    """The bytes behind an image field: a data URI, bare base64, or a file uploaded to this sandbox."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name}: is required (a data URI, base64 string or URL of a file uploaded to this sandbox)")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        return _uploaded_bytes(name, text, state)
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if ";base64" not in header or not payload:
            raise ApiError(400, f"{name}: data URI must be base64-encoded (data:image/png;base64,...)")
        text = payload
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name}: not a URL, data URI or valid base64 string") from None


def _uploaded_bytes(name: str, url: str, state: SandboxState) -> bytes:
    match = re.fullmatch(r"/files/uploads/([0-9a-f]{32})/[^/]+", urlsplit(url).path)
    upload = state.uploads.get(match.group(1)) if match else None
    if upload is None or not upload.stored:
        raise ApiError(
            400,
            f"{name}: URL {url} was not served by this sandbox; the sandbox fetches no outside URLs, "
            "so upload the file first (POST /api/v3/media/uploads) or send a data URI",
        )
    return upload.path.read_bytes()


def _check_image(name: str, image_bytes: bytes, limits: ImageLimits) -> None:
    """Refuse an image that breaks the model's documented limits, naming the field and the limit."""
    if len(image_bytes) > limits.max_bytes:
        raise ApiError(
            400,
            f"{name}: file size {len(image_bytes) / MB:.1f} MB exceeds the maximum {limits.max_bytes / MB:g} MB",
        )
    try:
        with Image.open(io.BytesIO(image_bytes)) as picture:
            image_format = picture.format or "unknown"
            width, height = picture.size
            if image_format in limits.formats:
                picture.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(400, f"{name}: cannot be decoded as an image ({_limits_text(limits)} expected)") from None
    if image_format not in limits.formats:
        raise ApiError(400, f"{name}: format {image_format} is not supported ({_limits_text(limits)} only)")
    if width < limits.min_side or height < limits.min_side:
        raise ApiError(
            400,
            f"{name}: resolution {width}x{height} is below the minimum {limits.min_side}x{limits.min_side} px",
        )
    if not limits.aspect_ok(width, height):
        low = _aspect_text(limits.min_aspect) if limits.min_aspect is not None else "any"
        high = _aspect_text(limits.max_aspect) if limits.max_aspect is not None else "any"
        raise ApiError(
            400,
            f"{name}: aspect ratio {_aspect_text(width / height)} ({width}x{height}) is outside "
            f"the allowed range {low} to {high}",
        )


@dataclass(frozen=True)
class Submission:
    """A validated request body."""

    first_frame: bytes
    end_frame: bytes | None
    duration: int
    sync: bool


def _validate_submission(body: dict[str, Any], spec: ModelSpec, state: SandboxState) -> Submission:
    """Check every field against `spec`; raise ApiError(400) naming the first bad field."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "prompt: is required and must be a non-empty string")
    negative_prompt = body.get("negative_prompt")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ApiError(400, "negative_prompt: must be a string")
    guidance = body.get("guidance_scale", spec.guidance_default)
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not spec.guidance_min <= guidance <= spec.guidance_max
    ):
        raise ApiError(
            400,
            f"guidance_scale: must be a number between {spec.guidance_min:.2f} and {spec.guidance_max:.2f} "
            f"(got {guidance!r})",
        )
    duration = body.get("duration", spec.default_duration)
    if isinstance(duration, float) and duration.is_integer():
        duration = int(duration)
    if isinstance(duration, bool) or not isinstance(duration, int) or duration not in spec.durations:
        allowed = " or ".join(str(seconds) for seconds in spec.durations)
        raise ApiError(400, f"duration: must be {allowed} seconds (got {duration!r})")
    first_frame = _decode_image_field("image", body.get("image"), state)
    _check_image("image", first_frame, spec.first_frame)
    end_frame = None
    if body.get("end_image") not in (None, ""):
        end_frame = _decode_image_field("end_image", body["end_image"], state)
        _check_image("end_image", end_frame, spec.end_frame)
    return Submission(first_frame, end_frame, duration, bool(body.get("enable_sync_mode")))


# --- the app ---------------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> FastAPI:
    """The sandbox as a FastAPI app; its state lives in `app.state.sandbox`."""
    state = SandboxState(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.close()

    app = FastAPI(title="Kling sandbox (WaveSpeed-compatible, no AI)", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.sandbox = state

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        response = _envelope(None, error.status, error.message)
        response.headers.update(error.headers)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _envelope(None, error.status_code, str(error.detail))

    def authorize(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "Unauthorized: missing API key (Authorization: Bearer <key>)")
        if config.api_key is not None and not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise ApiError(401, "Unauthorized: invalid API key")

    def sign(token: str) -> str:
        return hmac.new(state.signing_key, token.encode(), hashlib.sha256).hexdigest()[:32]

    # sandbox introspection: never faults, no auth
    @app.get("/sandbox/stats")
    async def sandbox_stats() -> dict[str, Any]:
        return state.stats()

    @app.get("/sandbox/tasks")
    async def sandbox_tasks() -> list[dict[str, Any]]:
        return state.task_rows()

    # account
    @app.get("/api/v3/balance")
    async def balance(request: Request) -> JSONResponse:
        authorize(request)
        return _envelope({"balance": 100.0})

    # uploads
    @app.post("/api/v3/media/uploads")
    async def upload_ticket(request: Request) -> Response:
        authorize(request)
        if kind := state.draw_fault():
            return _fault_response(kind)
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "body: not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("filename"), str) or not body["filename"].strip():
            raise ApiError(400, "filename: is required")
        size = body.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ApiError(400, "size: must be a non-negative integer (bytes)")
        if size is not None and size > MAX_UPLOAD_BYTES:
            raise ApiError(400, f"size: {size} bytes exceeds the maximum {MAX_UPLOAD_BYTES // MB} MB")
        filename = _safe_filename(body["filename"])
        content_type = body.get("content_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        upload = _new_upload(filename, str(content_type), size)
        with state.lock:
            state.counters.upload_tickets += 1
        file_url = f"{_base_url(request)}/files/uploads/{upload.token}/{filename}"
        return _envelope(
            {
                "upload": {
                    "method": "PUT",
                    "url": f"{file_url}?signature={sign(upload.token)}",
                    "headers": {"Content-Type": upload.content_type},
                },
                "download_url": file_url,
            }
        )

    @app.put("/files/uploads/{token}/{filename}")
    async def upload_put(token: str, filename: str, request: Request) -> Response:
        upload = state.uploads.get(token)
        if upload is None or not hmac.compare_digest(request.query_params.get("signature", ""), sign(token)):
            raise ApiError(403, "upload: signature does not match (ask POST /api/v3/media/uploads for a new URL)")
        if kind := state.draw_fault():
            return _fault_response(kind)
        content = await request.body()
        if upload.declared_size is not None and len(content) != upload.declared_size:
            raise ApiError(400, f"upload: received {len(content)} bytes but the ticket declared {upload.declared_size}")
        if len(content) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"upload: exceeds the maximum {MAX_UPLOAD_BYTES // MB} MB")
        await asyncio.to_thread(upload.path.write_bytes, content)
        with state.lock:
            upload.stored = True
            state.counters.uploads += 1
        return Response(status_code=200)

    @app.post("/api/v3/media/upload/binary")
    async def upload_binary(request: Request) -> Response:
        authorize(request)
        if kind := state.draw_fault():
            return _fault_response(kind)
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise ApiError(400, "file: is required (multipart form field 'file')")
        content = await part.read()
        filename = _safe_filename(part.filename or "upload")
        content_type = part.content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        upload = _new_upload(filename, content_type, len(content))
        await asyncio.to_thread(upload.path.write_bytes, content)
        with state.lock:
            upload.stored = True
            state.counters.uploads += 1
        kind_of_file = content_type.split("/")[0] if content_type.split("/")[0] in ("image", "video", "audio") else "file"
        return _envelope(
            {
                "type": kind_of_file,
                "download_url": f"{_base_url(request)}/files/uploads/{upload.token}/{filename}",
                "filename": filename,
                "size": len(content),
            }
        )

    def _new_upload(filename: str, content_type: str, size: int | None) -> Upload:
        token = uuid.uuid4().hex
        folder = state.data_dir / "uploads" / token
        folder.mkdir(parents=True, exist_ok=True)
        upload = Upload(token, filename, content_type, size, folder / filename)
        with state.lock:
            state.uploads[token] = upload
        return upload

    # files: public, faultable
    @app.get("/files/uploads/{token}/{filename}")
    async def uploaded_file(token: str, filename: str) -> Response:
        if kind := state.draw_fault():
            return _fault_response(kind)
        upload = state.uploads.get(token)
        if upload is None or not upload.stored or unquote(filename) != upload.filename:
            raise ApiError(404, "file not found")
        return FileResponse(upload.path, media_type=upload.content_type)

    @app.get("/files/outputs/{task_id}.mp4")
    async def output_file(task_id: str) -> Response:
        if kind := state.draw_fault():
            return _fault_response(kind)
        task = state.tasks.get(task_id)
        if task is None or task.state(time.time())[0] != "completed" or task.render is None:
            raise ApiError(404, f"output not found for task {task_id}")
        rendered: RenderedVideo = task.render.future.result()
        return FileResponse(rendered.path, media_type="video/mp4", filename=f"{task_id}.mp4", content_disposition_type="inline")

    # predictions
    async def prediction(task_id: str, request: Request) -> Response:
        authorize(request)
        with state.lock:
            state.counters.result_polls += 1
            task = state.tasks.get(task_id)
            if task is not None:
                task.result_polls += 1
        if kind := state.draw_fault():
            return _fault_response(kind)
        if task is None:
            raise ApiError(404, f"task not found: {task_id}")
        return _envelope(task.to_data(_base_url(request), time.time()))

    app.add_api_route("/api/v3/predictions/{task_id}/result", prediction, methods=["GET"])
    app.add_api_route("/api/v3/predictions/{task_id}", prediction, methods=["GET"])

    @app.post("/api/v3/{model_id:path}")
    async def submit(model_id: str, request: Request) -> Response:
        authorize(request)
        spec = MODELS.get(model_id)
        if spec is None:
            raise ApiError(404, f"model not found: {model_id}")
        if state.draw_fault(allowed=("429",)):
            return _fault_response("429")
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "body: not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body: must be a JSON object")
        submission = await asyncio.to_thread(_validate_submission, body, spec, state)
        task = _create_task(spec, submission)
        if state.draw_lost_answer():
            log.info("sandbox: losing the answer to the submission of %s", task.task_id)
            return DroppedConnection()
        if submission.sync:
            return await _hold_until_done(task, request)
        return _envelope(task.to_data(_base_url(request), time.time()))

    def _create_task(spec: ModelSpec, submission: Submission) -> Task:
        failing = state.draw_task_failure()
        render = None if failing else state.render_for(submission.first_frame, submission.end_frame, submission.duration)
        task = Task(
            task_id=uuid.uuid4().hex,
            model_id=spec.model_id,
            duration=submission.duration,
            created_epoch=time.time(),
            inference_seconds=config.inference_seconds,
            simulated_failure=failing,
            render=render,
        )
        with state.lock:
            state.tasks[task.task_id] = task
            state.counters.submissions += 1
        log.info("sandbox: task %s created (%d s video)", task.task_id, task.duration)
        return task

    async def _hold_until_done(task: Task, request: Request) -> JSONResponse:
        deadline = time.monotonic() + config.sync_wait_seconds
        while time.monotonic() < deadline:
            if task.state(time.time())[0] in ("completed", "failed"):
                return _envelope(task.to_data(_base_url(request), time.time()))
            await asyncio.sleep(0.05)
        data = task.to_data(_base_url(request), time.time())
        data["status"] = "processing"  # the task is under way, whichever phase it shows to polls
        data["error"] = (
            f"Sync mode timed out after {config.sync_wait_seconds:g} s; the task continues, "
            f"query {data['urls']['get']}"
        )
        return JSONResponse({"code": 5004, "message": data["error"], "data": data}, status_code=200)

    return app


def _safe_filename(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name).strip("._")
    return cleaned[:120] or "upload"


# --- serving in a thread ---------------------------------------------------------------------


class SandboxHandle:
    """A running sandbox: its base URL, config, live stats, and `stop()`; also a context manager."""

    def __init__(self, base_url: str, config: SandboxConfig, server: uvicorn.Server, thread: threading.Thread, state: SandboxState) -> None:
        self.base_url = base_url
        self.config = config
        self._server = server
        self._thread = thread
        self._state = state
        self._stopped = False

    def stats(self) -> dict[str, Any]:
        """The same JSON as GET /sandbox/stats."""
        return self._state.stats()

    def stop(self) -> None:
        """Shut the server down and release its files; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.warning("sandbox at %s did not stop within 10 s", self.base_url)
        self._state.close()
        log.info("sandbox at %s stopped", self.base_url)

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxHandle(base_url={self.base_url!r})"


def start_sandbox(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> SandboxHandle:
    """Serve a sandbox on `host`:`port` (0 → a free port) in a daemon thread; return once it answers."""
    config = config or SandboxConfig()
    app = create_app(config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    bound_port = listener.getsockname()[1]
    uvicorn_config = uvicorn.Config(
        app,
        http=DroppableH11Protocol,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(uvicorn_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True, name=f"sandbox-{bound_port}")
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            app.state.sandbox.close()
            listener.close()
            raise RuntimeError(f"sandbox failed to start on {host}:{bound_port}")
        time.sleep(0.01)
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    base_url = f"http://{url_host}:{bound_port}"
    log.info("sandbox serving at %s", base_url)
    return SandboxHandle(base_url, config, server, thread, app.state.sandbox)
