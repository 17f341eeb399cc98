"""What programs call: `/generate` and `/resume` (gradio_client, MCP tools) and WaveSpeed's webhook route.

The API's two handlers stream `(status, task_id, video)`; a job that ends without a video raises `gr.Error` with
its sentence (API callers keep their precise words: HTTP codes and the like). While a task waits or renders, an
update that only moves the running time on is sent at most every `API_TICK_SECONDS`: each costs Gradio a
postprocess and an SSE message, and a program has no bar to move.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Any, AsyncIterator, Callable, Iterator

import anyio
import gradio as gr
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..config import WEBHOOK_PATH
from ..errors import KlingDemoError, WebhookRejected
from ..models import DEFAULT_MODEL, JobRequest, JobUpdate, Stage
from ..service.running import Job
from ..service.service import Service
from ..service.visitors import Caller
from ..words import Voice
from .views import status_markdown, without_paths

log = logging.getLogger(__name__)

SPEC = DEFAULT_MODEL
API_TICK_SECONDS = 10.0  # how often an API caller's running time is refreshed while nothing else changes
MAX_WEBHOOK_BYTES = 1024 * 1024  # a prediction is a few kB; anything bigger is not WaveSpeed's
REFUSAL_LOG_INTERVAL_SECONDS = 60.0
Outputs = tuple[str, str, "str | None"]


def shown_error(error: KlingDemoError, voice: Voice | None = None) -> gr.Error:
    """The error as the caller sees it (in `voice`'s words when given, e.g. a visitor's): paths cut, shown as
    text (the toast renders its message as HTML and the sentence may quote the API), and no traceback printed (an
    expected ending, not a bug; Gradio's printed tracebacks bypass the log's masking)."""
    text = voice.error_text(error) if voice is not None else str(error)
    return gr.Error(html.escape(without_paths(text), quote=False), duration=None, print_exception=False)


def caller_of(request: gr.Request | None, owner_token: str | None = None, typed_key: str | None = None,
              from_page: bool = False, profile: gr.OAuthProfile | None = None) -> Caller:
    """What a Gradio request says of who sent it; `Service.visitors` decides who that is."""
    return Caller(owner_token=owner_token or None, typed_key=typed_key,
                  headers=request.headers if request is not None else None,
                  peer=request.client.host if request is not None and request.client is not None else None,
                  from_page=bool(from_page), hf_username=profile.username if profile else None)


class Api:
    """`/generate` and `/resume`: the same work as the page, for programs."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.voice = dataclasses.replace(service.voice, for_visitors=False)  # programs keep the precise words

    async def generate(self, image: str | None, prompt: str, negative_prompt: str | None = None,
                       guidance_scale: float = SPEC.guidance_default, duration: int = SPEC.default_duration,
                       end_image: str | None = None, owner_id: str | None = None, typed_key: str | None = None,
                       from_page: bool = False, request: gr.Request = None,  # type: ignore[assignment]
                       profile: gr.OAuthProfile | None = None) -> AsyncIterator[Outputs]:
        """Turn one still image into a 5 or 10 second video with Kling 2.0 Master (WaveSpeedAI).

        Args:
            image: The first frame of the video: a JPEG or PNG at least 300×300 px, aspect ratio between 1:2.5 and 2.5:1.
            prompt: What should happen in the video.
            negative_prompt: What the video should avoid (optional).
            guidance_scale: How closely to follow the prompt, 0 to 1 (default 0.5). Kling has no seed.
            duration: The length of the video in whole seconds, the integer 5 or 10 (default 5).
            end_image: An optional last frame of the video (JPEG or PNG, at least 300×300 px).
        Returns:
            The status text, the task id, and the finished MP4.
        """
        with plain_errors():
            job_request = JobRequest(image=image, prompt=prompt, negative_prompt=negative_prompt,
                                     guidance_scale=guidance_scale, duration=duration, end_image=end_image)
            visitor = self.service.visitors.who(caller_of(request, owner_id, typed_key, from_page, profile))
            async for outputs in self.stream(self.service.generate(job_request, visitor)):
                yield outputs

    async def resume(self, task_id: str, owner_id: str | None = None, typed_key: str | None = None,
                     from_page: bool = False,
                     request: gr.Request = None) -> AsyncIterator[Outputs]:  # type: ignore[assignment]
        """Fetch a task by its id into your history: one of yours, or, with your own key, one submitted elsewhere.

        Args:
            task_id: The WaveSpeed task id, as shown by /generate or in your history.
        Returns:
            The status text, the task id, and the finished MP4.
        """
        with plain_errors():
            task_id = self.service.check_task_id(task_id)
            visitor = self.service.visitors.who(caller_of(request, owner_id, typed_key, from_page))
            async for outputs in self.stream(self.service.resume(task_id, visitor)):
                yield outputs

    def validate(self, image: str | None, prompt: str | None, negative_prompt: str | None, guidance_scale: float,
                 duration: int, end_image: str | None, *rest: Any) -> list[dict[str, Any]]:
        """Instant checks, before anything is uploaded or paid for: a refusal shows under its input. `rest` are the
        inputs that are not the visitor's to fix (owner id, typed key, from page, the page's job name)."""
        problems = self.service.check_request(JobRequest(image, prompt, negative_prompt, guidance_scale, duration,
                                                         end_image))
        return [gr.validate(not problem, problem) for problem in problems.values()] + [gr.validate(True, "")] * len(rest)

    async def stream(self, job: Job) -> AsyncIterator[Outputs]:
        """A job's updates as (status, task id, video), thinned; an ending without a video raises gr.Error."""
        sent: JobUpdate | None = None
        try:
            async for update in job.updates_async(anyio.to_thread.run_sync):
                if update.stage in (Stage.FAILED, Stage.STOPPED):
                    continue  # raised by the job right after this update
                if not worth_sending(sent, update):
                    continue
                sent = update
                yield (status_markdown(update, self.voice), update.task_id or "",
                       str(update.video_path or "") or None)
        except KlingDemoError as error:
            raise shown_error(error) from error
        finally:
            job.close()


UNEXPECTED = ("Something went wrong on the server (reference {reference}); nothing more was submitted. If a task id "
              "is shown, your task is still followed.")


@contextmanager
def plain_errors(voice: Voice | None = None) -> Iterator[None]:
    """Whatever fails reaches the caller as a plain sentence: ours as they are (paths cut, as text; in `voice`'s
    words when given), anything else as a reference to the server log, which has the details. Also a decorator
    (of plain functions)."""
    try:
        yield
    except gr.Error as error:  # ours, made by shown_error
        error.message = without_paths(str(error.message))
        raise
    except KlingDemoError as error:
        raise shown_error(error, voice) from error
    except Exception:
        reference = secrets.token_hex(3)
        log.exception("unexpected error, reference %s", reference)
        raise gr.Error(UNEXPECTED.format(reference=reference), duration=None, print_exception=False) from None


def only_time_moved(sent: JobUpdate, update: JobUpdate) -> bool:
    """True when `update` says what `sent` said but for the running time, while a task waits or renders at
    WaveSpeed: same stage, task, video, fixes, outage and queue."""
    return (update.stage.at_wavespeed and update.stage is sent.stage and update.task_id == sent.task_id
            and update.video_path == sent.video_path and update.fixes == sent.fixes
            and update.outage == sent.outage and update.queued_behind == sent.queued_behind
            and update.slot_limit == sent.slot_limit)


def worth_sending(sent: JobUpdate | None, update: JobUpdate, every: float = API_TICK_SECONDS) -> bool:
    """Whether an API caller should get `update`, given the last update it was sent."""
    return sent is None or not only_time_moved(sent, update) or update.elapsed - sent.elapsed >= every


# --- WaveSpeed's webhooks -------------------------------------------------------------------------------------


class Refusals:
    """Logs refused webhooks at a bounded rate: a refusal after a quiet interval gets its own line; those within
    `interval_seconds` of the last line are only counted, and the next line says how many there were."""

    def __init__(self, interval_seconds: float = REFUSAL_LOG_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._quiet_until: float | None = None  # no line before this, only a count
        self._unlogged = 0

    def refused(self, host: str, reason: str) -> None:
        now = self._clock()
        with self._lock:
            if self._quiet_until is not None and now < self._quiet_until:
                self._unlogged += 1
                return
            unlogged, self._unlogged = self._unlogged, 0
            self._quiet_until = now + self._interval
        if unlogged:
            log.warning("refused a webhook from %s: %s (%d more refused since the last such line, not logged one by "
                        "one)", host, reason, unlogged)
        else:
            log.warning("refused a webhook from %s: %s", host, reason)


def webhook_route(receive: Callable[[Any, bytes], dict[str, Any]], refusals: Refusals | None = None) -> APIRoute:
    """`POST /webhooks/wavespeed`, served beside the page: `receive(headers, body)` is the service's check (it
    raises `WebhookRejected` having changed nothing); `refusals` logs what is refused, a line a minute at most."""
    refusals = refusals or Refusals()

    async def wavespeed_webhook(request: Request) -> JSONResponse:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
                return JSONResponse({"error": "The webhook's body is too large."}, status_code=413)
        try:
            prediction = await run_in_threadpool(receive, request.headers, body)
        except WebhookRejected as refusal:
            refusals.refused(request.client.host if request.client else "?", refusal.message)
            return JSONResponse({"error": refusal.message}, status_code=401)
        return JSONResponse({"received": prediction["id"]})

    return APIRoute(WEBHOOK_PATH, wavespeed_webhook, methods=["POST"], include_in_schema=False)

