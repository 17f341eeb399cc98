"""The page: layout and event wiring. Each `JobUpdate` becomes component updates."""

from __future__ import annotations

import asyncio
import enum
import html
import logging
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator

import anyio
import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from . import history_view

from ..jobs import images

from . import ticks

from ..wavespeed import webhooks

from . import wording
from ..service.backend import Backend
from ..config import Settings
from ..errors import InputRejected, KlingDemoError
from .front_door import FrontDoor
from ..service.identity import TrustedProxies, oauth_enabled, spender_id, visitor_address
from ..jobs.inputs import check_duration, check_guidance, check_prompt, check_task_id
from ..jobs.steps import JobRequest, JobUpdate, Stage, format_seconds
from ..models import DEFAULT_MODEL
from ..jobs.progress import Estimate, EstimateSource, ProgressView, Tracker, estimate
from ..service.service import FormFill, Job, Service, Visitor
from ..jobs.runner import step_updates
from .upload_bounds import GB, MB, UploadBounds
from ..service.visitors import (OWNER_STORAGE_KEY, OWNER_STORAGE_OBFUSCATION, new_owner_id, resolve_owner, sign_owner,
                       verified_owner, visitor_key)

if TYPE_CHECKING:
    from ..wavespeed.client import Prediction
    from ..store.journal import TaskRecord

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
# A character counter under a text box, run in the browser only (no server round trip per keystroke); it
# appears from 80 % of the field's cap, the model's own limit.
COUNTER_JS = ("(text) => {{ const n = (text || '').length; return n < {cap} * 0.8 ? '' : "
              "n.toLocaleString('en') + ' / {cap_text} characters' + (n >= {cap} ? ' (the most this field takes)' "
              ": ''); }}")
# Gradio sizes a gallery's grid to its item count, so one entry fills the width; keep a steady grid.
PAGE_CSS = "#history .grid-container { --grid-cols: 5 !important; } " \
           "@media (max-width: 640px) { #history .grid-container { --grid-cols: 2 !important; } }" + """
.kd-steps { display: flex; flex-wrap: wrap; gap: 4px 14px; list-style: none; padding: 0; margin: 0 0 6px;
            font-size: 0.9em; }
.kd-steps li.todo { opacity: 0.45; }
.kd-steps li.current { font-weight: 600; }
.kd-steps li.current::before { content: "● "; color: var(--color-accent); }
.kd-bar { height: 10px; border-radius: 5px; overflow: hidden; background: var(--neutral-200); }
.dark .kd-bar { background: var(--neutral-700); }
.kd-fill { height: 100%; background: var(--color-accent); transition: width 0.9s linear; }
.kd-progress.late .kd-fill { background: #d97706; }
.kd-progress.failed .kd-fill { background: var(--error-icon-color, #dc2626); }
.kd-times { margin: 6px 0 0; font-size: 0.9em; }
#examples .grid-container { --grid-cols: 6 !important; grid-auto-rows: auto; }
#examples .thumbnail-item { aspect-ratio: auto; height: 84px; }  /* wide tiles, their captions in view */
#examples img { object-position: center 30%; }
@media (max-width: 640px) {
  #examples .grid-container { --grid-cols: 3 !important; }
  #examples, #examples .grid-wrap { height: auto !important; }
  #examples .thumbnail-item { height: 64px; }
  #title h2 { font-size: 1.3em; }
  #settings-row { flex-direction: column; }
  #settings-row > * { min-width: 100% !important; }
}
#history-detail p { margin: 0.25em 0; }
/* A note with nothing to say takes no room (Gradio keeps an empty block and the column's gap around it). */
.kd-note:has(span.md:empty) { display: none; }
"""
# Run in the browser after a job: a finished video in a background tab changes the title and, if the visitor
# allowed it, shows a notification. Permission is asked once, when Generate is first pressed.
ASK_TO_NOTIFY_JS = ("() => { if ('Notification' in window && Notification.permission === 'default') "
                    "{ Notification.requestPermission(); } }")
NOTIFY_JS = """(status) => {
    if (!document.hidden || !status || !status.startsWith('**Done**')) return;
    const title = document.title;
    document.title = '✅ Your video is ready · ' + title;
    const back = () => { if (!document.hidden) { document.title = title;
                                                  document.removeEventListener('visibilitychange', back); } };
    document.addEventListener('visibilitychange', back);
    if ('Notification' in window && Notification.permission === 'granted') {
        new Notification('Your video is ready', {body: 'Kling 2.0 image-to-video: come back to the tab to watch it.'});
    }
}"""
IDLE_STATUS = "Ready. Add a first frame and a prompt (or pick an example), then press **Generate**."
ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Example:
    """One ready-made start: a first frame and the settings it fills (assets/LICENSES.md says where each is from)."""

    title: str
    image: str
    prompt: str
    negative: str = ""
    end_image: str | None = None
    duration: int = 5

    @property
    def extras(self) -> list[str]:
        """What it sets beyond the first frame and the prompt, in the words of the page's labels."""
        return [name for name, value in (("an end frame", self.end_image), ("a negative prompt", self.negative))
                if value]


EXAMPLES = [
    Example("Sunset lake", "sunset-lake.jpg", "The sun sinks behind the mountains as ripples cross the lake"),
    Example("Day to night (end frame)", "sunset-lake.jpg", "Dusk falls over the lake and the stars come out",
            negative="blurry", end_image="night-lake.jpg"),
    Example("Astronaut", "astronaut.jpg", "She smiles and turns toward the camera as the flag stirs behind her",
            negative="distorted face, extra fingers"),
    Example("Cat", "chelsea-cat.jpg", "The cat slowly blinks, its whiskers twitching as it looks around"),
    Example("Coffee (camera move)", "coffee.jpg", "A slow dolly-in over the cup as steam curls up from the coffee"),
    Example("Rocket launch (10 s)", "rocket.jpg", "The rocket lifts off in a burst of smoke and flame as the "
            "camera tilts up to follow it", duration=10),
]
DELETE_QUESTION = ("**Delete this task from your history?** Its entry, video and frames on this server are deleted, "
                   "with no undo. At WaveSpeed nothing changes: the task and its video stay until WaveSpeed's "
                   "retention ends, and its charge stands.")
DELETE_QUESTION_SANDBOX = ("**Delete this task from your history?** Its entry, video and frames are deleted, with no "
                           "undo. (Sandbox mode: it cost nothing.)")
Outputs = tuple[str, str, "str | None"]


class JobPhase(str, enum.Enum):
    """Where the page's job is, so Stop can say what it did."""

    IDLE = "idle"
    STARTED = "started"  # nothing submitted yet
    SUBMITTED = "submitted"  # a task id exists and the task runs at WaveSpeed
    ENDED = "ended"
UNEXPECTED = ("Something went wrong on the server (reference {reference}); nothing more was submitted. If a task id "
              "is shown, your task is still followed.")
# An absolute path, not part of a URL: `/data/kling_demo/videos/x.mp4` → `x.mp4`.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/:]+/)+")


def without_paths(message: str) -> str:
    """A message with every absolute server path cut down to its file name."""
    return _ABSOLUTE_PATH.sub("", message)


def shown_error(error: KlingDemoError) -> gr.Error:
    """One of our errors as a toast: plain text (paths cut; `<`, `>` and `&` escaped, since Gradio renders a toast
    as HTML and the sentence may quote the API), and no traceback printed (an expected ending, not a bug; Gradio's
    printed tracebacks bypass the log's masking)."""
    return gr.Error(html.escape(without_paths(str(error)), quote=False), duration=None, print_exception=False)


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
        raise shown_error(error) from error
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

    Stock gr.Radio describes every choice as a string, so an MCP client's `duration: 5` fails schema
    validation, and an `enum` makes the API page write `Literal['5', '10']` (gradio_client quotes every enum
    value), so the choices are integer constants. (Overridden per instance, like frame_input, to avoid a .pyi.)"""
    component = gr.Radio(**options)
    choices = [value for _, value in component.choices]
    component.api_info = lambda: {  # type: ignore[method-assign]
        "type": "integer", "title": "Duration", "oneOf": [{"const": value} for value in choices]}
    return component


def describe_for_api(fn: Callable[..., Any], parameters: dict[str, gr.components.Component]) -> None:
    """Give each API parameter the description from `fn`'s docstring `Args:` section.

    Gradio 6.31 reads those descriptions for MCP tools only; its API page shows the component's
    `api_info()["additional_description"]`, so the docstring's text is put there (per instance)."""
    from gradio.utils import get_function_description

    _, described, _ = get_function_description(fn)
    for name, component in parameters.items():
        text = described.get(name, "")
        if not text:
            continue
        stock_api_info = component.api_info

        def api_info(stock: Callable[[], dict[str, Any]] = stock_api_info, text: str = text) -> dict[str, Any]:
            info = dict(stock())
            info["additional_description"] = text
            return info

        component.api_info = api_info  # type: ignore[method-assign]


def backend_banner(backend: Backend, settings: Settings) -> str:
    if backend.is_sandbox:
        return (
            "**Sandbox mode — no AI.** Videos are made locally (a slow camera move over your image, marked "
            "*SANDBOX*) and cost nothing. For Kling 2.0, set `WAVESPEED_API_KEY` (environment or `.env`) and restart."
        )
    who = ("Bring your own WaveSpeed key below: this app does not pay for generations."
           if settings.require_user_key else
           "Generations are paid with the app's key, or with your own if you enter one below.")
    return f"**Live: WaveSpeedAI** (`{backend.base_url}`), model `{SPEC.model_id}`. {who}"


def progress_html(view: ProgressView | None) -> str:
    """The progress display: ticked steps, a bar, and elapsed / expected remaining in plain words."""
    if view is None:
        return ""
    steps = "".join(
        f'<li class="{"current" if current else "passed" if passed else "todo"}">'
        f'{"✓ " if passed else ""}{html.escape(step.value)}</li>' for step, passed, current in view.steps)
    percent = round(view.fraction * 100)
    state = "failed" if view.stage is Stage.FAILED else "late" if view.late else "done" if view.ended else "running"
    return (f'<div class="kd-progress {state}"><ol class="kd-steps">{steps}</ol>'
            f'<div class="kd-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}">'
            f'<div class="kd-fill" style="width: {percent}%"></div></div>'
            f'<p class="kd-times">{html.escape(progress_words(view))}</p></div>')


def progress_words(view: ProgressView) -> str:
    """Elapsed, expected remaining, place in line, and "longer than usual" when it is."""
    parts = [f"{format_seconds(view.elapsed)} elapsed"]
    if view.place is not None:
        parts.append("you are next in this app's line" if view.place <= 1 else
                     f"number {view.place} in this app's line")
    if view.stage is Stage.DONE:
        return f"Done in {format_seconds(view.elapsed)}."
    if view.stage is Stage.FAILED:
        return f"Ended without a video after {format_seconds(view.elapsed)}."
    if view.late and view.estimate is not None:
        parts.append(f"running longer than usual (renders like this usually take about "
                     f"{format_seconds(view.estimate.seconds)}); it is still being followed")
    elif view.remaining is not None and view.estimate is not None:
        where = ("from this app's recent renders" if view.estimate.source is EstimateSource.HISTORY
                 else "a first guess until this app has timed a render of its own")
        parts.append(f"about {format_seconds(view.remaining)} to go ({where})")
    elif view.estimate is None:
        parts.append("no estimate yet: this app has not timed a render of this length")
    return " · ".join(parts) + "."


def counter_js(cap: int) -> str:
    """The browser-side counter for a text box capped at `cap` characters."""
    return COUNTER_JS.format(cap=cap, cap_text=f"{cap:,}")


def status_markdown(update: JobUpdate, fixes: tuple[str, ...] = ()) -> str:
    """The stage and its message, as text (a sentence quoting the API never becomes markup); what was fixed in the
    input stays visible until the end."""
    text = f"**{STAGE_LABELS[update.stage]}** — {history_view.literal(update.message)}"
    if fixes and update.stage is not Stage.UPLOADING:  # the upload message already lists them
        text += "\n\n*Fixed before upload:* " + "; ".join(history_view.literal(fix) for fix in fixes) + "."
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


def history_items(records: list[TaskRecord], placeholder: str,
                  words: Callable[[str], str] = str) -> list[tuple[str, str]]:
    """Gallery entries: a tile per task whose state shows at a glance (history_view.items), captions in `words`."""
    return [(picture, words(caption)) for picture, caption in history_view.items(records, Path(placeholder))]


def pending_picture(folder: Path) -> Path:
    """A plain tile for history entries that have no picture yet (the bundled copy when the data dir cannot keep
    one: a full or read-only disk)."""
    return history_view.placeholder(folder / "pending.png", ASSETS / "pending.png")


def build_app(settings: Settings, backend: Backend | None = None, service: Service | None = None) -> gr.Blocks:
    """Build the page over a `Service` (made from the settings, and `backend` if given, unless one is passed)."""
    service = service or Service(settings, backend)
    output_dir = service.videos_dir
    # Served in place: Gradio neither copies nor re-downloads the finished video.
    gr.set_static_paths([str(output_dir), str(ASSETS)])
    placeholder = str(pending_picture(output_dir))
    os.environ.setdefault("GRADIO_RUN_HISTORY", "false")  # also when launched without launch_options()

    secret = settings.owner_secret()  # signs owner ids and hashes keys; never sent to a browser
    words: Callable[[str], str] = wording.for_sandbox if service.is_sandbox else str

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
        """The caller's address: uvicorn's answer under the app's trusted proxies (see guard_launch), or the one
        a signed stamp names for an MCP call replayed by Gradio's own client."""
        peer = request.client.host if request is not None and request.client is not None else None
        return visitor_address(request.headers if request is not None else None, peer, secret=secret)

    def validate(image: str | None, prompt: str | None, negative_prompt: str | None, guidance_scale: float,
                 duration: int, end_image: str | None, owner_id: str | None = None,
                 typed_key: str | None = None, from_page: bool = False) -> list[dict[str, Any]]:
        """Instant checks in the page, before anything is uploaded or paid for."""
        return [
            _verdict(lambda: _refuse_if(images.quick_check_image(image, SPEC.first_frame, role="first frame"))),
            _verdict(lambda: check_prompt(prompt, SPEC)),
            _verdict(lambda: check_prompt(negative_prompt, SPEC, field="negative_prompt", required=False)),
            _verdict(lambda: check_guidance(guidance_scale, SPEC)),
            _verdict(lambda: check_duration(duration, SPEC)),
            _verdict(lambda: _refuse_if(images.quick_check_image(end_image, SPEC.end_frame, role="end frame",
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
            async for outputs in stream(service.generate(job_request, visitor(owner_id, typed_key, request,
                                                                              from_page, profile)), words):
                yield outputs

    async def resume(task_id: str, owner_id: str | None = None, typed_key: str | None = None,
                     from_page: bool = False,
                     request: gr.Request = None) -> AsyncIterator[Outputs]:  # type: ignore[assignment]
        """Fetch a task by its id into your history: one of yours, or, with your own key, one submitted elsewhere.

        Args:
            task_id: The WaveSpeed task id, as shown by /generate or in your history.
        Returns:
            The status text, the task id, and the finished MP4.
        """
        with plain_errors():
            task_id = check_task_id(task_id)
            async for outputs in stream(service.resume(task_id, visitor(owner_id, typed_key, request, from_page)),
                                        words):
                yield outputs

    def key_for_lines(typed: str | None, request: gr.Request) -> str | None:
        """The visitor's own key for the budget and price lines; a malformed one counts as none here (the key's
        own line under the box says what is wrong with it)."""
        try:
            return visitor_key(typed, request.headers)
        except KlingDemoError:
            return None

    @plain_errors()
    def show_budget(typed: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> Any:
        """The visitor's spend on the server's key near Generate; hidden in sandbox mode and with their own key."""
        line = "" if key_for_lines(typed, request) else service.budget_line(Visitor("", spender=spender_id(
            ip=_ip(request), hf_username=profile.username if profile else None)))
        return gr.update(value=line, visible=bool(line))

    @plain_errors()
    def show_history(owner_id: str | None, request: gr.Request) -> tuple[list[tuple[str, str]], list[str]]:
        """Your generations, newest first."""
        records = service.tasks(owner_of(owner_id, request))
        return history_items(records, placeholder, words), [r.task_id for r in records]

    @plain_errors()
    def refresh_changed(owner_id: str | None, seen: str, selected: str, request: gr.Request) -> tuple[Any, ...]:
        """Redraw the history only when a task was added or changed status (tasks finish in the background);
        the selected task's detail, video and buttons too when it is the one that changed."""
        records = service.tasks(owner_of(owner_id, request))
        signature = "|".join(f"{r.task_id}:{r.status}" for r in records)
        unchanged = (gr.skip(),) * len(selected_out)
        if signature == seen:
            return gr.skip(), gr.skip(), seen, *unchanged
        shown = unchanged
        if selected and seen:  # the first look after loading knows no earlier state to compare with
            record = next((r for r in records if r.task_id == selected), None)
            if record is None or f"{record.task_id}:{record.status}" not in seen.split("|"):
                shown = selected_outputs(record, ask_to_delete=gr.skip())  # an open delete question stays
        return history_items(records, placeholder, words), [r.task_id for r in records], signature, *shown

    @plain_errors()
    def on_load(stored_owner: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Give the browser its signed owner id (kept in its localStorage) and show its history.

        A stored id this server did not sign (forged, or from before ids were signed) is replaced by a new one."""
        owner_id = verified_owner(stored_owner, secret)
        if owner_id is None and stored_owner:
            log.info("a browser's stored owner id was not signed by this server; it gets a new one")
        token = sign_owner(owner_id or new_owner_id(), secret)
        records = service.arrive(owner_of(token, request))  # unfinished tasks are fetched now
        return token, token, history_items(records, placeholder, words), [r.task_id for r in records]

    @plain_errors()
    def select_history(task_ids: list[str], owner_id: str | None, request: gr.Request,
                       selection: gr.SelectData) -> tuple[Any, ...]:
        """Show the chosen task (only one's own) and enable the buttons that apply to it."""
        record = None
        if selection.index is not None and 0 <= selection.index < len(task_ids):
            record = service.task(owner_of(owner_id, request), task_ids[selection.index])
        return selected_outputs(record)

    def selected_outputs(record: TaskRecord | None, ask_to_delete: Any = None) -> tuple[Any, ...]:
        """What the history shows of `record` (None: nothing selected), for `selected_out`: its video, its detail,
        its id, the buttons that apply to it, the delete question (hidden unless `ask_to_delete` says otherwise)
        and its end frame's picture."""
        buttons = history_buttons(record)[:3]
        question = gr.update(visible=False) if ask_to_delete is None else ask_to_delete
        if record is None:
            return None, "", "", *buttons, question, gr.update(value=None, visible=False)
        video = record.video_path if record.video_path and Path(record.video_path).exists() else None
        end = history_view.end_frame(record)
        text = words(history_view.detail(record, service.cost(record), end_frame_shown=end is not None))
        return (video, text, record.task_id, *buttons, question,
                gr.update(value=str(end) if end else None, visible=end is not None))

    # -- history: reuse a task's settings, continue from its last frame, delete it (service checks ownership) --

    def history_buttons(record: TaskRecord | None) -> tuple[Any, Any, Any, Any]:
        """Reuse, Continue and Delete enabled where they apply to `record`; the delete question hidden."""
        has_video = bool(record and record.video_path and Path(record.video_path).exists())
        known = bool(record and (record.prompt or not record.params.get("resumed")))
        ended = bool(record and not record.is_running and record.status != "submitting")
        return (gr.update(interactive=known), gr.update(interactive=has_video), gr.update(interactive=ended),
                gr.update(visible=False))

    def form_values(fill: FormFill) -> tuple[Any, ...]:
        """The form's new values (first frame, prompt, negative prompt, guidance, duration, end frame, Advanced)."""
        gr.Info(fill.note)
        end = str(fill.end_frame) if fill.end_frame else (None if fill.clear_end_frame else gr.skip())
        shown = gr.update(open=True) if fill.negative_prompt or fill.end_frame else gr.skip()  # nothing hidden
        return (str(fill.first_frame) if fill.first_frame else gr.skip(), fill.prompt, fill.negative_prompt,
                fill.guidance_scale, fill.duration, end, shown)

    @plain_errors()
    def reuse_settings(selected: str, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return form_values(service.reuse(owner_of(owner_id, request), selected))

    @plain_errors()
    def continue_from_last_frame(selected: str, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return form_values(service.continue_from(owner_of(owner_id, request), selected))

    @plain_errors()
    def delete_task(selected: str, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Delete the selected task here (after the visitor confirmed), then show the history without it."""
        owner = owner_of(owner_id, request)
        message = words(service.delete(owner, selected))
        return (None, f"**Deleted.** {message}", "", *history_buttons(None), gr.update(value=None, visible=False),
                *show_history(owner_id, request))

    # -- money: the price beside Generate, what WaveSpeed says of a visitor's key, their spend so far ----------

    @plain_errors()
    def show_price(duration: int | None, typed: str | None, request: gr.Request) -> str:
        """The API's quote for the video about to be submitted, on the key that would pay for it."""
        return words(service.price_line(Visitor("", key_for_lines(typed, request)), duration))

    @plain_errors()
    def show_key_status(typed: str | None, owner_id: str | None, request: gr.Request) -> str:
        """As soon as a key is entered: accepted (with its balance) or rejected; the key itself is never shown.
        Limited per browser and per address (Service.key_status)."""
        try:
            api_key = visitor_key(typed, None)
        except KlingDemoError as error:
            return words(str(error))
        owner = verified_owner(owner_id, secret)
        return words(service.key_status(api_key, owner=f"browser:{owner}" if owner else None, address=_ip(request)))

    @plain_errors()
    def show_spend(owner_id: str | None, request: gr.Request) -> str:
        """What the visitor's completed videos cost so far (shown once the page has its owner id)."""
        return words(service.spend_line(owner_of(owner_id, request))) if owner_id else ""

    # -- the page's own view of a job: status, task id, video, progress, phase; errors end in the status --------

    def expected_render(duration: object) -> Estimate | None:
        """The estimate a first run starts from (the sandbox's setting, or the model's typical time), refined by
        the median of this app's own recent renders of the same length."""
        if duration not in SPEC.durations:
            return None
        seconds = int(duration)  # type: ignore[call-overload]
        typical = settings.sandbox_inference_seconds if service.is_sandbox else SPEC.typical_seconds(seconds)
        return estimate(typical, service.history.expected(SPEC.model_id, seconds))

    async def on_page(start: Callable[[], Job], duration: object) -> AsyncIterator[tuple[Any, ...]]:
        """Drive a job for the page. Nothing is raised: Gradio 6.31 runs no `.then()` step after a handler
        raises (its frontend dispatches only `.failure()` steps then) and its error badges cover the outputs,
        the task id included; so a failure is the last status, and the task id stays copyable."""
        tracker, task, fixes, last = Tracker(expected_render(duration)), "", (), None
        try:
            with plain_errors():
                async for update in job_updates(start()):
                    task, fixes, last = update.task_id or task, update.changes or fixes, update
                    phase = JobPhase.ENDED if update.is_final else JobPhase.SUBMITTED if task else JobPhase.STARTED
                    yield (words(status_markdown(update, fixes)), task, str(update.video_path or "") or None,
                           progress_html(tracker.view(update)), phase)
        except gr.Error as error:  # its message is the toast's (HTML-escaped): shown here as Markdown text
            message = words(history_view.literal(html.unescape(str(error.message))))
            label = "Failed" if task else "Not started"
            ended = JobUpdate(Stage.FAILED, message, last.elapsed if last else 0.0, task_id=task or None)
            yield (f"**{label}** — {message}", task, None, progress_html(tracker.view(ended)) if last else "",
                   JobPhase.ENDED)

    async def generate_on_page(image: str | None, prompt: str, negative_prompt: str | None,
                               guidance_scale: float, duration: int, end_image: str | None, owner_id: str | None,
                               typed_key: str | None, from_page: bool, request: gr.Request,
                               profile: gr.OAuthProfile | None = None) -> AsyncIterator[tuple[Any, ...]]:
        job_request = JobRequest(image=image, prompt=prompt, negative_prompt=negative_prompt,
                                 guidance_scale=guidance_scale, duration=duration, end_image=end_image)
        async for outputs in on_page(lambda: service.generate(job_request, visitor(owner_id, typed_key, request,
                                                                                   from_page, profile)), duration):
            yield outputs

    async def resume_on_page(task_id: str, owner_id: str | None, typed_key: str | None, from_page: bool,
                             request: gr.Request) -> AsyncIterator[tuple[Any, ...]]:
        def start() -> Job:
            return service.resume(check_task_id(task_id), visitor(owner_id, typed_key, request, from_page))

        async for outputs in on_page(start, None):
            yield outputs

    def stopped(task_id: str, phase: str) -> tuple[Any, Any]:
        """Stop's message, true for where the job was: not yet submitted, submitted and running, or already over."""
        if phase in (JobPhase.ENDED, JobPhase.IDLE):
            gr.Info("The job had already ended, so there was nothing to stop.")
            return gr.skip(), gr.skip()
        if task_id:
            text = (f"**Stopped** — This page stopped following task `{task_id}`. It was already submitted and is "
                    "still running at WaveSpeed, so it may still finish and be billed; if it does, it will appear in "
                    "your history.")
        else:
            text = ("**Stopped** — Nothing had been submitted yet, so nothing was billed. If the submission was "
                    "already on its way, the task will still finish into your history.")
        return words(text), ""

    # -- examples: everything an example fills is shown, and an own first frame drops what it set ---------------

    def choose_example(selection: gr.SelectData) -> tuple[Any, ...]:
        example = EXAMPLES[selection.index]
        note = f"Example loaded: **{example.title}**."
        if example.extras:
            note += (f" It also sets {' and '.join(example.extras)}, shown under **Advanced** (opened); a first "
                     "frame of your own clears them.")
        return (str(ASSETS / example.image), example.prompt, example.negative,
                str(ASSETS / example.end_image) if example.end_image else None, example.duration,
                gr.update(open=bool(example.extras)), bool(example.extras), note)

    def own_first_frame(path: str | None, from_example: bool) -> tuple[Any, ...]:
        """A first frame of the visitor's own: checked at once, and an example's end frame and negative
        prompt are cleared so the video does not end on the example's picture."""
        problem = images.quick_check_image(path, SPEC.first_frame, role="first frame") if path else None
        note = f"⚠️ {problem}" if problem else ""
        if from_example:
            cleared = "Your own first frame: the example's end frame and negative prompt were cleared."
            return ("\n\n".join(filter(None, (note, cleared))), "", None, False)
        return note, gr.skip(), gr.skip(), False

    def own_end_frame(path: str | None) -> str:
        problem = images.quick_check_image(path, SPEC.end_frame, role="end frame", required=False) if path else None
        return f"⚠️ {problem}" if problem else ""

    def key_section() -> tuple[gr.Textbox, gr.Markdown]:
        """The visitor's own key; in sandbox mode the box says plainly that a key typed here pays for nothing."""
        if service.is_sandbox:
            title, label = "Your own API key (not used in sandbox mode)", "API key"
            info = ("Sandbox mode: a key typed here is not used and pays for nothing; videos are still made "
                    "locally without AI. For Kling 2.0, start the app with WAVESPEED_API_KEY set.")
        else:
            title, label = "Your WaveSpeed key", "WaveSpeed API key"
            info = "Used for your requests only; never stored, logged or shown."
        with gr.Accordion(title, open=settings.require_user_key, elem_id="key-section"):
            box = gr.Textbox(label=label, type="password", elem_id="user-key",
                             placeholder="optional" if not settings.require_user_key else "required", info=info)
            return box, gr.Markdown("", elem_id="key-status")

    with gr.Blocks(title="Kling 2.0 image-to-video", delete_cache=UPLOAD_CACHE_CLEANUP) as demo:
        # Gradio sends a BrowserState's `secret` to every visitor: a public constant, the value is signed.
        owner_store = gr.BrowserState("", storage_key=OWNER_STORAGE_KEY, secret=OWNER_STORAGE_OBFUSCATION)
        owner_id = gr.State("")
        typed_key = gr.State("")
        from_page = gr.State(False)  # set by the page's own first step of Generate and Resume
        job_phase = gr.State(JobPhase.IDLE)
        from_example = gr.State(False)  # the form holds an example's end frame or negative prompt
        history_ids = gr.State([])
        history_seen = gr.State("")
        history_ticker = gr.Timer(5.0)
        history_selected = gr.State("")  # the task id shown in the detail; every action checks it is the owner's

        gr.Markdown(f"## {SPEC.title} — one still image in, a 5 or 10 second video out", elem_id="title")
        gr.Markdown(backend_banner(service.backend, settings), elem_id="backend-banner")
        if settings.require_user_key:  # needed before anything else
            key_box, key_status = key_section()
        examples = gr.Gallery([(str(ASSETS / e.image), e.title) for e in EXAMPLES], label="Try an example",
                              columns=len(EXAMPLES), rows=1, height=96, object_fit="cover", allow_preview=False,
                              interactive=False, elem_id="examples", buttons=[])
        with gr.Row(equal_height=False, elem_id="main-row"):
            with gr.Column(scale=1, elem_id="inputs-column"):
                image = frame_input(label="First frame", height=180, elem_id="first-frame")
                first_check = gr.Markdown("", elem_id="first-frame-check", container=False, elem_classes="kd-note")
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=SPEC.max_chars("prompt"),
                                    placeholder="A slow dolly-in as the wind moves through her hair…",
                                    elem_id="prompt")
                prompt_count = gr.Markdown("", elem_id="prompt-count", container=False, elem_classes="kd-note")
                with gr.Row(elem_id="settings-row"):
                    guidance = gr.Slider(SPEC.guidance_min, SPEC.guidance_max, value=SPEC.guidance_default,
                                         step=0.05, label="Guidance scale", min_width=200, scale=3, elem_id="guidance",
                                         info="Higher follows the prompt more closely. Kling has no seed: "
                                              "each run differs.")
                    duration = duration_input(choices=list(SPEC.durations), value=SPEC.default_duration, label="Duration (s)",
                                             elem_id="duration", min_width=120, scale=1)
                with gr.Accordion("Advanced", open=False, elem_id="advanced") as advanced:
                    negative = gr.Textbox(label="Negative prompt", lines=2,
                                          max_length=SPEC.max_chars("negative_prompt"),
                                          placeholder="blurry, distorted hands", elem_id="negative-prompt")
                    negative_count = gr.Markdown("", elem_id="negative-prompt-count", container=False, elem_classes="kd-note")
                    end_image = frame_input(label="End frame (optional)", height=200, elem_id="end-frame")
                    end_check = gr.Markdown("", elem_id="end-frame-check", container=False, elem_classes="kd-note")
                with gr.Row(elem_id="buttons"):
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                price = gr.Markdown("", elem_id="price", elem_classes="kd-note")
                budget = gr.Markdown("", elem_id="budget", visible=False)
                if oauth_enabled():  # a Space with `hf_oauth: true`; the button cannot start anywhere else
                    gr.LoginButton("Sign in with Hugging Face for your own budget", elem_id="login")
            with gr.Column(scale=1, elem_id="result-column"):
                status = gr.Markdown(IDLE_STATUS, elem_id="status", container=True)
                progress = gr.HTML("", elem_id="progress")
                task_id = gr.Textbox(label="Task id", interactive=False, buttons=["copy"], elem_id="task-id")
                video = gr.Video(label="Video", interactive=False, autoplay=True, buttons=["download"],
                                 elem_id="video")
                if not settings.require_user_key:
                    key_box, key_status = key_section()
        with gr.Accordion("Your history", open=True, elem_id="history-section"):
            gr.Markdown("Every generation you submit is kept here, even if you close the tab. Only you can see it.")
            spend = gr.Markdown("", elem_id="spend")
            gallery = gr.Gallery(label="Your generations", columns=5, height=260, object_fit="contain",
                                 allow_preview=False, elem_id="history", show_label=False)
            with gr.Row():
                history_video = gr.Video(label="Selected video", interactive=False, buttons=["download"],
                                         elem_id="history-video")
                with gr.Column():
                    history_detail = gr.Markdown(elem_id="history-detail")
                    history_end_frame = gr.Image(label="End frame", height=110, interactive=False, visible=False,
                                                 buttons=[], elem_id="history-end-frame")
                    with gr.Row():
                        reuse_btn = gr.Button("Reuse these settings", size="sm", interactive=False,
                                              elem_id="reuse-settings")
                        continue_btn = gr.Button("Continue from the last frame", size="sm", interactive=False,
                                                 elem_id="continue-from-last-frame")
                        delete_btn = gr.Button("Delete…", size="sm", variant="stop", interactive=False,
                                               elem_id="delete-task")
                    with gr.Column(visible=False, elem_id="delete-confirm") as delete_confirm:
                        gr.Markdown(DELETE_QUESTION_SANDBOX if service.is_sandbox else DELETE_QUESTION)
                        with gr.Row():
                            confirm_delete_btn = gr.Button("Delete for good", size="sm", variant="stop",
                                                           elem_id="confirm-delete")
                            cancel_delete_btn = gr.Button("Keep it", size="sm", elem_id="cancel-delete")
                    refresh_btn = gr.Button("Refresh history", size="sm", elem_id="refresh-history")
                    resume_id = gr.Textbox(label="Resume by task id", placeholder="task id from this app or "
                                           "elsewhere (with your own key)", elem_id="resume-id")
                    resume_btn = gr.Button("Resume", size="sm", elem_id="resume")
        # What API and MCP clients call: the same work with named outputs, on a trigger the page never shows.
        with gr.Column(visible=False):
            api_status = gr.Markdown(label="status")
            api_task_id = gr.Textbox(label="task_id")
            api_video = gr.Video(label="video")
            api_trigger = gr.Button("API only", elem_id="api-only")

        def idle() -> tuple[Any, Any]:
            return gr.update(interactive=True), gr.update(interactive=False)

        def busy() -> tuple[Any, ...]:
            """Buttons for a running job, and a clean slate: no old task id, video or progress."""
            return (gr.update(interactive=False), gr.update(interactive=True), True, JobPhase.STARTED, "", None,
                    "")

        private: dict[str, Any] = {"api_visibility": "private"}
        key_box.change(lambda key: key, inputs=key_box, outputs=typed_key, queue=False, **private)
        for box, count, field in ((prompt, prompt_count, "prompt"), (negative, negative_count, "negative_prompt")):
            box.change(None, inputs=box, outputs=count, js=counter_js(SPEC.max_chars(field)), queue=False, **private)
        # Housekeeping never waits in the queue (served by POST /gradio_api/run/predict), so a queue full of
        # jobs cannot refuse a tab its owner id, and the page can refuse to generate without one.
        demo.load(on_load, inputs=owner_store, outputs=[owner_store, owner_id, gallery, history_ids], queue=False,
                  **private)

        inputs = [image, prompt, negative, guidance, duration, end_image, owner_id, typed_key, from_page]
        page_outputs = [status, task_id, video, progress, job_phase]
        busy_outputs = [generate_btn, stop_btn, from_page, job_phase, task_id, video, progress]
        # Buttons flip only once the inputs pass: Gradio runs no `.then()` after a validator refuses.
        job_event = generate_btn.click(
            lambda *_: busy(), inputs=inputs, outputs=busy_outputs, validator=validate, **private).then(
            generate_on_page, inputs=inputs, outputs=page_outputs, validator=validate, concurrency_id="jobs",
            concurrency_limit=settings.concurrency, show_progress="hidden", **private)
        resume_event = resume_btn.click(busy, outputs=busy_outputs, queue=False, **private).then(
            resume_on_page, inputs=[resume_id, owner_id, typed_key, from_page], outputs=page_outputs,
            concurrency_id="jobs", concurrency_limit=settings.concurrency, show_progress="hidden", **private)
        for event in (job_event, resume_event):
            # `.failure()` too: in 6.31 a step that raised (a full queue, a server error) runs no `.then()` step.
            event.failure(idle, outputs=[generate_btn, stop_btn], queue=False, **private)
            event.then(idle, outputs=[generate_btn, stop_btn], queue=False, **private).then(
                show_history, inputs=owner_id, outputs=[gallery, history_ids], queue=False, **private)
        stop_btn.click(stopped, inputs=[task_id, job_phase], outputs=[status, progress],
                       cancels=[job_event, resume_event], queue=False, **private).then(
            idle, outputs=[generate_btn, stop_btn], queue=False, **private).then(
            lambda: JobPhase.IDLE, outputs=job_phase, queue=False, **private)
        # API clients see the history of their key's hash, else of their IP: no use as an MCP tool.
        refresh_btn.click(show_history, inputs=owner_id, outputs=[gallery, history_ids], api_name="history",
                          queue=False, api_visibility="undocumented")
        history_buttons_out = [reuse_btn, continue_btn, delete_btn, delete_confirm]
        selected_out = [history_video, history_detail, history_selected, *history_buttons_out, history_end_frame]
        history_ticker.tick(refresh_changed, inputs=[owner_id, history_seen, history_selected],
                            outputs=[gallery, history_ids, history_seen, *selected_out], queue=False,
                            show_progress="hidden", **private)
        gallery.select(select_history, inputs=[history_ids, owner_id], outputs=selected_out, queue=False, **private)
        # Added last, so the events above keep their numbers.
        demo.load(show_budget, inputs=typed_key, outputs=budget, queue=False, **private)
        job_event.then(show_budget, inputs=typed_key, outputs=budget, queue=False, show_progress="hidden", **private)
        key_box.change(show_budget, inputs=key_box, outputs=budget, queue=False, show_progress="hidden", **private)
        # Money, after the events above so their numbers stay: the price follows the duration and the key.
        quiet: dict[str, Any] = {"queue": False, "show_progress": "hidden", **private}
        demo.load(show_price, inputs=[duration, key_box], outputs=price, **quiet)
        duration.change(show_price, inputs=[duration, key_box], outputs=price, **quiet)
        key_box.change(show_price, inputs=[duration, key_box], outputs=price, **quiet)
        key_box.change(show_key_status, inputs=[key_box, owner_id], outputs=key_status, **quiet)
        gallery.change(show_spend, inputs=owner_id, outputs=spend, **quiet)

        # -- "Your WaveSpeed tasks": with one's own key, its recent tasks, each brought into the history by a pick
        # and a click (a resume by id without typing it). Laid out and wired last, so the events above keep their
        # numbers; the service refuses both steps without the visitor's own key, whoever calls them.
        with gr.Accordion("Your WaveSpeed tasks", open=False, visible=False, elem_id="wavespeed-tasks") as tasks_box:
            tasks_note = gr.Markdown("The recent tasks of your own key, made here, on wavespeed.ai or through its "
                                     "API (last 24 hours). Pick one to bring it and its video into your history.",
                                     elem_id="wavespeed-tasks-note")
            load_tasks_btn = gr.Button("Load my tasks", size="sm", elem_id="load-wavespeed-tasks")
            task_list = gr.Radio([], label="Your recent tasks", elem_id="wavespeed-task-list")
            adopt_btn = gr.Button("Bring into my history", size="sm", elem_id="adopt-task")

        @plain_errors()
        def load_tasks(owner_id: str | None, typed_key: str | None, request: gr.Request) -> tuple[Any, str]:
            """The visitor's own key's recent tasks of this model, as picks."""
            tasks = service.recent_tasks(visitor(owner_id, typed_key, request))
            note = (f"{len(tasks)} recent task{'s' if len(tasks) != 1 else ''} of your key; pick one, then press "
                    "**Bring into my history**." if tasks else "Your key has no tasks of this model in the last 24 hours.")
            return gr.update(choices=recent_task_choices(tasks), value=None), note

        async def adopt_on_page(picked: str | None, owner_id: str | None, typed_key: str | None, from_page: bool,
                                request: gr.Request) -> AsyncIterator[tuple[Any, ...]]:
            """Follow the picked task of the visitor's own key into their history, shown like a resume."""
            def start() -> Job:
                who = visitor(owner_id, typed_key, request, from_page)
                if who.api_key and not picked:
                    raise InputRejected("Pick one of your tasks first (press “Load my tasks” to list them).")
                return service.adopt(picked or "", who)

            async for outputs in on_page(start, None):
                yield outputs

        key_box.change(lambda key: gr.update(visible=bool((key or "").strip()) and not service.is_sandbox),
                       inputs=key_box, outputs=tasks_box,
                       queue=False, show_progress="hidden", **private)
        load_tasks_btn.click(load_tasks, inputs=[owner_id, typed_key], outputs=[task_list, tasks_note], **private)
        adopt_event = adopt_btn.click(busy, outputs=busy_outputs, queue=False, **private).then(
            adopt_on_page, inputs=[task_list, owner_id, typed_key, from_page], outputs=page_outputs,
            concurrency_id="jobs", concurrency_limit=settings.concurrency, show_progress="hidden", **private)
        adopt_event.failure(idle, outputs=[generate_btn, stop_btn], queue=False, **private)
        adopt_event.then(idle, outputs=[generate_btn, stop_btn], queue=False, **private).then(
            show_history, inputs=owner_id, outputs=[gallery, history_ids], queue=False, **private)
        stop_btn.click(None, cancels=[adopt_event], queue=False, **private)

        # -- examples and instant image checks ------------------------------------------------------------------
        examples.select(choose_example, outputs=[image, prompt, negative, end_image, duration, advanced,
                                                 from_example, status], queue=False, **private)
        image.upload(own_first_frame, inputs=[image, from_example],
                     outputs=[first_check, negative, end_image, from_example], queue=False, **private)
        image.clear(lambda: "", outputs=first_check, queue=False, **private)
        end_image.upload(own_end_frame, inputs=end_image, outputs=end_check, queue=False, **private)
        end_image.clear(lambda: "", outputs=end_check, queue=False, **private)

        # -- a finished video in a background tab: the title says so, and a notification if allowed ------------
        generate_btn.click(None, js=ASK_TO_NOTIFY_JS, queue=False, **private)
        for event in (job_event, resume_event):
            event.then(None, inputs=status, js=NOTIFY_JS, queue=False, **private)

        # -- the API: /generate and /resume stream (status, task_id, video) -------------------------------------
        describe_for_api(generate, {"image": image, "prompt": prompt, "negative_prompt": negative,
                                    "guidance_scale": guidance, "duration": duration, "end_image": end_image})
        describe_for_api(resume, {"task_id": resume_id})
        api_trigger.click(generate, inputs=inputs, outputs=[api_status, api_task_id, api_video],
                          api_name="generate", validator=validate, concurrency_id="jobs",
                          concurrency_limit=settings.concurrency)
        api_trigger.click(resume, inputs=[resume_id, owner_id, typed_key, from_page],
                          outputs=[api_status, api_task_id, api_video], api_name="resume", concurrency_id="jobs",
                          concurrency_limit=settings.concurrency)

        # History actions (added after the events above, so their numbers stay): the service checks ownership.
        form = [image, prompt, negative, guidance, duration, end_image, advanced]
        reuse_btn.click(reuse_settings, inputs=[history_selected, owner_id], outputs=form, queue=False, **private)
        continue_btn.click(continue_from_last_frame, inputs=[history_selected, owner_id], outputs=form,
                           queue=False, **private)
        delete_btn.click(lambda: gr.update(visible=True), outputs=delete_confirm, queue=False, **private)
        cancel_delete_btn.click(lambda: gr.update(visible=False), outputs=delete_confirm, queue=False, **private)
        confirm_delete_btn.click(delete_task, inputs=[history_selected, owner_id],
                                 outputs=[*selected_out, gallery, history_ids], queue=False, **private)

    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue)
    guard_launch(demo, settings, secret, *([webhooks.route(service.webhooks)] if service.webhooks else []))
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


def guard_launch(demo: gr.Blocks, settings: Settings, secret: str, *routes: Any) -> None:
    """Launch `demo`, however it is launched, behind the app's front door and with extra routes beside it.

    - uvicorn trusts exactly `settings.trusted_proxies`: it reads `FORWARDED_ALLOW_IPS` inside `launch()`
      (`uvicorn.Config`) and rewrites `request.client.host` to the rightmost X-Forwarded-For address not in it;
      left alone it would trust loopback, where any local proxy, tunnel or share link arrives.
    - `front_door.FrontDoor` (FastAPI `middleware`) stamps MCP callers and bounds uploads; `num_workers=0` keeps
      uploads in this process, so no static worker serves them around it.
    - `routes` (FastAPI `routes`) are registered ahead of Gradio's own.
    Gradio 6.31 builds its FastAPI app inside `launch()`, and a Space may call `demo.launch()` itself without our
    options, so the instance's `launch` is wrapped. Wrapped per instance, like `frame_input`."""
    stock_launch = demo.launch

    def launch(*args: Any, **kwargs: Any) -> Any:
        uploads = UploadBounds(get_upload_folder(), per_address_bytes=int(settings.upload_mb_per_hour * MB),
                               total_bytes=int(settings.upload_cache_gb * GB))
        door = Middleware(FrontDoor, secret=secret, trusted=TrustedProxies(settings.trusted_proxies), uploads=uploads)
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["routes"] = [*routes, *(app_kwargs.get("routes") or [])]
        app_kwargs["middleware"] = [door, *(app_kwargs.get("middleware") or [])]
        kwargs["num_workers"] = 0
        os.environ["FORWARDED_ALLOW_IPS"] = settings.trusted_proxies
        log.info("a visitor's address is %s", f"the rightmost X-Forwarded-For hop that is not a trusted proxy "
                 f"({settings.trusted_proxies})" if settings.trusted_proxies else
                 "the connection's own (no proxy is trusted; X-Forwarded-For is ignored)")
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


async def stream(job: Job, words: Callable[[str], str] = str) -> AsyncIterator[Outputs]:
    """A job's updates as (status, task id, video) for API clients; a failure becomes gr.Error. Updates that
    only move the running time on are thinned (`ticks.worth_sending`): each costs Gradio a postprocess."""
    fixes: tuple[str, ...] = ()
    sent: JobUpdate | None = None
    async for update in job_updates(job):
        fixes = update.changes or fixes
        if not ticks.worth_sending(sent, update):
            continue
        sent = update
        yield words(status_markdown(update, fixes)), update.task_id or "", str(update.video_path or "") or None


async def job_updates(job: Job) -> AsyncIterator[JobUpdate]:
    """Run a job off the event loop, waiting between polls without holding a thread; a failure becomes gr.Error.

    With webhooks on, an update carries a `wake` handle: the wait is `await wake.wait_async(...)` on this loop,
    which a webhook (on another thread) ends at once through `loop.call_soon_threadsafe`; still no thread held."""
    try:
        async for update in step_updates(job, anyio.to_thread.run_sync):
            yield update
    except KlingDemoError as error:
        raise shown_error(error) from error
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


def recent_task_choices(tasks: list[Prediction]) -> list[tuple[str, str]]:
    """(label, task id) picks for "Your WaveSpeed tasks": status, when, the prompt if the API echoes it, the id."""
    choices = []
    for task in tasks:
        epoch = task.created_epoch
        when = time.strftime("%d %b %H:%M", time.localtime(epoch)) if epoch is not None else "time unknown"
        prompt = str(task.inputs.get("prompt") or "").strip()
        about = f" · “{prompt[:50]}{'…' if len(prompt) > 50 else ''}”" if prompt else ""
        status = history_view.STATUS_WORDS.get(task.status.value, task.status.value)
        choices.append((f"{status} · {when}{about} · task {task.task_id}", task.task_id))
    return choices
