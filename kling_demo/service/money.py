"""Money: WaveSpeed's price quotes (cached briefly), the balance guard, the budgets on the server's key, what tasks
were charged (cached), and which keys a browser already had accepted.

A quote is free and the same for every visitor of a key, so the page's price, the budgets' reservation and the
job's balance check share one short-lived cache keyed by (key hash, API, model, price-driving inputs). Nothing
here makes up a price: what WaveSpeed does not answer is "unavailable". The balance guard refuses a job before
anything is uploaded when the balance is below the price; if the balance cannot be had it lets the job go on
(the submit's 402 remains the backstop) and says so in the log. The budgets reserve the price in the ledger
(`store.ledger`) before anything costs the app; a refusal is data (`models.BudgetRefusal`) that the page shows
before the click and `BudgetExceeded` carries after it. A task's cost is what WaveSpeed's itemised billing says,
read only with the key that paid (the server's: a visitor's own key is never kept), else its quote.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable

from ..errors import AuthenticationFailed, BudgetExceeded, InsufficientBalance, KlingDemoError, ServiceUnavailable, \
    StorageUnavailable
from ..jobs.slots import slot_key
from ..models import BudgetRefusal, BudgetView, Charge, ModelSpec, Quote, Spend, TaskRecord
from ..store import files
from ..store.ledger import Ledger, Limits, Reservation
from ..wavespeed.client import WaveSpeedClient
from ..words import Voice, money

log = logging.getLogger(__name__)

QUOTE_TTL_SECONDS = 60.0
MAX_CACHED_QUOTES = 256
# Kling's formula is a per-second price × duration: only the duration moves the price. A quote asked
# with just these inputs is the quote of the full request (the rest of the inputs never changes it).
PRICE_DRIVERS = ("duration",)
PRICE_UNKNOWN = "The price could not be checked, so nothing was submitted. Try again in a minute."
# A charge not yet settled (or not billed yet) is read again after this long; a settled one never changes.
CHARGE_RECHECK_SECONDS = 30.0
BILLING_REFUSED_SECONDS = 600.0  # a key that may not read its billing is not asked again for this long
MAX_CACHED_CHARGES = 10_000


# --- quotes -------------------------------------------------------------------------------------------------------


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
    key's balance cannot pay. `whose` names the account ("Your", "This Space's", "This app's"); `show_balance`
    says whether the refusal may state that account's balance."""

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
    return (f"{whose} WaveSpeed balance{held} is less than this video's price of {price}. Enter your own "
            f"WaveSpeed key,{shorter_too} or try again later. Nothing was submitted.")


# --- budgets on the server's key ----------------------------------------------------------------------------------


SpendGuard = Callable[[dict[str, Any]], Reservation]


class Budgets:
    """The app's limits over its ledger: the guard a server-key job passes, the refusal the page shows before the
    click, and how much of the budgets a spender used."""

    def __init__(self, ledger: Ledger, limits: Limits, spec: ModelSpec, quotes: QuoteCache, voice: Voice) -> None:
        self.ledger, self.limits, self.spec, self.quotes = ledger, limits, spec, quotes
        self.voice = dataclasses.replace(voice, for_visitors=False)  # BudgetExceeded's message is the API's

    def guard(self, spender: str, client: WaveSpeedClient, api_key: str) -> SpendGuard | None:
        """The hook a server-key job calls before anything costs the app: quote the price (cached), reserve it."""
        if not self.limits.any:
            return None

        def reserve(inputs: dict[str, Any]) -> Reservation:
            quote = self._quote(client, api_key, inputs)
            try:
                held = self.ledger.reserve(spender, quote.price, self.limits)
            except sqlite3.Error as error:
                log.warning("budgets: the ledger cannot be written (%s: %s); refusing before anything is paid for",
                            type(error).__name__, error)
                raise StorageUnavailable(files.NO_ROOM_MESSAGE) from error
            if isinstance(held, BudgetRefusal):
                raise self.exceeded(self._about(held, inputs.get("duration")))
            return held

        return reserve

    def refusal(self, spender: str, quote: Quote | None, duration: int | None) -> BudgetRefusal | None:
        """What would refuse the spender's next video of `duration` now (nothing is counted); None when it fits,
        no limit applies, or the ledger cannot be read (the job's own reservation still decides)."""
        if not self.limits.any:
            return None
        try:
            found = self.ledger.check(spender, quote.price if quote is not None else None, self.limits)
        except sqlite3.Error as error:
            log.warning("budgets: cannot read the ledger (%s)", type(error).__name__)
            return None
        return self._about(found, duration) if found is not None else None

    def exceeded(self, refusal: BudgetRefusal) -> BudgetExceeded:
        return BudgetExceeded(self.voice.refused(refusal, ended=True), refusal=refusal)

    def view(self, spender: str) -> BudgetView | None:
        """How much of the budgets the spender and the app used in the window; None when no money limit applies
        (or the ledger cannot be read)."""
        if not self.limits.money:
            return None
        try:
            usage = self.ledger.usage(spender)
        except sqlite3.Error as error:
            log.warning("budgets: cannot read the ledger (%s)", type(error).__name__)
            return None
        return BudgetView(usage.spender_usd, self.limits.visitor_usd, usage.app_usd, self.limits.app_usd)

    def _quote(self, client: WaveSpeedClient, api_key: str, inputs: dict[str, Any]) -> Quote:
        try:
            quote = self.quotes.quote(client, api_key, self.spec, inputs)
        except AuthenticationFailed:
            raise  # the server's key itself is refused: the submit would say the same
        except KlingDemoError as error:
            log.warning("budgets: no price quote (%s); the submission is refused", type(error).__name__)
            raise ServiceUnavailable(PRICE_UNKNOWN) from error
        if quote.currency != "USD":
            log.warning("budgets: the quote came in %s, not USD; the submission is refused", quote.currency)
            raise ServiceUnavailable(PRICE_UNKNOWN)
        return quote

    def _about(self, refusal: BudgetRefusal, duration: object) -> BudgetRefusal:
        """The refusal with the video it is about: its length, and whether a shorter one exists."""
        length = duration if duration in self.spec.durations else None
        return dataclasses.replace(refusal, duration=length,
                                   shorter=length is not None and length > min(self.spec.durations))


# --- what tasks were charged --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Charged:
    charge: Charge | None  # None: no record (yet, or ever)
    expires_at: float | None  # None: settled, kept for good
    ended: bool  # read after the task ended (what was read while it ran may have changed since)


class Charges:
    """What WaveSpeed's itemised billing says tasks cost, per (key hash, API, task): a settled charge is kept for
    good, a provisional one (or none yet) is read again after `ttl` seconds, or as soon as its task has ended;
    thread-safe."""

    def __init__(self, ttl: float = CHARGE_RECHECK_SECONDS, refused_ttl: float = BILLING_REFUSED_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_CACHED_CHARGES) -> None:
        self.ttl, self.refused_ttl, self.clock, self.max_entries = ttl, refused_ttl, clock, max_entries
        self._entries: OrderedDict[tuple[str, str, str], _Charged] = OrderedDict()
        self._refused: dict[tuple[str, str], float] = {}  # keys that may not read billing, until when
        self._lock = threading.Lock()
        self.asked = 0  # billing searches made (cache misses), for tests and logs

    def of(self, client: WaveSpeedClient, api_key: str, task_ids: Iterable[str],
           ended: Collection[str] = ()) -> dict[str, Charge]:
        """The charges known for these tasks of the key, reading the billing only for those not cached (one search
        for all of them); `ended` names the tasks that have ended. A task without a charge is left out: its quote
        stands. Never raises for the API."""
        who = (slot_key(api_key), client.base_url)
        now = self.clock()
        known: dict[str, Charge] = {}
        stale: list[str] = []
        with self._lock:
            for task_id in dict.fromkeys(task_ids):
                entry = self._entries.get((*who, task_id))
                if entry is not None and (entry.expires_at is None or (
                        entry.expires_at > now and (entry.ended or task_id not in ended))):
                    self._entries.move_to_end((*who, task_id))
                    if entry.charge is not None:
                        known[task_id] = entry.charge
                else:
                    stale.append(task_id)
            if not stale or self._refused.get(who, 0.0) > now:
                return {**known, **self._last(who, stale)}
        answered = self._read(client, who, stale, now)
        with self._lock:
            self.asked += 1
            for task_id in stale:
                charge = answered.get(task_id) if answered is not None else self._last(who, [task_id]).get(task_id)
                settled = charge is not None and charge.settled and answered is not None
                self._entries[(*who, task_id)] = _Charged(charge, None if settled else now + self.ttl,
                                                          task_id in ended)
                self._entries.move_to_end((*who, task_id))
                if charge is not None:
                    known[task_id] = charge
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return known

    def _read(self, client: WaveSpeedClient, who: tuple[str, str], task_ids: list[str],
              now: float) -> dict[str, Charge] | None:
        """The billing's answer for `task_ids`, or None when it could not be read."""
        try:
            return client.billing(task_ids, attempts=1)
        except AuthenticationFailed:
            log.info("billing: this key may not read its billing; the quotes stand for %d min",
                     round(self.refused_ttl / 60))
            with self._lock:
                self._refused[who] = now + self.refused_ttl
        except KlingDemoError as error:
            log.info("billing: not read (%s); the quotes stand for now", type(error).__name__)
        return None

    def _last(self, who: tuple[str, str], task_ids: list[str]) -> dict[str, Charge]:
        """The last charges read for these tasks, however old (call with the lock held)."""
        entries = (self._entries.get((*who, task_id)) for task_id in task_ids)
        return {task_id: entry.charge for task_id, entry in zip(task_ids, entries)
                if entry is not None and entry.charge is not None}


def spend_of(records: Iterable[TaskRecord], charges: dict[str, Charge]) -> tuple[Spend, ...]:
    """What the tasks cost, per currency: each task's charge where it is known, else its quote."""
    totals: dict[str, Spend] = {}
    for record in records:
        charge, quote = charges.get(record.task_id), record.quote
        if charge is not None:
            spent = totals.get(charge.currency) or Spend(charge.currency)
            totals[charge.currency] = dataclasses.replace(
                spent, charged=spent.charged + charge.amount, charged_tasks=spent.charged_tasks + 1,
                refunded_tasks=spent.refunded_tasks + charge.refunded)
        elif quote is not None:
            spent = totals.get(quote.currency) or Spend(quote.currency)
            totals[quote.currency] = dataclasses.replace(spent, quoted=spent.quoted + quote.price,
                                                         quoted_tasks=spent.quoted_tasks + 1)
    return tuple(totals[currency] for currency in sorted(totals))
