"""The sandbox's FastAPI app: small routes over one server's `SandboxState`.

Routes and envelopes follow the WaveSpeed v3 protocol closely enough that the official
`wavespeed` SDK runs against it unchanged. `/sandbox/*` is the sandbox's own introspection.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kling_demo.models import MB, MODELS
from kling_demo.sandbox.billing import parse_billing_search
from kling_demo.sandbox.config import SandboxConfig
from kling_demo.sandbox.faults import CONNECTIONS_STATE_KEY, DroppedConnection, fault_response
from kling_demo.sandbox.listing import parse_listing
from kling_demo.sandbox.protocol import ApiError, base_url, bearer_token, envelope, error_response, json_body, json_object
from kling_demo.sandbox.state import SandboxState
from kling_demo.sandbox.tasks import FINAL_STATUSES, Task
from kling_demo.sandbox.uploads import MAX_UPLOAD_BYTES, safe_filename
from kling_demo.sandbox.validation import validate_submission
from kling_demo.sandbox.webhooks import TICK_SECONDS, checked_webhook_url

log = logging.getLogger(__name__)


def create_app(config: SandboxConfig) -> FastAPI:
    """The sandbox as a FastAPI app; its state lives in `app.state.sandbox`."""
    state = SandboxState(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        async with httpx.AsyncClient(trust_env=False) as client:  # webhooks go direct, never via a proxy
            ticker = asyncio.create_task(_tick(state, client))
            try:
                yield {CONNECTIONS_STATE_KEY: state.connections}  # lets DroppableH11Protocol find this server's table
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
                await state.webhooks.close()
        state.close()

    app = FastAPI(title="Kling sandbox (WaveSpeed-compatible, no AI)", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.sandbox = state
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for path, route, methods in ROUTES:
        app.add_api_route(path, route, methods=methods)
    return app


async def _tick(state: SandboxState, client: httpx.AsyncClient) -> None:
    """Keep tasks moving without being watched: settle ended ones (charges, slots) and send their webhooks."""
    while True:
        try:
            for delivery in state.take_deliveries():
                state.webhooks.send(delivery, client)
        except Exception:  # noqa: BLE001 - one bad tick must not stop every later webhook
            log.exception("sandbox: background tick failed")
        await asyncio.sleep(TICK_SECONDS)


async def _api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(error)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return envelope(None, error.status_code, str(error.detail))


def _state(request: Request) -> SandboxState:
    return request.app.state.sandbox


def _authorized(request: Request) -> SandboxState:
    """This server's state, once the request's API key passed."""
    return _account(request)[0]


def _account(request: Request) -> tuple[SandboxState, str]:
    """This server's state and the request's API key, which names the account (401 if it does not pass)."""
    state = _state(request)
    return state, bearer_token(request, state.config.api_key)


# --- sandbox introspection: never faults, no auth --------------------------------------------


async def sandbox_stats(request: Request) -> dict[str, Any]:
    return _state(request).stats()


async def sandbox_tasks(request: Request) -> list[dict[str, Any]]:
    return _state(request).task_rows()


async def sandbox_release(request: Request) -> dict[str, Any]:
    """Let tasks held by `--hold-renders` end (tests)."""
    return {"released": _state(request).release()}


async def sandbox_release_submissions(request: Request) -> dict[str, Any]:
    """Let submit requests held by `--hold-submissions` through (tests)."""
    return {"released": _state(request).release_submissions()}


# --- account ---------------------------------------------------------------------------------


async def balance(request: Request) -> Response:
    """The key's balance in USD; a bad key fails here first, before anything is paid for."""
    state, owner = _account(request)
    if kind := state.faults.draw_account():
        return fault_response(kind)
    return envelope({"balance": state.balance(owner)})


async def price(request: Request) -> Response:
    """A free quote: `{model_id, inputs}` → `{price, discounted_price, discount_rate, currency}`; every call with a
    key that passes counts in `price_quotes`."""
    state = _authorized(request)
    state.count_price_quote()
    if kind := state.faults.draw_account():
        return fault_response(kind)
    quote = state.accounts.quote_request(await json_object(request))
    return envelope(quote.to_data())


async def predictions(request: Request) -> Response:
    """The key's own tasks of the last 24 h (at most 7 days), newest first, a page at a time."""
    state, owner = _account(request)
    if kind := state.faults.draw_account():
        return fault_response(kind)
    query = parse_listing(await json_object(request), time.time())
    return envelope(state.listing(owner, query, base_url(request)))


async def billings(request: Request) -> Response:
    """The key's own billing records (a deduct per task, a refund per task that ended without a video), a page
    at a time; every call with a key that passes counts in `billing_searches`."""
    state, owner = _account(request)
    state.count_billing_search()
    if kind := state.faults.draw_account():
        return fault_response(kind)
    query = parse_billing_search(await json_object(request))
    return envelope(state.billing(owner, query))


async def webhook_secret(request: Request) -> JSONResponse:
    """The secret that signs this account's webhooks."""
    state = _authorized(request)
    return envelope({"secret": state.webhooks.secret})


# --- uploads ---------------------------------------------------------------------------------


async def upload_ticket(request: Request) -> Response:
    """Step 1 of the SDK's upload: a signed PUT URL and the URL the file will be served at."""
    state = _authorized(request)
    if kind := state.faults.draw():
        return fault_response(kind)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("filename"), str) or not body["filename"].strip():
        raise ApiError(400, "filename: is required")
    size = body.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ApiError(400, "size: must be a non-negative integer (bytes)")
    if size is not None and size > MAX_UPLOAD_BYTES:
        raise ApiError(400, f"size: {size} bytes exceeds the maximum {MAX_UPLOAD_BYTES // MB} MB")
    filename = safe_filename(body["filename"])
    content_type = body.get("content_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    upload = state.uploads.new(filename, str(content_type), size, ticket=True)
    file_url = base_url(request) + upload.url_path()
    return envelope(
        {
            "upload": {
                "method": "PUT",
                "url": f"{file_url}?signature={state.uploads.sign(upload.token)}",
                "headers": {"Content-Type": upload.content_type},
            },
            "download_url": file_url,
        }
    )


async def upload_put(token: str, filename: str, request: Request) -> Response:
    """Step 2: the bytes, to the signed URL from the ticket."""
    state = _state(request)
    upload = state.uploads.get(token)
    if upload is None or not state.uploads.signature_ok(token, request.query_params.get("signature", "")):
        raise ApiError(403, "upload: signature does not match (ask POST /api/v3/media/uploads for a new URL)")
    if kind := state.faults.draw():
        return fault_response(kind)
    content = await request.body()
    if upload.declared_size is not None and len(content) != upload.declared_size:
        raise ApiError(400, f"upload: received {len(content)} bytes but the ticket declared {upload.declared_size}")
    if len(content) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"upload: exceeds the maximum {MAX_UPLOAD_BYTES // MB} MB")
    await asyncio.to_thread(upload.path.write_bytes, content)
    state.uploads.mark_stored(upload)
    return Response(status_code=200)


async def upload_binary(request: Request) -> Response:
    """The older one-shot upload: a multipart field `file`."""
    state = _authorized(request)
    if kind := state.faults.draw():
        return fault_response(kind)
    form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
    part = form.get("file")
    if part is None or isinstance(part, str):
        raise ApiError(400, "file: is required (multipart form field 'file')")
    content = await part.read()
    filename = safe_filename(part.filename or "upload")
    content_type = part.content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    upload = state.uploads.new(filename, content_type, len(content))
    await asyncio.to_thread(upload.path.write_bytes, content)
    state.uploads.mark_stored(upload)
    major = content_type.split("/")[0]
    return envelope(
        {
            "type": major if major in ("image", "video", "audio") else "file",
            "download_url": base_url(request) + upload.url_path(),
            "filename": filename,
            "size": len(content),
        }
    )


# --- files: public, faultable ----------------------------------------------------------------


async def uploaded_file(token: str, filename: str, request: Request) -> Response:
    state = _state(request)
    if kind := state.faults.draw():
        return fault_response(kind)
    upload = state.uploads.get(token)
    if upload is None or not upload.stored or unquote(filename) != upload.filename:
        raise ApiError(404, "file not found")
    return FileResponse(upload.path, media_type=upload.content_type)


async def output_file(token: str, task_id: str, request: Request) -> Response:
    """A finished video; its URL's random token stands in for the signed CDN URLs of the real API."""
    state = _state(request)
    if kind := state.faults.draw():
        return fault_response(kind)
    rendered = state.output(task_id, token)
    if rendered is None:
        raise ApiError(404, f"output not found for task {task_id}")
    return FileResponse(rendered.path, media_type="video/mp4", filename=f"{task_id}.mp4", content_disposition_type="inline")


# --- predictions -----------------------------------------------------------------------------


async def prediction(task_id: str, request: Request) -> Response:
    """A task's current state; every call counts as a result poll, even of an unknown id."""
    state, owner = _account(request)
    task = state.poll(task_id, owner)  # another key's task is "not found", as an unknown one
    if kind := state.faults.draw():
        return fault_response(kind)
    if task is None:
        raise ApiError(404, f"task not found: {task_id}")
    return envelope(state.data(task, base_url(request)))


async def submit(model_id: str, request: Request) -> Response:
    """Create a task; under faults only a 429 (which creates nothing) or a lost answer (which does)."""
    state, owner = _account(request)
    spec = MODELS.get(model_id)
    if spec is None:
        raise ApiError(404, f"model not found: {model_id}")
    if state.faults.draw(allowed=("429",)):
        return fault_response("429")
    body = await json_object(request)
    submission = await asyncio.to_thread(validate_submission, body, spec, state.uploads)
    webhook = checked_webhook_url(request.query_params.get("webhook"))
    await _held(state)
    task = state.create_task(owner, spec, submission, webhook=webhook, origin=base_url(request))
    if state.faults.lose_answer():
        log.info("sandbox: losing the answer to the submission of %s", task.task_id)
        return DroppedConnection()
    if submission.sync:
        return await _hold_until_done(task, request)
    return envelope(state.data(task, base_url(request)))


async def _held(state: SandboxState) -> None:
    """`--hold-submissions`: the request waits, its task not yet created, until the submissions are released."""
    if not state.holding_submissions:
        return
    with state.lock:
        state.submissions_held += 1
    try:
        while state.holding_submissions:
            await asyncio.sleep(0.02)
    finally:
        with state.lock:
            state.submissions_held -= 1


async def _hold_until_done(task: Task, request: Request) -> JSONResponse:
    """enable_sync_mode: answer once the task ends, or with code 5004 when the wait runs out."""
    state = _state(request)
    wait_seconds = state.config.sync_wait_seconds
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        data = state.data(task, base_url(request))
        if data["status"] in FINAL_STATUSES:
            return envelope(data)
        await asyncio.sleep(0.05)
    data = state.data(task, base_url(request))
    data["status"] = "processing"  # the task is under way, whichever phase it shows to polls
    data["error"] = f"Sync mode timed out after {wait_seconds:g} s; the task continues, query {data['urls']['get']}"
    return JSONResponse({"code": 5004, "message": data["error"], "data": data}, status_code=200)


# Order matters: the submit route's `{model_id:path}` would swallow the fixed /api/v3 paths above it.
ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/sandbox/stats", sandbox_stats, ["GET"]),
    ("/sandbox/tasks", sandbox_tasks, ["GET"]),
    ("/sandbox/release", sandbox_release, ["POST"]),
    ("/sandbox/release-submissions", sandbox_release_submissions, ["POST"]),
    ("/api/v3/balance", balance, ["GET"]),
    ("/api/v3/model/price", price, ["POST"]),
    ("/api/v3/predictions", predictions, ["POST"]),
    ("/api/v3/billings/search", billings, ["POST"]),
    ("/api/v3/webhook/secret", webhook_secret, ["GET"]),
    ("/api/v3/media/uploads", upload_ticket, ["POST"]),
    ("/files/uploads/{token}/{filename}", upload_put, ["PUT"]),
    ("/api/v3/media/upload/binary", upload_binary, ["POST"]),
    ("/files/uploads/{token}/{filename}", uploaded_file, ["GET"]),
    ("/files/outputs/{token}/{task_id}.mp4", output_file, ["GET"]),
    ("/api/v3/predictions/{task_id}/result", prediction, ["GET"]),
    ("/api/v3/predictions/{task_id}", prediction, ["GET"]),
    ("/api/v3/{model_id:path}", submit, ["POST"]),
]
