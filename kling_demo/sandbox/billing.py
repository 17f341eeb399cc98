"""WaveSpeed's itemised billing: each key's deduct and refund records, and `POST /api/v3/billings/search`.

The protocol (https://wavespeed.ai/docs/check-billings): a JSON body `{billing_type?, prediction_uuids?,
sort? ("created_at ASC" | "created_at DESC"), start_time?, end_time? (milliseconds since the Unix epoch, as
strings), page (>= 1, default 1), page_size (1-100, default 10)}` answers `{page, total, items}`, where an item
is one record: `{uuid, access_key_id, access_key_name, billing_type, price (USD, a float), created_at,
updated_at, order: {uuid, state, price, origin_price, status, ak_id}, prediction: {uuid, model_uuid, status}}`.
WaveSpeed deducts a task's price when the task is created: its record's order is "pre" while the task runs
(the docs show one for a task still "created") and "done" once it settled.

(?) Not documented, modelled here as assumptions: a task that ends without a video (failed, cancelled, timeout)
gets a second record, `billing_type` "refund" with the same positive price on the same order, so its net charge
is 0 (`SandboxConfig.charge_failed_tasks` keeps it charged instead); with no `sort` the newest record comes first;
with no time range every record of the key is searched; an empty `prediction_uuids` filters nothing; the key's
`access_key_id`/`ak_id` are the sandbox's own numbers, never the key. An older docs page showed `price` as an
integer in other units (24300 beside an `origin_price` of 27000, which reads as millionths of a dollar), so
clients should read it defensively; the sandbox always writes USD floats.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from kling_demo.sandbox.protocol import ApiError, iso

DEDUCT, REFUND = "deduct", "refund"
PRE, DONE = "pre", "done"  # an order's state: deducted and not yet settled, or settled
SORTS = ("created_at ASC", "created_at DESC")
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10
_MILLISECONDS = re.compile(r"[0-9]{1,16}")


@dataclass
class Order:
    """What one task was billed: both of its records (the deduct, any refund) belong to it."""

    order_id: str
    price: float
    key_number: int
    state: str = PRE


@dataclass
class BillingRecord:
    """One line of a key's billing."""

    record_id: str
    owner: str  # the API key it was billed to: a search sees only its own key's records
    billing_type: str
    price: float
    task_id: str
    model_id: str
    order: Order
    created_ms: int
    updated_ms: int

    def to_item(self, task_status: str) -> dict[str, Any]:
        """The record as `POST /api/v3/billings/search` shows it, with its task's current status."""
        number = self.order.key_number
        return {
            "uuid": self.record_id,
            "access_key_id": f"sandbox_{number}",
            "access_key_name": f"sandbox key {number}",
            "billing_type": self.billing_type,
            "price": self.price,
            "created_at": iso(self.created_ms / 1000),
            "updated_at": iso(self.updated_ms / 1000),
            "order": {"uuid": self.order.order_id, "state": self.order.state, "price": self.order.price,
                      "origin_price": self.order.price, "status": "", "ak_id": number},
            "prediction": {"uuid": self.task_id, "model_uuid": self.model_id, "status": task_status},
        }


@dataclass(frozen=True)
class BillingQuery:
    """A validated search."""

    page: int
    page_size: int
    billing_type: str | None
    task_ids: frozenset[str] | None
    newest_first: bool
    start_ms: int | None
    end_ms: int | None

    def matches(self, record: BillingRecord) -> bool:
        return (
            (self.billing_type is None or record.billing_type == self.billing_type)
            and (self.task_ids is None or record.task_id in self.task_ids)
            and (self.start_ms is None or record.created_ms >= self.start_ms)
            and (self.end_ms is None or record.created_ms <= self.end_ms)
        )


class Ledger:
    """Every key's records in the order they were written (so by `created_at`), and what each key spent net.

    Not thread-safe on its own: `Accounts` calls it under its lock."""

    def __init__(self) -> None:
        self._records: list[BillingRecord] = []
        self._deducts: dict[str, BillingRecord] = {}  # by task id
        self._spent: dict[str, float] = {}  # per key: deducts minus refunds
        self._key_numbers: dict[str, int] = {}

    def deduct(self, owner: str, task_id: str, model_id: str, price: float, now: float) -> BillingRecord:
        """The record of a task created at `now`: its price, deducted at once, its order "pre"."""
        number = self._key_numbers.setdefault(owner, len(self._key_numbers) + 1)
        order = Order(order_id=uuid.uuid4().hex, price=price, key_number=number)
        record = self._write(owner, DEDUCT, price, task_id, model_id, order, now)
        self._deducts[task_id] = record
        return record

    def settle(self, task_id: str, refund: bool, now: float) -> None:
        """The task ended at (or before) `now`: its order is "done", and with `refund` its price comes back."""
        deduct = self._deducts.get(task_id)
        if deduct is None or deduct.order.state == DONE:
            return
        deduct.order.state = DONE
        deduct.updated_ms = _ms(now)
        if refund:
            self._write(deduct.owner, REFUND, deduct.price, task_id, deduct.model_id, deduct.order, now)

    def spent(self, owner: str) -> float:
        """What `owner`'s key paid net so far: every deduct less every refund."""
        return self._spent.get(owner, 0.0)

    def search(self, owner: str, query: BillingQuery) -> tuple[int, list[BillingRecord]]:
        """How many of `owner`'s records match `query`, and those on its page."""
        matching = [record for record in self._records if record.owner == owner and query.matches(record)]
        if query.newest_first:
            matching.reverse()
        start = (query.page - 1) * query.page_size
        return len(matching), matching[start : start + query.page_size]

    def _write(self, owner: str, billing_type: str, price: float, task_id: str, model_id: str, order: Order,
               now: float) -> BillingRecord:
        moment = _ms(now)
        record = BillingRecord(uuid.uuid4().hex, owner, billing_type, price, task_id, model_id, order, moment, moment)
        self._records.append(record)
        sign = -1 if billing_type == REFUND else 1
        self._spent[owner] = round(self._spent.get(owner, 0.0) + sign * price, 6)
        return record


def parse_billing_search(body: dict[str, Any]) -> BillingQuery:
    """Read a search body; a 400 names the first bad field."""
    page = _whole_number(body, "page", 1)
    page_size = _whole_number(body, "page_size", DEFAULT_PAGE_SIZE)
    if page_size > MAX_PAGE_SIZE:
        raise _invalid(f"page_size: must be at most {MAX_PAGE_SIZE} (got {page_size})")
    billing_type = body.get("billing_type")
    if billing_type == "":
        billing_type = None
    if billing_type is not None and not isinstance(billing_type, str):
        raise _invalid("billing_type: must be a string, e.g. deduct")
    sort = body.get("sort") or SORTS[1]
    if sort not in SORTS:
        raise _invalid(f"sort: must be one of {' or '.join(SORTS)} (got {sort!r})")
    start_ms, end_ms = _milliseconds(body, "start_time"), _milliseconds(body, "end_time")
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise _invalid("start_time: must not be later than end_time")
    return BillingQuery(page, page_size, billing_type, _task_ids(body), sort == SORTS[1], start_ms, end_ms)


def _whole_number(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"{name}: must be a whole number of at least 1 (got {value!r})")
    return value


def _task_ids(body: dict[str, Any]) -> frozenset[str] | None:
    value = body.get("prediction_uuids")
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _invalid("prediction_uuids: must be an array of task ids (strings)")
    return frozenset(value)


def _milliseconds(body: dict[str, Any], name: str) -> int | None:
    """A time as the docs send it: milliseconds since the Unix epoch, as a string of digits."""
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _MILLISECONDS.fullmatch(value):
        raise _invalid(f"{name}: must be milliseconds since the Unix epoch as a string, e.g. \"1759317210051\" "
                       f"(got {value!r})")
    return int(value)


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, error_code="invalid_parameter")


def _ms(epoch: float) -> int:
    return int(epoch * 1000)
