"""A visitor who opens the page while the queue is full still gets an owner id, so their history is kept.

The app runs as `python app.py` with one job at a time, room for one waiting job and slow (30 s) sandbox
renders; gradio_client jobs fill the queue until the next one is refused, then Chromium opens the page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status

from tests.harness import start_app_process
from tests.waiting import wait_for

OWNER_STORAGE_KEY = "kling_demo_owner"
UNDER_WAY = (Status.PROCESSING, Status.ITERATING, Status.PROGRESS)


def test_a_page_opened_while_the_queue_is_full_still_gets_its_owner_id(browser: Any, make_image: Callable[..., Path],
                                                                       tmp_path: Path) -> None:
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log", env={
        "KLING_DEMO_CONCURRENCY": "1", "KLING_DEMO_MAX_QUEUE": "1", "KLING_DEMO_SANDBOX_SECONDS": "30",
        "KLING_DEMO_MAX_JOBS_PER_VISITOR": "10"})
    context = None
    try:
        api = Client(app.url, verbose=False)
        image = handle_file(str(make_image()))
        jobs = []
        while True:  # one job runs, one waits, and the next is refused: the queue is full
            assert len(jobs) < 3, [job.status().code for job in jobs]
            job = api.submit(image, f"a lighthouse {len(jobs)}", "", 0.5, 5, None, api_name="/generate")
            jobs.append(job)
            expected = UNDER_WAY if len(jobs) == 1 else (Status.IN_QUEUE,)
            wait_for(lambda: job.done() or job.status().code in expected, 60, f"job {len(jobs)} is {expected}")
            if job.done():
                break
        with pytest.raises(Exception, match="(?i)queue is full"):
            jobs[-1].result(timeout=0)
        assert jobs[0].status().code in UNDER_WAY and jobs[1].status().code is Status.IN_QUEUE

        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(app.url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(f"() => !!localStorage.getItem('{OWNER_STORAGE_KEY}')", timeout=20_000)
        assert jobs[1].status().code is Status.IN_QUEUE, "the queue emptied before the page loaded: proves nothing"
        assert page.locator("#history-section").is_visible()
    finally:
        if context is not None:
            context.close()
        app.stop()
