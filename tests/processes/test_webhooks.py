"""Webhooks: WaveSpeed pushes the end of a task, so the video appears without waiting for the next poll.

Unit tests check `verify` against the sandbox's own signer (the sending side); the end-to-end tests run
the app and a sandbox as real processes on loopback, the sandbox delivering signed webhooks to the app.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from kling_demo.wavespeed.client import Prediction
from kling_demo.config import Settings
from kling_demo.errors import WebhookRejected
from kling_demo.store.journal import Journal
from kling_demo.store.videos import probe_video
from kling_demo.jobs.notices import Notices
from kling_demo.jobs.runner import Stop
from kling_demo.sandbox.webhooks import signature as sandbox_signature
from kling_demo.wavespeed.webhooks import Receiver, verify
from tests.harness import free_port, start_app_process, start_sandbox_process
from tests.waiting import run_async

SECRET = "whsec_" + "k3y" * 8
NOW = 1_760_000_000.0
PREDICTION = {"id": "task-1", "model": "kwaivgi/kling-v2.0-i2v-master", "status": "completed",
              "outputs": ["https://example.invalid/video.mp4"], "error": ""}


def signed(payload: dict, *, secret: str = SECRET, timestamp: float = NOW, message_id: str | None = None,
           ) -> tuple[dict[str, str], bytes]:
    """Headers and body exactly as the sandbox (standing in for WaveSpeed) sends them."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    return {"webhook-id": message_id, "webhook-timestamp": str(int(timestamp)),
            "webhook-signature": sandbox_signature(secret, message_id, int(timestamp), body)}, body


# --- verify ------------------------------------------------------------------------------------------------

def test_a_signed_fresh_webhook_gives_its_prediction():
    headers, body = signed(PREDICTION)
    assert verify(headers, body, SECRET, NOW) == PREDICTION


def test_the_signature_is_keyed_by_the_secret_as_text_without_its_prefix():
    headers, body = signed(PREDICTION)
    by_hand = hmac.new(SECRET.removeprefix("whsec_").encode(),
                       f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body,
                       hashlib.sha256).hexdigest()
    assert headers["webhook-signature"] == f"v3,{by_hand}"
    assert verify(headers, body, SECRET, NOW)["id"] == "task-1"


@pytest.mark.parametrize("tamper", ["body", "secret", "id", "timestamp", "version", "empty"])
def test_a_forged_webhook_is_refused(tamper):
    headers, body = signed(PREDICTION)
    secret = SECRET
    if tamper == "body":
        body = body.replace(b"completed", b"failed!!!")
    elif tamper == "secret":
        headers, body = signed(PREDICTION, secret="whsec_someone-else")
    elif tamper == "id":
        headers["webhook-id"] = "msg_other"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(NOW) + 1)
    elif tamper == "version":
        headers["webhook-signature"] = "v1," + headers["webhook-signature"].partition(",")[2]
    else:
        headers["webhook-signature"] = ""
    with pytest.raises(WebhookRejected):
        verify(headers, body, secret, NOW + 1)


def test_the_prefix_is_not_part_of_the_key_nor_is_the_secret_base64_decoded():
    headers, body = signed(PREDICTION, secret="whsec_" + "whsec_" + "abc")  # keyed by "whsec_abc"
    with pytest.raises(WebhookRejected):
        verify(headers, body, "whsec_abc", NOW)  # keyed by "abc"
    assert verify(headers, body, "whsec_whsec_abc", NOW)["id"] == "task-1"


@pytest.mark.parametrize("offset", [-301.0, 301.0, -3600.0])
def test_a_webhook_more_than_five_minutes_away_is_refused(offset):
    headers, body = signed(PREDICTION, timestamp=NOW + offset)
    with pytest.raises(WebhookRejected, match="five minutes"):
        verify(headers, body, SECRET, NOW)


@pytest.mark.parametrize("offset", [-299.0, 0.0, 299.0])
def test_a_webhook_within_five_minutes_passes(offset):
    headers, body = signed(PREDICTION, timestamp=NOW + offset)
    assert verify(headers, body, SECRET, NOW)["id"] == "task-1"


def test_one_matching_signature_among_several_passes():
    headers, body = signed(PREDICTION)
    headers["webhook-signature"] = "v3,00ff " + headers["webhook-signature"]
    assert verify(headers, body, SECRET, NOW)["id"] == "task-1"


@pytest.mark.parametrize("payload", [[1, 2], {"status": "completed"}, {"id": ""}])
def test_a_signed_body_that_is_not_a_prediction_is_refused(payload):
    headers, body = signed(payload)
    with pytest.raises(WebhookRejected):
        verify(headers, body, SECRET, NOW)


def test_a_replayed_webhook_is_refused_and_acted_on_once():
    received: list[dict] = []
    receiver = Receiver(SECRET, received.append, clock=lambda: NOW)
    headers, body = signed(PREDICTION)
    receiver.receive(headers, body)
    with pytest.raises(WebhookRejected, match="already received"):
        receiver.receive(headers, body)
    assert received == [PREDICTION]


def test_a_webhook_that_could_not_be_acted_on_may_be_delivered_again():
    calls: list[dict] = []

    def flaky(prediction: dict) -> None:
        calls.append(prediction)
        if len(calls) == 1:
            raise OSError("journal unavailable")

    receiver = Receiver(SECRET, flaky, clock=lambda: NOW)
    headers, body = signed(PREDICTION)
    with pytest.raises(OSError):
        receiver.receive(headers, body)
    receiver.receive(headers, body)  # WaveSpeed's retry, same webhook-id
    assert len(calls) == 2


# --- notices -----------------------------------------------------------------------------------------------

def test_a_notice_wakes_a_coroutine_waiting_on_another_thread():
    notices = Notices()
    notice = notices.watch("task-1")
    prediction = Prediction.from_envelope({"data": PREDICTION})

    async def wait() -> bool:
        threading.Timer(0.05, notices.deliver, args=(prediction,)).start()
        return await notice.wait_async(60.0)  # returns at the notice, long before the timeout

    assert run_async(asyncio.wait_for(wait(), 30.0)) is True
    assert notice.prediction == prediction


def test_a_notice_that_came_before_its_follower_is_waiting_for_it():
    notices = Notices()
    prediction = Prediction.from_envelope({"data": PREDICTION})
    assert notices.deliver(prediction) is False  # nobody follows task-1 yet
    notice = notices.watch("task-1")
    assert notice.is_set and notice.prediction == prediction
    assert notice.wait(0.0)


def test_a_thread_waiting_on_a_notice_sees_stop():
    notice, stop = Notices().watch("task-1"), Stop()
    threading.Timer(0.05, stop.set).start()
    with stop.watching(notice):
        assert notice.wait(60.0) is True  # woken by the Stop, not after a minute
    assert notice.prediction is None  # and no webhook came


# --- settings ----------------------------------------------------------------------------------------------

def test_webhooks_are_on_with_a_public_url_and_a_secret():
    on = Settings.from_env({"KLING_DEMO_PUBLIC_URL": "https://me-kling.hf.space/", "WAVESPEED_WEBHOOK_SECRET": SECRET},
                           dotenv_path=None)
    assert on.webhook_url == "https://me-kling.hf.space/webhooks/wavespeed"
    space = Settings.from_env({"SPACE_HOST": "me-kling.hf.space", "WAVESPEED_WEBHOOK_SECRET": SECRET},
                              dotenv_path=None)
    assert space.webhook_url == "https://me-kling.hf.space/webhooks/wavespeed"
    assert Settings.from_env({"SPACE_HOST": "me-kling.hf.space"}, dotenv_path=None).webhook_url is None
    assert SECRET not in repr(on)


@pytest.mark.parametrize("url", ["http://me-kling.hf.space", "ftp://127.0.0.1", "https://", "me-kling.hf.space"])
def test_a_public_url_that_webhooks_cannot_use_is_refused_at_start(url):
    with pytest.raises(ValueError, match="KLING_DEMO_PUBLIC_URL"):
        Settings.from_env({"KLING_DEMO_PUBLIC_URL": url}, dotenv_path=None)


# --- end to end: the app and the sandbox as processes ------------------------------------------------------

@pytest.fixture
def pushed(tmp_path):
    """A sandbox that signs webhooks with SECRET and renders in 4 s, and the app on a port it announces."""
    sandbox = start_sandbox_process("--inference-seconds", "4", "--webhook-secret", SECRET,
                                    log_path=tmp_path / "sandbox.log")
    port = free_port()
    app = start_app_process(tmp_path / "data", port=port, log_path=tmp_path / "app.log", env={
        "WAVESPEED_API_KEY": "test-key", "WAVESPEED_BASE_URL": sandbox.url,
        "KLING_DEMO_PUBLIC_URL": f"http://127.0.0.1:{port}", "WAVESPEED_WEBHOOK_SECRET": SECRET})
    yield app, sandbox, tmp_path / "data"
    app.stop()
    sandbox.stop()


def stats(sandbox) -> dict:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_pushed_completion_shows_the_video_with_at_most_two_polls(pushed, make_image):
    app, sandbox, data = pushed
    status, task_id, video = Client(app.url, verbose=False).predict(
        handle_file(str(make_image(size=(800, 600)))), "a lighthouse in fog", "", 0.5, 5, None, api_name="/generate")
    assert status.startswith("**Done**"), status
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    counts = stats(sandbox)
    assert counts["webhooks_delivered"] == 1 and counts["submissions"] == 1
    assert counts["result_polls"] <= 2, f"the job polled {counts['result_polls']} times though a webhook came"


def journal_row(data: Path, task_id: str) -> dict:
    """The task's journal row as stored (every column), for 'nothing changed' comparisons."""
    import sqlite3
    with sqlite3.connect(data / "journal.sqlite3") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return dict(row)


def post_webhook(app, headers: dict[str, str], body: bytes) -> requests.Response:
    return requests.post(app.url + "webhooks/wavespeed", data=body, timeout=10,
                         headers={"content-type": "application/json", **headers})


def test_forged_stale_and_replayed_webhooks_get_401_and_change_nothing(pushed, make_image):
    app, sandbox, data = pushed
    client = Client(app.url, verbose=False)
    job = client.submit(handle_file(str(make_image(size=(800, 600)))), "a kite over dunes", "", 0.5, 5, None,
                        api_name="/generate")
    task_id = wait_for(lambda: (out := job.outputs()) and out[-1][1], 60, "the task id")
    running = wait_for(lambda: journal_row(data, task_id) if journal_row(data, task_id)["status"] in
                       ("created", "processing") else None, 30, "the journal row")
    fake_end = {"id": task_id, "status": "completed", "outputs": [sandbox.url + "/not-the-video.mp4"], "error": ""}
    now = time.time()

    forged_headers, forged_body = signed(fake_end, secret="whsec_not-the-secret", timestamp=now)
    stale_headers, stale_body = signed(fake_end, timestamp=now - 400)
    early_headers, early_body = signed(fake_end, timestamp=now + 400)
    for headers, body in ((forged_headers, forged_body), (stale_headers, stale_body), (early_headers, early_body)):
        answer = post_webhook(app, headers, body)
        assert answer.status_code == 401, answer.text
        assert journal_row(data, task_id) == running

    # A genuine message that ends nothing (still processing) is taken; the same message again is a replay.
    still = {"id": task_id, "status": "processing", "outputs": [], "error": ""}
    replay_headers, replay_body = signed(still, timestamp=time.time())
    assert post_webhook(app, replay_headers, replay_body).status_code == 200
    answer = post_webhook(app, replay_headers, replay_body)
    assert answer.status_code == 401 and "already received" in answer.json()["error"]
    assert journal_row(data, task_id) == running

    status, final_id, video = job.result()
    assert status.startswith("**Done**") and final_id == task_id
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    record = Journal(data / "journal.sqlite3").get(running["owner"], task_id)
    assert record.status == "completed" and Path(record.video_path).exists()
    assert stats(sandbox)["webhooks_delivered"] == 1


LAUNCHED_BARE = "import app\napp.demo.launch()\n"  # as a Space that imports `demo` and launches it itself


def test_the_webhook_route_exists_when_demo_is_launched_without_our_options(tmp_path):
    script = tmp_path / "space_launch.py"
    script.write_text(LAUNCHED_BARE)
    port = free_port()
    app = start_app_process(tmp_path / "data", port=port, app_script=script, log_path=tmp_path / "app.log", env={
        "KLING_DEMO_PUBLIC_URL": f"http://127.0.0.1:{port}", "WAVESPEED_WEBHOOK_SECRET": SECRET})
    try:
        unsigned = post_webhook(app, {}, json.dumps(PREDICTION).encode())
        headers, body = signed({**PREDICTION, "id": "not-a-task-here"}, timestamp=time.time())
        genuine = post_webhook(app, headers, body)
    finally:
        app.stop()
    assert unsigned.status_code == 401 and "webhook-signature" in unsigned.json()["error"]
    assert genuine.status_code == 200 and genuine.json() == {"received": "not-a-task-here"}


# --- refusals are logged at a bounded rate ------------------------------------------------------------------


@pytest.fixture
def serve_route():
    """`serve_route(route)`: the webhook route alone, served by uvicorn on a free loopback port; its URL."""
    import socket

    import uvicorn
    from fastapi import FastAPI

    servers = []

    def start(api_route) -> str:
        app = FastAPI()
        app.router.routes.append(api_route)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_for(lambda: server.started, 15, "the route to be served")
        return f"http://127.0.0.1:{listener.getsockname()[1]}/"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def refusal_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kling_demo.web.api" and "refused" in r.getMessage()]


def test_a_burst_of_refused_webhooks_writes_a_line_or_two_not_one_each(serve_route, caplog):
    from kling_demo.web.api import webhook_route

    url = serve_route(webhook_route(Receiver(SECRET, lambda prediction: None).receive))
    caplog.set_level("INFO", logger="kling_demo.web.api")
    with requests.Session() as session:
        for _ in range(300):  # unsigned, as a scanner or a flood sends them
            answer = session.post(url + "webhooks/wavespeed", data=b"{}", timeout=10,
                                  headers={"content-type": "application/json"})
            assert answer.status_code == 401
    lines = refusal_lines(caplog)
    assert 1 <= len(lines) <= 2, f"{len(lines)} lines for 300 refusals"
    assert "webhook-signature" in lines[0]


def test_refusals_after_the_first_are_counted_into_one_line_per_interval(serve_route, caplog):
    from kling_demo.web.api import Refusals, webhook_route

    now = [1000.0]
    url = serve_route(webhook_route(Receiver(SECRET, lambda prediction: None).receive,
                                    refusals=Refusals(interval_seconds=60.0, clock=lambda: now[0])))
    caplog.set_level("INFO", logger="kling_demo.web.api")

    def refuse(times: int) -> None:
        for _ in range(times):
            assert post_webhook_to(url, {}, b"{}").status_code == 401

    refuse(50)
    assert len(refusal_lines(caplog)) == 1
    now[0] += 59.0
    refuse(10)
    assert len(refusal_lines(caplog)) == 1, "still inside the interval"
    now[0] += 2.0
    refuse(1)
    first, second = refusal_lines(caplog)
    assert "59 more" in second and "webhook-signature" in second
    now[0] += 61.0
    refuse(1)
    assert "more" not in refusal_lines(caplog)[2], "a lone refusal after a quiet interval is a plain line"


def post_webhook_to(url: str, headers: dict[str, str], body: bytes) -> requests.Response:
    return requests.post(url + "webhooks/wavespeed", data=body, timeout=10,
                         headers={"content-type": "application/json", **headers})
