"""Issue 25 in a real Chromium, at 1280×800 and 390×844: every action answers where the visitor looks, the newest
video is selected, the estimate never reads 0, the guidance box keeps to its range, and labels are readable.

The app runs as `python app.py` on its embedded sandbox (conftest.py), or live against a sandbox process it treats
as WaveSpeed (`start_live_app`); nothing is mocked. "In view" is Playwright's `to_be_in_viewport`: what the
visitor sees without scrolling.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kling_demo.models import DEFAULT_MODEL, KeySource, TaskStatus
from kling_demo.store.journal import Journal
from tests.e2e.test_browser import DESKTOP, PHONE, fill_in, task_id_box, wait_for_playing_video
from tests.e2e.test_page_states import RECORD_PROGRESS
from tests.e2e.test_wavespeed_tasks import OWN_KEY, made_elsewhere
from tests.harness import Served

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

WHOLE = 0.95  # all of it in view, but for a scroll's fraction of a pixel
SIZES = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])


def render(page: Any, pictures: dict[str, Path], prompt: str) -> str:
    fill_in(page, pictures["first_frame"], prompt)
    before = task_id_box(page).input_value()
    page.click("#generate")
    if before:  # the last job's video goes with its task id: what plays next is this job's
        expect(task_id_box(page)).not_to_have_value(before)
    wait_for_playing_video(page)
    expect(page.locator("#generate")).to_be_enabled()  # the job's event has ended (its history steps run then)
    return task_id_box(page).input_value()


def open_live(browser: Any, url: str, viewport: dict[str, int]) -> Any:
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(url)
    page.locator("#generate").wait_for(state="visible", timeout=30_000)
    return page


# --- every action answers where the visitor looks ---------------------------------------------------------------

@SIZES
def test_reuse_and_continue_bring_the_filled_form_into_view(open_page, pictures, viewport):
    page = open_page(viewport)
    prompt = "Reeds sway as the wind crosses the lake"
    render(page, pictures, prompt)
    note = page.locator("#form-note")
    page.fill("#prompt textarea", "")

    page.locator("#reuse-settings").click()  # far below the form: Playwright scrolls to it as a visitor would
    expect(note).to_contain_text("The settings of this task are in the form")
    expect(note).to_be_in_viewport(ratio=WHOLE)
    expect(page.locator("#prompt textarea")).to_have_value(prompt)

    page.fill("#prompt textarea", "")
    page.locator("#continue-from-last-frame").click()
    expect(note).to_contain_text("The last frame of this video is the new first frame")
    expect(note).to_be_in_viewport(ratio=WHOLE)
    expect(page.locator("#first-frame img")).to_be_visible()
    expect(page.locator("#prompt textarea")).to_have_value(prompt)


@SIZES
def test_resume_brings_its_status_into_view(open_page, pictures, viewport):
    page = open_page(viewport)
    task_id = render(page, pictures, "A heron stands in the shallows")
    status = page.locator("#status")

    page.fill("#resume-id textarea", "0" * 32)  # not this visitor's: refused, in the status
    page.locator("#resume").click()
    expect(status).to_contain_text("not in your history")
    expect(status).to_be_in_viewport(ratio=WHOLE)

    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")  # back down to the box
    page.fill("#resume-id textarea", task_id)
    page.locator("#resume").click()
    expect(status).to_contain_text(f"Task {task_id} is already in your history")
    expect(status).to_be_in_viewport(ratio=WHOLE)


@SIZES
def test_deleting_shows_its_answer_where_the_visitor_looks(open_page, pictures, viewport):
    page = open_page(viewport)
    prompt = "A kite over the dunes"
    render(page, pictures, prompt)
    page.locator("#delete-task").click()
    page.locator("#confirm-delete").click()
    detail = page.locator("#history-detail")
    expect(detail).to_contain_text("Deleted")
    expect(detail).to_be_in_viewport(ratio=WHOLE)
    expect(page.locator("#history")).not_to_contain_text(prompt)


@SIZES
def test_bring_into_my_history_answers_in_view_and_keeps_the_listed_prompt_and_frame(
        browser, start_live_app: Callable[..., tuple[Served, Served]], make_image, viewport):
    app, sandbox = start_live_app("server-key", "--inference-seconds", "1")
    task_id = made_elsewhere(sandbox.url, make_image(size=(800, 600)))
    page = open_live(browser, app.url, viewport)
    try:
        page.click("#key-section")
        page.fill("#user-key input", OWN_KEY)
        page.click("#wavespeed-tasks button.label-wrap")
        page.click("#load-wavespeed-tasks")
        choice = page.locator("#wavespeed-task-list label", has_text=task_id)
        expect(choice).to_contain_text("made on the site")
        choice.click()
        page.locator("#adopt-task").click()
        status = page.locator("#status")
        expect(status).to_be_in_viewport(ratio=WHOLE)
        expect(status).to_contain_text("Done", timeout=60_000)
        expect(status).to_be_in_viewport(ratio=WHOLE)

        # It came in with what the list showed: its prompt, and its first frame to reuse.
        detail = page.locator("#history-detail")
        expect(detail).to_contain_text("made on the site")  # the finished task is selected
        expect(detail).not_to_contain_text("Fetched by its task id")
        page.fill("#prompt textarea", "")
        page.locator("#reuse-settings").click()
        expect(page.locator("#prompt textarea")).to_have_value("made on the site")
        expect(page.locator("#first-frame img")).to_be_visible()
        expect(page.locator("#form-note")).to_be_in_viewport(ratio=WHOLE)
    finally:
        page.context.close()


# --- the newest video is selected ---------------------------------------------------------------------------------

@SIZES
def test_the_newest_finished_video_is_selected_after_a_job_and_on_arriving(open_page, pictures, viewport):
    page = open_page(viewport)
    render(page, pictures, "First: the sun rises")
    second = "Second: the sun sets"
    render(page, pictures, second)
    for moment in ("after the job", "after a reload"):
        detail = page.locator("#history-detail")
        expect(detail).to_contain_text(second)
        expect(page.locator("#history-video video")).to_be_attached()
        tiles = page.locator("#history .thumbnail-item")
        expect(tiles.first).to_have_class(re.compile(r"\bselected\b"))
        expect(tiles.nth(1)).not_to_have_class(re.compile(r"\bselected\b"))
        expect(page.locator("#reuse-settings")).to_be_enabled()
        if moment == "after the job":
            page.reload()
            page.locator("#generate").wait_for(state="visible", timeout=30_000)


# --- the estimate -----------------------------------------------------------------------------------------------

@SIZES
def test_past_its_estimate_a_render_says_at_once_it_takes_longer_with_this_apps_range(
        browser, start_live_app: Callable[..., tuple[Served, Served]], tmp_path, pictures, viewport):
    """This app has timed one 5 s render at 2 s; this one takes 8 s. Each line the progress shows either counts
    down (never to 0) or says it takes longer than the 2 s this app's renders took."""
    journal = Journal(tmp_path / "data" / "journal.sqlite3")  # the data dir the live app is about to use
    journal.record_submission(owner="ip:earlier", task_id="earlier", model=DEFAULT_MODEL.model_id,
                              api_base="http://earlier", key_source=KeySource.SERVER,
                              params={"prompt": "earlier", "duration": 5}, status=TaskStatus.PROCESSING)
    journal.complete("ip:earlier", "earlier", video_path="/nonexistent.mp4", inference_ms=2000)
    app, _ = start_live_app("server-key", "--inference-seconds", "8")
    page = open_live(browser, app.url, viewport)
    try:
        fill_in(page, pictures["first_frame"], "Fog rolls over the hills")
        page.evaluate(RECORD_PROGRESS)
        page.click("#generate")
        expect(page.locator("#progress")).to_contain_text("Done in", timeout=60_000)
        lines = [text.splitlines()[-1] for text in page.evaluate("window.progressTexts")]
        assert not any(re.search(r"\b0s to go", line) for line in lines), lines
        late = [line for line in lines if "taking longer" in line]
        assert late and all("(about 2s)" in line or "took about 2s here" in line for line in late), lines
        # From the first moment past the estimate on, no line counts down again.
        assert not any("to go" in line for line in lines[lines.index(late[0]):]), lines
    finally:
        page.context.close()


# --- the guidance box, and labels on a phone -------------------------------------------------------------------

@SIZES
def test_typing_a_guidance_out_of_range_leaves_it_in_range(open_page, viewport):
    page = open_page(viewport)
    box, slider = page.locator("#guidance input[type=number]"), page.locator("#guidance input[type=range]")
    for typed, kept in (("3", "1"), ("-2", "0"), ("0.8", "0.8")):
        box.click()
        box.press("Control+a")
        box.press_sequentially(typed, delay=50)
        box.press("Tab")
        expect(box).to_have_value(kept)
        expect(slider).to_have_value(kept)


CAPTION_SHOWN = """(label) => {
    // The part of the caption the visitor sees: each character's box inside the label's clipped box.
    const box = label.getBoundingClientRect(), text = label.firstChild, range = document.createRange();
    let shown = '';
    for (let i = 0; i < text.length; i++) {
        range.setStart(text, i); range.setEnd(text, i + 1);
        const r = range.getBoundingClientRect();
        if (r.width === 0 || (r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5 && r.left >= box.left - 0.5
                              && r.right <= box.right + 0.5)) shown += text.data[i];
    }
    return shown;
}"""


@SIZES
def test_example_titles_are_whole_and_history_captions_show_their_prompt(open_page, pictures, viewport):
    page = open_page(viewport)
    labels = page.locator("#examples .caption-label")
    expect(labels).to_have_count(6)
    for index in range(6):
        label = labels.nth(index)
        title = label.inner_text()
        assert label.evaluate(CAPTION_SHOWN) == title, title
        assert label.evaluate("(e) => e.scrollWidth <= e.clientWidth"), f"{title!r} ends in an ellipsis"
    prompt = "The rocket lifts off into a clear morning sky"
    render(page, pictures, prompt)
    caption = page.locator("#history .caption-label").first
    shown = caption.evaluate(CAPTION_SHOWN)
    assert shown.startswith(f"✓ Done · {prompt}"), shown
