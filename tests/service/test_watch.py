"""A job seen again from one more page (issue 25): `Service.watch`, in-process against a real sandbox, follows a task
that someone else follows (background recovery once its page closed, or the live job of another tab) to its video,
claiming nothing and asking WaveSpeed nothing; its Stop stops the watching only, and says so truthfully."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from kling_demo.errors import JobStopped, TaskKept
from kling_demo.models import JobRequest, KeySource, Stage, Step, StopReport, Submission, TaskStatus
from kling_demo.service.visitors import Visitor
from kling_demo.words import Voice
from tests.service.test_stop import Running, stats
from tests.waiting import wait_for

ALICE = Visitor("browser:alice")
VOICE = Voice()


def release_renders(sandbox) -> None:
    requests.post(sandbox.base_url + "/sandbox/release", timeout=5).raise_for_status()


def left_running(service, image: Path, prompt: str, visitor: Visitor = ALICE) -> str:
    """A job whose page went away once its task was submitted (a reload mid-render); returns the task id."""
    job = service.generate(JobRequest(image=image, prompt=prompt), visitor, token="the-page-that-reloaded")
    task_id = next(update.task_id for update in job if update.stage is Stage.SUBMITTED)
    job.close()
    return task_id


def test_a_task_whose_page_closed_mid_render_is_watched_to_its_video(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(hold_renders=True)
    service = make_service(sandbox)
    task_id = left_running(service, make_image(), "a kite over the dunes")
    assert service.watch(Visitor("browser:bob"), "bob's page") is None, "Bob has no job of his own"
    polls = stats(sandbox)["result_polls"]

    watching = Running(service.watch(ALICE, "the reloaded page"))
    wait_for(lambda: any(u.stage.at_wavespeed for u in watching.updates), 30, "the watch to show the running task")
    shown = next(u for u in watching.updates if u.stage.at_wavespeed)
    assert shown.task_id == task_id and shown.running_for and shown.running_for > 0
    assert shown.elapsed >= shown.running_for, "its time counts from the task's start, not from the reload"
    assert shown.progress is not None and shown.progress.rendering_for == pytest.approx(shown.running_for, abs=0.5)
    passed = {step for step, was_passed, _ in shown.progress.steps if was_passed}
    assert passed == {Step.CHECK, Step.UPLOAD}, "checked and uploaded by the page that submitted it"
    release_renders(sandbox)
    watching.end()

    done = watching.updates[-1]
    record = service.task(ALICE, task_id)
    assert watching.error is None and done.stage is Stage.DONE and done.task_id == task_id
    assert record.status is TaskStatus.COMPLETED and done.video_path == Path(record.video_path)
    assert done.video_path.exists() and done.elapsed >= shown.elapsed
    assert done.charge is not None and done.charge.amount == pytest.approx(record.quote.price), \
        "the cost as WaveSpeed's billing states it, as the page's own job says it"
    assert stats(sandbox)["submissions"] == 1, "nothing was submitted again"
    # Recovery polled the task; the watch only listened (the one poller's watch of it, shared).
    assert stats(sandbox)["result_polls"] - polls <= sum(1 for u in watching.updates if u.stage.at_wavespeed) + 2
    assert service.watch(ALICE, "a later page") is None, "nothing of Alice's is in flight any more"


def test_a_second_tab_watches_the_job_the_first_tab_runs(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(hold_renders=True)
    service = make_service(sandbox)
    first_tab = Running(service.generate(JobRequest(image=make_image(), prompt="two tabs"), ALICE, token="tab-1"))
    wait_for(first_tab.reached(Stage.SUBMITTED), 30, "the first tab's task to be submitted")
    second_tab = Running(service.watch(ALICE, "tab-2"))
    wait_for(lambda: any(u.stage.at_wavespeed for u in second_tab.updates), 30, "the second tab to show the task")
    release_renders(sandbox)
    first_tab.end()
    second_tab.end()

    assert first_tab.updates[-1].stage is Stage.DONE and second_tab.updates[-1].stage is Stage.DONE
    assert first_tab.updates[-1].video_path == second_tab.updates[-1].video_path
    assert stats(sandbox)["submissions"] == 1


def test_stop_on_a_watched_task_says_it_may_still_finish_and_it_lands_in_the_history(make_sandbox, make_service,
                                                                                     make_image):
    sandbox = make_sandbox(hold_renders=True)
    service = make_service(sandbox)
    task_id = left_running(service, make_image(), "a lantern on the water")
    watching = Running(service.watch(ALICE, "the reloaded page"))
    wait_for(lambda: any(u.stage.at_wavespeed for u in watching.updates), 30, "the watch to show the running task")

    report = service.stop(ALICE, "the reloaded page")  # the page's Stop, by the watch's name
    watching.end()

    assert report == StopReport(Submission.EXISTS, task_id)
    assert VOICE.stopped(report) == (f"Task {task_id} was already submitted and may still finish and be billed; if it "
                                     "does, its video will appear in your history.")
    stopped = watching.updates[-1]
    assert isinstance(watching.error, JobStopped) and stopped.stage is Stage.STOPPED
    assert VOICE.status(stopped) == VOICE.stopped(report)
    release_renders(sandbox)
    record = wait_for(lambda: (r := service.task(ALICE, task_id)) and r.status is TaskStatus.COMPLETED and r, 60,
                      "the task to finish into Alice's history")
    assert record.video_path and Path(record.video_path).exists()


def test_a_submission_on_its_way_is_shown_as_such_and_its_task_id_picked_up(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(hold_submissions=True, inference_seconds=0.5)
    service = make_service(sandbox)
    first_tab = Running(service.generate(JobRequest(image=make_image(), prompt="on its way"), ALICE, token="tab-1"))
    wait_for(lambda: stats(sandbox)["submissions_held"] == 1, 30, "the submit request to reach the sandbox")
    assert service.in_flight(ALICE).status is TaskStatus.SUBMITTING

    watching = Running(service.watch(ALICE, "tab-2"))
    wait_for(lambda: watching.updates, 30, "the watch's first update")
    sending = watching.updates[0]
    assert sending.stage is Stage.SUBMITTING and sending.submission is Submission.MAY_EXIST
    assert sending.task_id is None, "no task id before the answer (never the row's own id)"
    assert "a task may exist and be billed" in VOICE.status(sending)
    requests.post(sandbox.base_url + "/sandbox/release-submissions", timeout=5).raise_for_status()
    first_tab.end()
    task_id = first_tab.updates[-1].task_id
    watching.end()

    done = watching.updates[-1]
    assert task_id and done.stage is Stage.DONE and done.task_id == task_id, "the task id was picked up"
    assert done.video_path == first_tab.updates[-1].video_path


def test_an_own_key_task_nobody_here_follows_is_said_plainly_and_not_polled(make_sandbox, make_service, make_image):
    """Without background recovery (or after a restart) a task paid with a visitor's own key has no follower: the
    key is never kept. The watch says so, and that the key and Resume fetch it, rather than show a stale render."""
    sandbox = make_sandbox(hold_renders=True)
    service = make_service(sandbox, background=False)
    task_id = left_running(service, make_image(), "own key", Visitor(ALICE.owner, "alice's key"))
    polls = stats(sandbox)["result_polls"]

    watching = Running(service.watch(ALICE, "the reloaded page"))
    watching.end()

    assert isinstance(watching.error, TaskKept) and watching.error.task_id == task_id
    assert "your own key" in str(watching.error) and f"Resume with task {task_id}" in str(watching.error)
    assert VOICE.heading(watching.updates[-1]) == "Still at WaveSpeed"
    assert stats(sandbox)["result_polls"] == polls, "the watch asked WaveSpeed nothing"
    release_renders(sandbox)


def test_a_submission_withdrawn_before_it_was_sent_ends_the_watch_saying_nothing_was_submitted(
        make_sandbox, make_service, tmp_path):
    service = make_service(make_sandbox())
    frame = tmp_path / "kept-first-frame.jpg"
    frame.write_bytes(b"")
    intent = service.journal.record_intent(owner=ALICE.owner, model=service.spec.model_id,
                                           api_base=service.backend.base_url, key_source=KeySource.SERVER,
                                           params={"prompt": "never sent", "duration": 5}, first_frame=str(frame))
    watching = Running(service.watch(ALICE, "the reloaded page"))
    wait_for(lambda: watching.updates, 30, "the watch's first update")
    assert watching.updates[0].stage is Stage.PREPARING and watching.updates[0].submission is Submission.NONE

    # The page that prepared it stops before sending: its row is withdrawn.
    service.journal.withdraw_intent(ALICE.owner, intent)
    watching.end()

    stopped = watching.updates[-1]
    assert isinstance(watching.error, JobStopped) and stopped.stage is Stage.STOPPED
    assert stopped.submission is Submission.NONE and VOICE.status(stopped).startswith("Nothing was submitted")
