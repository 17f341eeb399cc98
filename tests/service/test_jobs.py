"""A whole job against the sandbox: the stages a visitor sees, the video, and every way it can end."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from kling_demo.errors import (
    AuthenticationFailed,
    DownloadFailed,
    InputRejected,
    JobStopped,
    StorageUnavailable,
    SubmissionOutcomeUnknown,
    TaskFailed,
    TaskTimedOut,
)
from kling_demo.jobs.record import Records
from kling_demo.jobs.runner import run
from kling_demo.jobs.steps import JobContext, JobRequest, Stage, generate, resume
from kling_demo.models import (
    DEFAULT_MODEL,
    KeySource,
    StopReport,
    Submission,
    TaskStatus,
)
from kling_demo.store.files import NO_ROOM_MESSAGE
from kling_demo.store.journal import Journal
from kling_demo.store.videos import probe_video
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.words import Voice
from tests.conftest import fill


@pytest.fixture
def job_context(tmp_path):
    contexts = []

    def factory(sandbox, journal: Journal | None = None, owner: str = "", **fields) -> JobContext:
        client = WaveSpeedClient(sandbox.base_url, "k")
        videos_dir = tmp_path / "videos"
        records = Records(journal, owner, DEFAULT_MODEL.model_id, client.base_url, KeySource.SERVER, videos_dir)
        ctx = JobContext(client=client, videos_dir=videos_dir, records=records, **fields)
        contexts.append(ctx)
        return ctx

    yield factory
    for ctx in contexts:
        ctx.client.close()


def run_job(request: JobRequest, ctx: JobContext) -> list:
    """Every update of a job, run by the runner (it does the waiting), and the error it ended on, if any."""
    updates = []
    try:
        for update in run(generate(request, ctx), ctx.stop):
            updates.append(update)
    except Exception as error:  # the caller inspects both the updates and the error
        updates.append(error)
    return updates


@pytest.mark.parametrize("duration", [5, 10])
def test_a_job_ends_with_a_video_of_the_requested_length(make_sandbox, make_image, job_context, duration):
    sandbox = make_sandbox(inference_seconds=1.5)
    updates = run_job(JobRequest(image=make_image(size=(960, 540)), prompt="waves", duration=duration),
                  job_context(sandbox))
    final = updates[-1]
    assert final.stage is Stage.DONE, final
    stages = [u.stage for u in updates]
    assert stages[:3] == [Stage.PREPARING, Stage.UPLOADING, Stage.SUBMITTED]
    assert Stage.DOWNLOADING in stages
    task_ids = {u.task_id for u in updates if u.stage not in (Stage.PREPARING, Stage.UPLOADING)}
    assert len(task_ids) == 1 and None not in task_ids
    assert final.task_id in Voice().status(final), "the visitor reads the task id at the end"
    assert final.inference_ms >= 1500 and final.nsfw is False
    info = probe_video(final.video_path)
    assert info.duration_seconds == pytest.approx(duration)
    assert info.width / info.height == pytest.approx(960 / 540, rel=0.01)


def test_end_frame_and_negative_prompt_are_sent(sandbox, make_image, job_context):
    updates = run_job(JobRequest(image=make_image(color=(220, 20, 20)), prompt="fade", negative_prompt="blur",
                             end_image=make_image(color=(20, 20, 220))), job_context(sandbox))
    assert updates[-1].stage is Stage.DONE
    assert sandbox.stats()["uploads"] == 2
    assert updates[1].stage is Stage.UPLOADING and updates[1].frames == 2


def test_a_failed_task_names_its_task_id_and_the_api_error(make_sandbox, make_image, job_context):
    sandbox = make_sandbox(task_failure_rate=1.0, seed=3)
    updates = run_job(JobRequest(image=make_image(), prompt="a storm"), job_context(sandbox))
    error = updates[-1]
    assert isinstance(error, TaskFailed)
    assert error.task_id and error.task_id in str(error)
    assert "sandbox" in str(error).lower()  # the API's own error text is passed on
    assert all(update.stage is not Stage.FAILED for update in updates[:-1]), "the failure is reported once"


def test_the_overall_deadline_ends_the_wait_and_keeps_the_task_id(make_sandbox, make_image, job_context):
    sandbox = make_sandbox(inference_seconds=30)
    updates = run_job(JobRequest(image=make_image(), prompt="slow"), job_context(sandbox, deadline_seconds=2.0))
    error = updates[-1]
    assert isinstance(error, TaskTimedOut)
    assert "may still finish" in str(error) and error.task_id in str(error)
    assert sandbox.stats()["submissions"] == 1


def test_stop_ends_the_wait_and_warns_that_the_task_may_be_billed(make_sandbox, make_image, job_context):
    sandbox = make_sandbox(inference_seconds=30)
    ctx = job_context(sandbox)
    job = generate(JobRequest(image=make_image(), prompt="slow"), ctx)
    with pytest.raises(JobStopped) as caught:
        for update in run(job, ctx.stop):
            if update.stage is Stage.SUBMITTED:
                threading.Timer(0.3, ctx.stop.set).start()  # while the runner waits on the task
    stopped = caught.value
    assert stopped.task_id and stopped.submission is Submission.EXISTS and stopped.may_be_billed
    assert "may still finish and be billed" in Voice().stopped(StopReport(stopped.submission, stopped.task_id))
    assert sandbox.stats()["submissions"] == 1


def test_a_refused_input_is_never_uploaded_or_submitted(sandbox, make_image, job_context):
    updates = run_job(JobRequest(image=make_image(size=(200, 150)), prompt="tiny"), job_context(sandbox))
    error = updates[-1]
    assert isinstance(error, InputRejected)
    assert "300" in str(error) and "200" in str(error)
    stats = sandbox.stats()
    assert stats["uploads"] == 0 and stats["submissions"] == 0


def test_an_empty_prompt_is_refused_before_upload(sandbox, make_image, job_context):
    updates = run_job(JobRequest(image=make_image(), prompt="   "), job_context(sandbox))
    assert isinstance(updates[-1], InputRejected)
    assert "prompt" in str(updates[-1]).lower()
    assert sandbox.stats()["uploads"] == 0


# --- nothing is paid for that cannot be recorded -----------------------------------------------


def corrupt(journal: Journal) -> None:
    """What a failing disk does to the journal while the app runs: every later write fails."""
    journal.path.write_bytes(b"\x00 not a database any more " * 400)


def test_the_journal_row_is_written_before_the_submission_and_completed_after(sandbox, make_image, job_context,
                                                                              tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    ctx = job_context(sandbox, journal=journal, owner="alice")
    updates = []
    for update in run(generate(JobRequest(image=make_image(), prompt="a lighthouse"), ctx), ctx.stop):
        if update.stage is Stage.UPLOADING:
            (row,) = journal.for_owner("alice")
            assert row.status is TaskStatus.PREPARED and row.prompt == "a lighthouse" and Path(row.first_frame).is_file()
            assert sandbox.stats()["submissions"] == 0
        updates.append(update)
    assert updates[-1].stage is Stage.DONE
    (row,) = journal.for_owner("alice")
    assert (row.task_id, row.status, row.duration) == (updates[-1].task_id, TaskStatus.COMPLETED, 5)
    assert Path(row.first_frame).is_file() and row.video_path == str(updates[-1].video_path)


def test_a_journal_that_cannot_be_written_refuses_before_anything_is_uploaded(sandbox, make_image, job_context,
                                                                              tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    corrupt(journal)
    updates = run_job(JobRequest(image=make_image(), prompt="waves"), job_context(sandbox, journal=journal, owner="a"))
    error = updates[-1]
    assert isinstance(error, StorageUnavailable) and str(error) == NO_ROOM_MESSAGE
    assert error.task_id is None and all(update.stage is Stage.PREPARING for update in updates[:-1])
    stats = sandbox.stats()
    assert (stats["uploads"], stats["submissions"]) == (0, 0)
    assert list((tmp_path / "videos").glob("*.jpg")) == [], "the preview of a refused job is not kept"


def test_a_full_data_dir_refuses_before_anything_is_uploaded(sandbox, make_image, job_context, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    journal = Journal(tmp_path / "journal.sqlite3")
    updates = run_job(JobRequest(image=make_image(), prompt="waves"),
                  job_context(sandbox, journal=journal, owner="a", min_free_bytes=free + 2**40))
    assert isinstance(updates[-1], StorageUnavailable)
    assert (sandbox.stats()["uploads"], sandbox.stats()["submissions"]) == (0, 0)
    assert journal.for_owner("a") == []


def test_a_lost_submit_answer_stays_in_the_history_as_outcome_unknown_when_its_task_is_not_listed(
        make_sandbox, make_image, job_context, tmp_path):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1, listing_lag_seconds=600)
    journal = Journal(tmp_path / "journal.sqlite3")
    updates = run_job(JobRequest(image=make_image(), prompt="a storm"), job_context(sandbox, journal=journal, owner="a"))
    assert isinstance(updates[-1], SubmissionOutcomeUnknown)
    (row,) = journal.for_owner("a")
    assert row.status is TaskStatus.UNKNOWN and row.is_intent and row.prompt == "a storm"
    assert "may still exist and be billed" in row.error
    assert journal.running() == [], "recovery never polls an id the API never gave"
    assert sandbox.stats()["submissions"] == 1


def test_a_lost_submit_answer_gets_the_listed_tasks_id_and_its_video(make_sandbox, make_image, job_context,
                                                                     tmp_path):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1)
    journal = Journal(tmp_path / "journal.sqlite3")
    updates = run_job(JobRequest(image=make_image(), prompt="a storm"), job_context(sandbox, journal=journal, owner="a"))
    assert updates[-1].stage is Stage.DONE, updates[-1]
    (row,) = journal.for_owner("a")
    assert not row.is_intent and row.task_id == updates[-1].task_id and row.status is TaskStatus.COMPLETED
    assert sandbox.stats()["submissions"] == 1


def test_a_submission_that_created_nothing_leaves_no_row(make_sandbox, make_image, job_context, tmp_path):
    sandbox = make_sandbox(api_key="the-right-key")
    journal = Journal(tmp_path / "journal.sqlite3")
    updates = run_job(JobRequest(image=make_image(), prompt="waves"), job_context(sandbox, journal=journal, owner="a"))
    assert isinstance(updates[-1], AuthenticationFailed)
    assert journal.for_owner("a") == [] and list((tmp_path / "videos").glob("*.jpg")) == []


def test_a_row_that_cannot_be_completed_still_shows_the_task_id_and_logs_it(make_sandbox, make_image, job_context,
                                                                            tmp_path, caplog):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1)  # the answer is lost: the task id comes from the listing
    journal = Journal(tmp_path / "journal.sqlite3")
    ctx = job_context(sandbox, journal=journal, owner="alice")
    updates = []
    with caplog.at_level("ERROR", logger="kling_demo.jobs.record"):
        for update in run(generate(JobRequest(image=make_image(), prompt="waves"), ctx), ctx.stop):
            if update.stage is Stage.SEARCHING and updates[-1].stage is not Stage.SEARCHING:
                corrupt(journal)  # the POST went out, its task id not yet recorded
            updates.append(update)
    final = updates[-1]
    assert final.stage is Stage.DONE and final.task_id and final.video_path.is_file()
    assert {u.task_id for u in updates if u.stage in (Stage.QUEUED, Stage.PROCESSING, Stage.DONE)} == {final.task_id}
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert final.task_id in line and "could not record" in line
    assert sandbox.stats()["submissions"] == 1


@pytest.mark.parametrize("duration", [5, 10])
def test_a_task_fetched_by_id_records_its_real_duration(make_sandbox, make_image, job_context, tmp_path, duration):
    from tests.service.test_client import run_to_completion

    sandbox = make_sandbox(inference_seconds=0.5)
    with WaveSpeedClient(sandbox.base_url, "k") as elsewhere:  # submitted outside this app
        task_id = run_to_completion(elsewhere, elsewhere.upload(make_image(), "image/png"), duration).task_id
    journal = Journal(tmp_path / "journal.sqlite3")
    ctx = job_context(sandbox, journal=journal, owner="bob")
    updates = list(run(resume(task_id, ctx), ctx.stop))
    assert updates[-1].stage is Stage.DONE
    record = journal.get("bob", task_id)
    assert record.status is TaskStatus.COMPLETED and record.duration == duration and record.params["resumed"] is True
    assert journal.inference_times(record.model)[0][0] == duration


@pytest.mark.parametrize("duration", [5, 10])
def test_the_length_of_a_task_the_api_does_not_describe_is_read_from_its_video(tmp_path, duration):
    """WaveSpeed's result may carry no inputs: a task fetched by id then gets its length from the video it made."""
    from PIL import Image

    from kling_demo.jobs.steps import _video_duration
    from kling_demo.sandbox.render import render_video

    video = tmp_path / "video.mp4"
    render_video(Image.new("RGB", (480, 270), (200, 40, 40)), video, duration)
    assert _video_duration(video, DEFAULT_MODEL) == duration
    assert _video_duration(tmp_path / "missing.mp4", DEFAULT_MODEL) is None


def test_an_entry_without_a_task_id_is_never_polled(sandbox, job_context, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    with pytest.raises(InputRejected, match="never received a task id"):
        ctx = job_context(sandbox, journal=journal, owner="a")
        list(run(resume("intent-0123abcd", ctx), ctx.stop))
    assert sandbox.stats()["result_polls"] == 0


def test_a_download_onto_a_full_disk_keeps_the_task_running_in_the_journal(sandbox, make_image, job_context,
                                                                            tmp_path, tiny_disk):
    journal = Journal(tmp_path / "journal.sqlite3")
    ctx = job_context(sandbox, journal=journal, owner="alice", min_free_bytes=0)
    ctx.videos_dir = tiny_disk / "videos"
    updates = []
    try:
        for update in run(generate(JobRequest(image=make_image(), prompt="waves"), ctx), ctx.stop):
            if update.stage is Stage.SUBMITTED:
                fill(tiny_disk)  # the disk fills up while the video renders
            updates.append(update)
    except DownloadFailed as error:
        failure = error
    assert "storage is full" in str(failure) and failure.task_id in str(failure)
    assert updates[-1].stage is Stage.DOWNLOADING and updates[-1].task_id == failure.task_id
    (row,) = journal.running()
    assert row.task_id == failure.task_id, "the paid task stays recoverable"
    assert not list(ctx.videos_dir.glob(".*.part"))
