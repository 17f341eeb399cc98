"""The peer for bench/scale.py: a plain Gradio app whose handler calls the official `wavespeed` SDK's `run()`.

This is how typical image-to-video Spaces are written: upload, `run()` (which polls every second in the
handler's worker thread until the task ends), download the video, hand the file to a gr.Video. (Handing
Gradio the URL does not work here: its SSRF guard refuses the sandbox's loopback address.)
Served like app.py (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); WAVESPEED_BASE_URL points the SDK at the
sandbox; PEER_CONCURRENCY=unlimited lifts Gradio's default of one job at a time per event.
"""

from __future__ import annotations

import os
import tempfile

import requests

import gradio as gr
import wavespeed
from wavespeed import config as wavespeed_config

MODEL = "kwaivgi/kling-v2.0-i2v-master"
wavespeed_config.api.base_url = os.environ.get("WAVESPEED_BASE_URL", wavespeed_config.api.base_url)


def generate(image: str, prompt: str, negative_prompt: str = "", guidance_scale: float = 0.5,
             duration: int = 5) -> tuple[str, str]:
    """Upload the frame, run the model to its end, download the video; return (task id, video file)."""
    payload = {"image": wavespeed.upload(image), "prompt": prompt, "guidance_scale": guidance_scale,
               "duration": int(duration)}
    if negative_prompt:
        payload["negative_prompt"] = negative_prompt
    url = wavespeed.run(MODEL, payload)["outputs"][0]
    with requests.get(url, timeout=60) as answer, tempfile.NamedTemporaryFile(suffix=".mp4", delete=False) as video:
        answer.raise_for_status()
        video.write(answer.content)
    return url.rsplit("/", 1)[-1].removesuffix(".mp4"), video.name


unlimited = os.environ.get("PEER_CONCURRENCY") == "unlimited"
demo = gr.Interface(generate, [gr.Image(type="filepath"), gr.Textbox(), gr.Textbox(), gr.Slider(0, 1, 0.5),
                               gr.Radio([5, 10], value=5)], [gr.Textbox(), gr.Video()], api_name="generate",
                    concurrency_limit=None if unlimited else "default")
demo.queue(max_size=None)

if __name__ == "__main__":
    demo.launch()
