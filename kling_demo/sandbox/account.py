"""Money per API key: the price table and quotes, balances that completed tasks draw down.

WaveSpeed keeps a balance per account in USD and charges a task's price when it runs; the
sandbox keeps one per bearer token (any token is an account unless `--api-key` pins one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kling_demo.models import MODELS, ModelSpec
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
    """Price table and per-key balances; a task's price is reserved at submission, charged on completion."""

    def __init__(self, price_per_second: float, starting_balance: float) -> None:
        # A stand-in table: WaveSpeed does not publish Kling 2.0 Master's price (2.1 Master is
        # $1.30 per 5 s); every model here costs `price_per_second` × duration, as Kling's formula does.
        self.price_per_second = {model_id: price_per_second for model_id in MODELS}
        self.starting_balance = starting_balance
        self._lock = threading.Lock()
        self._balances: dict[str, float] = {}
        self._reserved: dict[str, float] = {}

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
            return self._balances.get(owner, self.starting_balance)

    def reserve(self, owner: str, amount: float) -> None:
        """Hold `amount` for a new task, or 402 if the balance not yet held cannot cover it."""
        with self._lock:
            balance = self._balances.get(owner, self.starting_balance)
            available = _money(balance - self._reserved.get(owner, 0.0))
            if amount > available + 1e-9:
                # (?) The real answer to a short balance is not documented: 402 with a plain message is a guess.
                raise ApiError(
                    402,
                    f"Insufficient balance: this run costs ${amount:.2f} but the account has ${available:.2f} available",
                    error_code="insufficient_balance",
                )
            self._reserved[owner] = self._reserved.get(owner, 0.0) + amount

    def settle(self, owner: str, amount: float, charge: bool) -> None:
        """Release a task's hold; charge it when the task completed (failed and cancelled runs are free)."""
        with self._lock:
            self._reserved[owner] = max(0.0, self._reserved.get(owner, 0.0) - amount)
            if charge:
                self._balances[owner] = _money(self._balances.get(owner, self.starting_balance) - amount)


def _money(amount: float) -> float:
    return round(amount, 6)  # no float dust such as 1.4000000000000001
