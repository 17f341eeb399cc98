"""A job survives a reload (issue 25): a page that loads while the visitor's job runs shows it at the top, follows it,
and plays its video in the main player; Stop on it says what is true; a second tab sees the same job; with no job
running the page loads as it always did.

Real Chromium, at 1280×800 and 390×844, against `python app.py` live on a sandbox process whose renders (or submit
requests) are held until the test releases them: the reload always lands mid-render (or while the submission is on its
way), with no race against a clock.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from kling_demo.models import JobUpdate, Stage, StopReport, Submission
from kling_demo.words import Voice
from tests.e2e.test_browser import expect, fill_in, task_id_box, wait_for_playing_video
from tests.waiting import wait_for

SERVER_KEY = "server-key-for-continuity"
VIEWPORTS = [pytest.param({"width": 1280, "height": 800}, id="1280x800"),
             pytest.param({"width": 390, "height": 844}, id="390x844")]
LIVE = Voice()  # the page's voice: live mode (the sandbox process stands in for WaveSpeed)
FEW_SECONDS_MS = 8_000  # "within a few seconds" of the reload, on two cores shared with other test workers


def heading(stage: Stage) -> str:
    return LIVE.heading(JobUpdate(stage, 0.0))


class Held:
    """The live app on a sandbox that holds every render (or, with `--hold-submissions`, every submit request) until
    `release()`, and the browser pages opened on it."""

    def __init__(self, start_live_app: Callable[..., Any], browser: Any, hold: str = "--hold-renders") -> None:
        self.hold = hold
        self.app, self.sandbox = start_live_app(SERVER_KEY, hold, "--inference-seconds", "1")
        self.browser = browser
        self.contexts: list[Any] = []
        self.pages: list[Any] = []

    def open(self, viewport: dict[str, int]) -> Any:
        """A page of a new visitor (a fresh browser context); `.context.new_page()` opens a second tab of theirs."""
        context = self.browser.new_context(viewport=viewport)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        page.goto(self.app.url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        self.pages.append(page)
        return page

    def release(self) -> None:
        route = "/sandbox/release-submissions" if self.hold == "--hold-submissions" else "/sandbox/release"
        requests.post(self.sandbox.url + route, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(self.sandbox.url + "/sandbox/stats", timeout=10).json()

    def submissions(self) -> int:
        return self.stats()["submissions"]


@pytest.fixture
def held(start_live_app: Callable[..., Any], browser: Any, screenshot_dir: Path,
         request: pytest.FixtureRequest) -> Iterator[Held]:
    """A `Held` app (holding what `indirect` parametrization names, renders by default); at teardown the last page
    opened is saved as `<test name>.png`, as conftest's `open_page` does."""
    made = Held(start_live_app, browser, getattr(request, "param", "--hold-renders"))
    yield made
    if made.pages:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name).strip("_")
        try:
            made.pages[-1].screenshot(path=str(screenshot_dir / f"{name}.png"), full_page=True)
        except Exception as error:  # a screenshot must never hide the test's own outcome
            print(f"screenshot of {request.node.name} failed: {error}", file=sys.stderr)
    for context in made.contexts:
        context.close()


def elapsed_shown(page: Any) -> int:
    return int(re.search(r"(\d+)s elapsed", page.locator("#progress .kd-times").inner_text()).group(1))


def start_rendering(page: Any, pictures: dict, prompt: str) -> tuple[str, int]:
    """Generate, and wait until the task has rendered (held) for a few seconds as its progress shows; returns its
    task id and the seconds elapsed then (a page picking the job up later shows at least as many)."""
    fill_in(page, pictures["first_frame"], prompt)
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text(heading(Stage.PROCESSING), timeout=30_000)
    task_id = task_id_box(page).input_value()
    assert re.fullmatch(r"[0-9a-f]{16,}", task_id), task_id
    expect(page.locator("#progress .kd-times")).to_contain_text(re.compile(r"\b([4-9]|\d{2,})s elapsed"),
                                                               timeout=30_000)
    return task_id, elapsed_shown(page)


def expect_the_running_job_at_the_top(page: Any, task_id: str, prompt: str, elapsed_before: int) -> None:
    """What a visitor sees of a job picked up as the page loads: its id, status and progress in view at once (with
    the figures of the task's whole run, not since the reload), Stop offered, and the form it was made from."""
    expect(task_id_box(page)).to_have_value(task_id, timeout=FEW_SECONDS_MS)
    progress = page.locator("#progress .kd-times")
    expect(progress).to_contain_text("elapsed", timeout=FEW_SECONDS_MS)
    for shown in ("#status", "#progress .kd-bar", "#task-id", "#stop"):
        expect(page.locator(shown)).to_be_in_viewport()
    expect(page.locator("#status")).to_contain_text(heading(Stage.PROCESSING))
    # Counted from the reload it would start again near 0; the whole run's time is at least what was shown before.
    assert elapsed_shown(page) >= elapsed_before, "the elapsed time counts from the task's start"
    expect(page.locator("#stop")).to_be_enabled()
    expect(page.locator("#generate")).to_be_disabled()  # no second payment by a click on Generate
    expect(page.locator("#prompt textarea")).to_have_value(prompt)
    expect(page.locator("#first-frame img")).to_be_visible()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_a_reload_mid_render_shows_the_job_at_the_top_and_plays_its_video(held, pictures, viewport):
    page = held.open(viewport)
    prompt = "The tide comes in over the rocks"
    task_id, elapsed_before = start_rendering(page, pictures, prompt)

    page.reload()
    expect_the_running_job_at_the_top(page, task_id, prompt, elapsed_before)
    held.release()

    video = wait_for_playing_video(page)  # no click: the main player plays it
    assert video["duration"] == pytest.approx(5.0, abs=0.1), video
    expect(page.locator("#video video")).to_be_in_viewport()
    status = page.locator("#status")
    expect(status).to_contain_text(heading(Stage.DONE))
    expect(status).to_contain_text(task_id)
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#history")).to_contain_text(f"Done · {prompt}")
    assert held.submissions() == 1, "the reload submitted nothing again"


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_stop_on_the_reloaded_job_says_it_may_still_finish_and_it_lands_in_the_history(held, pictures, viewport):
    page = held.open(viewport)
    prompt = "Wind bends the wheat"
    task_id, elapsed_before = start_rendering(page, pictures, prompt)
    page.reload()
    expect_the_running_job_at_the_top(page, task_id, prompt, elapsed_before)

    page.click("#stop")
    status = page.locator("#status")
    expect(status).to_contain_text(heading(Stage.STOPPED))
    expect(status).to_contain_text(LIVE.stopped(StopReport(Submission.EXISTS, task_id)))
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    held.release()
    # The task goes on in the background and finishes into the history; the status keeps Stop's words.
    expect(page.locator("#history")).to_contain_text(f"Done · {prompt}", timeout=30_000)
    expect(status).to_contain_text(heading(Stage.STOPPED))
    expect(page.locator("#video video")).to_have_count(0)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_a_second_tab_sees_the_running_job_and_its_video(held, pictures, viewport):
    first = held.open(viewport)
    prompt = "Clouds race over the ridge"
    task_id, elapsed_before = start_rendering(first, pictures, prompt)
    second = first.context.new_page()  # the same browser: the same visitor
    held.pages.append(second)
    second.goto(held.app.url)
    expect_the_running_job_at_the_top(second, task_id, prompt, elapsed_before)
    held.release()

    for tab in (first, second):
        wait_for_playing_video(tab)
        expect(tab.locator("#status")).to_contain_text(task_id)
    assert held.submissions() == 1


# The step that picks up a running job as the page loads: its id, and which of its outputs are server-side states
# (never sent to the browser: always null in its answer).
@pytest.mark.parametrize("held", ["--hold-submissions"], indirect=True)
@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_a_reload_while_the_submission_is_on_its_way_says_so_and_picks_up_the_task(held, pictures, viewport):
    page = held.open(viewport)
    prompt = "Gulls circle the harbour"
    fill_in(page, pictures["first_frame"], prompt)
    page.click("#generate")
    expect(page.locator("#stop")).to_be_enabled()
    wait_for(lambda: held.stats()["submissions_held"] == 1, 30, "the submit request to reach the sandbox")

    page.reload()
    status = page.locator("#status")
    expect(status).to_contain_text(heading(Stage.SUBMITTING), timeout=FEW_SECONDS_MS)
    expect(status).to_contain_text(LIVE.status(JobUpdate(Stage.SUBMITTING, 0.0, submission=Submission.MAY_EXIST)))
    expect(status).to_be_in_viewport()
    expect(page.locator("#stop")).to_be_enabled()
    expect(page.locator("#generate")).to_be_disabled()
    assert task_id_box(page).input_value() == "", "no task id before the answer"
    held.release()

    wait_for_playing_video(page)
    task_id = task_id_box(page).input_value()
    assert re.fullmatch(r"[0-9a-f]{16,}", task_id), task_id
    expect(status).to_contain_text(task_id)
    assert held.submissions() == 1


REJOIN_STEP = """() => {
    const config = window.gradio_config;
    const rejoined = config.components.find(c => c.props && c.props.elem_id === 'rejoined').id;
    const step = config.dependencies.find(d => d.backend_fn && d.outputs.includes(rejoined));
    const states = new Set(config.components.filter(c => c.type === 'state').map(c => c.id));
    return {id: step.id, states: step.outputs.map((id, at) => states.has(id) ? at : -1).filter(at => at >= 0)};
}"""
TWO_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_with_no_job_running_the_page_loads_ready_as_before(open_page, pictures, viewport, tmp_path):
    page = open_page(viewport)
    fill_in(page, pictures["first_frame"], "Finished before the reload")
    page.click("#generate")
    wait_for_playing_video(page)
    step = page.evaluate(REJOIN_STEP)

    def is_the_rejoin_step(response: Any) -> bool:
        body = response.request.post_data or ""
        return "run/predict" in response.url and body.startswith("{") and json.loads(body).get("fn_index") == step["id"]

    with page.expect_response(is_the_rejoin_step, timeout=30_000) as answer:
        page.reload()
    outputs = [output for at, output in enumerate(answer.value.json()["data"]) if at not in step["states"]]
    assert outputs == [""], f"no job is named, so nothing more runs: {outputs}"
    page.evaluate(TWO_FRAMES)  # the answer is applied

    expect(page.locator("#status")).to_contain_text("Ready")
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    assert task_id_box(page).input_value() == ""
    expect(page.locator("#video video")).to_have_count(0)
    expect(page.locator("#history")).to_contain_text("Done · Finished before the reload")
    # The form is as it always was: a dropped file that is no picture is refused at once, in a sentence (a step
    # that updated the frame input would have rebuilt it without its checks, leaving a bare "Error").
    fake = tmp_path / "notes.png"
    fake.write_text("these are my notes, not a picture\n" * 20)
    page.set_input_files("#first-frame input[type=file]", str(fake))
    expect(page.locator("#first-frame-check")).to_contain_text("is not an image that can be read")
