"""Stop at every moment of a job says what is true about money, checked against the sandbox's own count of what
it received: before anything is uploaded, during the upload, while the submit request is on its way, and after
the task id. A task that may exist and does ends up in the owner's history."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import requests

from kling_demo.errors import JobStopped
from kling_demo.models import JobRequest, JobUpdate, Stage, StopReport, Submission, TaskStatus
from kling_demo.service.visitors import Visitor
from kling_demo.words import Voice
from tests.counting_proxy import CountingProxy
from tests.waiting import wait_for

ALICE = Visitor("browser:alice", spender="ip:198.51.100.7")
VOICE = Voice()


def stats(sandbox) -> dict:
    return requests.get(sandbox.base_url + "/sandbox/stats", timeout=5).json()


class Running:
    """A job run to its end in a thread, as the command line runs one; the test watches its updates."""

    def __init__(self, job) -> None:
        self.job = job
        self.updates: list[JobUpdate] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.job:
                for update in self.job:
                    self.updates.append(update)
        except BaseException as error:  # noqa: BLE001 - the test reads it
            self.error = error

    def reached(self, stage: Stage) -> Callable[[], bool]:
        return lambda: any(update.stage is stage for update in self.updates)

    def end(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the job ended after Stop"


def the_words(report: StopReport) -> str:
    return VOICE.stopped(report)


def test_stop_before_anything_is_uploaded_says_nothing_was_submitted_and_nothing_was(make_sandbox, make_service,
                                                                                       make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox, api_concurrency=1)
    holder = service.generate(JobRequest(image=make_image(), prompt="first"), Visitor("browser:bob"))
    first = Running(holder)  # holds the key's only slot while it renders
    wait_for(first.reached(Stage.SUBMITTED), 30, "the first job to hold the key's slot")
    running = Running(service.generate(JobRequest(image=make_image(), prompt="a lighthouse"), ALICE))
    wait_for(lambda: any(u.place for u in running.updates), 30, "the job to wait for a slot")

    report = running.job.stop()
    running.end()

    assert report == StopReport(Submission.NONE)
    assert the_words(report) == "Nothing was submitted, so nothing was billed."
    assert isinstance(running.error, JobStopped) and running.updates[-1].stage is Stage.STOPPED
    assert not any(update.stage is Stage.UPLOADING for update in running.updates)
    first.end()
    assert stats(sandbox)["submissions"] == 1, "only the first job's"


def test_stop_during_the_upload_sends_no_submission(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    proxy = CountingProxy(sandbox.base_url)  # holds the upload, so Stop certainly comes while it is on its way
    upload = proxy.hold("POST /api/v3/media/uploads")
    try:
        service = make_service(proxy.url)
        running = Running(service.generate(JobRequest(image=make_image(), prompt="a kite"), ALICE))
        wait_for(lambda: proxy.count("POST /api/v3/media/uploads") == 1, 30, "the upload to be on its way")
        assert running.reached(Stage.UPLOADING)()

        report = running.job.stop()
        upload.set()
        running.end()
    finally:
        upload.set()
        proxy.stop()

    assert report.submission is Submission.NONE and the_words(report).startswith("Nothing was submitted")
    assert stats(sandbox)["submissions"] == 0, "the stopped job never sent its submission"
    assert isinstance(running.error, JobStopped) and running.error.submission is Submission.NONE
    assert service.tasks(ALICE) == [], "and left nothing in the history"


def test_stop_while_the_submission_is_on_its_way_says_it_may_exist_and_it_lands_in_the_history(
        make_sandbox, make_service, make_image):
    sandbox = make_sandbox(hold_submissions=True)
    service = make_service(sandbox)
    running = Running(service.generate(JobRequest(image=make_image(), prompt="a boat at dawn"), ALICE))
    wait_for(lambda: stats(sandbox)["submissions_held"] == 1, 30, "the submit request to reach the sandbox")

    report = running.job.stop()
    words = the_words(report)
    assert report.submission is Submission.MAY_EXIST, "the request had left: a task may exist"
    assert "may exist and be billed" in words and "appear in your history" in words
    assert "Nothing was submitted" not in words

    requests.post(sandbox.base_url + "/sandbox/release-submissions", timeout=5)
    running.end()
    assert stats(sandbox)["submissions"] == 1, "the submission did arrive"
    stopped = running.updates[-1]
    assert stopped.stage is Stage.STOPPED and stopped.submission is Submission.EXISTS and stopped.task_id
    record = wait_for(lambda: next((r for r in service.tasks(ALICE) if r.status is TaskStatus.COMPLETED), None), 60,
                      "the task to finish into Alice's history")
    assert record.task_id == stopped.task_id and record.video_path


def test_stop_after_the_task_id_names_the_task_and_it_still_finishes(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(inference_seconds=3)
    service = make_service(sandbox)
    running = Running(service.generate(JobRequest(image=make_image(), prompt="rain on a window"), ALICE))
    wait_for(running.reached(Stage.SUBMITTED), 30, "the task to be submitted")
    task_id = next(update.task_id for update in running.updates if update.task_id)

    report = running.job.stop()
    running.end()

    assert report == StopReport(Submission.EXISTS, task_id)
    assert the_words(report).startswith(f"Task {task_id} was already submitted and may still finish and be billed")
    assert stats(sandbox)["submissions"] == 1
    record = wait_for(lambda: next((r for r in service.tasks(ALICE) if r.status is TaskStatus.COMPLETED), None), 60,
                      "the task to finish into Alice's history")
    assert record.task_id == task_id


def test_a_page_stop_that_overtakes_its_generate_keeps_the_job_from_starting(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    report = service.stop(ALICE, "token-1")  # Stop pressed 0.1 s after Generate: the job has not started yet
    job = service.generate(JobRequest(image=make_image(), prompt="a paper plane"), ALICE, token="token-1")

    with pytest.raises(JobStopped):
        with job:
            updates = []
            for update in job:
                updates.append(update)

    assert report.submission is Submission.NONE
    assert [update.stage for update in updates] == [Stage.STOPPED]
    assert stats(sandbox)["uploads"] == 0 and stats(sandbox)["submissions"] == 0


def test_the_sandbox_voice_speaks_of_no_billing(make_sandbox):
    sandbox_voice = Voice(sandbox=True)
    assert sandbox_voice.stopped(StopReport(Submission.NONE)) == "Nothing was submitted."
    may = sandbox_voice.stopped(StopReport(Submission.MAY_EXIST))
    assert "billed" not in may and "WaveSpeed" not in may and "the sandbox" in may
