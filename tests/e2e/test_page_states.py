"""The page after every ending, examples that hide nothing, the progress display, checks on drop, the phone.

Real Chromium against `python app.py` on the sandbox (conftest.py); a failing WaveSpeed is a sandbox process
started with `--task-failure-rate 1.0`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from kling_demo.errors import NotYours
from kling_demo.words import Voice
from tests.e2e.test_browser import assert_no_status_repeats_its_heading

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
VIDEO_TIMEOUT = 60_000
# Keeps every distinct text the progress display shows, in order.
RECORD_PROGRESS = """() => {
    const box = document.querySelector('#progress');
    window.progressTexts = [];
    const record = () => {
        const text = box.innerText.trim();
        const bar = box.querySelector('.kd-bar');
        if (text && text !== window.progressTexts[window.progressTexts.length - 1]) {
            window.progressTexts.push(text);
            window.sawBar = window.sawBar || (bar !== null && bar.getBoundingClientRect().width > 0);
        }
    };
    new MutationObserver(record).observe(box, {subtree: true, childList: true, characterData: true});
}"""


def expect_idle_buttons(page: Any) -> None:
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()


def fill_in(page: Any, first_frame: Path, prompt: str) -> None:
    page.set_input_files("#first-frame input[type=file]", str(first_frame))
    expect(page.locator("#first-frame img")).to_be_visible()
    page.fill("#prompt textarea", prompt)


@pytest.fixture(scope="module")
def failing_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app live on a WaveSpeed (a sandbox process) whose every task ends `failed`."""
    from tests.harness import start_app_process, start_sandbox_process

    folder = tmp_path_factory.mktemp("failing")
    sandbox = start_sandbox_process("--inference-seconds", "1", "--task-failure-rate", "1.0")
    app = start_app_process(folder / "data", log_path=folder / "app.log",
                            env={"WAVESPEED_API_KEY": "server-key", "WAVESPEED_BASE_URL": sandbox.url})
    try:
        yield app.url
    finally:
        app.stop()
        sandbox.stop()


def test_a_failed_task_leaves_the_page_idle_with_its_task_id_readable(browser, failing_app, pictures):
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(failing_app)
        fill_in(page, pictures["first_frame"], "A task that will fail")
        page.click("#generate")
        status = page.locator("#status")
        expect(status).to_contain_text("Failed", timeout=VIDEO_TIMEOUT)
        expect_idle_buttons(page)
        assert_no_status_repeats_its_heading([status.inner_text()])
        task_id = page.locator("#task-id textarea").input_value()
        assert re.fullmatch(r"[0-9a-f]{16,}", task_id), task_id
        # No error badge covers the task id box: its copy button is there to press.
        expect(page.locator("#task-id .error")).to_have_count(0)
        expect(page.locator("#task-id button[aria-label*='opy'], #task-id button[title*='opy']").first).to_be_visible()
        expect(page.locator("#progress")).to_contain_text("Ended without a video")
        # Pressing Generate again runs a new job from the same form.
        page.click("#generate")
        expect(page.locator("#stop")).to_be_enabled()
        expect(status).to_contain_text("Failed", timeout=VIDEO_TIMEOUT)
        expect_idle_buttons(page)
    finally:
        context.close()


def test_a_refused_request_leaves_the_page_idle_and_says_why(page):
    page.fill("#resume-id textarea", "0" * 32)
    page.click("#resume")
    status = page.locator("#status")
    # Headed by what the visitor can do next (the error tree's branch for it), and says why.
    expect(status).to_contain_text(Voice(sandbox=True).error_heading(NotYours("")))
    expect(status).to_contain_text("not in your history")
    expect_idle_buttons(page)
    expect(page.locator(".toast-body.error")).to_have_count(0)


def test_example_2_shows_its_end_frame_and_an_own_upload_clears_it(page, pictures):
    expect(page.locator("#end-frame")).to_be_hidden()
    page.locator("#examples .thumbnail-item").nth(1).click()
    expect(page.locator("#prompt textarea")).to_have_value("Dusk falls over the lake and the stars come out")
    expect(page.locator("#status")).to_contain_text("also sets an end frame and a negative prompt")
    expect(page.locator("#end-frame img")).to_be_visible()  # Advanced opened by itself
    expect(page.locator("#negative-prompt textarea")).to_have_value("blurry")

    page.set_input_files("#first-frame input[type=file]", str(pictures["first_frame"]))
    expect(page.locator("#first-frame-check")).to_contain_text("end frame and negative prompt were cleared")
    expect(page.locator("#negative-prompt textarea")).to_have_value("")
    expect(page.locator("#end-frame img")).to_have_count(0)
    expect(page.locator("#status")).not_to_contain_text("Example loaded")


def test_an_own_first_frame_clears_the_status_that_described_an_example(page, pictures):
    """Issue 25: 'the status still describes an example after the visitor's own picture replaced it'."""
    page.locator("#examples .thumbnail-item").nth(0).click()  # an example without an end frame or negative
    expect(page.locator("#status")).to_contain_text("Example loaded")
    page.set_input_files("#first-frame input[type=file]", str(pictures["first_frame"]))
    expect(page.locator("#status")).to_contain_text("Ready")
    expect(page.locator("#status")).not_to_contain_text("Example loaded")
    expect(page.locator("#prompt textarea")).not_to_have_value("")  # the example's prompt stays, to edit


def test_a_dropped_text_file_is_refused_at_once_with_a_sentence(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are my notes, not a picture\n" * 20)
    page.set_input_files("#first-frame input[type=file]", str(fake))
    check = page.locator("#first-frame-check")
    expect(check).to_contain_text("is not an image that can be read")
    assert re.search(r"\bThe first frame\b", check.inner_text()), check.inner_text()


def test_a_first_render_shows_a_bar_an_estimate_and_the_steps(page, pictures):
    fill_in(page, pictures["first_frame"], "Ripples spread across the lake")
    page.evaluate(RECORD_PROGRESS)
    # A finished video in a background tab changes the title.
    page.evaluate("() => Object.defineProperty(document, 'hidden', {configurable: true, get: () => true})")
    page.click("#generate")
    expect(page.locator("#video video")).to_be_attached(timeout=VIDEO_TIMEOUT)
    expect(page.locator("#progress")).to_contain_text("Done in")
    texts = page.evaluate("window.progressTexts")
    assert page.evaluate("window.sawBar"), texts
    assert any(re.search(r"about \d+s to go", text) for text in texts), texts
    assert any("✓ Check" in text for text in texts), texts
    page.wait_for_function("() => document.title.includes('Your video is ready')")


def box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not on the page"
    return found


def test_at_1280x800_the_examples_generate_and_the_price_need_no_scrolling(open_page):
    page = open_page(DESKTOP)
    expect(page.locator("#price")).to_contain_text("Free")
    assert page.evaluate("() => window.scrollY") == 0
    for selector in ("#examples", "#generate", "#price"):
        found = box(page, selector)
        bottom = found["y"] + found["height"]
        assert bottom <= DESKTOP["height"], f"{selector} ends at {bottom:.0f} px, below the fold"
    # Every example's caption is in view, so two examples of the same picture can be told apart.
    captions = page.locator("#examples .caption-label")
    expect(captions).to_have_count(6)
    expect(captions.nth(1)).to_be_in_viewport(ratio=1)
    expect(captions.nth(1)).to_contain_text("end frame")
    # Sandbox words everywhere, the key box included: nothing is billed, and no WaveSpeed is involved.
    page.click("#key-section")
    expect(page.locator("#user-key")).to_contain_text("not used")
    text = page.evaluate("() => document.body.innerText")
    assert not re.search(r"billed|WaveSpeed", text), re.findall(r".*(?:billed|WaveSpeed).*", text)


def test_on_a_phone_the_status_sits_right_below_generate(open_page):
    page = open_page(PHONE)
    generate = page.locator("#generate").bounding_box()
    status = page.locator("#status").bounding_box()
    assert generate is not None and status is not None
    below = status["y"] - (generate["y"] + generate["height"])
    assert 0 <= below < 160, f"the status is {below:.0f} px below Generate"
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways ({width} px)"
    examples = page.locator("#examples").bounding_box()
    assert examples is not None and examples["x"] + examples["width"] <= PHONE["width"] + 1
    # All six examples show without scrolling inside the gallery.
    last = box(page, "#examples .thumbnail-item >> nth=5")
    assert last["y"] + last["height"] <= examples["y"] + examples["height"] + 1
    # The guidance slider has the width to itself, with the duration below it.
    guidance, duration = box(page, "#guidance"), box(page, "#duration")
    assert duration["y"] >= guidance["y"] + guidance["height"] - 1, (guidance, duration)
    assert guidance["width"] >= 0.9 * examples["width"], guidance
