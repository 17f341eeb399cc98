"""The page: its layout and the table of its events. Each event is a method of `Handlers` (the page's) or `Api`
(what programs call); the views word what the service answers."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from ..config import Settings
from ..models import DEFAULT_MODEL
from ..service.backend import Backend
from ..service.identity import oauth_enabled
from ..service.service import Service
from ..service.visitors import OWNER_STORAGE_KEY, OWNER_STORAGE_OBFUSCATION
from . import views
from .api import Api, webhook_route
from .examples import ASSETS, EXAMPLES
from .gradio_fixes import (close_with, describe_for_api, duration_input, frame_input, guard_launch, hold_queue_limit,
                           run_more_than_forty)
from .handlers import RECHECK_LATER, REJOINED_OUTPUTS, SELECTED_OUTPUTS, Handlers

SPEC = DEFAULT_MODEL
# Gradio refuses bigger uploads with HTTP 413 while they stream in, before they reach the disk cache. The API takes
# at most 10 MB, but bigger files are re-encoded: a PNG photo at the 16 MP decode limit is 25–50 MB, a 50 MP phone
# JPEG 10–25 MB. Memory does not depend on file size (`ImageLimits.max_pixels` bounds it), so the cap only bounds
# disk and bandwidth per upload.
MAX_UPLOAD = "50mb"
# Every 30 min, delete uploads older than 2 h: a job reads its images within seconds of the click.
UPLOAD_CACHE_CLEANUP = (30 * 60, 2 * 3600)


def launch_options(settings: Settings) -> dict[str, Any]:
    """Arguments for `demo.launch()` that the app needs wherever it is launched (the launch wrapper adds the rest)."""
    return {"allowed_paths": [str(settings.videos_dir)], "max_file_size": MAX_UPLOAD, "show_error": True,
            "mcp_server": settings.mcp_server}


def counter_js(cap: int) -> str:
    """The browser-side counter under a text box capped at `cap` characters (page.js)."""
    return f"(text) => window.klingDemo.counter(text, {cap})"


def build_app(settings: Settings, backend: Backend | None = None, service: Service | None = None) -> gr.Blocks:
    """Build the page over a `Service` (made from the settings, and `backend` if given, unless one is passed)."""
    service = service or Service(settings, backend)
    # Served in place: Gradio neither copies nor re-downloads the finished video.
    gr.set_static_paths([str(service.videos_dir), str(ASSETS)])
    os.environ.setdefault("GRADIO_RUN_HISTORY", "false")  # also when launched without launch_options()
    handlers, api = Handlers(service, settings), Api(service)
    with gr.Blocks(title="Kling 2.0 image-to-video", delete_cache=UPLOAD_CACHE_CLEANUP) as demo:
        page = _layout(service, settings)
        _events(demo, page, handlers, api, service, settings)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue)
    routes = [webhook_route(service.receive_webhook)] if service.webhooks is not None else []
    guard_launch(demo, settings, service.visitors.secret, *routes)
    hold_queue_limit(demo)
    run_more_than_forty(demo, settings.concurrency)
    close_with(demo, service.close)
    demo.service = service  # type: ignore[attr-defined]  # tests reach the journal and the sandbox through it
    demo.backend = service.backend  # type: ignore[attr-defined]
    return demo


class Page:
    """The page's components, by name (`_layout` makes them, `_events` wires them)."""


def _layout(service: Service, settings: Settings) -> Page:
    """The page's components, top to bottom: examples, the form, the job's status, the history, the key, and the
    hidden outputs the API and MCP use."""
    p, voice = Page(), service.voice

    def key_section() -> tuple[gr.Textbox, gr.Markdown]:
        """The visitor's own key; in sandbox mode the box says plainly that a key typed here pays for nothing."""
        if service.is_sandbox:
            title, label = "Your own API key (not used in sandbox mode)", "API key"
            info = ("Sandbox mode: a key typed here is not used and pays for nothing; videos are still made locally "
                    "without AI.")
        else:
            title, label = "Your WaveSpeed key", "WaveSpeed API key"
            info = "Used for your requests only; never stored, logged or shown."
        with gr.Accordion(title, open=settings.require_user_key, elem_id="key-section"):
            box = gr.Textbox(label=label, type="password", elem_id="user-key",
                             placeholder="optional" if not settings.require_user_key else "required", info=info)
            return box, gr.Markdown("", elem_id="key-status")

    # Gradio sends a BrowserState's `secret` to every visitor: a public constant, the value is signed.
    p.owner_store = gr.BrowserState("", storage_key=OWNER_STORAGE_KEY, secret=OWNER_STORAGE_OBFUSCATION)
    p.owner_id = gr.State("")
    p.typed_key = gr.State("")
    p.from_page = gr.State(False)  # set by the page's own first step of Generate and Resume
    p.from_example = gr.State("")  # the form holds an example ("example"), with an end frame or negative ("extras")
    p.history_ids = gr.State([])
    p.history_seen = gr.State("")
    p.history_ticker = gr.Timer(5.0)
    p.history_selected = gr.State("")  # the task id shown in the detail; every action checks it is the owner's
    p.history_shown = gr.State("")  # the status the detail shows, written with it
    # Values the browser itself holds: the job a click starts (named there, so Stop finds it at once), its stage.
    p.job_token = gr.Textbox("", visible=False, elem_id="job-token")
    p.job_stage = gr.Textbox("", visible=False, elem_id="job-stage")
    # A job in flight when the page loaded (a reload, a second tab): its row, and a value whose change follows it.
    p.watched = gr.State(None)
    p.rejoined = gr.Textbox("", visible=False, elem_id="rejoined")

    gr.Markdown(f"## {SPEC.title} — one still image in, a 5 or 10 second video out", elem_id="title")
    gr.Markdown(views.backend_banner(voice, base_url=service.backend.base_url, model_id=SPEC.model_id,
                                     require_user_key=settings.require_user_key), elem_id="backend-banner")
    if settings.require_user_key:  # needed before anything else
        p.key_box, p.key_status = key_section()
    p.examples = gr.Gallery([(str(ASSETS / e.image), e.title) for e in EXAMPLES], label="Try an example",
                          columns=len(EXAMPLES), rows=1, height=96, object_fit="cover", allow_preview=False,
                          interactive=False, elem_id="examples", buttons=[])
    with gr.Row(equal_height=False, elem_id="main-row"):
        with gr.Column(scale=1, elem_id="inputs-column"):
            p.form_note = gr.Markdown("", elem_id="form-note", elem_classes="kd-note")
            p.image = frame_input(label="First frame", height=180, elem_id="first-frame")
            p.first_check = gr.Markdown("", elem_id="first-frame-check", container=False, elem_classes="kd-note")
            p.prompt = gr.Textbox(label="Prompt", lines=2, max_length=SPEC.max_chars("prompt"),
                                placeholder="A slow dolly-in as the wind moves through her hair…",
                                elem_id="prompt")
            p.prompt_count = gr.Markdown("", elem_id="prompt-count", container=False, elem_classes="kd-note")
            with gr.Row(elem_id="settings-row"):
                p.guidance = gr.Slider(SPEC.guidance_min, SPEC.guidance_max, value=SPEC.guidance_default,
                                     step=0.05, label="Guidance scale", min_width=200, scale=3, elem_id="guidance",
                                     info="Higher follows the prompt more closely. Kling has no seed: "
                                          "each run differs.")
                p.duration = duration_input(choices=list(SPEC.durations), value=SPEC.default_duration,
                                          label="Duration (s)", elem_id="duration", min_width=120, scale=1)
            with gr.Row(elem_id="buttons"):
                p.generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                p.stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
            # Right under Generate, with Advanced after them so both are in view at 1280×800: why the next video is
            # not offered (and when that frees), or the budgets used.
            p.budget = gr.Markdown("", elem_id="budget", visible=False)
            p.price = gr.Markdown("", elem_id="price", elem_classes="kd-note")
            # Clicked by page.js when the page is looked at again (Gradio renders no invisible component: CSS hides
            # it), so the key's balance and the budgets are as they are now; the timer looks again as a limit frees.
            p.money_refresh = gr.Button("Refresh the money lines", elem_id="money-refresh", elem_classes="kd-hidden")
            p.money_ticker = gr.Timer(RECHECK_LATER, active=False)
            with gr.Accordion("Advanced", open=False, elem_id="advanced") as p.advanced:
                p.negative = gr.Textbox(label="Negative prompt", lines=2,
                                      max_length=SPEC.max_chars("negative_prompt"),
                                      placeholder="blurry, distorted hands", elem_id="negative-prompt")
                p.negative_count = gr.Markdown("", elem_id="negative-prompt-count", container=False,
                                             elem_classes="kd-note")
                p.end_image = frame_input(label="End frame (optional)", height=200, elem_id="end-frame")
                p.end_check = gr.Markdown("", elem_id="end-frame-check", container=False, elem_classes="kd-note")
            if oauth_enabled():  # a Space with `hf_oauth: true`; the button cannot start anywhere else
                gr.LoginButton("Sign in with Hugging Face for your own budget", elem_id="login")
        with gr.Column(scale=1, elem_id="result-column"):
            p.status = gr.Markdown(views.IDLE_STATUS, elem_id="status", container=True)
            p.progress = gr.HTML("", elem_id="progress")
            p.task_id = gr.Textbox(label="Task id", interactive=False, buttons=["copy"], elem_id="task-id")
            p.video = gr.Video(label="Video", interactive=False, autoplay=True, buttons=["download"],
                             elem_id="video")
            if not settings.require_user_key:
                p.key_box, p.key_status = key_section()
    with gr.Accordion("Your history", open=True, elem_id="history-section"):
        gr.Markdown("Every generation you submit is kept here, even if you close the tab. Only you can see it.")
        p.spend = gr.Markdown("", elem_id="spend")
        p.gallery = gr.Gallery(label="Your generations", columns=5, height=260, object_fit="contain",
                             allow_preview=False, elem_id="history", show_label=False)
        with gr.Row():
            p.history_video = gr.Video(label="Selected video", interactive=False, buttons=["download"],
                                     elem_id="history-video")
            with gr.Column():
                p.history_detail = gr.Markdown(elem_id="history-detail")
                p.history_end_frame = gr.Image(label="End frame", height=110, interactive=False, visible=False,
                                             buttons=[], elem_id="history-end-frame")
                with gr.Row():
                    p.reuse_btn = gr.Button("Reuse these settings", size="sm", interactive=False,
                                          elem_id="reuse-settings")
                    p.continue_btn = gr.Button("Continue from the last frame", size="sm", interactive=False,
                                             elem_id="continue-from-last-frame")
                    p.delete_btn = gr.Button("Delete…", size="sm", variant="stop", interactive=False,
                                           elem_id="delete-task")
                with gr.Column(visible=False, elem_id="delete-confirm") as p.delete_confirm:
                    gr.Markdown(views.delete_question(voice))
                    with gr.Row():
                        p.confirm_delete_btn = gr.Button("Delete for good", size="sm", variant="stop",
                                                       elem_id="confirm-delete")
                        p.cancel_delete_btn = gr.Button("Keep it", size="sm", elem_id="cancel-delete")
                p.refresh_btn = gr.Button("Refresh history", size="sm", elem_id="refresh-history")
                p.resume_id = gr.Textbox(label="Resume by task id", placeholder="task id from this app or "
                                       "elsewhere (with your own key)", elem_id="resume-id")
                p.resume_btn = gr.Button("Resume", size="sm", elem_id="resume")
    # "Your WaveSpeed tasks": with one's own key, its recent tasks, each brought into the history by a pick and
    # a click (a resume by id without typing it); the service refuses both without the visitor's own key.
    with gr.Accordion("Your WaveSpeed tasks", open=False, visible=False, elem_id="wavespeed-tasks") as p.tasks_box:
        p.tasks_note = gr.Markdown("The recent tasks of your own key, made here, on wavespeed.ai or through its API "
                                 "(last 24 hours). Pick one to bring it and its video into your history.",
                                 elem_id="wavespeed-tasks-note")
        p.load_tasks_btn = gr.Button("Load my tasks", size="sm", elem_id="load-wavespeed-tasks")
        p.task_list = gr.Radio([], label="Your recent tasks", elem_id="wavespeed-task-list")
        p.adopt_btn = gr.Button("Bring into my history", size="sm", elem_id="adopt-task")
    # What API and MCP clients call: the same work with named outputs, on a trigger the page never shows.
    with gr.Column(visible=False):
        p.api_status = gr.Markdown(label="status")
        p.api_task_id = gr.Textbox(label="task_id")
        p.api_video = gr.Video(label="video")
        p.api_trigger = gr.Button("API only", elem_id="api-only")
    return p


def _events(demo: gr.Blocks, p: Page, page: Handlers, api: Api, service: Service, settings: Settings) -> None:
    """The table of the page's events: what each click, change and timer runs (`page`'s and `api`'s methods)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    quiet: dict[str, Any] = {"queue": False, "show_progress": "hidden", **private}
    jobs: dict[str, Any] = {"concurrency_id": "jobs", "concurrency_limit": settings.concurrency}
    inputs = [p.image, p.prompt, p.negative, p.guidance, p.duration, p.end_image, p.owner_id, p.typed_key, p.from_page]
    job_outputs = [p.status, p.task_id, p.video, p.progress, p.job_stage]
    busy_outputs = [p.generate_btn, p.stop_btn, p.from_page, p.task_id, p.video, p.progress, p.job_stage]
    buttons = [p.generate_btn, p.stop_btn]
    history_out = [p.gallery, p.history_ids]
    selected_out = [p.history_video, p.history_detail, p.history_selected, p.history_shown, p.reuse_btn,
                    p.continue_btn, p.delete_btn, p.delete_confirm, p.history_end_frame]
    assert len(selected_out) == SELECTED_OUTPUTS
    new_job = {"fn": None, "js": "() => window.klingDemo.newJob()", "outputs": p.job_token, "queue": False,
               **private}
    # Resume and "Bring into my history" answer in the status, far above their buttons: it comes into view.
    new_job_shown = {**new_job, "js": "() => window.klingDemo.newJob('status')"}
    offer_in, offer_out = [p.duration, p.key_box, p.owner_id], [p.price, p.generate_btn, p.budget, p.money_ticker]

    p.key_box.change(lambda key: key, inputs=p.key_box, outputs=p.typed_key, queue=False, **private)
    # The slider's number box takes any number typed (3 beside a slider at 1): it is brought back into range.
    p.guidance.change(None, inputs=p.guidance, outputs=p.guidance, queue=False, **private,
                      js=f"(value) => window.klingDemo.within(value, {SPEC.guidance_min}, {SPEC.guidance_max})")
    for box, count, field in ((p.prompt, p.prompt_count, "prompt"), (p.negative, p.negative_count, "negative_prompt")):
        box.change(None, inputs=box, outputs=count, js=counter_js(SPEC.max_chars(field)), queue=False, **private)
    # Housekeeping never waits in the queue (served by POST /gradio_api/run/predict), so a queue full of jobs
    # cannot refuse a tab its owner id, and the page can refuse to generate without one.
    loaded = demo.load(page.on_load, inputs=p.owner_store, outputs=[p.owner_store, p.owner_id, *history_out],
                       queue=False, **private)
    loaded.then(page.select_newest, inputs=p.owner_id, outputs=[p.gallery, *selected_out], queue=False, **private)

    # A job: the browser names it, the buttons flip once the inputs pass (Gradio runs no `.then()` after a
    # validator refuses), then the job runs; Stop finds it by its name, even before it started.
    job_event = p.generate_btn.click(**new_job).then(
        lambda *_: page.busy(), inputs=inputs, outputs=busy_outputs, validator=api.validate, **private).then(
        page.generate_on_page, inputs=[*inputs, p.job_token], outputs=job_outputs, validator=api.validate,
        show_progress="hidden", **jobs, **private)
    resume_event = p.resume_btn.click(**new_job_shown).then(
        page.busy, outputs=busy_outputs, queue=False, **private).then(
        page.resume_on_page, inputs=[p.resume_id, p.owner_id, p.typed_key, p.from_page, p.job_token], outputs=job_outputs,
        show_progress="hidden", **jobs, **private)
    adopt_event = p.adopt_btn.click(**new_job_shown).then(
        page.busy, outputs=busy_outputs, queue=False, **private).then(
        page.adopt_on_page, inputs=[p.task_list, p.owner_id, p.typed_key, p.from_page, p.job_token], outputs=job_outputs,
        show_progress="hidden", **jobs, **private)
    # A job still running when the page loads is shown at once (its buttons, status, task id and form) and followed
    # to its video; with none, nothing moves ("Ready") and nothing more runs.
    loaded.then(page.rejoin, inputs=p.owner_id, outputs=[p.watched, p.rejoined], **quiet)
    rejoin_form = [p.image, p.prompt, p.negative, p.guidance, p.duration, p.end_image, p.advanced, p.form_note]
    reveal = "() => window.klingDemo.reveal('status', 'buttons')"  # on a phone the status is below the form
    rejoined_out = [*buttons, p.status, p.task_id, p.video, p.progress, p.job_stage, p.job_token, *rejoin_form]
    assert len(rejoined_out) == REJOINED_OUTPUTS
    watch_event = p.rejoined.change(
        page.show_rejoined, inputs=[p.watched, p.owner_id, p.rejoined], outputs=rejoined_out, **quiet).then(
        None, js=reveal, queue=False, **private).then(
        page.watch_on_page, inputs=[p.watched, p.owner_id, p.job_token], outputs=job_outputs, show_progress="hidden",
        **jobs, **private)
    for event in (job_event, resume_event, adopt_event, watch_event):
        # `.failure()` too: in 6.31 a step that raised (a full queue, a server error) runs no `.then()` step.
        event.failure(page.idle, outputs=buttons, queue=False, **private)
        ended = event.then(page.idle, outputs=buttons, queue=False, **private)
        ended.then(page.show_history, inputs=p.owner_id, outputs=history_out, queue=False, **private).then(
            page.select_finished, inputs=[p.owner_id, p.task_id, p.job_stage, p.history_ids, p.history_selected],
            outputs=[p.gallery, *selected_out], queue=False, **private)
        ended.then(None, inputs=p.job_stage, js="(stage) => window.klingDemo.notify(stage)", queue=False, **private)
        ended.then(None, js="() => window.klingDemo.refreshMoneyNow()", queue=False, **private)  # money, below
    p.stop_btn.click(page.stop, inputs=[p.job_token, p.owner_id], outputs=[p.status, p.progress], queue=False,
                   **private).then(page.idle, outputs=buttons, queue=False, **private)

    # The history (API callers of /history see their key's hash's or IP's).
    p.refresh_btn.click(page.show_history, inputs=p.owner_id, outputs=history_out, api_name="history", queue=False,
                      api_visibility="undocumented").then(
        page.highlight, inputs=[p.history_ids, p.history_selected], outputs=p.gallery, queue=False, **private)
    p.history_ticker.tick(page.refresh_changed,
                        inputs=[p.owner_id, p.history_seen, p.history_selected, p.history_shown],
                        outputs=[*history_out, p.history_seen, *selected_out], **quiet)
    p.gallery.select(page.select, inputs=[p.history_ids, p.owner_id], outputs=selected_out, queue=False, **private)
    form = [p.image, p.prompt, p.negative, p.guidance, p.duration, p.end_image, p.advanced, p.form_note]
    show_form = {"fn": None, "js": "() => window.klingDemo.show('inputs-column')", "queue": False, **private}
    p.reuse_btn.click(page.reuse, inputs=[p.history_selected, p.owner_id], outputs=form, queue=False,
                    **private).success(**show_form)
    p.continue_btn.click(page.continue_from, inputs=[p.history_selected, p.owner_id], outputs=form, queue=False,
                       **private).success(**show_form)
    p.delete_btn.click(lambda: gr.update(visible=True), outputs=p.delete_confirm, queue=False, **private)
    p.cancel_delete_btn.click(lambda: gr.update(visible=False), outputs=p.delete_confirm, queue=False, **private)
    p.confirm_delete_btn.click(page.delete, inputs=[p.history_selected, p.owner_id],
                             outputs=[*selected_out, *history_out], queue=False, **private).then(
        None, js="() => window.klingDemo.show('history-detail')", queue=False, **private)  # its answer, in view

    # Money: the price, Generate and the line beside it follow the duration, the key and the budgets; the key's
    # balance is checked when it is entered, after each job (which clicks `money_refresh`) and when the page is
    # looked at again; the spend line follows the history. Each line is one listener that runs again after its
    # answer when triggered meanwhile ("always_last"), so the last answer shown is for the form as it is now:
    # answers of separate listeners, each reading the form when it fired, could land out of order.
    latest = {"trigger_mode": "always_last", **quiet}
    gr.on([demo.load, p.duration.change, p.key_box.change, p.money_ticker.tick, p.money_refresh.click],
          page.show_offer, inputs=offer_in, outputs=offer_out, **latest)
    gr.on([p.key_box.change, p.money_refresh.click], page.show_key_status, inputs=[p.key_box, p.owner_id],
          outputs=p.key_status, **latest)
    gr.on([p.gallery.change, p.money_refresh.click], page.show_spend, inputs=p.owner_id, outputs=p.spend, **latest)

    # Your WaveSpeed tasks (only with one's own key, never in sandbox mode).
    p.key_box.change(lambda key: gr.update(visible=bool((key or "").strip()) and not service.is_sandbox),
                   inputs=p.key_box, outputs=p.tasks_box, **quiet)
    p.load_tasks_btn.click(page.load_tasks, inputs=[p.owner_id, p.typed_key], outputs=[p.task_list, p.tasks_note],
                         **private)

    # Examples and instant image checks.
    p.examples.select(page.choose_example, outputs=[p.image, p.prompt, p.negative, p.end_image, p.duration, p.advanced,
                                                  p.from_example, p.status], queue=False, **private)
    p.image.upload(page.own_first_frame, inputs=[p.image, p.from_example],
                 outputs=[p.first_check, p.negative, p.end_image, p.from_example, p.status], queue=False, **private)
    p.image.clear(lambda: "", outputs=p.first_check, queue=False, **private)
    p.end_image.upload(page.own_end_frame, inputs=p.end_image, outputs=p.end_check, queue=False, **private)
    p.end_image.clear(lambda: "", outputs=p.end_check, queue=False, **private)

    # The API: /generate and /resume stream (status, task_id, video).
    describe_for_api(api.generate, {"image": p.image, "prompt": p.prompt, "negative_prompt": p.negative,
                                    "guidance_scale": p.guidance, "duration": p.duration, "end_image": p.end_image})
    describe_for_api(api.resume, {"task_id": p.resume_id})
    p.api_trigger.click(api.generate, inputs=inputs, outputs=[p.api_status, p.api_task_id, p.api_video],
                      api_name="generate", validator=api.validate, **jobs)
    p.api_trigger.click(api.resume, inputs=[p.resume_id, p.owner_id, p.typed_key, p.from_page],
                      outputs=[p.api_status, p.api_task_id, p.api_video], api_name="resume", **jobs)
