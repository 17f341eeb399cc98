"""The sandbox's account side over real HTTP: prices, balances and limits per key, the predictions
listing, every final status, the schema's prompt caps, and signed webhooks to a local receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import wavespeed

from tests.service.test_sandbox import MODEL, TIMEOUT, data_uri, good_body, result, submit, wait_until_final  # noqa: F401
from tests.waiting import wait_for

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}
AUTH_OF_SUBMIT = {"Authorization": "Bearer test-key"}  # the key tests.service.test_sandbox.submit uses by default


def api(sandbox, method: str, path: str, headers: dict[str, str] = KEY_A, **kwargs: Any) -> requests.Response:
    base = getattr(sandbox, "base_url", None) or sandbox.url
    return requests.request(method, base + path, headers=headers, timeout=TIMEOUT, **kwargs)


def quote(sandbox, inputs: Any, model_id: str = MODEL) -> requests.Response:
    return api(sandbox, "POST", "/api/v3/model/price", json={"model_id": model_id, "inputs": inputs})


def balance(sandbox, headers: dict[str, str] = KEY_A) -> float:
    answer = api(sandbox, "GET", "/api/v3/balance", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["balance"]


def listing(sandbox, body: dict[str, Any], headers: dict[str, str] = KEY_A) -> requests.Response:
    return api(sandbox, "POST", "/api/v3/predictions", headers=headers, json=body)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- price -----------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs, expected", [({"duration": 5}, 1.40), ({"duration": 10}, 2.80), ({}, 1.40), (None, 1.40)],
                         ids=["5 s", "10 s", "no duration", "no inputs"])
def test_price_quote_is_per_second_times_duration(sandbox, inputs, expected: float) -> None:
    answer = quote(sandbox, inputs)
    assert answer.status_code == 200
    envelope = answer.json()
    assert (envelope["code"], envelope["message"]) == (200, "success")
    assert envelope["data"] == {"price": expected, "discounted_price": expected, "discount_rate": 1.0, "currency": "USD"}


def test_price_table_is_configurable(make_sandbox) -> None:
    sandbox = make_sandbox(price_per_second=0.07)
    assert quote(sandbox, {"duration": 10}).json()["data"]["price"] == 0.70


@pytest.mark.parametrize("model_id, inputs, fragments", [
    ("kwaivgi/kling-v9-nope", {"duration": 5}, ["model_id:", "kling-v9-nope"]),
    (None, {}, ["model_id:"]),
    (MODEL, {"duration": 7}, ["duration:", "5 or 10", "7"]),
    (MODEL, ["duration", 5], ["inputs:", "object"]),
], ids=["unknown model", "no model", "bad duration", "inputs not an object"])
def test_price_refusals_name_the_field(sandbox, model_id, inputs, fragments) -> None:
    answer = quote(sandbox, inputs, model_id=model_id)
    assert answer.status_code == 400 and answer.json()["code"] == 400
    assert answer.json()["message"].startswith(fragments[0])
    for fragment in fragments:
        assert fragment in answer.json()["message"]


# --- balance ---------------------------------------------------------------------------------


def test_completed_tasks_draw_down_only_their_own_keys_balance(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, balance=10.0)
    assert balance(sandbox) == balance(sandbox, KEY_B) == 10.0
    five = submit(sandbox, good_body, headers=KEY_A).json()["data"]["id"]
    ten = submit(sandbox, {**good_body, "duration": 10}, headers=KEY_A).json()["data"]["id"]
    for task_id in (five, ten):
        assert wait_until_final(sandbox, task_id, headers=KEY_A)["status"] == "completed"
    assert balance(sandbox) == pytest.approx(10.0 - 1.40 - 2.80)
    assert balance(sandbox, KEY_B) == 10.0


def test_a_failed_task_costs_nothing(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, task_failure_rate=1.0, balance=5.0)
    task_id = submit(sandbox, good_body).json()["data"]["id"]
    assert wait_until_final(sandbox, task_id)["status"] == "failed"
    assert balance(sandbox, AUTH_OF_SUBMIT) == 5.0


def test_a_balance_below_the_price_refuses_and_creates_nothing(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(balance=1.0)
    answer = submit(sandbox, good_body)
    assert answer.status_code == 402
    body = answer.json()
    assert body["code"] == 402 and body["data"] is None and body["error_code"] == "insufficient_balance"
    assert body["message"].startswith("Insufficient balance") and "$1.40" in body["message"] and "$1.00" in body["message"]
    stats = sandbox.stats()
    assert stats["submissions"] == 0 and sum(stats["tasks"].values()) == 0
    assert balance(sandbox, AUTH_OF_SUBMIT) == 1.0


def test_running_tasks_hold_their_price_so_a_key_cannot_overspend(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30, balance=2.0)
    assert submit(sandbox, good_body).status_code == 200
    second = submit(sandbox, good_body)
    assert second.status_code == 402 and "$0.60 available" in second.json()["message"]
    assert submit(sandbox, good_body, headers=KEY_B).status_code == 200  # another key, another account
    assert sandbox.stats()["submissions"] == 2


def test_a_zero_balance_still_gets_free_quotes_and_a_balance(make_sandbox) -> None:
    sandbox = make_sandbox(balance=0.0)
    assert balance(sandbox) == 0.0
    assert quote(sandbox, {"duration": 5}).json()["data"]["price"] == 1.40


# --- predictions listing ---------------------------------------------------------------------


def test_listing_shows_only_the_keys_own_tasks_newest_first_with_their_inputs(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2)
    mine = [submit(sandbox, {**good_body, "prompt": f"take {n}", "duration": 5 + 5 * (n % 2)}, headers=KEY_A).json()["data"]["id"]
            for n in range(3)]
    theirs = submit(sandbox, good_body, headers=KEY_B).json()["data"]["id"]
    wait_until_final(sandbox, mine[-1], headers=KEY_A)
    answer = listing(sandbox, {"page": 1, "page_size": 10})
    assert answer.status_code == 200 and answer.json()["code"] == 200
    page = answer.json()["data"]
    assert page["page"] == 1
    assert [item["id"] for item in page["items"]] == mine[::-1]
    newest = page["items"][0]
    assert newest["model"] == MODEL and newest["status"] == "completed" and len(newest["outputs"]) == 1
    assert newest["inputs"] == {"prompt": "take 2", "duration": 5}  # the inline image is left out
    assert newest["executionTime"] == newest["timings"]["inference"] >= 200
    assert newest["created_at"].endswith("Z")
    assert [item["id"] for item in listing(sandbox, {}, headers=KEY_B).json()["data"]["items"]] == [theirs]


def test_listing_pages_and_filters(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30, task_failure_rate=0.0)
    ids = [submit(sandbox, good_body, headers=KEY_A).json()["data"]["id"] for _ in range(5)]
    pages = [listing(sandbox, {"page": page, "page_size": 2}).json()["data"] for page in (1, 2, 3, 4)]
    assert [[item["id"] for item in page["items"]] for page in pages] == [ids[4:2:-1], ids[2:0:-1], ids[:1], []]
    assert {page["total"] for page in pages} == {5}
    running = [listing(sandbox, {"status": status}).json()["data"]["total"] for status in ("created", "processing")]
    assert sum(running) == 5
    assert listing(sandbox, {"status": "completed"}).json()["data"]["items"] == []
    assert listing(sandbox, {"model": "someone/else"}).json()["data"]["items"] == []
    now = datetime.now(timezone.utc)
    later = {"created_after": iso(now + timedelta(minutes=1)), "created_before": iso(now + timedelta(minutes=2))}
    assert listing(sandbox, later).json()["data"]["items"] == []
    around = {"created_after": iso(now - timedelta(days=6)), "created_before": iso(now + timedelta(days=1))}
    assert len(listing(sandbox, around).json()["data"]["items"]) == 5


def test_listing_defaults_to_the_last_24_hours(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30)
    submit(sandbox, good_body, headers=KEY_A)
    yesterday = datetime.now(timezone.utc) - timedelta(hours=25)
    assert len(listing(sandbox, {}).json()["data"]["items"]) == 1
    assert listing(sandbox, {"created_before": iso(yesterday)}).json()["data"]["items"] == []


@pytest.mark.parametrize("body, fragments", [
    ({"page_size": 101}, ["page_size:", "at most 100", "101"]),
    ({"page": 0}, ["page:", "at least 1"]),
    ({"status": "done"}, ["status:", "created", "timeout"]),
    ({"created_after": "yesterday"}, ["created_after:", "ISO 8601"]),
    ({"created_after": "2025-01-01T00:00:00"}, ["created_after:", "zone"]),
    ({"created_after": "2025-01-10T00:00:00Z", "created_before": "2025-01-01T00:00:00Z"}, ["created_after:", "later"]),
    ({"created_after": "2025-01-01T00:00:00Z", "created_before": "2025-01-09T00:00:00Z"}, ["created_after:", "7 days"]),
], ids=["page_size over 100", "page 0", "unknown status", "not a time", "no zone", "reversed", "over 7 days"])
def test_listing_refusals_name_the_field(sandbox, body, fragments) -> None:
    answer = listing(sandbox, body)
    assert answer.status_code == 400
    assert answer.json()["code"] == 400 and answer.json()["message"].startswith(fragments[0])
    for fragment in fragments:
        assert fragment in answer.json()["message"]


def test_result_echoes_the_inputs_without_image_data(sandbox, make_image, good_body) -> None:
    png = make_image()
    ticket = api(sandbox, "POST", "/api/v3/media/uploads", json={"filename": png.name}).json()["data"]
    requests.put(ticket["upload"]["url"], data=png.read_bytes(), headers=ticket["upload"]["headers"], timeout=TIMEOUT)
    body = {"image": ticket["download_url"], "end_image": data_uri(png), "prompt": "p", "negative_prompt": "n",
            "guidance_scale": 0.7, "duration": 10}
    task_id = submit(sandbox, body).json()["data"]["id"]
    expected = {key: value for key, value in body.items() if key != "end_image"}
    assert result(sandbox, task_id)["input"] == expected


# --- account limits --------------------------------------------------------------------------


def rows(sandbox) -> list[dict[str, Any]]:
    return requests.get(f"{sandbox.base_url}/sandbox/tasks", timeout=TIMEOUT).json()


def renders(sandbox) -> int:
    """Renders the sandbox has started or taken whole from the suite's render store."""
    stats = sandbox.stats()
    return stats["renders"] + stats["render_store_hits"]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_a_task_beyond_the_keys_slots_waits_in_created(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30, max_concurrent_tasks=1)
    first = submit(sandbox, good_body, headers=KEY_A).json()["data"]["id"]
    second = submit(sandbox, good_body, headers=KEY_A).json()["data"]
    other_key = submit(sandbox, good_body, headers=KEY_B).json()["data"]["id"]
    assert second["status"] == "created"
    assert result(sandbox, second["id"], KEY_A)["status"] == "created"
    by_id = {row["id"]: row for row in rows(sandbox)}
    assert by_id[second["id"]]["started_at_epoch"] is None  # waiting for a slot: its clock has not started
    assert by_id[first]["started_at_epoch"] == by_id[first]["created_at_epoch"]
    assert by_id[other_key]["started_at_epoch"] == by_id[other_key]["created_at_epoch"]  # another key, its own slots
    assert sandbox.stats()["submissions"] == 3


def test_queued_tasks_take_freed_slots_in_order_and_never_exceed_the_limit(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.3, max_concurrent_tasks=2)
    ids = [submit(sandbox, good_body, headers=KEY_A).json()["data"]["id"] for _ in range(6)]
    assert [wait_until_final(sandbox, task_id, headers=KEY_A)["status"] for task_id in ids] == ["completed"] * 6
    table = rows(sandbox)
    assert [row["id"] for row in table] == ids
    intervals = [(row["started_at_epoch"], row["completed_at_epoch"]) for row in table]
    assert most_at_once(intervals) <= 2
    assert sandbox.stats()["max_running"] == most_at_once(intervals)
    starts = [start for start, _ in intervals]
    assert starts == sorted(starts)  # first come, first served
    ends = {end for _, end in intervals}
    for row in table:
        assert row["started_at_epoch"] >= row["created_at_epoch"]
        if row["started_at_epoch"] > row["created_at_epoch"]:
            assert row["started_at_epoch"] in ends  # it took the slot the moment an earlier task let go
        assert row["completed_at_epoch"] - row["started_at_epoch"] >= 0.3 - 1e-6  # the render clock starts with the slot


def test_without_a_limit_tasks_all_run_at_once(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30)
    for _ in range(4):
        submit(sandbox, good_body)
    assert all(row["started_at_epoch"] == row["created_at_epoch"] for row in rows(sandbox))
    assert sandbox.stats()["max_running"] == 4


def test_submissions_past_the_per_minute_rate_get_429_and_create_nothing(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30, videos_per_minute=2)
    assert [submit(sandbox, good_body, headers=KEY_A).status_code for _ in range(2)] == [200, 200]
    refused = submit(sandbox, good_body, headers=KEY_A)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    body = refused.json()
    assert body["code"] == 429 and body["error_code"] == "rate_limited" and body["data"] is None
    assert "2 videos per minute" in body["message"]
    assert submit(sandbox, good_body, headers=KEY_B).status_code == 200  # the rate is per key
    stats = sandbox.stats()
    assert stats["submissions"] == 3 and stats["rate_limited"] == 1 and sum(stats["tasks"].values()) == 3


def test_a_shortened_rate_window_frees_the_key_when_its_retry_after_says(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=30, videos_per_minute=1, rate_window_seconds=2)
    assert submit(sandbox, good_body).status_code == 200
    refused = submit(sandbox, good_body)
    assert refused.status_code == 429 and "1 videos per 2 s" in refused.json()["message"]
    retry_at = time.monotonic() + int(refused.headers["Retry-After"])
    assert int(refused.headers["Retry-After"]) <= 2
    wait_for(lambda: time.monotonic() >= retry_at, 5, "the Retry-After to pass")
    assert submit(sandbox, good_body).status_code == 200


def test_held_renders_stay_processing_past_their_time_until_released(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, hold_renders=True)
    task_id = submit(sandbox, good_body).json()["data"]["id"]
    row = wait_for(lambda: next((r for r in rows(sandbox) if r["id"] == task_id and r["started_at_epoch"]), None),
                   10, "the task to start")
    wait_for(lambda: time.time() > row["started_at_epoch"] + 1.0 and renders(sandbox) == 1, 10,
             "its time and render to be over")
    assert result(sandbox, task_id)["status"] == "processing"
    assert requests.post(sandbox.base_url + "/sandbox/release", timeout=TIMEOUT).json() == {"released": 1}
    assert wait_until_final(sandbox, task_id)["status"] == "completed"
    later = submit(sandbox, good_body).json()["data"]["id"]  # the hold is over for new tasks too
    assert wait_until_final(sandbox, later)["status"] == "completed"


def test_a_refused_submission_does_not_use_up_the_rate(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(videos_per_minute=1)
    assert submit(sandbox, {**good_body, "duration": 7}).status_code == 400
    assert submit(sandbox, good_body).status_code == 200


# --- every status ----------------------------------------------------------------------------


def test_status_faults_end_tasks_cancelled_or_timeout_with_a_reason(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, status_fault_rate=1.0, seed=4, balance=50.0)
    ids = [submit(sandbox, good_body).json()["data"]["id"] for _ in range(8)]
    finals = [wait_until_final(sandbox, task_id) for task_id in ids]
    statuses = [data["status"] for data in finals]
    assert set(statuses) == {"cancelled", "timeout"}
    for data in finals:
        assert data["outputs"] == [] and data["status"] in data["error"]
    stats = sandbox.stats()
    assert stats["tasks"]["cancelled"] + stats["tasks"]["timeout"] == 8
    assert balance(sandbox, AUTH_OF_SUBMIT) == 50.0  # nothing was delivered, nothing is charged
    again = make_sandbox(inference_seconds=0.2, status_fault_rate=1.0, seed=4)
    assert [wait_until_final(again, submit(again, good_body).json()["data"]["id"])["status"] for _ in range(8)] == statuses


def test_the_official_sdk_treats_a_cancelled_task_as_final(make_sandbox, make_image) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, status_fault_rate=1.0, seed=1)
    client = wavespeed.Client(api_key="k", base_url=sandbox.base_url)
    with pytest.raises(RuntimeError, match=r"Prediction (cancelled|timeout)"):
        client.run(MODEL, {"image": data_uri(make_image()), "prompt": "x"}, poll_interval=0.1, timeout=30)


# --- the model's schema caps -----------------------------------------------------------------


@pytest.mark.parametrize("field, cap", [("prompt", 2000), ("negative_prompt", 2500)])
def test_prompt_caps_from_the_models_schema(sandbox, good_body, field: str, cap: int) -> None:
    assert submit(sandbox, {**good_body, field: "x" * cap}).status_code == 200
    refused = submit(sandbox, {**good_body, field: "x" * (cap + 1)})
    assert refused.status_code == 400
    assert refused.json() == {
        "code": 400,
        "message": f"{field}: must be at most {cap} characters (got {cap + 1})",
        "data": None,
        "error_code": "invalid_parameter",
    }
    assert sandbox.stats()["submissions"] == 1


# --- webhooks --------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A local HTTP endpoint that records every POST and answers with `statuses` in turn, then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.received: list[Received] = []
        self._statuses = list(statuses)
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._changed:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/wavespeed"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, limit: float = 30.0) -> list[Received]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.received) >= count, timeout=limit), \
                f"{len(self.received)} of {count} webhook POSTs arrived"
            return list(self.received)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def make_receiver():
    receivers: list[Receiver] = []

    def factory(statuses: tuple[int, ...] = ()) -> Receiver:
        receivers.append(Receiver(statuses))
        return receivers[-1]

    yield factory
    for receiver in receivers:
        receiver.stop()


def expected_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """WaveSpeed's scheme, computed here from its description: HMAC-SHA256 of "{id}.{timestamp}.{body}"
    keyed by the secret without `whsec_`, used as text (not base64-decoded)."""
    key = secret[len("whsec_"):].encode()
    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v3," + hmac.new(key, message, hashlib.sha256).hexdigest()


def assert_signed(received: Received, secret: str = "whsec_sandbox") -> None:
    assert hmac.compare_digest(received.headers["webhook-signature"], expected_signature(secret, received.headers, received.body))
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 300


def submit_with_webhook(sandbox, body: dict[str, Any], url: str) -> requests.Response:
    return requests.post(f"{sandbox.base_url}/api/v3/{MODEL}", params={"webhook": url}, json=body,
                         headers=AUTH_OF_SUBMIT, timeout=TIMEOUT)


def test_a_completed_task_is_pushed_to_its_webhook_signed(make_sandbox, make_receiver, good_body) -> None:
    sandbox, receiver = make_sandbox(inference_seconds=0.2), make_receiver()
    task_id = submit_with_webhook(sandbox, good_body, receiver.url).json()["data"]["id"]
    (delivery,) = receiver.wait_for(1)
    assert_signed(delivery)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-id"]
    pushed = json.loads(delivery.body)
    assert pushed["id"] == task_id and pushed["status"] == "completed" and len(pushed["outputs"]) == 1
    assert pushed == result(sandbox, task_id)  # the same prediction object the result endpoint serves
    assert requests.get(pushed["outputs"][0], timeout=TIMEOUT).content[4:8] == b"ftyp"
    wait_for(lambda: sandbox.stats()["webhooks_delivered"] == 1)
    assert sandbox.stats()["webhooks_failed"] == 0


@pytest.mark.parametrize("config, statuses", [({"task_failure_rate": 1.0}, {"failed"}),
                                              ({"status_fault_rate": 1.0, "seed": 2}, {"cancelled", "timeout"})],
                         ids=["failed", "cancelled or timeout"])
def test_a_task_that_does_not_complete_is_pushed_too(make_sandbox, make_receiver, good_body, config, statuses) -> None:
    sandbox, receiver = make_sandbox(inference_seconds=0.2, **config), make_receiver()
    submit_with_webhook(sandbox, good_body, receiver.url)
    (delivery,) = receiver.wait_for(1)
    assert_signed(delivery)
    pushed = json.loads(delivery.body)
    assert pushed["status"] in statuses and pushed["outputs"] == [] and pushed["error"]


def test_a_failed_delivery_is_retried_with_the_same_id_and_a_fresh_signature(make_sandbox, make_receiver, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, webhook_retry_delays=(0.05, 0.1, 0.2))
    receiver = make_receiver(statuses=(500, 503))
    submit_with_webhook(sandbox, good_body, receiver.url)
    attempts = receiver.wait_for(3)
    assert len({attempt.headers["webhook-id"] for attempt in attempts}) == 1
    assert len({attempt.body for attempt in attempts}) == 1
    for attempt in attempts:
        assert_signed(attempt)
    wait_for(lambda: sandbox.stats()["webhooks_delivered"] == 1)
    stats = sandbox.stats()
    assert (stats["webhook_attempts"], stats["webhooks_failed"]) == (3, 0)


def test_a_delivery_that_never_gets_through_is_counted_as_failed(make_sandbox, make_receiver, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, webhook_retry_delays=(0.05, 0.05))
    refusing = make_receiver(statuses=(500,) * 10)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    submit_with_webhook(sandbox, good_body, refusing.url)
    submit_with_webhook(sandbox, good_body, dead_url)
    wait_for(lambda: sandbox.stats()["webhooks_failed"] == 2)
    assert len(refusing.received) == 3
    stats = sandbox.stats()
    assert (stats["webhooks_delivered"], stats["webhook_attempts"]) == (0, 6)


def test_a_lost_submit_answer_still_gets_its_webhook(make_sandbox, make_receiver, good_body) -> None:
    sandbox, receiver = make_sandbox(inference_seconds=0.2, lost_answer_rate=1.0), make_receiver()
    with pytest.raises(requests.ConnectionError):
        submit_with_webhook(sandbox, good_body, receiver.url)
    (delivery,) = receiver.wait_for(1)
    (row,) = rows(sandbox)
    assert json.loads(delivery.body)["id"] == row["id"]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "not a url", "http://"])
def test_a_bad_webhook_url_is_refused_before_anything_is_created(sandbox, good_body, url: str) -> None:
    answer = submit_with_webhook(sandbox, good_body, url)
    assert answer.status_code == 400 and answer.json()["message"].startswith("webhook:")
    assert sandbox.stats()["submissions"] == 0


def test_webhook_secret_endpoint_and_a_custom_secret(make_sandbox, make_receiver, good_body) -> None:
    default = make_sandbox()
    assert api(default, "GET", "/api/v3/webhook/secret").json()["data"] == {"secret": "whsec_sandbox"}
    assert api(default, "GET", "/api/v3/webhook/secret", headers={}).status_code == 401
    sandbox, receiver = make_sandbox(inference_seconds=0.2, webhook_secret="whsec_c2VjcmV0LW9mLXRlc3Q="), make_receiver()
    submit_with_webhook(sandbox, good_body, receiver.url)
    (delivery,) = receiver.wait_for(1)
    assert_signed(delivery, secret="whsec_c2VjcmV0LW9mLXRlc3Q=")
    assert "webhook_secret" not in sandbox.stats()["config"]


# --- CLI -------------------------------------------------------------------------------------
