"""Never lose a paid generation: crashes, closed sessions, and visitors who must not see each other's work."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess

import pytest
import requests
from gradio_client import Client, handle_file

from kling_demo.store.journal import Journal, TaskRecord
from kling_demo.store.videos import probe_video
from tests.conftest import fill
from tests.harness import start_app_process, start_sandbox_process
from tests.service.test_journal import write_raw_row
from tests.waiting import wait_for


@pytest.fixture
def external_sandbox(tmp_path):
    served = start_sandbox_process("--inference-seconds", "6", log_path=tmp_path / "sandbox.log")
    yield served
    served.stop()


def live_env(sandbox_url: str) -> dict[str, str]:
    # A key makes the app treat the sandbox process as the real API, which outlives the app.
    return {"WAVESPEED_API_KEY": "test-key", "WAVESPEED_BASE_URL": sandbox_url}


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
    # API callers are told apart by their address (behind a trusted proxy, the hop it appended: here the only one).
    app = start_app_process(tmp_path / "data", env={**live_env(external_sandbox.url), "FORWARDED_ALLOW_IPS": "127.0.0.1"},
                            log_path=tmp_path / "app.log")
    try:
        alice = Client(app.url, verbose=False, headers={"X-Forwarded-For": "203.0.113.10"})
        bob = Client(app.url, verbose=False, headers={"X-Forwarded-For": "198.51.100.20"})
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


# --- start-up survives any journal; nothing is paid for that cannot be recorded ------------------


def submit_elsewhere(sandbox_url: str, image, duration: int) -> str:
    """A task made straight through the API (another app, the website), as a visitor would resume it."""
    from tests.service.test_sandbox import MODEL, data_uri

    answer = requests.post(f"{sandbox_url}/api/v3/{MODEL}", json={"image": data_uri(image), "prompt": "elsewhere",
                                                                 "duration": duration},
                           headers={"Authorization": "Bearer visitor-key"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["id"]


def rows_of(path, task_id: str) -> list[TaskRecord]:
    with sqlite3.connect(path) as db:
        owners = [row[0] for row in db.execute("SELECT owner FROM tasks WHERE task_id = ?", (task_id,))]
    return [Journal(path).get(owner, task_id) for owner in owners]


def test_the_app_starts_again_after_a_resume_by_id_and_keeps_the_real_duration(tmp_path, make_image):
    sandbox = start_sandbox_process("--inference-seconds", "1", log_path=tmp_path / "sandbox.log")
    data = tmp_path / "data"
    app = start_app_process(data, env=live_env(sandbox.url), log_path=tmp_path / "app1.log")
    try:
        task_id = submit_elsewhere(sandbox.url, make_image(), duration=10)
        visitor = Client(app.url, verbose=False, headers={"X-WaveSpeed-Key": "visitor-key"})
        status, resumed, video = visitor.predict(task_id, api_name="/resume")
        assert resumed == task_id and "ready" in status and video
        app.stop()
        # A row as the previous version wrote it for a task fetched by id: it once stopped every start.
        write_raw_row(data / "journal.sqlite3", "fetched-by-an-older-version", owner="someone",
                      params='{"prompt": "", "duration": null, "resumed": true}')

        app = start_app_process(data, env=live_env(sandbox.url), log_path=tmp_path / "app2.log")
        assert requests.get(app.url, timeout=10).status_code == 200
        (record,) = rows_of(data / "journal.sqlite3", task_id)
        assert record.status == "completed" and record.duration == 10
        assert probe_video(record.video_path).duration_seconds == pytest.approx(10.0)
        assert requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"] == 1
    finally:
        app.stop()
        sandbox.stop()


def test_a_corrupt_journal_and_a_half_written_download_do_not_stop_the_app(tmp_path, external_sandbox):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "journal.sqlite3").write_bytes(b"\x00\x01 this is not a database " * 2000)
    (data / "videos" / ".0123abcd.mp4.part").write_bytes(b"half a video, its process was killed")
    log_path = tmp_path / "app.log"
    app = start_app_process(data, env=live_env(external_sandbox.url), log_path=log_path)
    try:
        (aside,) = data.glob("journal.sqlite3.corrupt-*")
        assert aside.read_bytes().startswith(b"\x00\x01 this is not a database")
        assert not list((data / "videos").glob("*.part"))
        log = log_path.read_text()
        (line,) = [line for line in log.splitlines() if "moved it aside" in line]
        assert "WARNING" in line and aside.name in line
        assert "Traceback" not in log
        assert "removed 1 unfinished download" in log
        assert Client(app.url, verbose=False).predict(api_name="/history") == []
        assert Journal(data / "journal.sqlite3").running() == []
    finally:
        app.stop()


@pytest.fixture
def full_data_dir(tmp_path):
    """A data dir on a 3 MB tmpfs, plus the env that makes the app use it and a `fill()` that takes its room.

    Without mount rights, the same refusal is reached by a floor above the free space of tmp_path."""
    data = tmp_path / "data"
    data.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(data)],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False

    def fill_data_dir(leave_bytes: int = 64 * 1024) -> None:
        if mounted:
            fill(data, leave_bytes)

    floor_mb = 1 if mounted else shutil.disk_usage(tmp_path).free // 2**20 + 10**6
    yield data, {"KLING_DEMO_MIN_FREE_MB": str(floor_mb)}, fill_data_dir
    if mounted:
        subprocess.run(["umount", "-l", str(data)], check=True)


def test_a_full_data_dir_refuses_a_job_before_anything_is_paid_for(tmp_path, external_sandbox, make_image,
                                                                    full_data_dir):
    data, env, fill = full_data_dir
    app = start_app_process(data, env={**live_env(external_sandbox.url), **env}, log_path=tmp_path / "app.log")
    try:
        fill()
        client = Client(app.url, verbose=False)
        with pytest.raises(Exception) as refused:
            client.predict(handle_file(str(make_image())), "a full disk", "", 0.5, 5, None, api_name="/generate")
        message = str(refused.value)
        assert "cannot save your video right now" in message and "nothing was billed" in message
        assert str(data) not in message and "Errno" not in message
        stats = requests.get(external_sandbox.url + "/sandbox/stats", timeout=5).json()
        assert (stats["submissions"], stats["uploads"]) == (0, 0)
        assert app.process.poll() is None, "the app keeps serving"

        app.stop()  # and it starts again on a disk without a byte free: no crash loop, just no new jobs
        fill(leave_bytes=0)
        app = start_app_process(data, env={**live_env(external_sandbox.url), **env}, log_path=tmp_path / "app2.log")
        client = Client(app.url, verbose=False)
        assert client.predict(api_name="/history") == []
        with pytest.raises(Exception, match="cannot save your video right now"):
            client.predict(handle_file(str(make_image())), "still full", "", 0.5, 5, None, api_name="/generate")
        assert requests.get(external_sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"] == 0
    finally:
        app.stop()
