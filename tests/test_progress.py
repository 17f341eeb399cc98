"""The progress display's numbers: where the bar is, what is left, and when a render runs late."""

from __future__ import annotations

import re

from kling_demo.jobs.steps import JobUpdate, Stage
from kling_demo.models import DEFAULT_MODEL
from kling_demo.jobs.progress import EstimateSource, Step, Tracker, estimate
from kling_demo.web.page import progress_html, progress_words
from kling_demo.web.wording import for_sandbox


def update(stage: Stage, elapsed: float, **extra: object) -> JobUpdate:
    return JobUpdate(stage, "…", elapsed, **extra)  # type: ignore[arg-type]


def test_a_first_run_is_estimated_from_the_models_typical_time_and_then_from_this_apps_own_renders() -> None:
    typical = DEFAULT_MODEL.typical_seconds(5)
    assert typical and DEFAULT_MODEL.typical_seconds(10) > typical
    first = estimate(typical, None)
    assert first is not None and first.source is EstimateSource.TYPICAL and first.seconds == typical
    later = estimate(typical, 97.0)
    assert later is not None and later.source is EstimateSource.HISTORY and later.seconds == 97.0
    assert estimate(None, None) is None


def test_the_bar_moves_through_the_render_and_says_what_is_left() -> None:
    tracker = Tracker(estimate(100.0, None))
    tracker.view(update(Stage.PREPARING, 0.0))
    tracker.view(update(Stage.UPLOADING, 1.0))
    start = tracker.view(update(Stage.SUBMITTED, 2.0, task_id="t"))
    half = tracker.view(update(Stage.PROCESSING, 52.0, task_id="t"))
    assert start.fraction < half.fraction < 1.0
    assert half.remaining == 50.0 and not half.late
    assert "50s to go" in progress_words(half) and "first guess" in progress_words(half)
    steps = {step: (passed, current) for step, passed, current in half.steps}
    assert steps[Step.CHECK] == (True, False) and steps[Step.UPLOAD] == (True, False)
    assert steps[Step.RENDER] == (False, True) and steps[Step.DOWNLOAD] == (False, False)
    assert Step.WAIT not in steps, "a job that never waited for a slot shows no such step"
    done = tracker.view(update(Stage.DONE, 60.0, task_id="t"))
    assert done.fraction == 1.0 and all(passed for _, passed, _ in done.steps)


def test_a_render_past_its_expectation_says_it_runs_longer_than_usual_and_never_fills_the_bar() -> None:
    tracker = Tracker(estimate(60.0, None))
    tracker.view(update(Stage.SUBMITTED, 0.0, task_id="t"))
    late = tracker.view(update(Stage.PROCESSING, 200.0, task_id="t"))
    assert late.late and late.remaining is None and late.fraction < 0.95
    assert "running longer than usual" in progress_words(late)
    assert 'class="kd-progress late"' in progress_html(late)


def test_waiting_in_the_apps_line_shows_the_place() -> None:
    tracker = Tracker(None)
    view = tracker.view(update(Stage.WAITING, 3.0, place=3))
    assert view.place == 3 and "number 3 in this app's line" in progress_words(view)
    assert "no estimate yet" in progress_words(view)
    assert Step.WAIT in [step for step, _, _ in view.steps]


def test_sandbox_words_speak_of_no_billing_and_no_wavespeed() -> None:
    stopped = ("Stopped waiting. The task was already submitted, so it may still finish and be billed; resume it "
               "later by its task id.")
    assert for_sandbox(stopped) == ("Stopped waiting. The task was already submitted, so it may still finish; "
                                    "resume it later by its task id.")
    assert "billed" not in for_sandbox("Stopped before anything was submitted; nothing was billed.")
    assert for_sandbox("WaveSpeed is rendering your video") == "The sandbox is rendering your video"
    assert "Space's key" not in for_sandbox("the most one visitor may run at once on this Space's key (2)")
    # The page's money lines and the refused resume fit the sandbox too (no billing, no WaveSpeed key to enter).
    for line in ("Free (sandbox): nothing is billed.", "Sandbox mode: nothing is billed, so keys are not checked.",
                 "Sandbox mode: nothing you make here is billed.",
                 "This task is not in your history. To fetch a task submitted elsewhere, enter your own WaveSpeed "
                 "key first.", "The WaveSpeed key contains a space or a character outside plain ASCII letters."):
        words = for_sandbox(line)
        assert not re.search(r"billed|spent|WaveSpeed|the sandbox key", words) and words[0].isupper(), words
