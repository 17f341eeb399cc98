"""WaveSpeed out of reach, with the app as a real process: a 20 s outage mid-poll is ridden out, and a job
that gives up hands its task to background recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from kling_demo.models import TaskStatus
from kling_demo.store.journal import Journal
from kling_demo.store.videos import probe_video
from tests.harness import start_app_process, start_sandbox_process
from tests.service.test_outage import (
    OUTAGE_SECONDS,
    FlakyProxy,
    _all_records,
    statuses,
    submissions,
    task_id_of,
)
from tests.waiting import wait_for


@pytest.fixture
def sandbox_process(tmp_path):
    served = start_sandbox_process("--inference-seconds", "6", log_path=tmp_path / "sandbox.log")
    yield served
    served.stop()


@pytest.fixture
def proxy(sandbox_process):
    flaky = FlakyProxy(int(sandbox_process.url.rsplit(":", 1)[1]))
    yield flaky
    flaky.close()


@pytest.fixture
def app_through(tmp_path, proxy):
    """Factory: the app as a process whose "WaveSpeed" is the sandbox behind the proxy."""
    started = []

    def factory(**env: str):
        # A key makes the app treat the sandbox as the real API (whose tasks outlive a job), reached via the proxy.
        app = start_app_process(tmp_path / "data", env={"WAVESPEED_API_KEY": "test-key",
                                                        "WAVESPEED_BASE_URL": proxy.url, **env},
                                log_path=tmp_path / "app.log")
        started.append(app)
        return app

    yield factory
    for app in started:
        app.stop()


def submit(app_url: str, image: Path, tmp_path: Path):
    client = Client(app_url, verbose=False, download_files=str(tmp_path / "client-downloads"))
    return client.submit(handle_file(str(image)), "a lighthouse in fog", "", 0.5, 5, None, api_name="/generate")


def test_a_20_second_outage_mid_poll_is_ridden_out(tmp_path, sandbox_process, proxy, app_through, make_image):
    app = app_through()
    job = submit(app.url, make_image(size=(800, 600)), tmp_path)
    task_id = task_id_of(job)

    proxy.refuse()
    outage_began = time.monotonic()
    wait_for(lambda: any("not answering" in status for status in statuses(job)), 30,
             "the page to say that WaveSpeed is not answering")
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_began)))  # the outage lasts 20 s
    proxy.allow()

    status, final_task_id, video = job.result(timeout=60)
    assert "Done" in status and final_task_id == task_id
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    assert submissions(sandbox_process.url) == 1
    seen = statuses(job)
    outage_notes = [s for s in seen if "not answering" in s]
    assert all(task_id in note and "Nothing needs to be submitted again" in note for note in outage_notes)
    assert any("connection refused" in note for note in outage_notes)
    assert not any("try again" in s.lower() for s in seen), seen


def test_a_job_that_gives_up_hands_its_task_to_recovery(tmp_path, sandbox_process, proxy, app_through, make_image):
    app = app_through(KLING_DEMO_DEADLINE_SECONDS="8")
    log_path = tmp_path / "app.log"
    job = submit(app.url, make_image(size=(800, 600)), tmp_path)
    task_id = task_id_of(job)
    proxy.refuse()

    with pytest.raises(AppError) as gave_up:  # the page's gr.Error
        job.result(timeout=60)
    message = str(gave_up.value)
    assert task_id in message and "still followed in the background" in message, message
    assert not any("try again" in s.lower() for s in [*statuses(job), message])
    # Background recovery met the outage too, and keeps trying.
    wait_for(lambda: f"recovering task {task_id}: attempt 1 failed" in log_path.read_text(errors="replace"), 40,
             "background recovery to try the task")
    proxy.allow()

    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    record = wait_for(lambda: next((r for r in _all_records(journal) if r.task_id == task_id
                                    and r.status is TaskStatus.COMPLETED), None), 40, "recovery to finish the task")
    assert probe_video(record.video_path).duration_seconds == pytest.approx(5.0)
    assert submissions(sandbox_process.url) == 1
