"""Money in view: WaveSpeed's price quotes (cached briefly), the key's balance, and how both read to a person.

A quote is free and the same for every visitor of a key, so the page's price line and the job's check share
one short-lived cache keyed by (key hash, API, model, price-driving inputs). Nothing here makes up a price:
what WaveSpeed does not answer is "unavailable". The low-balance check refuses a job before anything is
uploaded when the balance is below the price; if the balance cannot be had it lets the job go on (the
submit's 402 remains the backstop) and says so in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..jobs.slots import slot_key
from ..models import ModelSpec, Quote
from ..wavespeed.client import WaveSpeedClient
from ..words import money
from ..errors import AuthenticationFailed, InsufficientBalance, KlingDemoError

log = logging.getLogger(__name__)

QUOTE_TTL_SECONDS = 60.0
MAX_CACHED_QUOTES = 256
# Kling's formula is a per-second price × duration: only the duration moves the price. A quote asked
# with just these inputs is the quote of the full request (the rest of the inputs never changes it).
PRICE_DRIVERS = ("duration",)


def price_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs that decide the price, in a stable order (the cache key, and the quote's body)."""
    return {name: inputs[name] for name in PRICE_DRIVERS if inputs.get(name) is not None}


@dataclass(frozen=True)
class _Entry:
    quote: Quote
    expires_at: float


class QuoteCache:
    """Quotes per (key hash, API, model, price-driving inputs), each kept `ttl` seconds; thread-safe."""

    def __init__(self, ttl: float = QUOTE_TTL_SECONDS, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_CACHED_QUOTES) -> None:
        self.ttl, self.clock, self.max_entries = ttl, clock, max_entries
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._lock = threading.Lock()
        self.asked = 0  # quotes fetched from the API (cache misses), for tests and logs

    def quote(self, client: WaveSpeedClient, api_key: str, spec: ModelSpec, inputs: dict[str, Any]) -> Quote:
        """The cached quote, or a fresh one from the API (raises a `KlingDemoError` when it cannot be had)."""
        drivers = price_inputs(inputs)
        key = (slot_key(api_key), client.base_url, spec.model_id, repr(sorted(drivers.items())))
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at > now:
                return entry.quote
        quote = client.price(spec, drivers, attempts=2)
        with self._lock:
            self.asked += 1
            if len(self._entries) >= self.max_entries:  # expired first, then the oldest
                for stale in [k for k, e in self._entries.items() if e.expires_at <= now] or [next(iter(self._entries))]:
                    del self._entries[stale]
            self._entries[key] = _Entry(quote, self.clock() + self.ttl)
        return quote


PriceGuard = Callable[[dict[str, Any]], "Quote | None"]


def price_guard(cache: QuoteCache, client: WaveSpeedClient, api_key: str, spec: ModelSpec, *,
                whose: str, show_balance: bool) -> PriceGuard:
    """The check a job runs right before uploading: the price to keep with the task, and no submission the
    key's balance cannot pay. `whose` names the account ("Your" or "This Space's"); `show_balance` says
    whether the refusal may state that account's balance."""

    def check(inputs: dict[str, Any]) -> Quote | None:
        try:
            quote = cache.quote(client, api_key, spec, inputs)
        except AuthenticationFailed:
            raise  # the key is refused: the submit would say the same, after an upload
        except KlingDemoError as error:
            log.warning("prices: no quote (%s); the balance is not checked and the task keeps no price",
                        type(error).__name__)
            return None
        try:
            balance = client.balance()
        except AuthenticationFailed:
            raise
        except KlingDemoError as error:
            log.warning("prices: the balance could not be checked (%s); the job goes on, and WaveSpeed refuses the "
                        "submission itself if the balance is short", type(error).__name__)
            return quote
        if balance.currency == quote.currency and balance.amount + 0.005 < quote.price:
            shorter = inputs.get("duration", spec.default_duration) != min(spec.durations)
            raise InsufficientBalance(_short(quote, balance.amount, whose, show_balance, shorter))
        return quote

    return check


def _short(quote: Quote, balance: float, whose: str, show_balance: bool, shorter: bool) -> str:
    """The refusal: both amounts (the Space's balance only where its owner shows it), and what to do."""
    price = money(quote.price, quote.currency)
    shorter_too = " choose a shorter video," if shorter else ""
    if whose == "Your":
        return (f"Your WaveSpeed balance is {money(balance, quote.currency)}, less than this video's price of "
                f"{price}. Top up at wavespeed.ai,{shorter_too} or use another key. Nothing was submitted.")
    held = f" ({money(balance, quote.currency)})" if show_balance else ""
    return (f"This Space's WaveSpeed balance{held} is less than this video's price of {price}. Enter your own "
            f"WaveSpeed key,{shorter_too} or try again later. Nothing was submitted.")
