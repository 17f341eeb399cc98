"""A Bronze account behind the app: more jobs than the key's slots, all through the app process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from kling_demo.store.videos import probe_video
from tests.harness import start_app_process, start_sandbox_process

JOBS = 8
# WaveSpeed's Bronze level (2 at once, 2 videos a minute) in miniature: the minute is 2 s and a render 3 s, for a
# Kling render (80-150 s) outlasts WaveSpeed's minute, so it is the at-once limit that keeps a third job waiting.
BRONZE = ("--max-concurrent-tasks", "2", "--videos-per-minute", "2", "--rate-window", "2", "--inference-seconds", "3")


@pytest.fixture
def bronze_sandbox(tmp_path):
    served = start_sandbox_process(*BRONZE, log_path=tmp_path / "sandbox.log")
    yield served
    served.stop()


@pytest.mark.timeout(400)
def test_eight_jobs_on_a_bronze_key_wait_in_the_app_and_all_end_with_videos(tmp_path, bronze_sandbox,
                                                                            make_image) -> None:
    """With the default KLING_DEMO_API_CONCURRENCY, a Bronze key's extra jobs wait in the app, never at WaveSpeed."""
    env = {"WAVESPEED_API_KEY": "bronze-key", "WAVESPEED_BASE_URL": bronze_sandbox.url,
           "KLING_DEMO_MAX_JOBS_PER_VISITOR": str(JOBS)}
    app = start_app_process(tmp_path / "data", env=env, log_path=tmp_path / "app.log")
    try:
        client = Client(app.url, verbose=False)
        image = handle_file(str(make_image(size=(640, 480))))
        jobs = [client.submit(image, f"job {number}", "", 0.5, 5, None, api_name="/generate")
                for number in range(JOBS)]
        with ThreadPoolExecutor(JOBS) as pool:
            finals = list(pool.map(lambda job: job.result(timeout=360), jobs))
        statuses = [outputs[0] for job in jobs for outputs in job.outputs()]
    finally:
        app.stop()

    for status, task_id, video in finals:
        assert status.startswith("**Done**") and task_id
        assert probe_video(Path(video)).frames > 0
    waiting = [status for status in statuses if status.startswith("**Waiting** — ")]
    assert any("ahead of you in line for a free slot at WaveSpeed" in status for status in waiting)
    assert any("You are next in line for a free slot at WaveSpeed" in status for status in waiting)

    stats = requests.get(bronze_sandbox.url + "/sandbox/stats", timeout=10).json()
    assert stats["submissions"] == JOBS, "every job submitted exactly once, 429s included"
    assert stats["tasks"]["completed"] == JOBS
    assert stats["max_running"] <= 2
    rows = requests.get(bronze_sandbox.url + "/sandbox/tasks", timeout=10).json()
    assert all(row["started_at_epoch"] == row["created_at_epoch"] for row in rows), \
        "no task waited for a slot at WaveSpeed: the app kept the extra jobs"
    if stats["rate_limited"]:  # a job sent as soon as another ended may meet the rate of the 2 s "minute"
        assert any("rate limiting this key (HTTP 429)" in status for status in statuses)
