"""Budgets in money on the server's key: each spender's and the whole app's, per rolling 24 hours.

Right before a submit on the server's key, the job asks WaveSpeed for the price and reserves it here in
one SQLite transaction (BEGIN IMMEDIATE), so two jobs at once cannot both fit into the last dollar. The
ledger lives in the journal's file, so a restart forgets nobody's spend. A stopped or cancelled task still
counts (it may be billed); only a submission that certainly created nothing is released.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..store import files
from ..store.journal import check_header
from ..store.sqlite_threads import ThreadConnections
from ..wavespeed.client import WaveSpeedClient
from ..errors import AuthenticationFailed, BudgetExceeded, KlingDemoError, ServiceUnavailable, StorageUnavailable
from ..models import BudgetView, ModelSpec

log = logging.getLogger(__name__)

WINDOW_SECONDS = 24 * 3600.0
MINUTE_SECONDS = 60.0
SPEND, RELEASED = "submit", "released"  # a standing reservation; one whose submission created nothing
CENT = 0.005  # amounts within half a cent of a limit fit it (prices are whole cents)
PRICE_UNKNOWN = "The price could not be checked, so nothing was submitted. Try again in a minute."
OWN_KEY = ("Your own WaveSpeed key lifts this limit: enter it under “Your WaveSpeed key” (API clients send it as "
           "the X-WaveSpeed-Key header).")
SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    spender    TEXT NOT NULL,
    amount_usd REAL NOT NULL,
    at         REAL NOT NULL,
    ref        TEXT NOT NULL DEFAULT '',
    kind       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_by_spender ON spend (spender, at);
CREATE INDEX IF NOT EXISTS spend_by_time ON spend (at);
"""


@dataclass(frozen=True)
class Limits:
    """What may be spent on the server's key; None means no limit."""

    visitor_usd: float | None = None  # per spender per rolling 24 h
    app_usd: float | None = None  # the whole app per rolling 24 h
    submits_per_minute: int | None = None  # per spender

    @property
    def any(self) -> bool:
        return any(limit is not None for limit in (self.visitor_usd, self.app_usd, self.submits_per_minute))


@dataclass(frozen=True)
class Usage:
    """A spender's and the app's spend in the current window."""

    spender_usd: float
    app_usd: float


class Ledger:
    """The `spend` table, in the journal's SQLite file (one reused connection per thread, as the journal has)."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._ready = False
        # Transactions begun by hand; a file overwritten while open is refused, as the journal refuses it.
        self._connections = ThreadConnections(self.path, isolation_level=None, check=check_header)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes the file's write lock at once, so checks and insert are atomic."""
        db = self._connections.connection()
        try:
            if not self._ready:
                db.executescript(SCHEMA)
                self._ready = True
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error:
            self._connections.discard()  # the next call starts from a fresh open
            raise

    def reserve(self, spender: str, amount: float, limits: Limits, *, what: str = "this video") -> "Reservation":
        """Count `amount` against `spender` and the app, or raise `BudgetExceeded` saying which limit and when."""
        try:
            with self._transaction() as db:
                now = self.clock()
                _check_rate(db, spender, limits.submits_per_minute, now)
                _check_money(db, spender, amount, limits.visitor_usd, now, what, whole_app=False)
                _check_money(db, None, amount, limits.app_usd, now, what, whole_app=True)
                row_id = db.execute("INSERT INTO spend (spender, amount_usd, at, kind) VALUES (?, ?, ?, ?)",
                                    (spender, amount, now, SPEND)).lastrowid
        except sqlite3.Error as error:
            log.warning("budgets: the ledger cannot be written (%s: %s); refusing before anything is paid for",
                        type(error).__name__, error)
            raise StorageUnavailable(files.NO_ROOM_MESSAGE) from error
        return Reservation(self, int(row_id or 0), amount)

    def release(self, row_id: int) -> None:
        """The submission certainly created nothing: its amount no longer counts."""
        with self._transaction() as db:
            db.execute("UPDATE spend SET kind = ? WHERE id = ?", (RELEASED, row_id))

    def attach(self, row_id: int, ref: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE spend SET ref = ? WHERE id = ?", (ref, row_id))

    def usage(self, spender: str) -> Usage:
        """What `spender` and the whole app spent in the last 24 hours."""
        with self._transaction() as db:
            since = self.clock() - WINDOW_SECONDS
            return Usage(_sum(db, spender, since), _sum(db, None, since))


@dataclass
class Reservation:
    """One amount counted against the budgets; `release()` it if the submission created nothing."""

    ledger: Ledger
    row_id: int
    amount: float
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            self.ledger.release(self.row_id)
        except sqlite3.Error as error:  # the spend keeps counting: safe for the owner, never an error to show
            log.warning("budgets: could not release a reservation (%s)", type(error).__name__)

    def attach(self, task_id: str) -> None:
        """Remember which task the amount paid for."""
        try:
            self.ledger.attach(self.row_id, task_id)
        except sqlite3.Error as error:
            log.warning("budgets: could not note task %s in the ledger (%s)", task_id, type(error).__name__)


SpendGuard = Callable[[dict[str, Any]], Reservation]


class Budgets:
    """The app's limits over its ledger: guards for server-key jobs, and the line the page shows."""

    def __init__(self, ledger: Ledger, limits: Limits, spec: ModelSpec) -> None:
        self.ledger, self.limits, self.spec = ledger, limits, spec

    def guard(self, spender: str, client: WaveSpeedClient) -> SpendGuard | None:
        """The hook a server-key job calls right before uploading: quote the price, reserve it."""
        if not self.limits.any:
            return None

        def reserve(inputs: dict[str, Any]) -> Reservation:
            try:
                quote = client.price(self.spec, inputs)
            except AuthenticationFailed:
                raise  # the server's key itself is refused: the submit would say the same
            except KlingDemoError as error:
                log.warning("budgets: no price quote (%s); the submission is refused", type(error).__name__)
                raise ServiceUnavailable(PRICE_UNKNOWN) from error
            if quote.currency != "USD":
                log.warning("budgets: the quote came in %s, not USD; the submission is refused", quote.currency)
                raise ServiceUnavailable(PRICE_UNKNOWN)
            duration = inputs.get("duration")
            what = f"this {duration} s video" if duration else "this video"
            return self.ledger.reserve(spender, quote.price, self.limits, what=what)

        return reserve

    def view(self, spender: str) -> BudgetView | None:
        """How much of the budgets the spender and the app used in the window; None when no money limit applies
        (or the ledger cannot be read)."""
        if self.limits.visitor_usd is None and self.limits.app_usd is None:
            return None
        try:
            usage = self.ledger.usage(spender)
        except sqlite3.Error as error:
            log.warning("budgets: cannot read the ledger (%s)", type(error).__name__)
            return None
        return BudgetView(usage.spender_usd, self.limits.visitor_usd, usage.app_usd, self.limits.app_usd)


def _sum(db: sqlite3.Connection, spender: str | None, since: float) -> float:
    query, args = "SELECT COALESCE(SUM(amount_usd), 0) FROM spend WHERE kind = ? AND at > ?", [SPEND, since]
    if spender is not None:
        query, args = query + " AND spender = ?", [*args, spender]
    return float(db.execute(query, args).fetchone()[0])


def _check_rate(db: sqlite3.Connection, spender: str, per_minute: int | None, now: float) -> None:
    if per_minute is None:
        return
    times = [row[0] for row in db.execute("SELECT at FROM spend WHERE kind = ? AND spender = ? AND at > ? "
                                          "ORDER BY at", (SPEND, spender, now - MINUTE_SECONDS))]
    if len(times) < per_minute:
        return
    frees_at = times[len(times) - per_minute] + MINUTE_SECONDS if per_minute else None
    wait = f"Try again in {_duration(frees_at - now)}." if frees_at else "Submissions on this Space's key are off."
    raise BudgetExceeded(
        f"You have submitted {len(times)} generation(s) in the last minute, the most one visitor may on this "
        f"Space's key ({per_minute} a minute). {wait} {OWN_KEY} Nothing was submitted.", frees_at=frees_at)


def _check_money(db: sqlite3.Connection, spender: str | None, amount: float, limit: float | None, now: float,
                 what: str, *, whole_app: bool) -> None:
    """Refuse when `amount` does not fit under `limit` in the rolling window, saying when enough frees up."""
    if limit is None:
        return
    since = now - WINDOW_SECONDS
    query, args = "SELECT at, amount_usd FROM spend WHERE kind = ? AND at > ?", [SPEND, since]
    if spender is not None:
        query, args = query + " AND spender = ?", [*args, spender]
    rows = db.execute(query + " ORDER BY at", args).fetchall()
    used = sum(row[1] for row in rows)
    if used + amount <= limit + CENT:
        return
    whose = ("this Space's daily budget on its key" if whole_app else "your daily budget on this Space's key")
    if amount > limit + CENT:
        raise BudgetExceeded(
            f"{what.capitalize()} costs {_usd(amount)}, more than {whose} ({_usd(limit)} per 24 hours). Choose a "
            f"shorter video. {OWN_KEY} Nothing was submitted.")
    frees_at = None
    for at, spent in rows:  # the oldest spends leave the window first
        used -= spent
        if used + amount <= limit + CENT:
            frees_at = at + WINDOW_SECONDS
            break
    used_now = sum(row[1] for row in rows)
    who = "This Space has" if whole_app else "You have"
    when = f" It frees up {_when(frees_at, now)}." if frees_at else ""
    raise BudgetExceeded(
        f"{who} used {_usd(used_now)} of {whose} ({_usd(limit)} per 24 hours), and {what} costs {_usd(amount)}."
        f"{when} {OWN_KEY} Nothing was submitted.", frees_at=frees_at)


def _usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _duration(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _when(at: float, now: float) -> str:
    return f"at {time.strftime('%H:%M UTC', time.gmtime(at))} (in {_duration(at - now)})"
