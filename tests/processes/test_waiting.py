"""Many jobs waiting at once cost no thread each: one poller follows every task, and waits are timer entries."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import requests

from kling_demo.jobs.poller import POLL_WORKERS
from tests.harness import start_app_process, start_sandbox_process
from tests.queue_client import QueueClient, http_client
from tests.waiting import run_async

JOBS = 100
# What the app may run, whatever the number of waiting jobs: the main thread and the server's loop, anyio's
# worker threads (Gradio's sync steps and each job's blocking steps: upload, submit, download; 40 tokens),
# the poller and its workers, background recovery's loop and pool, asyncio's default executor (name lookups),
# and a few to spare for Python and the libraries' own helpers.
APP_THREADS_AT_MOST = 2 + 40 + 1 + POLL_WORKERS + 1 + 4 + min(32, (os.cpu_count() or 1) + 4) + 4


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


class PeakThreads:
    """The most threads `pid` had, sampled every 50 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, threads_of(self.pid))
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> "PeakThreads":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_hundred_jobs_wait_at_once_with_a_bounded_number_of_threads(tmp_path, make_image):
    # The sandbox holds every task "processing" until released, so all of them wait at WaveSpeed together
    # however long a busy machine takes to submit them.
    sandbox = start_sandbox_process("--inference-seconds", "2", "--hold-renders", log_path=tmp_path / "sandbox.log")
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log", env={
        "WAVESPEED_API_KEY": "test", "WAVESPEED_BASE_URL": sandbox.url, "KLING_DEMO_API_CONCURRENCY": "1000",
        "KLING_DEMO_MAX_JOBS_PER_VISITOR": "1000"})
    image = make_image(size=(640, 480))

    async def run_all() -> tuple[list, int]:
        async with http_client() as http:
            client = await QueueClient(app.url, http).load()
            jobs = asyncio.ensure_future(client.many(image, JOBS, timeout=600))
            deadline = time.monotonic() + 300
            while not jobs.done() and (await http.get(sandbox.url + "/sandbox/stats")).json()["submissions"] < JOBS:
                assert time.monotonic() < deadline, "the jobs were not all submitted within 300 s"
                await asyncio.sleep(0.1)
            waiting = threads_of(app.process.pid)  # every job submitted, none finished: all of them waiting
            (await http.post(sandbox.url + "/sandbox/release")).raise_for_status()
            return await jobs, waiting

    try:
        with PeakThreads(app.process.pid) as threads:
            outcomes, threads_while_waiting = run_async(run_all())
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert not failed, failed[:3]
        assert all("ready" in outputs[0] and outputs[2] for outputs, _ in outcomes), outcomes[0]
        tasks = requests.get(sandbox.url + "/sandbox/tasks", timeout=10).json()
        assert len({outputs[1] for outputs, _ in outcomes}) == JOBS == len(tasks)
        # They were all running at WaveSpeed together: the last was created before the first one finished.
        assert max(t["created_at_epoch"] for t in tasks) < min(t["completed_at_epoch"] for t in tasks)
        assert threads_while_waiting <= APP_THREADS_AT_MOST, f"{threads_while_waiting} threads, {JOBS} jobs waiting"
        assert threads.peak <= APP_THREADS_AT_MOST, f"{threads.peak} threads for {JOBS} waiting jobs"
    finally:
        app.stop()
        sandbox.stop()
