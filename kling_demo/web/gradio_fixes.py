"""What Gradio 6.31 needs adjusted for this app, each with why; written for that version and refused on another.

Every adjustment is per instance (a component, the page, its queue): subclassing a Gradio component makes Gradio
write a `.pyi` beside this module at import. Two reach Gradio's private queue (`demo._queue`): they fail loudly,
here, if it is not what they were written for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from gradio.utils import get_upload_folder, get_function_description
from starlette.middleware import Middleware

from ..config import Settings
from ..config import TrustedProxies
from .front_door import FrontDoor
from .upload_bounds import GB, MB, UploadBounds

log = logging.getLogger(__name__)

GRADIO_VERSION = "6.31.0"  # the version these adjustments were written for (requirements.txt pins it)
if gr.__version__ != GRADIO_VERSION:
    raise RuntimeError(f"kling_demo's page was written for Gradio {GRADIO_VERSION} and adjusts some of its internals "
                       f"(web/gradio_fixes.py); Gradio {gr.__version__} is installed. Install the pinned version "
                       "(pip install -r requirements.txt), or check each adjustment against the new one first.")

HERE = Path(__file__).parent
IDLE_QUEUE_SECONDS = 0.02  # how often an idle Gradio queue looks for a new event (Gradio: every 1 ms)
PROGRESS_SCAN_SECONDS = 0.2  # how often it scans its slots for gr.Progress updates (Gradio: every 10 ms)


def frame_input(**options: Any) -> gr.Image:
    """An image input that hands every upload, unopened, to our checks.

    Stock gr.Image opens the file with Pillow first (type="filepath" decodes no pixels, but the open alone fails):
    random bytes or an empty file end in a bare HTTP 400, and an image over Pillow's bomb limit in "Could not
    preprocess … DecompressionBombError" with server paths. Passing the path through lets the checks say what is
    wrong and what to do."""
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

    Stock gr.Radio describes every choice as a string, so an MCP client's `duration: 5` fails schema validation,
    and an `enum` makes the API page write `Literal['5', '10']` (gradio_client quotes every enum value), so the
    choices are integer constants."""
    component = gr.Radio(**options)
    choices = [value for _, value in component.choices]
    component.api_info = lambda: {  # type: ignore[method-assign]
        "type": "integer", "title": "Duration", "oneOf": [{"const": value} for value in choices]}
    return component


def describe_for_api(fn: Callable[..., Any], parameters: dict[str, gr.components.Component]) -> None:
    """Give each API parameter the description from `fn`'s docstring `Args:` section.

    Gradio 6.31 reads those descriptions for MCP tools only; its API page shows the component's
    `api_info()["additional_description"]`, so the docstring's text is put there."""
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


def page_js() -> str:
    """page.js as Gradio's `launch(js=…)` runs it: one function, without the file's leading comment."""
    lines = (HERE / "page.js").read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("//"))


def guard_launch(demo: gr.Blocks, settings: Settings, secret: str, *routes: Any) -> None:
    """Launch `demo`, however it is launched, behind the app's front door, with its routes, CSS and JS.

    - uvicorn trusts exactly `settings.trusted_proxies`: it reads `FORWARDED_ALLOW_IPS` inside `launch()`
      (`uvicorn.Config`) and rewrites `request.client.host` to the rightmost X-Forwarded-For address not in it;
      left alone it would trust loopback, where any local proxy, tunnel or share link arrives.
    - `front_door.FrontDoor` (FastAPI `middleware`) stamps MCP callers and bounds uploads; `num_workers=0` keeps
      uploads in this process, so no static worker serves them around it.
    - `routes` (FastAPI `routes`) are registered ahead of Gradio's own.
    - the page's CSS and JS, and no run history (Gradio 6's keeps every input, a password box included, in the
      browser's localStorage).
    Gradio 6.31 builds its FastAPI app inside `launch()`, and a Space may call `demo.launch()` itself without our
    options, so the instance's `launch` is wrapped."""
    stock_launch = demo.launch

    def launch(*args: Any, **kwargs: Any) -> Any:
        uploads = UploadBounds(get_upload_folder(), per_address_bytes=int(settings.upload_mb_per_hour * MB),
                               total_bytes=int(settings.upload_cache_gb * GB))
        door = Middleware(FrontDoor, secret=secret, trusted=TrustedProxies(settings.trusted_proxies), uploads=uploads)
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["routes"] = [*routes, *(app_kwargs.get("routes") or [])]
        app_kwargs["middleware"] = [door, *(app_kwargs.get("middleware") or [])]
        kwargs["num_workers"] = 0
        kwargs.setdefault("css_paths", [HERE / "page.css"])
        kwargs.setdefault("js", page_js())
        kwargs.setdefault("run_history", False)
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
    push = _private(queue, "push")
    lock = asyncio.Lock()

    async def push_in_turn(*args: Any, **kwargs: Any) -> Any:
        async with lock:
            return await push(*args, **kwargs)

    queue.push = push_in_turn  # type: ignore[method-assign]


def run_more_than_forty(demo: gr.Blocks, events: int) -> None:
    """Let Gradio's queue run `events` events at once, not the 40 it allows by default whatever their limits.

    Gradio 6.31's queue has `max_threads` (40) worker slots in all, and an async event holds one for its whole
    life, so job 41 waited for a whole render before it was even submitted ("waves of 40"). The slots are sized
    when the queue starts, from `launch(max_threads=…)`, which a Space calling `demo.launch()` leaves at 40: the
    queue's start is wrapped instead. Threads stay as they were (`max_threads` also sizes Gradio's thread
    limiter; only the queue's slot list grows).

    An idle queue also looks for work every millisecond, and for gr.Progress updates (unused here) every 10 ms
    across all its slots: 1.5 s of CPU per 30 s render, more than a job's own work. Every 20 ms is soon enough
    for an event that then runs for minutes, and progress every 0.2 s for a status that changes each second."""
    queue = demo._queue
    start = _private(queue, "start")
    for name in ("max_thread_count", "sleep_when_free", "progress_update_sleep_when_free"):
        _private(queue, name)

    def start_with_room() -> None:
        queue.max_thread_count = max(queue.max_thread_count, events)
        queue.sleep_when_free = max(queue.sleep_when_free, IDLE_QUEUE_SECONDS)
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_SCAN_SECONDS)
        start()

    queue.start = start_with_room  # type: ignore[method-assign]


def close_with(demo: gr.Blocks, also: Callable[[], None]) -> None:
    """Closing the page waits for the server to finish (Gradio waits 5 s at most, then its shutdown still deletes
    the app's uploads), then runs `also` (the service's close: recovery, the poller, an embedded sandbox)."""
    stock_close = demo.close

    def close(*args: Any, **kwargs: Any) -> None:
        server = getattr(demo, "server", None)
        stock_close(*args, **kwargs)
        thread = getattr(server, "thread", None)
        if thread is not None:
            thread.join(timeout=60)
        also()

    demo.close = close  # type: ignore[method-assign]


def _private(owner: object, name: str) -> Any:
    """One of Gradio's private attributes an adjustment relies on; missing, it says so plainly."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise RuntimeError(f"Gradio {gr.__version__}'s queue has no `{name}`: web/gradio_fixes.py was written for "
                           f"{GRADIO_VERSION} and must be checked against this version.") from None
