"""The floor for bench/scale.py: a plain gr.Blocks shaped like this app's /generate, talking to no service.

Same inputs as the app's API event (a filepath gr.Image, prompt and negative prompt, a guidance gr.Slider, a
duration gr.Radio, an optional end-frame gr.Image and three gr.State), same outputs (a status gr.Markdown, a
task id gr.Textbox, a gr.Video), an `async` generator handler that yields as many updates as the app sends an
API caller for a fresh job (four steps before the render, the running time every `API_TICK_SECONDS`, then
the video) and waits with `asyncio.sleep` for the render. The video is one small MP4 rendered once at start
(the sandbox's own renderer, so it is the size the app hands Gradio). What a job costs here is what any Gradio
app pays per job: the upload, the queue, pre/postprocessing and the SSE stream.

Environment: FLOOR_RENDER_SECONDS (30), FLOOR_TASKS (a JSON-lines file: one row per job with its id and the
epoch times its handler started, "created", and its render ended, "completed", which bench/scale.py reads
as the sandbox's task times), FLOOR_MAX_THREADS (Gradio's `launch(max_threads=…)`: its queue slots, or the
floor runs in waves of 40 like the peer), FLOOR_QUEUE=stock to keep Gradio's idle-queue timings (by default
they are set as the app sets them: every 20 ms for new work, 0.2 s for gr.Progress). Served like app.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import gradio as gr

RENDER_SECONDS = float(os.environ.get("FLOOR_RENDER_SECONDS", "30"))
TICK_SECONDS = 10.0  # kling_demo.web.ticks.API_TICK_SECONDS: an API caller's running time, at most this often
TASKS = Path(os.environ["FLOOR_TASKS"]) if os.environ.get("FLOOR_TASKS") else None
BEFORE_RENDER = ("Checking the image…", "Uploading the image…", "Submitting the task…", "Queued at WaveSpeed.")


def make_video() -> str:
    """One 5 s MP4 like the sandbox's, made once: every job hands Gradio this same file."""
    from PIL import Image

    from kling_demo.sandbox.render import render_video

    folder = Path(tempfile.mkdtemp(prefix="floor-video-"))
    frame = Image.linear_gradient("L").resize((1280, 720)).convert("RGB")
    render_video(frame, folder / "floor.mp4", 5)
    return str(folder / "floor.mp4")


VIDEO = make_video()
_rows = TASKS.open("a", buffering=1) if TASKS else None  # line-buffered: one write per row


def record(task_id: str, **times: float) -> None:
    if _rows is not None:
        _rows.write(json.dumps({"id": task_id, **times}) + "\n")


async def generate(image: str | None, prompt: str, negative_prompt: str | None = None, guidance_scale: float = 0.5,
                   duration: int = 5, end_image: str | None = None, owner_id: str | None = None,
                   typed_key: str | None = None,
                   from_page: bool = False) -> AsyncIterator[tuple[str, str, str | None]]:
    """Yield the app's updates for one fresh job, wait out the render, end with the video."""
    if not image or not prompt:
        raise gr.Error("Add a first frame and a prompt.")
    task_id = uuid.uuid4().hex
    created = time.time()
    for step in BEFORE_RENDER:
        yield f"**Working** — {step}", task_id if step.startswith("Queued") else "", None
    started = time.monotonic()
    while (left := RENDER_SECONDS - (time.monotonic() - started)) > 0:
        await asyncio.sleep(min(TICK_SECONDS, left))
        yield f"**Rendering** — {time.monotonic() - started:.0f} s so far.", task_id, None
    record(task_id, created=created, completed=time.time())
    yield "**Done** — the video is ready.", task_id, VIDEO


with gr.Blocks(title="Floor") as demo:
    owner_id, typed_key, from_page = gr.State(""), gr.State(""), gr.State(False)
    image = gr.Image(type="filepath", label="First frame")
    prompt = gr.Textbox(label="Prompt")
    negative = gr.Textbox(label="Negative prompt")
    guidance = gr.Slider(0, 1, value=0.5, step=0.05, label="Guidance scale")
    duration = gr.Radio([5, 10], value=5, label="Duration")
    end_image = gr.Image(type="filepath", label="End frame")
    status, task = gr.Markdown(label="status"), gr.Textbox(label="task_id")
    video = gr.Video(label="video")
    button = gr.Button("Generate")
    button.click(generate, inputs=[image, prompt, negative, guidance, duration, end_image, owner_id, typed_key,
                                   from_page], outputs=[status, task, video], api_name="generate",
                 concurrency_limit=None)
demo.queue(max_size=None)
if os.environ.get("FLOOR_QUEUE") != "stock":
    demo._queue.sleep_when_free = 0.02  # as kling_demo.web.page.run_more_than_forty sets them
    demo._queue.progress_update_sleep_when_free = 0.2

if __name__ == "__main__":
    demo.launch(max_threads=int(os.environ.get("FLOOR_MAX_THREADS", "1100")))
