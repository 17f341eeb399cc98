"""Never lose a paid generation: crashes, closed sessions, and visitors who must not see each other's work."""

from __future__ import annotations

import signal
import time

import pytest
from gradio_client import Client, handle_file

from kling_demo.journal import Journal
from kling_demo.media import probe_video
from tests.processes import start_app_process, start_sandbox_process


@pytest.fixture
def external_sandbox(tmp_path):
    served = start_sandbox_process("--inference-seconds", "6", log_path=tmp_path / "sandbox.log")
    yield served
    served.stop()


def live_env(sandbox_url: str) -> dict[str, str]:
    # A key makes the app treat the sandbox process as the real API, which outlives the app.
    return {"WAVESPEED_API_KEY": "test-key", "WAVESPEED_BASE_URL": sandbox_url}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def submit_job(url: str, image, prompt: str):
    client = Client(url, verbose=False)
    return client, client.submit(handle_file(str(image)), prompt, "", 0.5, 5, None, api_name="/generate")


def wait_until_submitted(job) -> str:
    def task_id():
        outputs = job.outputs()
        return outputs[-1][1] if outputs and outputs[-1][1] else None
    return wait_for(task_id, 60, "the task to be submitted")


def test_app_killed_mid_poll_finishes_the_task_after_restart(tmp_path, external_sandbox, make_image):
    data = tmp_path / "data"
    app = start_app_process(data, env=live_env(external_sandbox.url), log_path=tmp_path / "app1.log")
    _, job = submit_job(app.url, make_image(size=(800, 600)), "a ship in a storm")
    task_id = wait_until_submitted(job)
    app.process.send_signal(signal.SIGKILL)
    app.process.wait()

    journal = Journal(data / "journal.sqlite3")
    (row,) = [r for r in journal.running()]
    assert row.task_id == task_id and row.params["prompt"] == "a ship in a storm"

    restarted = start_app_process(data, env=live_env(external_sandbox.url), log_path=tmp_path / "app2.log")
    try:
        record = wait_for(lambda: (r := journal.get(row.owner, task_id)) and r.status == "completed" and r,
                          60, "the restarted app to finish the task")
        assert probe_video(record.video_path).duration_seconds == pytest.approx(5.0)
        stats = __import__("requests").get(external_sandbox.url + "/sandbox/stats", timeout=5).json()
        assert stats["submissions"] == 1, "the task was resumed, not submitted again"
    finally:
        restarted.stop()


def test_a_closed_session_still_lands_its_task_in_history(tmp_path, external_sandbox, make_image):
    data = tmp_path / "data"
    app = start_app_process(data, env=live_env(external_sandbox.url), log_path=tmp_path / "app.log")
    try:
        client, job = submit_job(app.url, make_image(), "lanterns at night")
        task_id = wait_until_submitted(job)
        job.cancel()  # what the server sees when a visitor closes the tab
        client.close()
        journal = Journal(data / "journal.sqlite3")
        record = wait_for(lambda: next((r for r in _all(journal) if r.task_id == task_id
                                        and r.status == "completed"), None), 60, "the task to land in history")
        assert probe_video(record.video_path).frames == 120
    finally:
        app.stop()


def _all(journal: Journal):
    import sqlite3

    with sqlite3.connect(journal.path) as db:
        owners = [row[0] for row in db.execute("SELECT DISTINCT owner FROM tasks")]
    return [record for owner in owners for record in journal.for_owner(owner)]


def test_two_visitors_never_see_or_resume_each_others_tasks(tmp_path, external_sandbox, make_image):
    app = start_app_process(tmp_path / "data", env=live_env(external_sandbox.url), log_path=tmp_path / "app.log")
    try:
        alice = Client(app.url, verbose=False)
        bob = Client(app.url, verbose=False)
        _, task_id, video = alice.predict(handle_file(str(make_image())), "alice's secret garden", "", 0.5, 5, None,
                                          api_name="/generate")
        alice_history = alice.predict(api_name="/history")
        assert len(alice_history) == 1 and "alice's secret garden" in alice_history[0]["caption"]
        assert bob.predict(api_name="/history") == []
        with pytest.raises(Exception, match="not in your history"):
            bob.predict(task_id, api_name="/resume")
        # Alice can fetch her own task again by id.
        status, resumed_id, _ = alice.predict(task_id, api_name="/resume")
        assert resumed_id == task_id and "already in your history" in status
    finally:
        app.stop()
