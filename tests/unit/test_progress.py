"""The progress display's numbers: where the bar is, what is left, and when a render runs late."""

from __future__ import annotations

import dataclasses
import re

from kling_demo.errors import (
    InputRejected,
    JobStopped,
    KeyRequired,
    NothingSubmitted,
    SubmissionOutcomeUnknown,
    TaskFailed,
    TaskOutOfReach,
)
from kling_demo.jobs.progress import EstimateSource, Step, Tracker, estimate
from kling_demo.jobs.schedule import InferenceHistory
from kling_demo.models import (
    DEFAULT_MODEL,
    Balance,
    BudgetView,
    JobUpdate,
    KeyCheck,
    KeyState,
    Payer,
    PriceView,
    Quote,
    Stage,
    StopReport,
    Submission,
)
from kling_demo.web.views import progress_html, progress_words
from kling_demo.words import Voice


def update(stage: Stage, elapsed: float, **facts: object) -> JobUpdate:
    return JobUpdate(stage, elapsed, **facts)  # type: ignore[arg-type]


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
    assert "taking longer than usual" in progress_words(late) and "to go" not in progress_words(late)
    assert 'class="kd-progress late"' in progress_html(late)


def test_no_moment_of_a_render_says_0s_to_go_and_past_the_estimate_it_says_at_once_it_runs_late() -> None:
    """Issue 25: the line sat at "about 0s to go" until 1.25× + 10 s. Every moment, on a 50 ms grid: time left
    while there is some (at least 1 s), and "longer than usual" from the estimate on."""
    tracker = Tracker(estimate(60.0, None))
    tracker.view(update(Stage.SUBMITTED, 0.0, task_id="t"))
    for step in range(0, 2 * 60 * 20):
        rendering_for = step / 20
        view = tracker.view(update(Stage.PROCESSING, rendering_for, task_id="t"))
        words = progress_words(view)
        assert not re.search(r"\b0s to go", words), (rendering_for, words)
        if rendering_for < 60.0:
            assert not view.late and re.search(r"about (\d+m )?\d+s to go", words), (rendering_for, words)
        else:
            assert view.late and "taking longer than usual" in words and "to go" not in words, (rendering_for, words)
            assert "about 1m 00s" in words and "not timed one yet" in words, words
        assert view.fraction < 0.95, "the bar is never full before the video is there"


def test_a_late_render_names_the_range_of_this_apps_own_renders() -> None:
    history = InferenceHistory()
    for seconds in (48.0, 42.2, 61.0, 50.0):
        history.record(DEFAULT_MODEL.model_id, 5, seconds)
    assert history.spread(DEFAULT_MODEL.model_id, 5) == (42.2, 61.0) and history.spread("other", 5) is None
    expected = estimate(150.0, history.expected(DEFAULT_MODEL.model_id, 5), history.spread(DEFAULT_MODEL.model_id, 5))
    assert expected is not None and expected.seconds == 49.0
    tracker = Tracker(expected)
    tracker.view(update(Stage.SUBMITTED, 0.0, task_id="t"))
    assert "about 1s to go" in progress_words(tracker.view(update(Stage.PROCESSING, 48.5, task_id="t")))
    late = progress_words(tracker.view(update(Stage.PROCESSING, 49.0, task_id="t")))
    assert "taking longer than usual: renders like this took 42s–1m 01s here" in late, late
    beyond = progress_words(tracker.view(update(Stage.PROCESSING, 75.0, task_id="t")))
    assert "taking longer than any recent render here (42s–1m 01s)" in beyond, beyond


def test_the_service_estimates_from_its_own_renders_with_their_range(make_service, sandbox) -> None:
    service = make_service(sandbox, background=False)
    assert service.expected(5).source is EstimateSource.TYPICAL and service.expected(5).slowest is None
    for seconds in (3.0, 5.0, 4.0):
        service.history.record(DEFAULT_MODEL.model_id, 5, seconds)
    expected = service.expected(5)
    assert (expected.source, expected.seconds, expected.fastest, expected.slowest) == (
        EstimateSource.HISTORY, 4.0, 3.0, 5.0)


def test_waiting_in_the_apps_line_shows_the_place() -> None:
    tracker = Tracker(None)
    view = tracker.view(update(Stage.WAITING, 3.0, place=3))
    assert view.place == 3 and "number 3 in this app's line" in progress_words(view)
    assert "no estimate yet" in progress_words(view)
    assert Step.WAIT in [step for step, _, _ in view.steps]


def test_a_stopped_job_says_so_not_that_it_failed() -> None:
    tracker = Tracker(estimate(60.0, None))
    tracker.view(update(Stage.SUBMITTED, 0.0, task_id="t"))
    stopped = tracker.view(update(Stage.STOPPED, 12.0, task_id="t", submission=Submission.EXISTS))
    assert progress_words(stopped) == "Stopped after 12s."


# --- the sandbox's voice: no billing, no WaveSpeed, no Space's key --------------------------------------------

# Nothing there may be billed ("nothing was billed" is true, and allowed), nothing is WaveSpeed's, no key pays.
NOT_IN_THE_SANDBOX = re.compile(r"(?<!nothing was )billed|spent|WaveSpeed|Space's key|\$")
QUOTE = Quote(1.4)


def every_update() -> list[JobUpdate]:
    """One update of each kind a job yields, with the facts that change its words."""
    return [
        update(Stage.PREPARING, 0.0),
        update(Stage.WAITING, 1.0, place=1, slot_limit=2),
        update(Stage.WAITING, 1.0, place=3),
        update(Stage.WAITING, 1.0, rate_limited=True, retry_in=5.0),
        update(Stage.WAITING, 1.0, outage="connection refused", retry_in=2.0),
        update(Stage.UPLOADING, 2.0, frames=2, upload_mb=0.3, price=QUOTE),
        update(Stage.SEARCHING, 3.0, submission=Submission.MAY_EXIST),
        update(Stage.SEARCHING, 4.0, submission=Submission.MAY_EXIST, retry_in=2.0),
        update(Stage.SUBMITTED, 4.0, task_id="t1", submission=Submission.EXISTS, expected=30.0),
        update(Stage.QUEUED, 5.0, task_id="t1", submission=Submission.EXISTS, running_for=1.0, queued_behind=2),
        update(Stage.PROCESSING, 9.0, task_id="t1", submission=Submission.EXISTS, running_for=5.0, expected=30.0),
        update(Stage.PROCESSING, 9.0, task_id="t1", submission=Submission.EXISTS, outage="HTTP 503", retry_in=4.0),
        update(Stage.DOWNLOADING, 40.0, task_id="t1", submission=Submission.EXISTS, inference_ms=6000),
        update(Stage.DONE, 41.0, task_id="t1", submission=Submission.EXISTS, inference_ms=6000, price=QUOTE,
               nsfw=True),
        update(Stage.STOPPED, 12.0, task_id="t1", submission=Submission.EXISTS),
        update(Stage.STOPPED, 3.0, submission=Submission.MAY_EXIST),
        update(Stage.STOPPED, 1.0),
    ]


ENDINGS = [TaskFailed("The sandbox failed the task.", task_id="t1"), SubmissionOutcomeUnknown("lost", task_id=None),
           TaskOutOfReach("out of reach", task_id="t1"), InputRejected("too small"), KeyRequired("a key"),
           NothingSubmitted("down"), JobStopped("Stopped.", task_id="t1")]


def test_the_sandbox_voice_speaks_of_no_billing_no_wavespeed_and_no_spaces_key() -> None:
    for for_visitors in (True, False):
        voice = Voice(sandbox=True, on_space=True, for_visitors=for_visitors)
        # The service keeps no quote in sandbox mode, so no update there carries a price.
        said = [voice.line(dataclasses.replace(each, price=None)) for each in every_update()]
        said += [voice.stopped(StopReport(submission, "t1" if submission is Submission.EXISTS else None))
                 for submission in Submission]
        said += [voice.error_heading(error) for error in ENDINGS]
        said += [voice.price_line(PriceView(5, Payer.SERVER_KEY, QUOTE, balance=Balance(20.0))),
                 voice.key_status(KeyCheck(KeyState.NOT_USED)), voice.spend_line({"USD": (2.8, 2)}),
                 voice.cost(QUOTE), voice.deleted()]
        for words in said:
            assert not NOT_IN_THE_SANDBOX.search(words) and (words == "" or words[0].isupper()), words
        assert "The sandbox is making your video" in voice.status(every_update()[10])


def test_the_live_voice_says_what_may_be_billed_and_names_wavespeed() -> None:
    """The same facts in the live voice: so the sandbox test above cannot pass by saying nothing at all."""
    voice = Voice(on_space=True)
    assert "and be billed" in voice.stopped(StopReport(Submission.EXISTS, "t1"))
    assert "and be billed" in voice.stopped(StopReport(Submission.MAY_EXIST))
    assert "nothing was billed" in voice.stopped(StopReport(Submission.NONE))
    assert "WaveSpeed is making your video" in voice.status(every_update()[10])
    assert "this Space's key" in voice.price_line(PriceView(5, Payer.SERVER_KEY, QUOTE))
    assert "$1.40" in voice.line(every_update()[13])
    assert voice.budget_line(BudgetView(1.0, 5.0, 1.0, None)).startswith("Last 24 h on this Space's key")
