"""The sandbox's itemised billing over real HTTP: a task's records from submission to its end (completed,
failed, cancelled or timed out), `POST /api/v3/billings/search`'s filters, paging and refusals, one key's
records hidden from another, and the balance that follows the ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import requests

from tests.service.test_sandbox import TIMEOUT, good_body, submit, wait_until_final  # noqa: F401
from tests.service.test_sandbox_account import KEY_A, KEY_B, api, balance, quote


def search(sandbox, body: dict[str, Any] | None = None, headers: dict[str, str] = KEY_A) -> requests.Response:
    return api(sandbox, "POST", "/api/v3/billings/search", headers=headers, json={"page": 1, "page_size": 100,
                                                                                 **(body or {})})


def records(sandbox, body: dict[str, Any] | None = None, headers: dict[str, str] = KEY_A) -> list[dict[str, Any]]:
    answer = search(sandbox, body, headers)
    assert answer.status_code == 200, answer.text
    envelope = answer.json()
    assert (envelope["code"], envelope["message"]) == (200, "success")
    return envelope["data"]["items"]


def submitted(sandbox, body: dict[str, Any], headers: dict[str, str] = KEY_A) -> str:
    answer = submit(sandbox, body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["id"]


def release(sandbox) -> None:
    assert api(sandbox, "POST", "/sandbox/release").status_code == 200


def ms(timestamp: str) -> int:
    return round(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def net(items: list[dict[str, Any]]) -> float:
    """What the records say was paid: deducts less refunds."""
    return sum(item["price"] * {"deduct": 1, "refund": -1}[item["billing_type"]] for item in items)


# --- a task's records ------------------------------------------------------------------------


def test_a_task_is_billed_its_quote_at_submission_provisionally_then_settled_when_completed(make_sandbox,
                                                                                          good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, balance=10.0, hold_renders=True)
    price = quote(sandbox, {"duration": 10}).json()["data"]["price"]
    task_id = submitted(sandbox, {**good_body, "duration": 10})
    (deduct,) = records(sandbox)
    assert (deduct["billing_type"], deduct["price"], deduct["order"]["state"]) == ("deduct", price, "pre")
    assert deduct["order"]["price"] == deduct["order"]["origin_price"] == price
    assert (deduct["prediction"]["uuid"], deduct["prediction"]["model_uuid"]) == (task_id, "kwaivgi/kling-v2.0-i2v-master")
    assert deduct["prediction"]["status"] in ("created", "processing")  # held: it cannot end yet
    assert balance(sandbox) == pytest.approx(10.0 - price), "deducted at creation, as WaveSpeed does"

    release(sandbox)
    assert wait_until_final(sandbox, task_id, headers=KEY_A)["status"] == "completed"
    (settled,) = records(sandbox)
    assert settled["uuid"] == deduct["uuid"] and settled["order"]["uuid"] == deduct["order"]["uuid"]
    assert (settled["order"]["state"], settled["prediction"]["status"], settled["price"]) == ("done", "completed", price)
    assert settled["created_at"] == deduct["created_at"] and ms(settled["updated_at"]) >= ms(settled["created_at"])
    assert balance(sandbox) == pytest.approx(10.0 - price)


@pytest.mark.parametrize("faults, endings", [({"task_failure_rate": 1.0}, {"failed"}),
                                             ({"status_fault_rate": 1.0, "seed": 3}, {"cancelled", "timeout"})],
                         ids=["failed", "cancelled or timed out"])
def test_a_task_that_ends_without_a_video_is_refunded_on_the_same_order(make_sandbox, good_body, faults,
                                                                       endings) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, balance=10.0, hold_renders=True, **faults)
    task_id = submitted(sandbox, good_body)
    (deduct,) = records(sandbox)
    assert (deduct["billing_type"], deduct["price"], deduct["order"]["state"]) == ("deduct", 1.40, "pre")
    assert balance(sandbox) == pytest.approx(8.60), "the price is held from creation, whatever the outcome"

    release(sandbox)
    status = wait_until_final(sandbox, task_id, headers=KEY_A)["status"]
    assert status in endings
    deduct, refund = records(sandbox, {"sort": "created_at ASC"})
    assert (deduct["billing_type"], refund["billing_type"]) == ("deduct", "refund")
    assert refund["price"] == deduct["price"] == 1.40 and refund["uuid"] != deduct["uuid"]
    assert refund["order"] == deduct["order"] and deduct["order"]["state"] == "done"
    assert refund["prediction"] == deduct["prediction"] == {**deduct["prediction"], "uuid": task_id, "status": status}
    assert ms(refund["created_at"]) >= ms(deduct["created_at"])
    assert net([deduct, refund]) == 0 and balance(sandbox) == 10.0


def test_charge_failed_tasks_keeps_a_failed_task_charged(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, balance=10.0, task_failure_rate=1.0, charge_failed_tasks=True)
    task_id = submitted(sandbox, good_body)
    assert wait_until_final(sandbox, task_id, headers=KEY_A)["status"] == "failed"
    (deduct,) = records(sandbox)  # the poll that saw the end settled the task: no refund follows
    assert (deduct["billing_type"], deduct["price"], deduct["order"]["state"]) == ("deduct", 1.40, "done")
    assert deduct["prediction"]["status"] == "failed"
    assert balance(sandbox) == pytest.approx(8.60)


def test_a_refused_submission_is_not_billed(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(balance=1.0)
    assert submit(sandbox, good_body, headers=KEY_A).status_code == 402
    assert records(sandbox) == [] and balance(sandbox) == 1.0


# --- the ledger and the balance --------------------------------------------------------------


def test_the_balance_is_the_starting_balance_less_the_ledgers_net_at_every_step(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, balance=20.0, hold_renders=True, task_failure_rate=0.5, seed=2)
    tasks = [submitted(sandbox, {**good_body, "duration": duration}) for duration in (5, 10, 5, 10)]
    held = records(sandbox)
    assert len(held) == 4 and {item["order"]["state"] for item in held} == {"pre"}
    assert balance(sandbox) == pytest.approx(20.0 - net(held)) == pytest.approx(20.0 - 2 * (1.40 + 2.80))

    release(sandbox)
    endings = [wait_until_final(sandbox, task_id, headers=KEY_A)["status"] for task_id in tasks]
    assert set(endings) == {"completed", "failed"}, "the seed gives both outcomes"
    ended = records(sandbox)
    assert len(ended) == 4 + endings.count("failed")
    assert {item["order"]["state"] for item in ended} == {"done"}
    assert balance(sandbox) == pytest.approx(20.0 - net(ended))
    paid = {item["prediction"]["uuid"]: item["price"] for item in ended if item["prediction"]["status"] == "completed"}
    assert balance(sandbox) == pytest.approx(20.0 - sum(paid.values())) and len(paid) == endings.count("completed")


# --- search: filters, paging, refusals -------------------------------------------------------


@pytest.fixture
def five_records(make_sandbox, good_body):
    """Four tasks of KEY_A made one after another, the second failed (seed 3): five records, the failed task's
    deduct and refund among them; and one completed task of KEY_B.
    Returns (sandbox, KEY_A's task ids in order, KEY_A's records oldest first, KEY_B's task id)."""
    sandbox = make_sandbox(inference_seconds=0.2, task_failure_rate=0.5, seed=3)
    tasks = []
    for duration in (5, 10, 5, 10):
        tasks.append(submitted(sandbox, {**good_body, "duration": duration}))
        wait_until_final(sandbox, tasks[-1], headers=KEY_A)  # a poll that sees the end settles the task
    theirs = submitted(sandbox, good_body, headers=KEY_B)
    assert wait_until_final(sandbox, theirs, headers=KEY_B)["status"] == "completed"
    ordered = records(sandbox, {"sort": "created_at ASC"})
    assert [(item["billing_type"], item["prediction"]["uuid"]) for item in ordered] == [
        ("deduct", tasks[0]), ("deduct", tasks[1]), ("refund", tasks[1]), ("deduct", tasks[2]), ("deduct", tasks[3])]
    return sandbox, tasks, ordered, theirs


def test_search_sorts_newest_first_unless_asked_and_filters_by_type_and_task(five_records) -> None:
    sandbox, tasks, ordered, _ = five_records
    assert records(sandbox) == records(sandbox, {"sort": "created_at DESC"}) == ordered[::-1]
    assert [ms(item["created_at"]) for item in ordered] == sorted(ms(item["created_at"]) for item in ordered)
    assert records(sandbox, {"billing_type": "refund"}) == [ordered[2]]
    assert records(sandbox, {"billing_type": "deduct"}) == [item for item in ordered[::-1] if item["billing_type"] == "deduct"]
    two = records(sandbox, {"prediction_uuids": tasks[1:3], "sort": "created_at ASC"})
    assert two == [item for item in ordered if item["prediction"]["uuid"] in tasks[1:3]]
    assert records(sandbox, {"prediction_uuids": ["no-such-task"]}) == []
    assert records(sandbox, {"billing_type": "recharge"}) == []


def test_search_by_time_range_in_milliseconds_as_strings(five_records) -> None:
    sandbox, _, ordered, _ = five_records
    first, third, last = (ms(ordered[n]["created_at"]) for n in (0, 2, -1))
    since_third = records(sandbox, {"start_time": str(third), "sort": "created_at ASC"})
    assert since_third == [item for item in ordered if ms(item["created_at"]) >= third] and len(since_third) < 5
    until_third = records(sandbox, {"end_time": str(third), "sort": "created_at ASC"})
    assert until_third == [item for item in ordered if ms(item["created_at"]) <= third]
    assert records(sandbox, {"start_time": str(first), "end_time": str(last)}) == ordered[::-1]
    assert records(sandbox, {"start_time": str(last + 1)}) == []


def test_search_pages_through_every_record_once(five_records) -> None:
    sandbox, _, ordered, _ = five_records
    pages = []
    for page in (1, 2, 3, 4):
        answer = search(sandbox, {"page": page, "page_size": 2, "sort": "created_at ASC"}).json()["data"]
        assert (answer["page"], answer["total"]) == (page, 5)
        pages.append(answer["items"])
    assert [len(items) for items in pages] == [2, 2, 1, 0]
    assert [item for items in pages for item in items] == ordered
    defaults = search(sandbox, {"page": None, "page_size": None}).json()["data"]  # page 1 of 10, as documented
    assert (defaults["page"], defaults["total"], defaults["items"]) == (1, 5, ordered[::-1])


def test_a_key_sees_only_its_own_records(five_records) -> None:
    sandbox, tasks, ordered, their_task = five_records
    (theirs,) = records(sandbox, headers=KEY_B)
    assert theirs["prediction"]["uuid"] == their_task and theirs["billing_type"] == "deduct"
    assert records(sandbox, {"prediction_uuids": tasks}, headers=KEY_B) == []
    assert records(sandbox, {"prediction_uuids": [their_task]}) == []
    assert all(item["prediction"]["uuid"] != their_task for item in records(sandbox))
    assert theirs["access_key_id"] != ordered[0]["access_key_id"] and theirs["order"]["ak_id"] != ordered[0]["order"]["ak_id"]
    for item in ordered + [theirs]:
        assert "key-a" not in str(item) and "key-b" not in str(item), "a record never shows the key itself"
    assert search(sandbox, headers={}).status_code == 401


def test_with_a_pinned_key_another_key_cannot_search(make_sandbox) -> None:
    sandbox = make_sandbox(api_key="the-key")
    refused = search(sandbox, headers={"Authorization": "Bearer not-the-key"})
    assert refused.status_code == 401 and refused.json()["code"] == 401
    assert records(sandbox, headers={"Authorization": "Bearer the-key"}) == []


@pytest.mark.parametrize("body, fragments", [
    ({"page": 0}, ["page:", "at least 1"]),
    ({"page": "1"}, ["page:", "'1'"]),
    ({"page_size": 0}, ["page_size:", "at least 1"]),
    ({"page_size": 101}, ["page_size:", "at most 100"]),
    ({"page_size": True}, ["page_size:"]),
    ({"sort": "price DESC"}, ["sort:", "created_at ASC", "created_at DESC"]),
    ({"start_time": 1759317210051}, ["start_time:", "as a string"]),
    ({"end_time": "2025-10-01T11:13:30Z"}, ["end_time:", "milliseconds"]),
    ({"start_time": "1759317227408", "end_time": "1759317210051"}, ["start_time:", "later than end_time"]),
    ({"prediction_uuids": "abc"}, ["prediction_uuids:", "array"]),
    ({"prediction_uuids": [1]}, ["prediction_uuids:", "strings"]),
    ({"billing_type": 5}, ["billing_type:", "string"]),
], ids=["page 0", "page as text", "page_size 0", "page_size 101", "page_size true", "unknown sort", "time as a number",
        "time as ISO", "start after end", "ids not an array", "ids not strings", "type not a string"])
def test_a_bad_search_is_a_400_that_names_the_field(sandbox, body, fragments) -> None:
    answer = search(sandbox, body)
    assert answer.status_code == 400 and answer.json()["code"] == 400 and answer.json()["data"] is None
    assert answer.json()["message"].startswith(fragments[0])
    for fragment in fragments:
        assert fragment in answer.json()["message"]


@pytest.mark.parametrize("raw", [b"[1, 2]", b"not json"], ids=["a list", "not JSON"])
def test_a_search_body_that_is_not_a_json_object_is_a_400(sandbox, raw: bytes) -> None:
    answer = api(sandbox, "POST", "/api/v3/billings/search", data=raw,
                 headers={**KEY_A, "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["message"].startswith("body:")


def test_stats_count_every_search_and_keep_the_other_counters(sandbox) -> None:
    before = sandbox.stats()
    assert before["billing_searches"] == 0
    records(sandbox)
    assert search(sandbox, {"page": 0}).status_code == 400
    assert search(sandbox, headers={}).status_code == 401  # not a key's search: not counted
    stats = requests.get(f"{sandbox.base_url}/sandbox/stats", timeout=TIMEOUT).json()
    assert stats["billing_searches"] == 2
    assert set(before) <= set(stats) and {"submissions", "result_polls", "uploads", "faults_injected", "tasks"} <= set(stats)
    assert stats["config"]["charge_failed_tasks"] is False
