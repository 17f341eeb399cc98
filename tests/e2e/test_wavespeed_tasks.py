""""Your WaveSpeed tasks": a visitor with their own key lists its tasks and brings one into their history.

The app runs as `python app.py` against a sandbox process it treats as the real API; the task is made with the
visitor's key straight through the sandbox, outside the app, as on wavespeed.ai. Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.models import DEFAULT_MODEL
from tests.page_session import PageSession, error_of
from tests.harness import Served

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

OWN_KEY = "visitors-own-key"


@pytest.fixture
def live_app(start_live_app: Callable[..., tuple[Served, Served]]) -> tuple[Served, Served]:
    """(app, sandbox): the app on the server key "server-key" at a sandbox with quick renders (any key accepted)."""
    return start_live_app("server-key", "--inference-seconds", "1")


def made_elsewhere(sandbox_url: str, image: Path) -> str:
    """A task submitted with the visitor's key outside the app."""
    with WaveSpeedClient(sandbox_url, OWN_KEY) as client:
        return client.submit(DEFAULT_MODEL, {"image": client.upload(image, "image/png"), "prompt": "made on the site",
                                             "duration": 5}).task_id


def test_a_task_of_ones_own_key_comes_into_the_history_in_one_pick_and_click(
        live_app: Any, browser: Any, make_image: Callable[..., Path]) -> None:
    app, sandbox = live_app
    task_id = made_elsewhere(sandbox.url, make_image())
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(app.url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        expect(page.locator("#wavespeed-tasks")).to_be_hidden()  # only with one's own key
        page.click("#key-section")  # the key's accordion starts closed
        page.fill("#user-key input", OWN_KEY)
        expect(page.locator("#wavespeed-tasks")).to_be_visible()
        page.click("#wavespeed-tasks button.label-wrap")  # open the accordion
        page.click("#load-wavespeed-tasks")
        choice = page.locator("#wavespeed-task-list label", has_text=task_id)
        expect(choice).to_contain_text("made on the site")
        expect(choice).not_to_contain_text("in your history")
        choice.click()
        page.click("#adopt-task")
        expect(page.locator("#status")).to_contain_text("Done", timeout=60_000)
        expect(page.locator("#task-id textarea")).to_have_value(task_id)
        expect(page.locator("#video video")).to_be_attached()
        expect(page.locator("#history .thumbnail-item")).to_have_count(1, timeout=15_000)
        page.click("#load-wavespeed-tasks")  # the listing again: the task is marked as already brought in
        expect(page.locator("#wavespeed-task-list label", has_text=task_id)).to_contain_text("in your history")
    finally:
        context.close()
    assert requests.get(sandbox.url + "/sandbox/stats", timeout=10).json()["submissions"] == 1


def test_without_ones_own_key_the_handlers_refuse(live_app: Any, make_image: Callable[..., Path]) -> None:
    """The events are private, but a raw queue call still reaches them: the service says no."""
    app, sandbox = live_app
    task_id = made_elsewhere(sandbox.url, make_image())
    session = PageSession(app.url)
    load = session.event("load-wavespeed-tasks", "click")
    adopt = session.then(session.event("adopt-task", "click"))
    for step in (load, adopt):  # no pick: a task id the page never listed is refused by the radio itself
        error = error_of(session.join(step))
        assert "own WaveSpeed key" in error, error
    assert "not in the list of choices" in error_of(session.join(adopt, task_id))
    with_key = PageSession(app.url, headers={"X-WaveSpeed-Key": OWN_KEY})
    assert error_of(with_key.join(load)) == ""
