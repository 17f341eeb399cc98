"""Money per API key: the price table and quotes, and balances that follow each key's billing ledger.

WaveSpeed keeps a balance per account in USD and deducts a task's price when the task is created
(`billing.py`); the sandbox keeps one per bearer token (any token is an account unless `--api-key`
pins one): the starting balance less every deduct, plus every refund.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kling_demo.models import MODELS, ModelSpec
from kling_demo.sandbox.billing import BillingQuery, BillingRecord, Ledger
from kling_demo.sandbox.protocol import ApiError
from kling_demo.sandbox.validation import checked_duration

CURRENCY = "USD"


@dataclass(frozen=True)
class Quote:
    """What a run costs: WaveSpeed's `/model/price` answer."""

    price: float
    discounted_price: float
    discount_rate: float
    currency: str = CURRENCY

    def to_data(self) -> dict[str, Any]:
        return {
            "price": self.price,
            "discounted_price": self.discounted_price,
            "discount_rate": self.discount_rate,
            "currency": self.currency,
        }


class Accounts:
    """Price table, per-key balances and the ledger they follow: a task's price is deducted when it is created,
    and refunded when `settle` says so (a task that ended without a video, by the sandbox's assumption)."""

    def __init__(self, price_per_second: float, starting_balance: float) -> None:
        # A stand-in table: WaveSpeed does not publish Kling 2.0 Master's price (2.1 Master is
        # $1.30 per 5 s); every model here costs `price_per_second` × duration, as Kling's formula does.
        self.price_per_second = {model_id: price_per_second for model_id in MODELS}
        self.starting_balance = starting_balance
        self._lock = threading.Lock()
        self._ledger = Ledger()

    def quote(self, spec: ModelSpec, duration: int | None) -> Quote:
        """The price of one run; without a duration, the base (default-duration) price."""
        seconds = spec.default_duration if duration is None else duration
        price = _money(self.price_per_second[spec.model_id] * seconds)
        # (?) discount_rate's meaning is not documented; here it is the multiplier (1.0: no discount).
        return Quote(price=price, discounted_price=price, discount_rate=1.0)

    def quote_request(self, body: dict[str, Any]) -> Quote:
        """A quote for a `/model/price` body `{model_id, inputs}`; 400 for an unknown model or bad inputs."""
        model_id = body.get("model_id")
        spec = MODELS.get(model_id) if isinstance(model_id, str) else None
        if spec is None:
            raise ApiError(400, f"model_id: unknown model {model_id!r} (known: {', '.join(sorted(MODELS))})")
        inputs = body.get("inputs", {})
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise ApiError(400, "inputs: must be a JSON object of the model's parameters")
        duration = checked_duration(inputs["duration"], spec) if inputs.get("duration") is not None else None
        return self.quote(spec, duration)

    def balance(self, owner: str) -> float:
        with self._lock:
            return self._balance(owner)

    def deduct(self, owner: str, task_id: str, model_id: str, amount: float, now: float) -> None:
        """Bill a new task its price (a "deduct" record, its order "pre"), or 402 if the balance cannot cover it."""
        with self._lock:
            available = self._balance(owner)
            if amount > available + 1e-9:
                # (?) The real answer to a short balance is not documented: 402 with a plain message is a guess.
                raise ApiError(
                    402,
                    f"Insufficient balance: this run costs ${amount:.2f} but the account has ${available:.2f} available",
                    error_code="insufficient_balance",
                )
            self._ledger.deduct(owner, task_id, model_id, amount, now)

    def settle(self, task_id: str, refund: bool, now: float) -> None:
        """The task ended: its order is "done"; with `refund` its price comes back to the balance."""
        with self._lock:
            self._ledger.settle(task_id, refund, now)

    def search(self, owner: str, query: BillingQuery) -> tuple[int, list[BillingRecord]]:
        """`owner`'s billing records that match `query`: how many, and those on its page."""
        with self._lock:
            return self._ledger.search(owner, query)

    def _balance(self, owner: str) -> float:
        return _money(self.starting_balance - self._ledger.spent(owner))


def _money(amount: float) -> float:
    return round(amount, 6)  # no float dust such as 1.4000000000000001
