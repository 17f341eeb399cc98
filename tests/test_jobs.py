"""A whole job against the sandbox: the stages a visitor sees, the video, and every way it can end."""

from __future__ import annotations

import threading

import pytest

from kling_demo.client import WaveSpeedClient
from kling_demo.errors import InputRejected, JobStopped, TaskFailed, TaskTimedOut
from kling_demo.jobs import JobContext, JobRequest, Stage, generate
from kling_demo.media import probe_video


@pytest.fixture
def job_context(tmp_path):
    contexts = []

    def factory(sandbox, **fields) -> JobContext:
        ctx = JobContext(client=WaveSpeedClient(sandbox.base_url, "k"), videos_dir=tmp_path / "videos", **fields)
        contexts.append(ctx)
        return ctx

    yield factory
    for ctx in contexts:
        ctx.client.close()


def run(request: JobRequest, ctx: JobContext) -> list:
    updates = []
    try:
        for update in generate(request, ctx):
            updates.append(update)
    except Exception as error:  # the caller inspects both the updates and the error
        updates.append(error)
    return updates


@pytest.mark.parametrize("duration", [5, 10])
def test_a_job_ends_with_a_video_of_the_requested_length(make_sandbox, make_image, job_context, duration):
    sandbox = make_sandbox(inference_seconds=1.5)
    updates = run(JobRequest(image=make_image(size=(960, 540)), prompt="waves", duration=duration),
                  job_context(sandbox))
    final = updates[-1]
    assert final.stage is Stage.DONE, final
    stages = [u.stage for u in updates]
    assert stages[:3] == [Stage.PREPARING, Stage.UPLOADING, Stage.SUBMITTED]
    assert Stage.DOWNLOADING in stages
    task_ids = {u.task_id for u in updates if u.stage not in (Stage.PREPARING, Stage.UPLOADING)}
    assert len(task_ids) == 1 and None not in task_ids
    assert final.task_id in final.message
    assert final.inference_ms >= 1500 and final.nsfw is False
    info = probe_video(final.video_path)
    assert info.duration_seconds == pytest.approx(duration)
    assert info.width / info.height == pytest.approx(960 / 540, rel=0.01)


def test_end_frame_and_negative_prompt_are_sent(sandbox, make_image, job_context):
    updates = run(JobRequest(image=make_image(color=(220, 20, 20)), prompt="fade", negative_prompt="blur",
                             end_image=make_image(color=(20, 20, 220))), job_context(sandbox))
    assert updates[-1].stage is Stage.DONE
    assert sandbox.stats()["uploads"] == 2
    assert "both frames" in updates[1].message


def test_a_failed_task_names_its_task_id_and_the_api_error(make_sandbox, make_image, job_context):
    sandbox = make_sandbox(task_failure_rate=1.0, seed=3)
    updates = run(JobRequest(image=make_image(), prompt="a storm"), job_context(sandbox))
    error = updates[-1]
    assert isinstance(error, TaskFailed)
    assert error.task_id and error.task_id in str(error)
    assert "sandbox" in str(error).lower()  # the API's own error text is passed on
    assert updates[-2].stage is Stage.FAILED and error.task_id in updates[-2].message


def test_the_overall_deadline_ends_the_wait_and_keeps_the_task_id(make_sandbox, make_image, job_context):
    sandbox = make_sandbox(inference_seconds=30)
    updates = run(JobRequest(image=make_image(), prompt="slow"), job_context(sandbox, deadline_seconds=2.0))
    error = updates[-1]
    assert isinstance(error, TaskTimedOut)
    assert "may still finish" in str(error) and error.task_id in str(error)
    assert sandbox.stats()["submissions"] == 1


def test_stop_ends_the_wait_and_warns_that_the_task_may_be_billed(make_sandbox, make_image, job_context):
    sandbox = make_sandbox(inference_seconds=30)
    ctx = job_context(sandbox)
    job = generate(JobRequest(image=make_image(), prompt="slow"), ctx)
    with pytest.raises(JobStopped, match="may still finish and be billed") as caught:
        for update in job:
            if update.stage is Stage.SUBMITTED:
                threading.Timer(0.3, ctx.stop.set).start()
    assert caught.value.task_id
    assert sandbox.stats()["submissions"] == 1


def test_a_refused_input_is_never_uploaded_or_submitted(sandbox, make_image, job_context):
    updates = run(JobRequest(image=make_image(size=(200, 150)), prompt="tiny"), job_context(sandbox))
    error = updates[-1]
    assert isinstance(error, InputRejected)
    assert "300" in str(error) and "200" in str(error)
    stats = sandbox.stats()
    assert stats["uploads"] == 0 and stats["submissions"] == 0


def test_an_empty_prompt_is_refused_before_upload(sandbox, make_image, job_context):
    updates = run(JobRequest(image=make_image(), prompt="   "), job_context(sandbox))
    assert isinstance(updates[-1], InputRejected)
    assert "prompt" in str(updates[-1]).lower()
    assert sandbox.stats()["uploads"] == 0
