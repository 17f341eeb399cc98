"""What a visitor does in a real Chromium: upload, prompt, Generate, watch, Stop, and a refused image.

The app runs as `python app.py` on its embedded sandbox (see conftest.py); nothing is mocked.
The README's screenshots are made by docs/screenshots.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from kling_demo.models import JobUpdate, Stage, StopReport, Submission
from kling_demo.service.visitors import OWNER_STORAGE_KEY
from kling_demo.words import Voice

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIDEO_TIMEOUT = 60_000  # ms: a 3 s sandbox render plus upload, polling and download, with a wide margin

# Records every distinct text #status shows, in order, so a test can see the steps a visitor saw.
RECORD_STATUSES = """() => {
    const status = document.querySelector('#status');
    window.statusTexts = [status.innerText.trim()];
    const record = () => {
        const text = status.innerText.trim();
        if (text && text !== window.statusTexts[window.statusTexts.length - 1]) window.statusTexts.push(text);
    };
    new MutationObserver(record).observe(status, {subtree: true, childList: true, characterData: true});
}"""
VIDEO_IS_PLAYING = """() => {
    const video = document.querySelector('#video video');
    return video !== null && Number.isFinite(video.duration) && video.duration > 0 && video.currentTime > 0.2;
}"""


def fill_in(page: Any, first_frame: Path, prompt: str) -> None:
    page.set_input_files("#first-frame input[type=file]", str(first_frame))
    expect(page.locator("#first-frame img")).to_be_visible()  # the upload finished and shows a preview
    page.fill("#prompt textarea", prompt)


def wait_for_playing_video(page: Any) -> dict[str, Any]:
    """Wait until the page plays the finished video; return its duration and whether it plays."""
    expect(page.locator("#video video")).to_be_attached(timeout=VIDEO_TIMEOUT)
    page.wait_for_function(VIDEO_IS_PLAYING, timeout=30_000)
    return page.evaluate("""() => {
        const video = document.querySelector('#video video');
        return {duration: video.duration, currentTime: video.currentTime, paused: video.paused,
                width: video.videoWidth, height: video.videoHeight};
    }""")


def generate_and_expect_video_of(page: Any, seconds: float) -> None:
    page.click("#generate")
    video = wait_for_playing_video(page)
    assert video["duration"] == pytest.approx(seconds, abs=0.1), video
    expect(page.locator("#status")).to_contain_text("Done", timeout=10_000)


SANDBOX = Voice(sandbox=True)  # the page's voice on the embedded sandbox


def heading(stage: Stage) -> str:
    return SANDBOX.heading(JobUpdate(stage, 0.0))


def headed(statuses: list[str]) -> list[tuple[str, str]]:
    """(heading, sentence) of every `Heading — sentence` line the status showed (Gradio's own progress lines and
    the idle line have no heading)."""
    return [tuple(line.split(" — ", 1)) for text in statuses for line in text.splitlines() if " — " in line]


def assert_no_status_repeats_its_heading(statuses: list[str]) -> None:
    """Issue 23: no sentence starts by saying its heading again ("Uploading — Uploading…", "Queued at the sandbox
    — Queued at the sandbox")."""
    for said, sentence in headed(statuses):
        assert not sentence.lower().startswith(said.strip().lower()), f"{said} — {sentence}"


def expect_idle_buttons(page: Any) -> None:
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()


def task_id_box(page: Any) -> Any:
    return page.locator("#task-id textarea")


def test_generate_shows_each_step_the_task_id_and_plays_a_5_second_video(page, pictures):
    expect(page.locator("#backend-banner")).to_contain_text("Sandbox mode")
    fill_in(page, pictures["first_frame"], "The sun sinks behind the mountains as ripples cross the lake")
    page.evaluate(RECORD_STATUSES)
    page.click("#generate")

    expect(page.locator("#stop")).to_be_enabled()  # while running, Stop is offered and Generate is not
    expect(page.locator("#generate")).to_be_disabled()
    video = wait_for_playing_video(page)
    expect(page.locator("#status")).to_contain_text("Done", timeout=10_000)

    statuses = page.evaluate("window.statusTexts")
    assert len(statuses) >= 3, f"the status changed fewer than twice: {statuses}"
    headings = {said for said, _ in headed(statuses)}
    assert {heading(Stage.SUBMITTED), heading(Stage.PROCESSING)} & headings, statuses
    assert heading(Stage.DONE) in headings, statuses
    assert_no_status_repeats_its_heading(statuses)
    assert not any("WaveSpeed" in text for text in statuses), statuses  # the sandbox is no WaveSpeed
    task_id = task_id_box(page).input_value()
    assert re.fullmatch(r"[0-9a-f]{16,}", task_id), task_id
    assert task_id in page.locator("#status").inner_text()
    assert video["duration"] == pytest.approx(5.0, abs=0.1), video
    assert not video["paused"], video
    expect_idle_buttons(page)


def test_a_10_second_run_plays_a_10_second_video(page, pictures):
    page.get_by_role("radio", name="10").check()
    fill_in(page, pictures["first_frame"], "A slow dolly-in over the lake at sunset")
    generate_and_expect_video_of(page, seconds=10.0)


def test_an_end_frame_from_the_advanced_section_still_yields_a_video(page, pictures):
    fill_in(page, pictures["first_frame"], "Day turns to night over the lake")
    expect(page.locator("#end-frame")).to_be_hidden()
    page.locator("#advanced").get_by_text("Advanced").click()
    expect(page.locator("#end-frame")).to_be_visible()
    page.fill("#negative-prompt textarea", "blurry, people")
    page.set_input_files("#end-frame input[type=file]", str(pictures["end_frame"]))
    expect(page.locator("#end-frame img")).to_be_visible()
    generate_and_expect_video_of(page, seconds=5.0)


def test_an_example_fills_the_form_and_generates(page):
    page.locator("#examples .thumbnail-item").nth(1).click()
    expect(page.locator("#prompt textarea")).to_have_value("Dusk falls over the lake and the stars come out")
    expect(page.locator("#first-frame img")).to_be_visible()
    generate_and_expect_video_of(page, seconds=5.0)


def test_stop_while_rendering_says_what_happened_and_frees_the_buttons(page, pictures):
    fill_in(page, pictures["first_frame"], "The moon rises")
    page.click("#generate")
    at_the_sandbox = re.compile("|".join(re.escape(heading(stage)) for stage in (Stage.SUBMITTED, Stage.PROCESSING)))
    expect(page.locator("#status")).to_contain_text(at_the_sandbox, timeout=30_000)
    expect(page.locator("#stop")).to_be_enabled()  # offered while the task runs, not only after it ends
    task_id = task_id_box(page).input_value()
    page.click("#stop")

    status = page.locator("#status")
    expect(status).to_contain_text(heading(Stage.STOPPED))
    # The task exists (it was shown as submitted): it may still finish; sandbox words, nothing is billed there.
    expect(status).to_contain_text(SANDBOX.stopped(StopReport(Submission.EXISTS, task_id)))
    assert task_id and "billed" not in status.inner_text()
    assert_no_status_repeats_its_heading([status.inner_text()])
    expect_idle_buttons(page)
    expect(page.locator("#video video")).to_have_count(0)
    # The paid task is still finished in the background and turns up, done, in the history.
    expect(page.locator("#history")).to_contain_text("Done · The moon rises", timeout=30_000)


def test_a_too_small_image_is_refused_in_the_page_and_no_video_appears(page, pictures):
    page.set_input_files("#first-frame input[type=file]", str(pictures["too_small"]))
    page.fill("#prompt textarea", "A tiny picture")
    page.click("#generate")

    # Gradio's validator shows the refusal on the input itself; the message names the 300 px minimum.
    expect(page.get_by_text(re.compile(r"300")).first).to_be_visible(timeout=15_000)
    expect_idle_buttons(page)
    expect(page.locator("#video video")).to_have_count(0)
    expect(page.locator("#status")).not_to_contain_text("Submitted")
    assert task_id_box(page).input_value() == ""


def test_a_generation_is_in_the_history_after_a_reload_and_only_there(page, pictures, browser, app_url):
    prompt = "Lanterns drift across the lake at dusk"
    fill_in(page, pictures["first_frame"], prompt)
    page.click("#generate")
    wait_for_playing_video(page)
    task_id = task_id_box(page).input_value()

    page.reload()  # same browser, same owner: the history is still there
    history = page.locator("#history")
    expect(history).to_contain_text(prompt, timeout=15_000)
    history.get_by_text(prompt).first.click()
    expect(page.locator("#history-detail")).to_contain_text(task_id)
    expect(page.locator("#history-video video")).to_be_attached(timeout=15_000)
    duration = page.wait_for_function(
        "() => { const v = document.querySelector('#history-video video'); "
        "return v && Number.isFinite(v.duration) && v.duration > 0 ? v.duration : null; }", timeout=30_000)
    assert duration.json_value() == pytest.approx(5.0, abs=0.1)

    stranger = browser.new_context()  # another visitor: their own, empty history
    try:
        other = stranger.new_page()
        other.goto(app_url)
        expect(other.locator("#history")).to_be_visible()
        # The load event gives the tab its owner id and its history in one answer: once the id is stored,
        # the history shown is this visitor's.
        other.wait_for_function("key => localStorage.getItem(key)", arg=OWNER_STORAGE_KEY, timeout=30_000)
        assert prompt not in other.locator("#history").inner_text()
    finally:
        stranger.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop-1280x800", "phone-390x844"])
def test_generate_and_status_fit_the_screen_without_horizontal_scrolling(open_page, viewport):
    page = open_page(viewport)
    overflow = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert overflow[0] <= overflow[1], f"the page scrolls sideways: scrollWidth {overflow[0]} > {overflow[1]}"
    for selector in ("#generate", "#status"):
        element = page.locator(selector)
        element.scroll_into_view_if_needed()
        expect(element).to_be_visible()
        expect(element).to_be_in_viewport()
        box = element.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (selector, box)
    page.evaluate("window.scrollTo(0, 0)")


# --- bring your own key: a canary key typed in the page pays for the run and is kept nowhere in the browser ---

@pytest.fixture
def canary_app(tmp_path):
    """The app on a server key the sandbox refuses; the sandbox accepts only the canary, so a video proves its use."""
    import uuid

    from tests.harness import start_app_process, start_sandbox_process

    key = f"ws-canary-{uuid.uuid4().hex}"
    sandbox = start_sandbox_process("--inference-seconds", "2", "--api-key", key)
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log",
                            env={"WAVESPEED_API_KEY": "server-key", "WAVESPEED_BASE_URL": sandbox.url,
                                 "GRADIO_ANALYTICS_ENABLED": "False"})
    yield app.url, key, sandbox.url
    app.stop()
    sandbox.stop()


def test_a_typed_key_runs_the_generation_and_stays_out_of_browser_storage(browser, canary_app, pictures,
                                                                          screenshot_dir):
    import requests

    url, key, sandbox_url = canary_app
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        page.locator("#key-section").get_by_text("Your WaveSpeed key").click()
        key_input = page.locator("#user-key input")
        expect(key_input).to_have_attribute("type", "password")
        key_input.fill(key)
        fill_in(page, pictures["first_frame"], "Mist lifts off the lake at dawn")
        page.click("#generate")
        wait_for_playing_video(page)
        expect(page.locator("#status")).to_contain_text("Done", timeout=10_000)
        page.screenshot(path=str(screenshot_dir / "typed_key_run.png"), full_page=True)
        assert requests.get(sandbox_url + "/sandbox/stats", timeout=5).json()["submissions"] == 1

        storage = page.evaluate("""() => ({local: JSON.stringify(localStorage), session: JSON.stringify(sessionStorage),
                                          cookies: document.cookie})""")
        assert storage["local"] != "{}", "the page stores its owner id in localStorage, so this read is live"
        for where, content in storage.items():
            assert key not in content, f"the key is kept in the browser's {where}"
        # Gradio's run history would keep every input, the password box included, in localStorage.
        expect(page.locator("footer").get_by_text(re.compile(r"\bRuns?\b"))).to_have_count(0)
        visible = page.evaluate("() => document.body.innerText")
        assert key not in visible, "the key is shown on the page"

        page.reload()  # a returning visitor: nothing brings the key back
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        page.locator("#key-section").get_by_text("Your WaveSpeed key").click()
        expect(page.locator("#user-key input")).to_have_value("")
    finally:
        context.close()
