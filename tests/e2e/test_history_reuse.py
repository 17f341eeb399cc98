"""Building on the history in a real Chromium: reuse a task's settings, continue from its last frame, delete it.

The app runs as `python app.py` on its embedded sandbox (see conftest.py); nothing is mocked.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from kling_demo.service.visitors import OWNER_STORAGE_KEY
from tests.e2e.test_browser import expect, fill_in, task_id_box, wait_for_playing_video


def select_tile(page: Any, prompt: str) -> None:
    """Click the newest history tile of `prompt` and wait for its detail."""
    page.locator("#history").get_by_text(prompt).first.click()
    expect(page.locator("#history-detail")).to_contain_text(prompt)


def render(page: Any, pictures: dict, prompt: str, *, negative: str = "", end_frame: bool = False) -> str:
    fill_in(page, pictures["first_frame"], prompt)
    if negative or end_frame:
        page.locator("#advanced").get_by_text("Advanced").click()
        page.fill("#negative-prompt textarea", negative)
        if end_frame:
            page.set_input_files("#end-frame input[type=file]", str(pictures["end_frame"]))
            expect(page.locator("#end-frame img")).to_be_visible()
    page.click("#generate")
    wait_for_playing_video(page)
    return task_id_box(page).input_value()


def test_reuse_and_continue_fill_the_form_and_the_continued_frame_generates(page, pictures):
    prompt = "Fireflies rise over the reeds"
    task_id = render(page, pictures, prompt, negative="rain", end_frame=True)

    page.reload()  # an empty form; the history stays
    select_tile(page, prompt)
    detail = page.locator("#history-detail")
    for words in ("Negative prompt:** rain", "End frame:** yes, pictured", "Duration:** 5 s", task_id):
        expect(detail).to_contain_text(words.replace("**", ""))
    expect(page.locator("#history-end-frame img")).to_be_visible()  # the end frame itself, not just "yes"

    page.click("#reuse-settings")
    expect(page.locator("#prompt textarea")).to_have_value(prompt)
    expect(page.locator("#negative-prompt textarea")).to_have_value("rain")
    expect(page.locator("#negative-prompt textarea")).to_be_visible()  # nothing hidden: Advanced opens
    expect(page.locator("#first-frame img")).to_be_visible()
    expect(page.locator("#end-frame img")).to_be_visible()

    page.fill("#prompt textarea", "")
    page.click("#continue-from-last-frame")
    expect(page.locator("#prompt textarea")).to_have_value(prompt)
    expect(page.locator("#first-frame img")).to_have_attribute("src", _contains("last-frame"))
    expect(page.locator("#end-frame img")).to_have_count(0)  # the old end frame is the new start: cleared
    # The last frame is a first frame like any other: it generates.
    page.click("#generate")
    wait_for_playing_video(page)
    assert task_id_box(page).input_value() not in ("", task_id)


def test_delete_removes_the_tile_and_says_what_stays_at_wavespeed(page, pictures):
    prompt = "A heron lifts off the water"
    render(page, pictures, prompt)
    select_tile(page, prompt)

    page.click("#delete-task")
    expect(page.locator("#delete-confirm")).to_contain_text("no undo")
    page.click("#confirm-delete")
    expect(page.locator("#history-detail")).to_contain_text("Deleted")
    expect(page.locator("#history")).not_to_contain_text(prompt)
    expect(page.locator("#delete-confirm")).to_be_hidden()
    page.reload()  # the load event answers with the owner id and the history together
    page.wait_for_function("key => localStorage.getItem(key)", arg=OWNER_STORAGE_KEY, timeout=30_000)
    expect(page.locator("#history")).not_to_contain_text(prompt)


@pytest.fixture(scope="module")
def slow_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a sandbox whose renders take 15 s: long enough to pick a task's tile while it renders."""
    from tests.harness import start_app_process

    folder = tmp_path_factory.mktemp("slow")
    app = start_app_process(folder / "data", log_path=folder / "app.log", env={"KLING_DEMO_SANDBOX_SECONDS": "15"})
    try:
        yield app.url
    finally:
        app.stop()


def test_the_selected_tile_follows_its_task_from_rendering_to_done(browser, slow_app, pictures):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(slow_app)
        prompt = "Snow drifts past the lighthouse"
        fill_in(page, pictures["first_frame"], prompt)
        page.click("#generate")
        expect(page.locator("#history")).to_contain_text(f"Rendering · {prompt}", timeout=30_000)  # the 5 s refresh
        select_tile(page, prompt)
        detail = page.locator("#history-detail")
        expect(detail).to_contain_text("Still rendering")
        expect(page.locator("#continue-from-last-frame")).to_be_disabled()
        # No click: the history's refresh sees the task finish and updates what is shown of it.
        expect(detail).to_contain_text("Done", timeout=60_000)
        expect(detail).not_to_contain_text("Still rendering")
        expect(page.locator("#continue-from-last-frame")).to_be_enabled()
        expect(page.locator("#history-video video")).to_be_attached()

        # A new task's tile comes first; the highlight stays on the tile the detail describes.
        later = "Fog over the lighthouse"
        fill_in(page, pictures["first_frame"], later)
        page.click("#generate")
        expect(page.locator("#history")).to_contain_text(f"Rendering · {later}", timeout=30_000)
        tiles = page.locator("#history .thumbnail-item")
        expect(tiles.nth(1)).to_have_class(re.compile(r"\bselected\b"))
        expect(tiles.first).not_to_have_class(re.compile(r"\bselected\b"))
        expect(detail).to_contain_text(prompt)
    finally:
        context.close()


def _contains(text: str) -> re.Pattern[str]:
    return re.compile(re.escape(text))
