"""The page: layout and event wiring only. Each `JobUpdate` becomes component updates."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import gradio as gr

from . import jobs, media
from .backend import Backend, open_backend
from .client import WaveSpeedClient
from .config import Settings
from .errors import InputRejected, KlingDemoError
from .jobs import JobContext, JobRequest, JobUpdate, Stage
from .models import DEFAULT_MODEL
from .polling import InferenceHistory

log = logging.getLogger(__name__)

SPEC = DEFAULT_MODEL
STAGE_LABELS = {
    Stage.PREPARING: "Checking",
    Stage.UPLOADING: "Uploading",
    Stage.SUBMITTED: "Submitted",
    Stage.PROCESSING: "Rendering",
    Stage.DOWNLOADING: "Downloading",
    Stage.DONE: "Done",
    Stage.FAILED: "Failed",
}
IDLE_STATUS = "Ready. Add a first frame and a prompt, then press **Generate**."


def backend_banner(backend: Backend) -> str:
    if backend.is_sandbox:
        return (
            "**Sandbox mode — no AI.** No `WAVESPEED_API_KEY` is set, so videos are synthesized locally "
            "(a slow camera move over your image, marked *SANDBOX*) and nothing is billed. To generate with "
            "Kling 2.0 for real, put `WAVESPEED_API_KEY=…` in the environment or a `.env` file and restart."
        )
    return (f"**Live: WaveSpeedAI** (`{backend.base_url}`), model `{SPEC.model_id}`. "
            "Every generation is billed to the configured key's account.")


def status_markdown(update: JobUpdate) -> str:
    return f"**{STAGE_LABELS[update.stage]}** — {update.message}"


def launch_options(settings: Settings) -> dict[str, Any]:
    """Arguments for `demo.launch()` that the app needs wherever it is launched."""
    return {"allowed_paths": [str(videos_dir(settings))], "show_error": True}


def videos_dir(settings: Settings) -> Path:
    return settings.data_dir / "videos"


def build_app(settings: Settings, backend: Backend | None = None) -> gr.Blocks:
    """Build the page; with no backend given, open the one the settings call for."""
    backend = backend or open_backend(settings)
    output_dir = videos_dir(settings)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Served in place: Gradio neither copies nor re-downloads the finished video.
    gr.set_static_paths([str(output_dir)])
    history = InferenceHistory()

    def validate(image: str | None, prompt: str | None, negative_prompt: str | None, guidance_scale: float,
                 duration: int, end_image: str | None) -> list[dict[str, Any]]:
        """Instant checks in the page, before anything is uploaded or paid for."""
        return [
            _verdict(lambda: _refuse_if(media.quick_check_image(image, SPEC.first_frame, role="first frame"))),
            _verdict(lambda: media.check_prompt(prompt, SPEC)),
            _verdict(lambda: media.check_prompt(negative_prompt, SPEC, field="negative_prompt", required=False)),
            _verdict(lambda: media.check_guidance(guidance_scale, SPEC)),
            _verdict(lambda: media.check_duration(duration, SPEC)),
            _verdict(lambda: _refuse_if(media.quick_check_image(end_image, SPEC.end_frame, role="end frame",
                                                                 required=False))),
        ]

    async def generate(image: str | None, prompt: str, negative_prompt: str, guidance_scale: float, duration: int,
                       end_image: str | None) -> AsyncIterator[tuple[str, str, str | None]]:
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
        client = WaveSpeedClient(backend.base_url, backend.api_key, connect_timeout=settings.connect_timeout,
                                 read_timeout=settings.read_timeout)
        ctx = JobContext(client=client, videos_dir=output_dir, deadline_seconds=settings.deadline_seconds,
                         max_download_bytes=settings.max_download_bytes, spec=SPEC, history=history)
        request = JobRequest(image=image, prompt=prompt, negative_prompt=negative_prompt,
                             guidance_scale=guidance_scale, duration=duration, end_image=end_image)
        job = jobs.generate(request, ctx)
        try:
            while True:
                update = await anyio.to_thread.run_sync(next, job, None)
                if update is None:
                    return
                video = str(update.video_path) if update.video_path else None
                yield status_markdown(update), update.task_id or "", video
                if update.wait_seconds > 0:
                    await asyncio.sleep(update.wait_seconds)
        except KlingDemoError as error:
            raise gr.Error(str(error), duration=None) from error
        finally:
            ctx.stop.set()
            job.close()
            client.close()

    def stopped(task_id: str) -> str:
        if task_id:
            return (f"**Stopped** — stopped waiting for task `{task_id}`. It was already submitted, so it may "
                    "still finish and be billed.")
        return "**Stopped** — nothing was submitted, so nothing was billed."

    with gr.Blocks(title="Kling 2.0 image-to-video") as demo:
        gr.Markdown(f"# {SPEC.title}\nOne still image in, a 5 or 10 second video out.")
        gr.Markdown(backend_banner(backend), elem_id="backend-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = gr.Image(label="First frame", type="filepath", sources=["upload", "clipboard"],
                                 height=300, elem_id="first-frame")
                prompt = gr.Textbox(label="Prompt", lines=3, max_length=SPEC.prompt_max_chars,
                                    placeholder="A slow dolly-in as the wind moves through her hair…",
                                    elem_id="prompt")
                with gr.Row():
                    guidance = gr.Slider(SPEC.guidance_min, SPEC.guidance_max, value=SPEC.guidance_default,
                                         step=0.05, label="Guidance scale",
                                         info="Higher follows the prompt more closely.")
                    duration = gr.Radio(list(SPEC.durations), value=SPEC.default_duration, label="Duration (s)")
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    negative = gr.Textbox(label="Negative prompt", lines=2, max_length=SPEC.prompt_max_chars,
                                          placeholder="blurry, distorted hands", elem_id="negative-prompt")
                    end_image = gr.Image(label="End frame (optional)", type="filepath",
                                         sources=["upload", "clipboard"], height=200, elem_id="end-frame")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
            with gr.Column(scale=1):
                status = gr.Markdown(IDLE_STATUS, elem_id="status", container=True)
                task_id = gr.Textbox(label="Task id", interactive=False, buttons=["copy"], elem_id="task-id")
                video = gr.Video(label="Video", interactive=False, autoplay=True, buttons=["download"],
                                 elem_id="video")

        inputs = [image, prompt, negative, guidance, duration, end_image]
        busy = generate_btn.click(lambda: (gr.update(interactive=False), gr.update(interactive=True)),
                                  outputs=[generate_btn, stop_btn], queue=False, api_visibility="private")
        job_event = busy.then(generate, inputs=inputs, outputs=[status, task_id, video], api_name="generate",
                              validator=validate, concurrency_limit=settings.concurrency)
        job_event.then(lambda: (gr.update(interactive=True), gr.update(interactive=False)),
                       outputs=[generate_btn, stop_btn], queue=False, api_visibility="private")
        stop_btn.click(stopped, inputs=[task_id], outputs=[status], cancels=[job_event], queue=False,
                       api_visibility="private").then(
            lambda: (gr.update(interactive=True), gr.update(interactive=False)),
            outputs=[generate_btn, stop_btn], queue=False, api_visibility="private")

    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.max_queue)
    demo.backend = backend  # type: ignore[attr-defined]  # tests and the CLI reach the sandbox through it
    return demo


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
