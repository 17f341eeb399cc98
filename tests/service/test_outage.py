"""WaveSpeed unreachable mid-poll: the job waits it out, or hands its task to background recovery; never pays twice."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests

from kling_demo.errors import JobStopped, ServiceUnavailable
from kling_demo.jobs.record import Records
from kling_demo.jobs.runner import run
from kling_demo.jobs.steps import Followers, JobContext, Stage, resume
from kling_demo.models import DEFAULT_MODEL, KeySource, Submission
from kling_demo.service.recovery import Recovery
from kling_demo.store.journal import Journal
from kling_demo.store.videos import probe_video
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.wavespeed.retry import RETRY_CAP, retry_delay
from tests.waiting import wait_for

OUTAGE_SECONDS = 20.0


class FlakyProxy:
    """A loopback TCP proxy to a port that can be switched to refuse connections, as a dead API does, and back."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._open_connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.allow()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def allow(self) -> None:
        """Listen (again, on the same port) and forward every connection."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def refuse(self) -> None:
        """Stop listening, so new connections are refused, and cut the ones that are open (keep-alive too)."""
        listener, self._listener = self._listener, None
        if listener is not None and self._accepting is not None:
            self._accepting.join()
            listener.close()
        with self._lock:
            connections, self._open_connections = self._open_connections, set()
        for connection in connections:
            _cut(connection)

    def close(self) -> None:
        self.refuse()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                downstream, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _cut(downstream)
                continue
            for sock in (downstream, upstream):
                sock.settimeout(None)
            with self._lock:
                self._open_connections |= {downstream, upstream}
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open_connections -= {source, sink}
            _cut(source)
            _cut(sink)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def local_proxy(sandbox):
    """A proxy to the in-process sandbox (fast, 1 s renders)."""
    flaky = FlakyProxy(int(sandbox.base_url.rsplit(":", 1)[1]))
    yield flaky
    flaky.close()


@pytest.fixture
def dead_api(local_proxy):
    """The URL of an API that refuses every connection."""
    local_proxy.refuse()
    return local_proxy.url


def task_id_of(job) -> str:
    def seen() -> str | None:
        outputs = job.outputs()
        return outputs[-1][1] if outputs and outputs[-1][1] else None
    return wait_for(seen, 60, "the task to be submitted")


def statuses(job) -> list[str]:
    return [output[0] for output in job.outputs()]


def submissions(sandbox_url: str) -> int:
    return requests.get(sandbox_url + "/sandbox/stats", timeout=5).json()["submissions"]


def _all_records(journal: Journal):
    with sqlite3.connect(journal.path) as db:
        owners = [row[0] for row in db.execute("SELECT DISTINCT owner FROM tasks")]
    return [record for owner in owners for record in journal.for_owner(owner)]


def test_a_refused_poll_says_how_it_failed_and_never_asks_to_submit_again(dead_api):
    with WaveSpeedClient(dead_api, "k") as client:
        with pytest.raises(ServiceUnavailable) as caught:
            client.result("task-1", attempts=1)
    assert caught.value.reason == "connection refused"
    assert "task-1" in str(caught.value) and "try again" not in str(caught.value).lower()


def test_stop_ends_the_wait_for_an_unreachable_api_at_once(dead_api, tmp_path):
    ctx = JobContext(client=WaveSpeedClient(dead_api, "k"), videos_dir=tmp_path / "videos")
    job = run(resume("task-1", ctx), ctx.stop)
    waiting = [next(job), next(job), next(job)]  # three failed tries, each followed by a wait
    assert all(u.stage is Stage.SUBMITTED and u.task_id == "task-1" and u.outage == "connection refused"
               and u.wait_seconds > 0 for u in waiting)
    assert waiting[2].wait_seconds > waiting[0].wait_seconds, "the waits grow while the outage lasts"
    threading.Timer(0.2, ctx.stop.set).start()
    began = time.monotonic()
    with pytest.raises(JobStopped) as caught:  # the runner would wait the retry off; Stop cuts it short
        next(job)
    assert time.monotonic() - began < waiting[2].wait_seconds, "Stop ended the wait before it was over"
    assert caught.value.task_id == "task-1" and caught.value.submission is Submission.EXISTS
    assert ctx.followers.claim("task-1"), "a stopped follow releases its task"
    ctx.client.close()


def test_a_download_cut_off_by_an_outage_is_retried(local_proxy, sandbox, make_image, tmp_path):
    client = WaveSpeedClient(local_proxy.url, "test-key", max_attempts=2, backoff_seconds=0.05)
    task = client.submit(DEFAULT_MODEL, {"image": client.upload(make_image(), "image/png"), "prompt": "rain"})
    updates = []
    with client:
        ctx = JobContext(client=client, videos_dir=tmp_path / "videos")
        for update in run(resume(task.task_id, ctx, duration=5), ctx.stop):
            updates.append(update)
            # The download starts when the job is asked for its next step: cut it off once, then let it through.
            if update.stage is Stage.DOWNLOADING and update.outage:
                local_proxy.allow()
            elif update.stage is Stage.DOWNLOADING:
                local_proxy.refuse()
    downloading = [u for u in updates if u.stage is Stage.DOWNLOADING]
    assert len(downloading) == 2 and not downloading[0].outage
    assert downloading[1].outage and downloading[1].task_id == task.task_id and downloading[1].retry_in
    assert updates[-1].stage is Stage.DONE and probe_video(updates[-1].video_path).frames == 120
    assert sandbox.stats()["submissions"] == 1


def recovery_for(journal: Journal, api_base: str, tmp_path: Path, **options) -> Recovery:
    """Background recovery against `api_base`, with jobs that give up after a second."""
    def make_context(owner: str, api_key: str | None) -> JobContext:
        return JobContext(client=WaveSpeedClient(api_base, "k"), videos_dir=tmp_path / "videos",
                          deadline_seconds=1.0, followers=followers,
                          records=Records(journal, owner, DEFAULT_MODEL.model_id, api_base, KeySource.SERVER,
                                          tmp_path / "videos"))
    followers = Followers()
    return Recovery(journal, make_context, api_base=api_base, sandbox=False, **options)


@pytest.mark.parametrize("cause", ["outage past the max age", "task unknown to the API"])
def test_background_recovery_logs_every_give_up_with_the_task_id(cause, dead_api, sandbox, tmp_path, caplog):
    api_base = dead_api if cause == "outage past the max age" else sandbox.base_url
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.record_submission(owner="alice", task_id="task-404", model="m", api_base=api_base, key_source=KeySource.SERVER,
                              params={"prompt": "x", "duration": 5})
    recovery = recovery_for(journal, api_base, tmp_path, max_age_seconds=0.0)
    caplog.set_level("INFO", logger="kling_demo")
    try:
        assert recovery.resume_running() == 1
        gave_up = wait_for(lambda: [r for r in caplog.records if "gave up recovering task task-404" in r.getMessage()],
                           30, "recovery to give up")
    finally:
        recovery.close()
    assert gave_up[0].levelname == "WARNING"
    assert journal.get("alice", "task-404").is_running, "the task stays in the journal for a later try"


def test_retry_delays_double_from_one_second_to_the_cap_with_jitter():
    middle = [retry_delay(n, rng=lambda: 0.5) for n in range(1, 8)]
    assert middle == [1.0, 2.0, 4.0, 8.0, RETRY_CAP, RETRY_CAP, RETRY_CAP]
    lowest, highest = retry_delay(3, rng=lambda: 0.0), retry_delay(3, rng=lambda: 1.0)
    assert lowest == pytest.approx(3.2) and highest == pytest.approx(4.8)
    assert retry_delay(10_000, rng=lambda: 1.0) == RETRY_CAP  # never above the cap, however long the outage


def test_retry_delays_honour_retry_after_up_to_a_minute():
    assert retry_delay(1, retry_after=7.0, rng=lambda: 0.5) == 7.0
    assert retry_delay(5, retry_after=2.0, rng=lambda: 0.5) == RETRY_CAP  # never sooner than the backoff
    assert retry_delay(1, retry_after=3600.0, rng=lambda: 0.5) == 60.0
