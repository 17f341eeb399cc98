"""The budgets' ledger: what was spent on the server's key, per spender and in all, kept in the journal's file.

Each server-key job reserves its price here right before it costs anything, in one SQLite transaction (BEGIN
IMMEDIATE), so two jobs at once cannot both fit into the last dollar; `check` reads the same rules without
counting anything (what the page shows before the click). A refusal is data (`models.BudgetRefusal`): which
limit, how much is used, when it frees. The ledger lives in the journal's file, so a restart forgets nobody's
spend. A stopped or cancelled task still counts (it may be billed); only a submission that certainly created
nothing is released.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..models import BudgetRefusal, Limit
from .journal import check_header
from .sqlite_threads import ThreadConnections

log = logging.getLogger(__name__)

WINDOW_SECONDS = 24 * 3600.0
MINUTE_SECONDS = 60.0
SPEND, RELEASED = "submit", "released"  # a standing reservation; one whose submission created nothing
CENT = 0.005  # amounts within half a cent of a limit fit it (prices are whole cents)
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

    @property
    def money(self) -> bool:
        return self.visitor_usd is not None or self.app_usd is not None


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
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction; the default takes the file's write lock at once, so checks and insert are atomic."""
        db = self._connections.connection()
        try:
            if not self._ready:
                db.executescript(SCHEMA)
                self._ready = True
            db.execute(begin)
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error:
            self._connections.discard()  # the next call starts from a fresh open
            raise

    def check(self, spender: str, amount: float | None, limits: Limits) -> BudgetRefusal | None:
        """What would refuse `amount` for `spender` now, counting nothing (None: it fits). Without an amount (no
        quote) only the rate, and a budget with nothing left, can refuse. Raises `sqlite3.Error`."""
        with self._transaction("BEGIN") as db:
            return _refusal(db, spender, amount, limits, self.clock())

    def reserve(self, spender: str, amount: float, limits: Limits) -> "Reservation | BudgetRefusal":
        """Count `amount` against `spender` and the app, or, when a limit refuses it, that refusal (nothing is
        counted). Raises `sqlite3.Error` when the ledger cannot be written."""
        with self._transaction() as db:
            now = self.clock()
            refusal = _refusal(db, spender, amount, limits, now)
            if refusal is not None:
                return refusal
            row_id = db.execute("INSERT INTO spend (spender, amount_usd, at, kind) VALUES (?, ?, ?, ?)",
                                (spender, amount, now, SPEND)).lastrowid
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
        with self._transaction("BEGIN") as db:
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
            log.warning("ledger: could not release a reservation (%s)", type(error).__name__)

    def attach(self, task_id: str) -> None:
        """Remember which task the amount paid for."""
        try:
            self.ledger.attach(self.row_id, task_id)
        except sqlite3.Error as error:
            log.warning("ledger: could not note task %s (%s)", task_id, type(error).__name__)


def _refusal(db: sqlite3.Connection, spender: str, amount: float | None, limits: Limits,
             now: float) -> BudgetRefusal | None:
    """The first limit that refuses `amount` now: the rate, then the spender's budget, then the app's."""
    return (_rate(db, spender, limits.submits_per_minute, now)
            or _money(db, spender, amount, limits.visitor_usd, now, Limit.VISITOR)
            or _money(db, None, amount, limits.app_usd, now, Limit.APP))


def _sum(db: sqlite3.Connection, spender: str | None, since: float) -> float:
    query, args = "SELECT COALESCE(SUM(amount_usd), 0) FROM spend WHERE kind = ? AND at > ?", [SPEND, since]
    if spender is not None:
        query, args = query + " AND spender = ?", [*args, spender]
    return float(db.execute(query, args).fetchone()[0])


def _rate(db: sqlite3.Connection, spender: str, per_minute: int | None, now: float) -> BudgetRefusal | None:
    if per_minute is None:
        return None
    times = [row[0] for row in db.execute("SELECT at FROM spend WHERE kind = ? AND spender = ? AND at > ? "
                                          "ORDER BY at", (SPEND, spender, now - MINUTE_SECONDS))]
    if len(times) < per_minute:
        return None
    frees_at = times[len(times) - per_minute] + MINUTE_SECONDS if per_minute else None
    return BudgetRefusal(Limit.RATE, cap=per_minute, frees_at=frees_at, submitted=len(times), at=now)


def _money(db: sqlite3.Connection, spender: str | None, amount: float | None, cap: float | None, now: float,
           limit: Limit) -> BudgetRefusal | None:
    """The refusal when `amount` does not fit under `cap` in the rolling window, with when enough frees up."""
    if cap is None:
        return None
    query, args = "SELECT at, amount_usd FROM spend WHERE kind = ? AND at > ?", [SPEND, now - WINDOW_SECONDS]
    if spender is not None:
        query, args = query + " AND spender = ?", [*args, spender]
    rows = db.execute(query + " ORDER BY at", args).fetchall()
    used = sum(row[1] for row in rows)
    need = amount if amount is not None else CENT * 2  # no quote: refused only when nothing is left
    if used + need <= cap + CENT:
        return None
    frees_at, left_in_window = None, used
    if need <= cap + CENT:
        for at, spent in rows:  # the oldest spends leave the window first
            left_in_window -= spent
            if left_in_window + need <= cap + CENT:
                frees_at = at + WINDOW_SECONDS
                break
    return BudgetRefusal(limit, cap=cap, used=used, price=amount, frees_at=frees_at, at=now)
