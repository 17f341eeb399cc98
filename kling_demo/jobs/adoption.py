"""What a key's listing says of one of its tasks, kept when the task is brought into a history ("Bring into my
history"): its prompt and settings, and its frames, fetched from the listed image URLs into the task's kept frames
the way a job keeps its own (bounded in size, never with the key), so "Reuse these settings" has them.

Image URLs come from whoever submitted the task and may point anywhere, so only one on the API's own host or on
the host of the task's own outputs is fetched: the app never reaches into a network a visitor chose for it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import KlingDemoError
from ..models import ImageLimits, ModelSpec
from ..store import files, videos
from ..store.journal import positive_int
from ..wavespeed.client import Prediction, WaveSpeedClient
from . import images

log = logging.getLogger(__name__)
LISTING_PAGE = 100  # the most the listing gives in one page; the task was picked from its first 20
FRAME_SECONDS = 30.0  # a listed frame that takes longer is left out (the task is still brought in)
SETTINGS = ("prompt", "negative_prompt", "guidance_scale", "duration")


def listed(client: WaveSpeedClient, spec: ModelSpec, videos_dir: Path, task_id: str) -> tuple[dict[str, Any], Path | None]:
    """The task's settings as the key's listing shows them (as a history row's params: {} when it is not listed or
    the listing cannot be read) and the preview its kept frames sit beside (None when no frame could be kept)."""
    try:
        items = client.predictions(1, LISTING_PAGE, model=spec.model_id, attempts=1).items
    except KlingDemoError as error:
        log.info("task %s: its listing could not be read (%s); brought in without its settings", task_id,
                 type(error).__name__)
        return {}, None
    item = next((each for each in items if each.task_id == task_id), None)
    if item is None:
        return {}, None
    inputs = item.inputs
    params: dict[str, Any] = {name: inputs[name] for name in SETTINGS if inputs.get(name) not in (None, "")}
    if "duration" in params:
        params["duration"] = positive_int(params["duration"])
    if "prompt" in params:
        params["prompt"] = str(params["prompt"]).strip()
    end_url = _fetchable(inputs.get("end_image"), item, client.base_url)
    params["end_image"] = bool(inputs.get("end_image"))
    first_url = _fetchable(inputs.get("image"), item, client.base_url)
    preview = _keep_frames(client, spec, videos_dir, first_url, end_url)
    return params, preview


def _fetchable(url: object, item: Prediction, api_base: str) -> str | None:
    """`url` if it is an http(s) address on the API's host or on the host of one of the task's outputs."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url.strip())
    trusted = {urlsplit(api_base).netloc} | {urlsplit(str(output)).netloc for output in item.outputs}
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.netloc not in trusted:
        return None
    return url.strip()


def _keep_frames(client: WaveSpeedClient, spec: ModelSpec, videos_dir: Path, first_url: str | None,
                 end_url: str | None) -> Path | None:
    """Fetch the frames, check them as a job's own, keep them beside a new preview; None if the first is missing."""
    if first_url is None:
        return None
    with tempfile.TemporaryDirectory(prefix="kling-adopt-") as work:
        first = _fetch(client, first_url, spec.first_frame, "first frame", Path(work))
        if first is None:
            return None
        end = _fetch(client, end_url, spec.end_frame, "end frame", Path(work)) if end_url else None
        preview: Path | None = None
        try:
            preview = images.save_preview(first, videos_dir)
            videos.keep_frames(preview, first, end)
        except OSError as error:
            log.warning("could not keep the listed frames of a task (%s)", type(error).__name__)
            if preview is not None:
                files.remove_files([preview])
            return None
        return preview


def _fetch(client: WaveSpeedClient, url: str, limits: ImageLimits, role: str, work: Path) -> images.PreparedImage | None:
    """One listed frame, downloaded (at most the model's size limit, without the key) and checked as an upload."""
    try:
        path = client.download(url, work, max_bytes=limits.max_bytes, deadline_seconds=FRAME_SECONDS,
                                   suffix=".image", attempts=1)
        return images.prepare_image(path, limits, role=role, work_dir=work)
    except KlingDemoError as error:
        log.info("the listed %s of a task was not kept (%s)", role, type(error).__name__)
        return None
