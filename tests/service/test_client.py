"""WaveSpeedClient against the sandbox over real HTTP: the protocol, retries, and never paying twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.errors import ApiInputRefused, AuthenticationFailed, ServiceUnavailable, SubmissionOutcomeUnknown
from kling_demo.store.videos import probe_video
from kling_demo.models import KLING_V2_I2V_MASTER as SPEC
from kling_demo.models import Charge, TaskStatus
from tests.waiting import wait_for


class RecordingSleep:
    """Records the client's waits instead of sleeping them, so a test can tell Retry-After was honoured
    without spending the seconds (the sandbox's seeded faults do not depend on time)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def run_to_completion(client: WaveSpeedClient, image_url: str, duration: int = 5):
    import time

    prediction = client.submit(SPEC, {"image": image_url, "prompt": "a lighthouse at dusk", "duration": duration})
    while not prediction.is_final:
        time.sleep(0.2)
        prediction = client.result(prediction.task_id)
    return prediction


def test_upload_submit_poll_download_gives_a_playable_five_second_video(sandbox, make_image, tmp_path):
    with WaveSpeedClient(sandbox.base_url, "any-key") as client:
        url = client.upload(make_image(size=(800, 600)), "image/png")
        prediction = run_to_completion(client, url)
        assert prediction.status is TaskStatus.COMPLETED
        assert prediction.inference_ms and prediction.inference_ms >= 900
        assert prediction.has_nsfw_contents == (False,)
        video = client.download(prediction.outputs[0], tmp_path / "videos", max_bytes=50_000_000)
    info = probe_video(video)
    assert info.duration_seconds == pytest.approx(5.0)
    assert info.codec == "h264"
    assert sandbox.stats()["submissions"] == 1


def test_a_rejected_key_says_so(make_sandbox, make_image):
    sandbox = make_sandbox(api_key="the-right-key")
    with WaveSpeedClient(sandbox.base_url, "a-wrong-key") as client:
        with pytest.raises(AuthenticationFailed, match="rejected the API key") as caught:
            client.upload(make_image(), "image/png")
    assert "a-wrong-key" not in str(caught.value)
    assert sandbox.stats()["uploads"] == 0


def test_a_netrc_entry_for_the_host_neither_replaces_the_key_nor_reaches_file_urls(make_sandbox, make_image,
                                                                                  tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password their-netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))  # where requests looks for ~/.netrc
    sandbox = make_sandbox(api_key="the-right-key")
    with WaveSpeedClient(sandbox.base_url, "the-right-key") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        sent = client._keyless().get(prediction.outputs[0], timeout=10).request.headers
    assert prediction.status is TaskStatus.COMPLETED
    assert "Authorization" not in sent


def test_input_refused_by_the_api_carries_its_message(sandbox, make_image):
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        url = client.upload(make_image(), "image/png")
        with pytest.raises(ApiInputRefused, match="duration"):
            client.submit(SPEC, {"image": url, "prompt": "x", "duration": 7})
    assert sandbox.stats()["submissions"] == 0


def test_a_lost_submit_answer_is_reported_and_never_resubmitted(make_sandbox, make_image):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        url = client.upload(make_image(), "image/png")
        with pytest.raises(SubmissionOutcomeUnknown, match="not resubmitted"):
            client.submit(SPEC, {"image": url, "prompt": "a lighthouse"})
    assert sandbox.stats()["submissions"] == 1


def test_rate_limits_and_transient_faults_are_ridden_out_honouring_retry_after(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(fault_rate=0.4, seed=7)
    sleep = RecordingSleep()
    with WaveSpeedClient(sandbox.base_url, "k", max_attempts=8, backoff_seconds=0.05, sleep=sleep) as client:
        for _ in range(3):
            url = client.upload(make_image(), "image/png")
            prediction = run_to_completion(client, url)
            assert prediction.status is TaskStatus.COMPLETED
            video = client.download(prediction.outputs[0], tmp_path, max_bytes=50_000_000)
            assert probe_video(video).frames == 120
    stats = sandbox.stats()
    assert stats["submissions"] == 3, "a submit that met a 429 must be retried, never duplicated"
    assert stats["faults_injected"] >= 3
    assert stats["faults_by_kind"]["429"] >= 1
    # Every 429 in the sandbox says Retry-After: 1, and the client waited that long.
    assert sum(1 for delay in sleep.delays if delay >= 1.0) >= stats["faults_by_kind"]["429"]


def test_download_refuses_more_than_the_cap(sandbox, make_image, tmp_path):
    from kling_demo.errors import DownloadFailed

    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        with pytest.raises(DownloadFailed, match="cap"):
            client.download(prediction.outputs[0], tmp_path / "videos", max_bytes=10_000)
    assert list((tmp_path / "videos").iterdir()) == [], "a refused download leaves no partial file"


def opened(session, url: str) -> int:
    """How many connections `session` has opened (urllib3 counts them per pool)."""
    pools = session.get_adapter(url).poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())


def test_jobs_of_one_key_share_its_connections_and_files_go_over_a_keyless_one(sandbox, make_image, tmp_path):
    """Two jobs' quote, upload, submit, polls and download open one API connection and one keyless one."""
    from kling_demo.wavespeed.connections import Connections

    connections = Connections()
    first, second = (WaveSpeedClient(sandbox.base_url, "key-a", connections=connections) for _ in range(2))
    for client in (first, second):
        url = client.upload(make_image(size=(800, 600)), "image/png")
        prediction = run_to_completion(client, url)
        client.download(prediction.outputs[0], tmp_path / "videos", max_bytes=50_000_000)
        client.close()  # a job's end leaves the key's connections to the next job
    api, files = first.session, connections.plain()
    assert second.session is api and "key-a" in api.headers["Authorization"]
    assert "Authorization" not in files.headers, "signed upload URLs and the CDN never see the key"
    assert opened(api, sandbox.base_url) == 1 and opened(files, sandbox.base_url) == 1
    other = WaveSpeedClient(sandbox.base_url, "key-b", connections=connections)
    assert other.session is not api and "key-" not in repr(connections) + repr(other)
    connections.close()


# --- itemised billing ------------------------------------------------------------------------


@pytest.mark.parametrize("config, status, charge", [
    ({}, TaskStatus.COMPLETED, Charge(amount=1.40, settled=True, currency="USD")),
    ({"task_failure_rate": 1.0}, TaskStatus.FAILED, Charge(amount=0.0, settled=True)),
    ({"task_failure_rate": 1.0, "charge_failed_tasks": True}, TaskStatus.FAILED, Charge(amount=1.40, settled=True)),
], ids=["completed: its price", "failed: refunded", "failed, kept charged"])
def test_billing_states_a_finished_tasks_net_charge(make_sandbox, make_image, config, status, charge):
    sandbox = make_sandbox(**config)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        assert prediction.status is status
        assert client.billing([prediction.task_id]) == {prediction.task_id: charge}


def test_billing_of_a_running_task_is_provisional_until_it_ends(make_sandbox, make_image):
    sandbox = make_sandbox(hold_renders=True, task_failure_rate=1.0)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        task_id = client.submit(SPEC, {"image": client.upload(make_image(), "image/png"), "prompt": "a lighthouse"}).task_id
        assert client.billing([task_id]) == {task_id: Charge(amount=1.40, settled=False)}
        requests.post(f"{sandbox.base_url}/sandbox/release", timeout=10).raise_for_status()
        wait_for(lambda: client.result(task_id).is_final, what="the released task to end")
        assert client.billing([task_id]) == {task_id: Charge(amount=0.0, settled=True)}


def test_billing_reads_every_page_and_leaves_out_tasks_it_has_no_record_of(make_sandbox, make_image):
    sandbox = make_sandbox(task_failure_rate=0.5, seed=3)  # of three tasks the second fails: four records
    with WaveSpeedClient(sandbox.base_url, "k") as client, WaveSpeedClient(sandbox.base_url, "other") as other:
        url = client.upload(make_image(), "image/png")
        finished = [run_to_completion(client, url, duration) for duration in (5, 10, 10)]
        assert [prediction.status for prediction in finished] == [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.COMPLETED]
        theirs = run_to_completion(other, url).task_id
        ids = [prediction.task_id for prediction in finished]
        assert client.billing([]) == {} and sandbox.stats()["billing_searches"] == 0, "nothing to ask: no request"
        charges = client.billing([*ids, theirs, "no-such-task", ids[0]], page_size=3)
    assert charges == {ids[0]: Charge(1.40, True), ids[1]: Charge(0.0, True), ids[2]: Charge(2.80, True)}
    assert sandbox.stats()["billing_searches"] == 2, "four records at three a page: two pages"


def test_billing_is_retried_like_other_reads_then_says_the_service_is_unavailable(make_sandbox):
    sandbox = make_sandbox(fault_rate=1.0, seed=5)
    sleep = RecordingSleep()
    with WaveSpeedClient(sandbox.base_url, "k", backoff_seconds=0.01, sleep=sleep) as client:
        with pytest.raises(ServiceUnavailable):
            client.billing(["some-task"], attempts=3)
    assert sandbox.stats()["billing_searches"] == 3 and len(sleep.delays) == 2


def test_a_key_that_may_not_read_billing_raises_as_other_calls_do(make_sandbox):
    sandbox = make_sandbox(api_key="the-right-key")
    with WaveSpeedClient(sandbox.base_url, "a-wrong-key") as client:
        with pytest.raises(AuthenticationFailed, match="rejected the API key") as caught:
            client.billing(["some-task"])
    assert "a-wrong-key" not in str(caught.value)


def record(task_id: str, price: Any = 1.40, billing_type: Any = "deduct", state: str = "done", uuid: Any = None,
           prediction: Any = ...) -> dict[str, Any]:
    """A billing item as WaveSpeed's docs show one."""
    return {"uuid": f"rec-{task_id}-{billing_type}" if uuid is None else uuid, "access_key_id": "1_2",
            "access_key_name": "", "billing_type": billing_type, "price": price,
            "created_at": "2026-04-23T12:23:30.933Z", "updated_at": "2026-04-23T12:23:30.933Z",
            "order": {"uuid": f"order-{task_id}", "state": state, "price": price, "origin_price": price, "status": "",
                      "ak_id": 35},
            "prediction": {"uuid": task_id, "model_uuid": SPEC.model_id, "status": "completed"}
            if prediction is ... else prediction}


class CannedBilling(BaseHTTPRequestHandler):
    """Stands in for WaveSpeed's billing search answering records the sandbox never writes (its older docs showed
    prices in other units), paged as asked."""

    items: list[dict[str, Any]] = []
    asked: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.asked.append(body)
        start = (body["page"] - 1) * body["page_size"]
        data = {"page": body["page"], "total": len(self.items), "items": self.items[start : start + body["page_size"]]}
        answer = json.dumps({"code": 200, "message": "success", "data": data}).encode()  # NaN stays NaN, as JS sends it
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned_billing() -> Iterator[tuple[str, type[CannedBilling]]]:
    handler = type("Handler", (CannedBilling,), {"items": [], "asked": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("bad", [
    [record("bad", price=24300)],
    [record("bad", price=1_300_000)],
    [record("bad", price="1.40")],
    [record("bad", price=None)],
    [record("bad", price=True)],
    [record("bad", price=-1.40)],
    [record("bad", price=float("nan"))],
    [record("bad", billing_type="adjustment")],
    [record("bad", uuid="")],
    [record("bad"), record("bad", billing_type="refund", price="1.40")],
    [record("bad", billing_type="refund")],
], ids=["24300 (other units)", "millionths of $1.30", "text", "null", "true", "negative", "NaN", "unknown type",
        "no record id", "a readable deduct and an unreadable refund", "a refund without its deduct"])
def test_a_record_that_cannot_be_read_leaves_its_task_out_never_a_made_up_figure(canned_billing, bad):
    url, handler = canned_billing
    handler.items = [record("good"), *bad, record("elsewhere", price=0.5)]  # "elsewhere": not asked, not stated
    with WaveSpeedClient(url, "k") as client:
        assert client.billing(["good", "bad"], page_size=2) == {"good": Charge(amount=1.40, settled=True)}
    assert [body["page"] for body in handler.asked] == list(range(1, len(handler.asked) + 1))
    assert len(handler.asked) == (len(handler.items) + 1) // 2, "every page read, each once"
    assert {(body["sort"], body["page_size"], tuple(body["prediction_uuids"])) for body in handler.asked} == {
        ("created_at ASC", 2, ("good", "bad"))}


def test_a_record_that_does_not_say_its_task_makes_every_charge_unknown(canned_billing):
    url, handler = canned_billing
    handler.items = [record("good"), record("bad", prediction=None)]
    with WaveSpeedClient(url, "k") as client:
        assert client.billing(["good", "bad"]) == {}


def test_a_whole_number_of_dollars_is_a_price(canned_billing):
    """JSON writes 2.0 as 2 (Go does): an integer within reason is dollars, like a float."""
    url, handler = canned_billing
    handler.items = [record("two", price=2), record("two-pre", price=2.6, state="pre"),
                     record("two-pre", price=2.6, billing_type="refund")]
    with WaveSpeedClient(url, "k") as client:
        assert client.billing(["two", "two-pre"]) == {"two": Charge(2.0, True), "two-pre": Charge(0.0, False)}
