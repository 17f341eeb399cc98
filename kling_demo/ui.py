"""The page: layout and event wiring. Each `JobUpdate` becomes component updates."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator

import anyio
import gradio as gr
from PIL import Image

from . import media, webhooks
from .backend import Backend
from .config import Settings
from .errors import InputRejected, KlingDemoError
from .identity import client_address, oauth_enabled, spender_id
from .inputs import check_duration, check_guidance, check_prompt, check_task_id
from .jobs import JobRequest, JobUpdate, Stage, format_seconds
from .models import DEFAULT_MODEL
from .service import Job, Service, Visitor
from .visitors import (OWNER_STORAGE_KEY, OWNER_STORAGE_OBFUSCATION, new_owner_id, resolve_owner, sign_owner,
                       verified_owner, visitor_key)

if TYPE_CHECKING:
    from .journal import TaskRecord

log = logging.getLogger(__name__)

SPEC = DEFAULT_MODEL
STAGE_LABELS = {
    Stage.PREPARING: "Checking",
    Stage.WAITING: "Waiting",
    Stage.UPLOADING: "Uploading",
    Stage.SUBMITTED: "Submitted",
    Stage.QUEUED: "Queued at WaveSpeed",
    Stage.PROCESSING: "Rendering",
    Stage.DOWNLOADING: "Downloading",
    Stage.DONE: "Done",
    Stage.FAILED: "Failed",
}
STATUS_WORDS = {"completed": "Done", "failed": "Failed", "lost": "Lost", "created": "Queued", "processing": "Rendering",
                "submitting": "Submitting", "unknown": "Outcome unknown", "cancelled": "Cancelled by WaveSpeed",
                "timeout": "Timed out at WaveSpeed", "deleted": "Deleted at WaveSpeed"}
# A character counter under a text box, run in the browser only (no server round trip per keystroke); it
# appears from 80 % of the field's cap, the model's own limit.
COUNTER_JS = ("(text) => {{ const n = (text || '').length; return n < {cap} * 0.8 ? '' : "
              "n.toLocaleString('en') + ' / {cap_text} characters' + (n >= {cap} ? ' (the most this field takes)' "
              ": ''); }}")
# Gradio sizes a gallery's grid to its item count, so one entry fills the width; keep a steady grid.
PAGE_CSS = "#history .grid-container { --grid-cols: 5 !important; } " \
           "@media (max-width: 640px) { #history .grid-container { --grid-cols: 2 !important; } }"
IDLE_STATUS = "Ready. Add a first frame and a prompt (or pick an example), then press **Generate**."
ASSETS = Path(__file__).parent / "assets"
EXAMPLES = [  # image, prompt, negative prompt, end frame
    [ASSETS / "sunset-lake.jpg", "The sun sinks behind the mountains as ripples cross the lake", "", None],
    [ASSETS / "sunset-lake.jpg", "Dusk falls over the lake and the stars come out", "blurry",
     ASSETS / "night-lake.jpg"],
]
Outputs = tuple[str, str, "str | None"]
UNEXPECTED = ("Something went wrong on the server (reference {reference}); nothing more was submitted. If a task id "
              "is shown, your task is still followed.")
# An absolute path, not part of a URL: `/data/kling_demo/videos/x.mp4` → `x.mp4`.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/:]+/)+")


def without_paths(message: str) -> str:
    """A message with every absolute server path cut down to its file name."""
    return _ABSOLUTE_PATH.sub("", message)


@contextmanager
def plain_errors() -> Iterator[None]:
    """Whatever fails reaches the page as a plain sentence: ours as they are (paths cut), anything else as a
    reference to the server log, which has the details."""
    try:
        yield
    except gr.Error as error:  # ours, made by stream()
        error.message = without_paths(str(error.message))
        raise
    except KlingDemoError as error:
        raise gr.Error(without_paths(str(error)), duration=None) from error
    except Exception:
        reference = secrets.token_hex(3)
        log.exception("unexpected error, reference %s", reference)
        raise gr.Error(UNEXPECTED.format(reference=reference), duration=None, print_exception=False) from None


def frame_input(**options: Any) -> gr.Image:
    """An image input that hands every upload, unopened, to our checks.

    Stock gr.Image opens the file with Pillow first (type="filepath" decodes no pixels, but the open
    alone fails): random bytes or an empty file end in a bare HTTP 400, and an image over Pillow's bomb
    limit in "Could not preprocess … DecompressionBombError" with server paths. Passing the path through
    lets the validator say what is wrong and what to do.
    (Wrapped per instance: a gr.Image subclass would make Gradio write a .pyi beside this module.)"""
    component = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **options)
    stock_preprocess = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and payload.path:
            return str(payload.path)  # already checked by Gradio to be an upload of this app
        return stock_preprocess(payload)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def duration_input(**options: Any) -> gr.Radio:
    """A radio of whole seconds that tells API and MCP clients so.

    Stock gr.Radio describes every choice as a string, so an MCP client's `duration: 5` fails
    schema validation. (Overridden per instance, like frame_input, to avoid a generated .pyi.)"""
    component = gr.Radio(**options)
    stock_api_info = component.api_info
    component.api_info = lambda: {**stock_api_info(), "type": "integer"}  # type: ignore[method-assign]
    return component


def backend_banner(backend: Backend, settings: Settings) -> str:
    if backend.is_sandbox:
        return (
            "**Sandbox mode — no AI.** No `WAVESPEED_API_KEY` is set, so videos are synthesized locally "
            "(a slow camera move over your image, marked *SANDBOX*) and nothing is billed. To generate with "
            "Kling 2.0 for real, put `WAVESPEED_API_KEY=…` in the environment or a `.env` file and restart."
        )
    who = ("Bring your own WaveSpeed key below: this Space does not pay for generations."
           if settings.require_user_key else
           "Generations are billed to this Space's key, or to your own if you enter one below.")
    return f"**Live: WaveSpeedAI** (`{backend.base_url}`), model `{SPEC.model_id}`. {who}"


def counter_js(cap: int) -> str:
    """The browser-side counter for a text box capped at `cap` characters."""
    return COUNTER_JS.format(cap=cap, cap_text=f"{cap:,}")


def status_markdown(update: JobUpdate, fixes: tuple[str, ...] = ()) -> str:
    """The stage and its message; what was fixed in the input stays visible until the end."""
    text = f"**{STAGE_LABELS[update.stage]}** — {update.message}"
    if fixes and update.stage is not Stage.UPLOADING:  # the upload message already lists them
        text += "\n\n*Fixed before upload:* " + "; ".join(fixes) + "."
    return text


# Gradio refuses bigger uploads with HTTP 413 while they stream in, before they reach the disk cache.
# The API takes at most 10 MB, but we re-encode bigger files: a PNG photo at our 16 MP decode limit is
# 25–50 MB, a 50 MP phone JPEG 10–25 MB. Memory does not depend on file size (`ImageLimits.max_pixels`
# bounds it), so the cap only bounds disk and bandwidth per upload.
MAX_UPLOAD = "50mb"
# Every 30 min, delete uploads older than 2 h: a job reads its images within seconds of the click.
UPLOAD_CACHE_CLEANUP = (30 * 60, 2 * 3600)


def launch_options(settings: Settings) -> dict[str, Any]:
    """Arguments for `demo.launch()` that the app needs wherever it is launched."""
    return {
        "allowed_paths": [str(settings.videos_dir)],
        "max_file_size": MAX_UPLOAD,
        "show_error": True,
        # Gradio 6's run history keeps every input, a password box included, in localStorage.
        "run_history": False,
        "mcp_server": settings.mcp_server,
        "css": PAGE_CSS,
    }


def history_items(records: list[TaskRecord], placeholder: str) -> list[tuple[str, str]]:
    """Gallery entries captioned with status, prompt, when and how long: the first frame, or for a
    task fetched by id the video itself (or a placeholder while it renders)."""
    items = []
    for record in records:
        when = time.strftime("%d %b %H:%M", time.localtime(record.created_at))
        took = f" · {format_seconds(record.inference_ms / 1000)}" if record.inference_ms else ""
        prompt = record.prompt or "(fetched by task id)"
        caption = f"{STATUS_WORDS.get(record.status, record.status)} · {prompt[:60]} · {when}{took}"
        items.append((record.first_frame or record.video_path or placeholder, caption))
    return items


def pending_picture(folder: Path) -> Path:
    """A plain tile for history entries that have no picture yet."""
    path = folder / "pending.png"
    if not path.exists():
        Image.new("RGB", (320, 180), (226, 232, 240)).save(path)
    return path


def build_app(settings: Settings, backend: Backend | None = None, service: Service | None = None) -> gr.Blocks:
    """Build the page over a `Service` (made from the settings, and `backend` if given, unless one is passed)."""
    service = service or Service(settings, backend)
    output_dir = service.videos_dir
    # Served in place: Gradio neither copies nor re-downloads the finished video.
    gr.set_static_paths([str(output_dir), str(ASSETS)])
    placeholder = str(pending_picture(output_dir))
    os.environ.setdefault("GRADIO_RUN_HISTORY", "false")  # also when launched without launch_options()

    secret = settings.owner_secret()  # signs owner ids and hashes keys; never sent to a browser

    def visitor(owner_id: str | None, typed_key: str | None, request: gr.Request | None,
                from_page: bool = False, profile: gr.OAuthProfile | None = None) -> Visitor:
        """Who owns a job (the page must have its signed owner id, see on_load) and whom its spend counts
        against: the HF user, the client's IP, or the hash of their own key (identity.py)."""
        headers = request.headers if request is not None else None
        api_key = visitor_key(typed_key, headers)
        owner = resolve_owner(owner_id, secret=secret, api_key=api_key, ip=_ip(request), from_page=bool(from_page))
        return Visitor(owner, api_key, spender=spender_id(ip=_ip(request), api_key=api_key, secret=secret,
                                                          hf_username=profile.username if profile else None))

    def owner_of(owner_id: str | None, request: gr.Request | None) -> Visitor:
        """Whose history a housekeeping event shows; a caller's key only names them, it pays for nothing here."""
        api_key = visitor_key(None, request.headers if request is not None else None)
        return Visitor(resolve_owner(owner_id, secret=secret, api_key=api_key, ip=_ip(request)))

    def _ip(request: gr.Request | None) -> str:
        peer = request.client.host if request is not None and request.client is not None else None
        return client_address(request.headers if request is not None else None, peer,
                              trust_forwarded=settings.trusted_proxy)

    def validate(image: str | None, prompt: str | None, negative_prompt: str | None, guidance_scale: float,
                 duration: int, end_image: str | None, owner_id: str | None = None,
                 typed_key: str | None = None, from_page: bool = False) -> list[dict[str, Any]]:
        """Instant checks in the page, before anything is uploaded or paid for."""
        return [
            _verdict(lambda: _refuse_if(media.quick_check_image(image, SPEC.first_frame, role="first frame"))),
            _verdict(lambda: check_prompt(prompt, SPEC)),
            _verdict(lambda: check_prompt(negative_prompt, SPEC, field="negative_prompt", required=False)),
            _verdict(lambda: check_guidance(guidance_scale, SPEC)),
            _verdict(lambda: check_duration(duration, SPEC)),
            _verdict(lambda: _refuse_if(media.quick_check_image(end_image, SPEC.end_frame, role="end frame",
                                                                 required=False))),
            gr.validate(True, ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
        ]

    async def generate(image: str | None, prompt: str, negative_prompt: str | None = None,
                       guidance_scale: float = SPEC.guidance_default, duration: int = SPEC.default_duration,
                       end_image: str | None = None, owner_id: str | None = None, typed_key: str | None = None,
                       from_page: bool = False, request: gr.Request = None,  # type: ignore[assignment]
                       profile: gr.OAuthProfile | None = None) -> AsyncIterator[Outputs]:
        """Turn one still image into a 5 or 10 second video with Kling 2.0 Master (WaveSpeedAI).

        Args:
            image: first frame of the video: a JPEG or PNG at least 300×300 px, aspect ratio between 1:2.5 and 2.5:1.
            prompt: what should happen in the video.
            negative_prompt: what the video should avoid (optional).
            guidance_scale: how closely to follow the prompt, 0 to 1 (default 0.5).
            duration: length of the video in seconds: 5 or 10.
            end_image: optional last frame of the video (JPEG or PNG, at least 300×300 px).
        Returns:
            status text, task id, and the path of the finished MP4.
        """
        with plain_errors():
            job_request = JobRequest(image=image, prompt=prompt, negative_prompt=negative_prompt,
                                     guidance_scale=guidance_scale, duration=duration, end_image=end_image)
            async for outputs in stream(service.generate(job_request, visitor(owner_id, typed_key, request,
                                                                              from_page, profile))):
                yield outputs

    async def resume(task_id: str, owner_id: str | None = None, typed_key: str | None = None,
                     from_page: bool = False,
                     request: gr.Request = None) -> AsyncIterator[Outputs]:  # type: ignore[assignment]
        """Fetch a task by its id into your history: one of yours, or, with your own key, one submitted elsewhere."""
        with plain_errors():
            task_id = check_task_id(task_id)
            async for outputs in stream(service.resume(task_id, visitor(owner_id, typed_key, request, from_page))):
                yield outputs

    @plain_errors()
    def show_budget(typed: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
        """The visitor's spend on the server's key near Generate; hidden in sandbox mode and with their own key."""
        try:
            api_key = visitor_key(typed, request.headers)
        except KlingDemoError:
            api_key = None
        line = "" if api_key else service.budget_line(Visitor("", spender=spender_id(
            ip=_ip(request), hf_username=profile.username if profile else None)))
        return gr.update(value=line, visible=bool(line))

    @plain_errors()
    def show_history(owner_id: str | None, request: gr.Request) -> tuple[list[tuple[str, str]], list[str]]:
        """Your generations, newest first."""
        records = service.tasks(owner_of(owner_id, request))
        return history_items(records, placeholder), [r.task_id for r in records]

    @plain_errors()
    def refresh_changed(owner_id: str | None, seen: str, request: gr.Request) -> tuple[Any, Any, str]:
        """Redraw the history only when a task was added or changed status (tasks finish in the background)."""
        records = service.tasks(owner_of(owner_id, request))
        signature = "|".join(f"{r.task_id}:{r.status}" for r in records)
        if signature == seen:
            return gr.skip(), gr.skip(), seen
        return history_items(records, placeholder), [r.task_id for r in records], signature

    @plain_errors()
    def on_load(stored_owner: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Give the browser its signed owner id (kept in its localStorage) and show its history.

        A stored id this server did not sign (forged, or from before ids were signed) is replaced by a new one."""
        owner_id = verified_owner(stored_owner, secret)
        if owner_id is None and stored_owner:
            log.info("a browser's stored owner id was not signed by this server; it gets a new one")
        token = sign_owner(owner_id or new_owner_id(), secret)
        records = service.arrive(owner_of(token, request))  # unfinished tasks are fetched now
        return token, token, history_items(records, placeholder), [r.task_id for r in records]

    @plain_errors()
    def select_history(task_ids: list[str], owner_id: str | None, request: gr.Request,
                       selection: gr.SelectData) -> tuple[str | None, str]:
        if selection.index is None or selection.index >= len(task_ids):
            return None, ""
        record = service.task(owner_of(owner_id, request), task_ids[selection.index])
        if record is None:
            return None, ""
        detail = "Never received a task id" if record.is_intent else f"Task `{record.task_id}`"
        detail += f" · {STATUS_WORDS.get(record.status, record.status)}"
        if record.inference_ms:
            detail += f" · inference {record.inference_ms / 1000:.1f} s"
        if record.error:
            detail += f" · {record.error}"
        if record.is_running:
            detail += " · still rendering; it will appear here when it finishes."
        video = record.video_path if record.video_path and Path(record.video_path).exists() else None
        return video, detail

    def stopped(task_id: str) -> str:
        if task_id:
            return (f"**Stopped** — stopped waiting for task `{task_id}`. It was already submitted, so it may "
                    "still finish and be billed; if it does, it will appear in your history.")
        return ("**Stopped** — nothing had been submitted yet. If the submission was already on its way, the "
                "task will still finish into your history.")

    with gr.Blocks(title="Kling 2.0 image-to-video", delete_cache=UPLOAD_CACHE_CLEANUP) as demo:
        # Gradio sends a BrowserState's `secret` to every visitor: a public constant, the value is signed.
        owner_store = gr.BrowserState("", storage_key=OWNER_STORAGE_KEY, secret=OWNER_STORAGE_OBFUSCATION)
        owner_id = gr.State("")
        typed_key = gr.State("")
        from_page = gr.State(False)  # set by the page's own first step of Generate and Resume
        history_ids = gr.State([])
        history_seen = gr.State("")
        history_ticker = gr.Timer(5.0)

        gr.Markdown(f"## {SPEC.title} — one still image in, a 5 or 10 second video out")
        gr.Markdown(backend_banner(service.backend, settings), elem_id="backend-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = frame_input(label="First frame", height=240, elem_id="first-frame")
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=SPEC.max_chars("prompt"),
                                    placeholder="A slow dolly-in as the wind moves through her hair…",
                                    elem_id="prompt")
                prompt_count = gr.Markdown("", elem_id="prompt-count", container=False)
                with gr.Row():
                    guidance = gr.Slider(SPEC.guidance_min, SPEC.guidance_max, value=SPEC.guidance_default,
                                         step=0.05, label="Guidance scale",
                                         info="Higher follows the prompt more closely.")
                    duration = duration_input(choices=list(SPEC.durations), value=SPEC.default_duration, label="Duration (s)",
                                             elem_id="duration")
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    negative = gr.Textbox(label="Negative prompt", lines=2,
                                          max_length=SPEC.max_chars("negative_prompt"),
                                          placeholder="blurry, distorted hands", elem_id="negative-prompt")
                    negative_count = gr.Markdown("", elem_id="negative-prompt-count", container=False)
                    end_image = frame_input(label="End frame (optional)", height=200, elem_id="end-frame")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                budget = gr.Markdown("", elem_id="budget", visible=False)
                if oauth_enabled():  # a Space with `hf_oauth: true`; the button cannot start anywhere else
                    gr.LoginButton("Sign in with Hugging Face for your own budget", elem_id="login")
                with gr.Accordion("Your WaveSpeed key", open=settings.require_user_key, elem_id="key-section"):
                    key_box = gr.Textbox(label="WaveSpeed API key", type="password", elem_id="user-key",
                                         placeholder="optional" if not settings.require_user_key else "required",
                                         info="Used for your requests only; never stored, logged or shown.")
                gr.Examples([[str(cell) if cell else None for cell in row] for row in EXAMPLES],
                            inputs=[image, prompt, negative, end_image], label="Try an example",
                            elem_id="examples")
            with gr.Column(scale=1):
                status = gr.Markdown(IDLE_STATUS, elem_id="status", container=True)
                task_id = gr.Textbox(label="Task id", interactive=False, buttons=["copy"], elem_id="task-id")
                video = gr.Video(label="Video", interactive=False, autoplay=True, buttons=["download"],
                                 elem_id="video")
        with gr.Accordion("Your history", open=True, elem_id="history-section"):
            gr.Markdown("Every generation you submit is kept here, even if you close the tab. Only you can see it.")
            gallery = gr.Gallery(label="Your generations", columns=5, height=260, object_fit="contain",
                                 allow_preview=False, elem_id="history", show_label=False)
            with gr.Row():
                history_video = gr.Video(label="Selected video", interactive=False, buttons=["download"],
                                         elem_id="history-video")
                with gr.Column():
                    history_detail = gr.Markdown(elem_id="history-detail")
                    refresh_btn = gr.Button("Refresh history", size="sm", elem_id="refresh-history")
                    resume_id = gr.Textbox(label="Resume by task id", placeholder="task id from this app or "
                                           "elsewhere (with your own key)", elem_id="resume-id")
                    resume_btn = gr.Button("Resume", size="sm", elem_id="resume")

        def idle() -> tuple[Any, Any]:
            return gr.update(interactive=True), gr.update(interactive=False)

        def busy() -> tuple[Any, Any]:
            return gr.update(interactive=False), gr.update(interactive=True)

        private: dict[str, Any] = {"api_visibility": "private"}
        key_box.change(lambda key: key, inputs=key_box, outputs=typed_key, queue=False, **private)
        for box, count, field in ((prompt, prompt_count, "prompt"), (negative, negative_count, "negative_prompt")):
            box.change(None, inputs=box, outputs=count, js=counter_js(SPEC.max_chars(field)), queue=False, **private)
        # Housekeeping never waits in the queue (served by POST /gradio_api/run/predict), so a queue full of
        # jobs cannot refuse a tab its owner id, and the page can refuse to generate without one.
        demo.load(on_load, inputs=owner_store, outputs=[owner_store, owner_id, gallery, history_ids], queue=False,
                  **private)

        inputs = [image, prompt, negative, guidance, duration, end_image, owner_id, typed_key, from_page]
        # Buttons flip only once the inputs pass: Gradio runs no `.then()` after a validator refuses.
        job_event = generate_btn.click(
            lambda *_: (*busy(), True), inputs=inputs, outputs=[generate_btn, stop_btn, from_page],
            validator=validate, **private).then(
            generate, inputs=inputs, outputs=[status, task_id, video], api_name="generate", validator=validate,
            concurrency_limit=settings.concurrency)
        resume_event = resume_btn.click(lambda: (*busy(), True), outputs=[generate_btn, stop_btn, from_page],
                                        queue=False, **private).then(
            resume, inputs=[resume_id, owner_id, typed_key, from_page], outputs=[status, task_id, video],
            api_name="resume", concurrency_limit=settings.concurrency)
        for event in (job_event, resume_event):
            event.then(idle, outputs=[generate_btn, stop_btn], queue=False, **private).then(
                show_history, inputs=owner_id, outputs=[gallery, history_ids], queue=False, **private)
        stop_btn.click(stopped, inputs=task_id, outputs=status, cancels=[job_event, resume_event], queue=False,
                       **private).then(idle, outputs=[generate_btn, stop_btn], queue=False, **private)
        # API clients see the history of their key's hash, else of their IP: no use as an MCP tool.
        refresh_btn.click(show_history, inputs=owner_id, outputs=[gallery, history_ids], api_name="history",
                          queue=False, api_visibility="undocumented")
        history_ticker.tick(refresh_changed, inputs=[owner_id, history_seen],
                            outputs=[gallery, history_ids, history_seen], queue=False, show_progress="hidden",
                            **private)
        gallery.select(select_history, inputs=[history_ids, owner_id], outputs=[history_video, history_detail],
                       queue=False, **private)
        # Added last, so the events above keep their numbers.
        demo.load(show_budget, inputs=typed_key, outputs=budget, queue=False, **private)
        job_event.then(show_budget, inputs=typed_key, outputs=budget, queue=False, show_progress="hidden", **private)
        key_box.change(show_budget, inputs=key_box, outputs=budget, queue=False, show_progress="hidden", **private)

    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue)
    if service.webhooks is not None:
        serve_beside(demo, webhooks.route(service.webhooks))
    hold_queue_limit(demo)
    run_more_than_forty(demo, settings.concurrency)
    demo.service = service  # type: ignore[attr-defined]  # tests reach the journal and the sandbox through it
    demo.backend = service.backend  # type: ignore[attr-defined]
    stock_close = demo.close

    def close(*args: Any, **kwargs: Any) -> None:
        """Closing the page waits for the server to finish (Gradio waits 5 s at most, then its shutdown still
        deletes the app's uploads), then stops background recovery and an embedded sandbox."""
        server = getattr(demo, "server", None)
        stock_close(*args, **kwargs)
        thread = getattr(server, "thread", None)
        if thread is not None:
            thread.join(timeout=60)
        service.close()

    demo.close = close  # type: ignore[method-assign]  # per instance, like frame_input (no subclass, no .pyi)
    return demo


def serve_beside(demo: gr.Blocks, *routes: Any) -> None:
    """Serve extra FastAPI routes beside the page, however `demo` is launched.

    Gradio 6.31 builds its FastAPI app inside `launch()`, and a Space may call `demo.launch()` itself without
    our options, so the instance's `launch` is wrapped to pass the routes in `app_kwargs` (FastAPI's `routes`,
    registered ahead of Gradio's own). Wrapped per instance, like `frame_input`."""
    stock_launch = demo.launch

    def launch(*args: Any, **kwargs: Any) -> Any:
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["routes"] = [*routes, *(app_kwargs.get("routes") or [])]
        return stock_launch(*args, app_kwargs=app_kwargs, **kwargs)

    demo.launch = launch  # type: ignore[method-assign]


def hold_queue_limit(demo: gr.Blocks) -> None:
    """Make the queue's size check and its add one step, so a burst cannot overfill `max_size`.

    Gradio 6.31's `Queue.push` checks the size, then awaits the validator, then adds the event: requests
    arriving together all pass the check. One join at a time closes that gap (validators here are quick)."""
    queue = demo._queue
    push = queue.push
    lock = asyncio.Lock()

    async def push_in_turn(*args: Any, **kwargs: Any) -> Any:
        async with lock:
            return await push(*args, **kwargs)

    queue.push = push_in_turn  # type: ignore[method-assign]


IDLE_QUEUE_SECONDS = 0.02  # how often an idle Gradio queue looks for a new event (Gradio: every 1 ms)
PROGRESS_SCAN_SECONDS = 0.2  # how often it scans its slots for gr.Progress updates (Gradio: every 10 ms)


def run_more_than_forty(demo: gr.Blocks, events: int) -> None:
    """Let Gradio's queue run `events` events at once, not the 40 it allows by default whatever their limits.

    Gradio 6.31's queue has `max_threads` (40) worker slots in all, and an async event holds one for its whole
    life, so job 41 waited for a whole render before it was even submitted ("waves of 40"). The slots are
    sized when the queue starts, from `launch(max_threads=…)`, which a Space calling `demo.launch()` leaves at
    40: the instance's queue start is wrapped instead. Threads stay as they were (`max_threads` also sizes
    Gradio's thread limiter; only the queue's slot list grows).

    An idle queue also looks for work every millisecond, and for gr.Progress updates (unused here) every 10 ms
    across all its slots: 1.5 s of CPU per 30 s render, more than a job's own work. Every 20 ms is soon enough
    for an event that then runs for minutes, and progress every 0.2 s for a status that changes each second."""
    queue = demo._queue
    start = queue.start

    def start_with_room() -> None:
        queue.max_thread_count = max(queue.max_thread_count, events)
        queue.sleep_when_free = max(queue.sleep_when_free, IDLE_QUEUE_SECONDS)
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_SCAN_SECONDS)
        start()

    queue.start = start_with_room  # type: ignore[method-assign]


async def stream(job: Job) -> AsyncIterator[Outputs]:
    """Run a job off the event loop, waiting between polls without holding a thread; a failure becomes gr.Error.

    With webhooks on, an update carries a `wake` handle: the wait is `await wake.wait_async(...)` on this loop,
    which a webhook (on another thread) ends at once through `loop.call_soon_threadsafe`; still no thread held."""
    fixes: tuple[str, ...] = ()
    try:
        while True:
            update = await anyio.to_thread.run_sync(job.next_update)
            if update is None:
                return
            fixes = update.changes or fixes
            next_poll = time.monotonic() + update.wait_seconds  # before Gradio spends time sending
            yield status_markdown(update, fixes), update.task_id or "", str(update.video_path or "") or None
            pause = max(0.0, next_poll - time.monotonic())
            if update.wake is not None:
                await update.wake.wait_async(pause)
            else:
                await asyncio.sleep(pause)
    except KlingDemoError as error:
        raise gr.Error(without_paths(str(error)), duration=None) from error
    finally:
        job.close()


def _refuse_if(message: str | None) -> None:
    if message:
        raise InputRejected(message)


def _verdict(check: Callable[[], object]) -> dict[str, Any]:
    """Run one check; a refusal becomes a `gr.validate` message shown under its input."""
    try:
        check()
    except KlingDemoError as error:
        return gr.validate(False, str(error))
    return gr.validate(True, "")
