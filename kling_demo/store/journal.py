"""Durable record of every submitted task (stdlib sqlite3, WAL), each row scoped to its owner.

An intent row (under a placeholder id) is written before anything is uploaded ("prepared": nothing sent), says
what the submit POST carries and when it began right before it is sent ("submitting"), and is given the task id
when the answer arrives, so a task that was paid for is never forgotten: not by a closed tab, a crash, or a
restart; and nothing is submitted that could not be recorded. Only a row whose POST began can become "outcome
unknown"; one that was never sent is set aside unseen. Keys are never stored; `key_source` only says whose key paid
("server" or "visitor"). Reading never fails on an odd row, and a file that is not a database, or not this app's
journal, is moved aside at start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..models import (INTENT_PREFIX, INTENT_STATUSES, RUNNING_STATUSES, KeySource, TaskRecord, TaskStatus, is_intent_id,
                      positive_int)
from . import files
from .sqlite_threads import ThreadConnections

log = logging.getLogger(__name__)

# A prepared row a stopped run left (settled at start-up, `TaskStatus.UNSENT`): never shown, adopted or called
# "outcome unknown", and deleted an hour later. A job of another process still running (the app while the command
# line starts) may still send it: `mark_sending` takes it back.
NOT_SENT_KEEP_SECONDS = 3600.0
UNKNOWN_OUTCOME_ERROR = ("The submission outcome is unknown: the app stopped before WaveSpeed's answer arrived, so "
                         "the task may exist and be billed. Check your WaveSpeed dashboard before trying again.")
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
SQLITE_HEADER = b"SQLite format 3\x00"
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id      TEXT NOT NULL,
    owner        TEXT NOT NULL,
    model        TEXT NOT NULL,
    api_base     TEXT NOT NULL,
    key_source   TEXT NOT NULL,
    params       TEXT NOT NULL,
    first_frame  TEXT,
    status       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    finished_at  REAL,
    inference_ms INTEGER,
    video_path   TEXT,
    error        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (owner, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, created_at DESC);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE TABLE IF NOT EXISTS forgotten (
    task_id      TEXT PRIMARY KEY,
    forgotten_at REAL NOT NULL
);
"""
FORGOTTEN_DAYS = 8  # a deleted task's id is kept this long: past the listing's 7 days it cannot be found again
BASE_COLUMNS = frozenset({"task_id", "owner", "model", "api_base", "key_source", "params", "first_frame", "status",
                          "created_at", "updated_at", "finished_at", "inference_ms", "video_path", "error"})
OWN_TABLES = frozenset({"tasks", "forgotten", "spend"})  # the budgets' ledger keeps `spend` in the same file
# Columns added after the first release, each nullable, added to an older file when it is opened.
ADDED_COLUMNS = (
    ("price", "REAL"),  # WaveSpeed's quote at submission (None: not known, e.g. a task fetched by id, the sandbox)
    ("currency", "TEXT"),  # the quote's currency, as the API answered it
    ("sent_at", "REAL"),  # when the submit POST began (None: never sent, or a row of an older version)
    ("sent", "TEXT"),  # JSON: the uploaded image (and end image) URLs the submit POST carried
)


@dataclass(frozen=True)
class PruneReport:
    """What a retention pass removed."""

    videos_removed: int
    bytes_freed: int


class Journal:
    """The tasks table. Safe to share between threads and processes (one reused connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connections = ThreadConnections(self.path, check=check_header)
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._ready = False
        self._read_trouble = ""  # the last read failure logged, so a broken journal is not logged on every read
        self._withdrawn: set[tuple[str, str]] = set()  # intents withdrawn while the file could not be written
        try:
            self._prepare()
        except _Unusable as error:  # a path that is not a file: one plain sentence, no traceback
            log.error("journal: %s", error)
            self._read_trouble = str(error)
        except sqlite3.OperationalError as error:  # full or read-only disk: start anyway, retry on each use
            log.error("journal: %s cannot be opened (%s); the app runs without history and refuses new jobs "
                      "until the data dir can be written again", self.path.name, error)
            self._read_trouble = str(error)

    def _prepare(self) -> None:
        """Open the journal for use; a file that is not a sound database, or not this app's journal, is moved
        aside and started afresh. Raises sqlite3.OperationalError while it cannot be opened (full or read-only
        disk, a directory in its place)."""
        with self._prepare_lock:
            if self._ready:
                return
            if self.path.is_dir():
                raise _Unusable(f"{self.path.name} in the data dir (KLING_DEMO_DATA_DIR) is a directory, not the "
                                "journal file; the app runs without history and refuses new jobs until that "
                                "directory is moved elsewhere")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._open()
            except OSError as error:  # the data dir cannot be made, or the file read: as SQLite's own failures
                raise sqlite3.OperationalError(os.strerror(error.errno) if error.errno else str(error)) from error
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as error:
                if not _is_corrupt(error):
                    raise
                self._move_aside(error)
                self._open()
            self._ready = True

    def _open(self) -> None:
        """Create the tables if needed and check the file is a sound database of this app (raises DatabaseError
        if not)."""
        check_header(self._connections.head())  # before SQLite opens it, as closing would delete its WAL
        with self._session() as db:
            db.execute("PRAGMA journal_mode=WAL")
            _check_schema(db)
            db.executescript(SCHEMA)
            _add_columns(db)
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise _CorruptJournal(f"quick_check: {verdict}")

    def _move_aside(self, error: sqlite3.DatabaseError) -> None:
        """Keep an unreadable or foreign journal (and its -wal/-shm) under a dated name; the next open starts
        afresh."""
        self._connections.reset()  # every thread's connection points at the file being moved
        foreign = isinstance(error, _ForeignJournal)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.{'foreign' if foreign else 'corrupt'}-{stamp}")
        while aside.exists():
            aside = aside.with_name(aside.name + "x")
        for suffix in ("-wal", "-shm", ""):  # the main file last: a half-done move still looks corrupt
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{aside}{suffix}"))
        reason = " ".join(str(error).split())  # one line, whatever SQLite said
        what = "is not this app's journal" if foreign else "was not a readable database"
        log.warning("journal: %s %s (%s); moved it aside as %s and started a fresh journal (the history it held "
                    "is not shown)", self.path.name, what, reason, aside.name)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to the prepared journal, in one transaction (raises sqlite3.Error if it is unusable)."""
        if not self._ready:
            self._prepare()
        with self._session() as db:
            yield db

    def _rows(self, query: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        """A read that never fails: an unusable journal (full disk, damaged file) reads as empty, and is logged
        (once until it reads again, not on every refresh of every page)."""
        try:
            with self._connect() as db:
                rows = db.execute(query, args).fetchall()
        except sqlite3.DatabaseError as error:
            if str(error) != self._read_trouble:
                self._read_trouble = str(error)
                log.warning("journal: cannot be read right now (%s); showing nothing from it", error)
            return []
        self._read_trouble = ""
        return rows

    def _session(self) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's connection in one transaction: commit on success, roll back on error."""
        return self._connections.session()

    def record_submission(self, *, owner: str, task_id: str, model: str, api_base: str, key_source: str,
                          params: dict[str, Any], first_frame: str | None = None,
                          status: TaskStatus = TaskStatus.CREATED) -> None:
        """Remember a task the moment the API has accepted it."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO tasks (task_id, owner, model, api_base, key_source, params, first_frame,"
                " status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, owner, model, api_base, key_source, json.dumps(params), first_frame, status, now, now),
            )

    def record_intent(self, *, owner: str, model: str, api_base: str, key_source: str, params: dict[str, Any],
                      first_frame: str | None = None) -> str:
        """Remember a submission before anything is uploaded ("prepared": nothing sent yet); returns the intent id
        that `mark_sending` and `attach_task` refer to."""
        self._retry_withdrawals()
        intent_id = INTENT_PREFIX + uuid.uuid4().hex
        self.record_submission(owner=owner, task_id=intent_id, model=model, api_base=api_base,
                               key_source=key_source, params=params, first_frame=first_frame, status=TaskStatus.PREPARED)
        return intent_id

    def mark_sending(self, owner: str, intent_id: str, images: dict[str, str], *, at: float | None = None) -> None:
        """Right before the submit POST: the row says when it began (`at`, default now) and which uploaded images it
        carries, so a lost answer's task can be told apart from anyone else's. Raises sqlite3.Error if the row
        cannot say so (then nothing may be sent)."""
        now = time.time()
        with self._connect() as db:
            cursor = db.execute("UPDATE tasks SET status = ?, sent_at = ?, sent = ?, updated_at = ? WHERE owner = ?"
                                " AND task_id = ? AND status IN (?, ?)",
                                (TaskStatus.SUBMITTING, now if at is None else at, json.dumps(images), now, owner, intent_id,
                                 TaskStatus.PREPARED, TaskStatus.UNSENT))
            if cursor.rowcount != 1:
                raise sqlite3.OperationalError("the submission's journal row is gone")

    def set_price(self, owner: str, task_id: str, price: float, currency: str) -> None:
        """Keep WaveSpeed's quote for a task (asked right before its submission)."""
        with self._connect() as db:
            db.execute("UPDATE tasks SET price = ?, currency = ? WHERE owner = ? AND task_id = ?",
                       (price, currency, owner, task_id))

    def attach_task(self, owner: str, intent_id: str, task_id: str, status: str) -> None:
        """Give an intent row the task id the API answered with (it becomes an ordinary running task)."""
        with self._connect() as db:
            db.execute("UPDATE tasks SET task_id = ?, status = ?, error = '', updated_at = ?, finished_at = NULL"
                       " WHERE owner = ? AND task_id = ?", (task_id, status, time.time(), owner, intent_id))

    def withdraw_intent(self, owner: str, intent_id: str) -> bool:
        """Forget an intent whose submission certainly created nothing. If the file cannot be written now (a full
        disk) the entry is hidden at once and deleted at a later write: returns False then, and logs it."""
        self._withdrawn.add((owner, intent_id))
        self._retry_withdrawals()
        if (owner, intent_id) in self._withdrawn:
            log.warning("journal: could not remove an unsent submission now; it is hidden and removed at a later "
                        "write (or set aside unseen at the next start)")
            return False
        return True

    def _retry_withdrawals(self) -> None:
        """Delete the intents withdrawn earlier that the file could not take then."""
        for owner, intent_id in list(self._withdrawn):
            try:
                with self._connect() as db:
                    db.execute(f"DELETE FROM tasks WHERE owner = ? AND task_id = ? AND status IN {_marks(INTENT_STATUSES)}",
                               (owner, intent_id, *INTENT_STATUSES))
            except (sqlite3.Error, OSError):
                return  # the disk is still full: try again at the next write
            self._withdrawn.discard((owner, intent_id))

    def settle_intents(self) -> int:
        """At start-up: set aside the intents a stopped process never sent (`TaskStatus.UNSENT`), and mark those whose
        submit POST began as outcome unknown; returns how many were marked so.

        Called at start-up (one app process per data dir): no submission of this process is on its way yet.
        A live job elsewhere (the app, when the command line starts) still sends its row or attaches its task id."""
        self._retry_withdrawals()
        now = time.time()
        try:
            with self._connect() as db:
                expired = (TaskStatus.UNSENT, now - NOT_SENT_KEEP_SECONDS)
                unsent = db.execute("SELECT first_frame FROM tasks WHERE status = ? AND updated_at < ?",
                                    expired).fetchall()
                db.execute("DELETE FROM tasks WHERE status = ? AND updated_at < ?", expired)
                set_aside = db.execute("UPDATE tasks SET status = ?, updated_at = ? WHERE status = ?",
                                       (TaskStatus.UNSENT, now, TaskStatus.PREPARED)).rowcount
                cursor = db.execute("UPDATE tasks SET status = ?, error = ?, updated_at = ?, finished_at = ?"
                                    " WHERE status = ?", (TaskStatus.UNKNOWN, UNKNOWN_OUTCOME_ERROR, now, now, TaskStatus.SUBMITTING))
        except sqlite3.DatabaseError as error:
            if str(error) != self._read_trouble:  # an unusable journal was said once already
                log.warning("journal: could not settle interrupted submissions now (%s); they stay as they are",
                            error)
            return 0
        files.remove_files([Path(row["first_frame"]) for row in unsent if row["first_frame"]])
        if set_aside:
            log.info("journal: %d submission(s) a stopped run prepared but never sent are not shown", set_aside)
        if cursor.rowcount:
            log.warning("journal: %d submission(s) were interrupted before their answer arrived; marked as outcome "
                        "unknown", cursor.rowcount)
        return cursor.rowcount

    def fill_duration(self, owner: str, task_id: str, duration: int) -> None:
        """Record a task's video length where its row has none (a task fetched by id)."""
        with self._connect() as db:
            row = db.execute("SELECT params FROM tasks WHERE owner = ? AND task_id = ?", (owner, task_id)).fetchone()
            if row is None:
                return
            params = _params(row["params"])
            if positive_int(params.get("duration")) == duration:
                return
            params["duration"] = duration
            db.execute("UPDATE tasks SET params = ? WHERE owner = ? AND task_id = ?",
                       (json.dumps(params), owner, task_id))

    def set_status(self, owner: str, task_id: str, status: TaskStatus) -> None:
        """A running task's new running status; a row that already ended keeps its ending (a poll answered
        before a webhook ended the task can be written after the job completed it)."""
        with self._connect() as db:
            db.execute(f"UPDATE tasks SET status = ?, updated_at = ? WHERE owner = ? AND task_id = ? AND status != ?"
                       f" AND status IN {_marks(RUNNING_STATUSES)}",
                       (status, time.time(), owner, task_id, status, *RUNNING_STATUSES))

    def complete(self, owner: str, task_id: str, *, video_path: str, inference_ms: int | None) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("UPDATE tasks SET status = ?, video_path = ?, inference_ms = ?, error = '',"
                       " updated_at = ?, finished_at = ? WHERE owner = ? AND task_id = ?",
                       (TaskStatus.COMPLETED, video_path, inference_ms, now, now, owner, task_id))

    def set_video_path(self, owner: str, task_id: str, video_path: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE tasks SET video_path = ?, updated_at = ? WHERE owner = ? AND task_id = ?",
                       (video_path, time.time(), owner, task_id))

    def fail(self, owner: str, task_id: str, error: str, *, status: TaskStatus = TaskStatus.FAILED) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("UPDATE tasks SET status = ?, error = ?, updated_at = ?, finished_at = ?"
                       " WHERE owner = ? AND task_id = ?", (status, error, now, now, owner, task_id))

    def forget(self, owner: str, task_id: str) -> bool:
        """Delete one of the owner's ended tasks from the journal; False if none (or it is still running)."""
        unfinished = (*RUNNING_STATUSES, *INTENT_STATUSES)
        now = time.time()
        with self._connect() as db:
            cursor = db.execute(f"DELETE FROM tasks WHERE owner = ? AND task_id = ? AND status NOT IN {_marks(unfinished)}",
                                (owner, task_id, *unfinished))
            if cursor.rowcount and not is_intent_id(task_id):  # never adopted again by anyone (see `has_task`)
                db.execute("INSERT OR REPLACE INTO forgotten (task_id, forgotten_at) VALUES (?, ?)", (task_id, now))
                db.execute("DELETE FROM forgotten WHERE forgotten_at < ?", (now - FORGOTTEN_DAYS * 86400,))
        return cursor.rowcount > 0

    def get(self, owner: str, task_id: str) -> TaskRecord | None:
        """The owner's task, or None: another owner's task is indistinguishable from a missing one."""
        rows = self._rows("SELECT * FROM tasks WHERE task_id = ? AND owner = ? AND status != ?",
                          (task_id, owner, TaskStatus.UNSENT))
        return next(iter(self._shown(_records(rows))), None)

    def has_task(self, task_id: str) -> bool:
        """Whether this task id is, or ever was, in some history: a listed task that is someone's, or was and was
        deleted (its id is kept `FORGOTTEN_DAYS`), is never the task of a lost answer."""
        return bool(self._rows("SELECT 1 FROM tasks WHERE task_id = ? UNION ALL SELECT 1 FROM forgotten"
                               " WHERE task_id = ? LIMIT 1", (task_id, task_id)))

    def unknown_outcomes(self) -> list[TaskRecord]:
        """Submissions whose answer was lost (outcome unknown), oldest first."""
        return _records(self._rows("SELECT * FROM tasks WHERE status = ? ORDER BY created_at", (TaskStatus.UNKNOWN,)))

    def for_owner(self, owner: str, limit: int = 50) -> list[TaskRecord]:
        """The owner's tasks, newest first."""
        rows = self._rows("SELECT * FROM tasks WHERE owner = ? AND status != ? ORDER BY created_at DESC LIMIT ?",
                          (owner, TaskStatus.UNSENT, limit))
        return self._shown(_records(rows))

    def _shown(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """`records` without the intents withdrawn while the file could not be written (they are gone for good)."""
        withdrawn = self._withdrawn
        return [record for record in records if (record.owner, record.task_id) not in withdrawn] if withdrawn \
            else records

    def costed(self, owner: str) -> list[TaskRecord]:
        """The owner's tasks that have a task id, newest first: each was created at WaveSpeed, so may be billed
        (an intent, with no task id, may never have been)."""
        rows = self._rows("SELECT * FROM tasks WHERE owner = ? AND substr(task_id, 1, ?) != ? ORDER BY created_at DESC",
                          (owner, len(INTENT_PREFIX), INTENT_PREFIX))
        return _records(rows)

    def running(self, *, owner: str | None = None) -> list[TaskRecord]:
        """Tasks not yet finished (all owners, or one), oldest first."""
        query = f"SELECT * FROM tasks WHERE status IN {_marks(RUNNING_STATUSES)}"
        args: tuple[str, ...] = RUNNING_STATUSES
        if owner is not None:
            query += " AND owner = ?"
            args = (*args, owner)
        return _records(self._rows(query + " ORDER BY created_at", args))

    def inference_times(self, model: str, limit: int = 20) -> list[tuple[int, float]]:
        """(duration, seconds) of recent completed tasks, newest first, to seed poll timing."""
        rows = self._rows("SELECT params, inference_ms FROM tasks WHERE model = ? AND status = ?"
                          " AND inference_ms > 0 ORDER BY finished_at DESC LIMIT ?", (model, TaskStatus.COMPLETED, limit))
        times = []
        for row in rows:  # rows without a known duration (or with odd values) teach nothing: skipped
            duration, milliseconds = positive_int(_params(row["params"]).get("duration")), _number(row["inference_ms"])
            if duration and milliseconds and milliseconds > 0:
                times.append((duration, milliseconds / 1000.0))
        return times

    def prune(self, *, max_age_days: float | None = None, max_total_bytes: int | None = None) -> PruneReport:
        """Delete videos older than `max_age_days`, then the oldest until the rest fit `max_total_bytes`.

        Rows stay (the history still shows the task); their video path is cleared."""
        try:
            with self._lock, self._connect() as db:
                rows = db.execute("SELECT owner, task_id, video_path, finished_at FROM tasks"
                                  " WHERE video_path IS NOT NULL ORDER BY finished_at DESC").fetchall()
                cutoff = time.time() - max_age_days * 86400 if max_age_days is not None else None
                kept_bytes, removed, freed = 0, 0, 0
                for row in rows:
                    video = Path(str(row["video_path"]))
                    size = video.stat().st_size if video.is_file() else 0
                    too_old = cutoff is not None and (_number(row["finished_at"]) or 0) < cutoff
                    too_big = max_total_bytes is not None and kept_bytes + size > max_total_bytes
                    if not (too_old or too_big):
                        kept_bytes += size
                        continue
                    files.remove_files([video])  # with its last frame, and its folder
                    db.execute("UPDATE tasks SET video_path = NULL, error = 'video removed by retention policy'"
                               " WHERE owner = ? AND task_id = ?", (row["owner"], row["task_id"]))
                    removed, freed = removed + 1, freed + size
        except sqlite3.DatabaseError as error:
            log.warning("retention: skipped, the journal cannot be written now (%s)", error)
            return PruneReport(videos_removed=0, bytes_freed=0)
        if removed:
            log.info("retention: removed %d videos, %.1f MB", removed, freed / 1e6)
        return PruneReport(videos_removed=removed, bytes_freed=freed)


class _CorruptJournal(sqlite3.DatabaseError):
    """The file is not an SQLite database, or fails SQLite's own integrity check."""

    sqlite_errorcode = 11


class _ForeignJournal(sqlite3.DatabaseError):
    """A sound SQLite file that is not this app's journal: another program's, or a `tasks` table of other columns."""

    sqlite_errorcode = 26  # SQLITE_NOTADB: not a journal, so moved aside as a damaged one is


class _Unusable(sqlite3.OperationalError):
    """The journal's path cannot hold it (a directory): said in one sentence, and tried again at each use."""


def _check_schema(db: sqlite3.Connection) -> None:
    """Raise `_ForeignJournal` for a file whose `tasks` table lacks this app's columns, or that holds other tables
    and no `tasks` table (a file with this app's tables and more is a newer version's journal: kept)."""
    tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "tasks" in tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        missing = sorted(BASE_COLUMNS - columns)
        if missing:
            raise _ForeignJournal(f"its tasks table has other columns: no {', '.join(missing[:4])}"
                                  f"{' and more' if len(missing) > 4 else ''}")
        return
    others = sorted(name for name in tables - OWN_TABLES if not name.startswith("sqlite_"))
    if others:
        shown = ", ".join(name[:40] for name in others[:3])
        raise _ForeignJournal(f"it holds other tables ({shown}{', …' if len(others) > 3 else ''}) and no tasks table")


def _add_columns(db: sqlite3.Connection) -> None:
    """Give a journal written by an older version the columns added since (nullable: old rows stay as they are)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    for name, kind in ADDED_COLUMNS:
        if name in present:
            continue
        try:
            db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")  # constants, not input
        except sqlite3.OperationalError as error:  # another process added it a moment ago
            if "duplicate column" not in str(error).lower():
                raise


def check_header(head: bytes) -> None:
    """Refuse a file that does not begin like an SQLite database (a journal overwritten while open, by a failing
    disk, whose connections would not notice by themselves); a missing or empty file is fine (SQLite starts one)."""
    if head and head[:len(SQLITE_HEADER)] != SQLITE_HEADER:
        raise _CorruptJournal("file is not a database")


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    """Corrupt or not a database at all, as opposed to locked, full or read-only."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(error).lower()
    return "not a database" in text or "malformed" in text


_TEXT_FIELDS = ("task_id", "owner", "model", "api_base", "error")
_OPTIONAL_TEXT_FIELDS = ("first_frame", "video_path", "currency")
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(TaskRecord))


def _marks(values: tuple[object, ...]) -> str:
    """`(?, ?, …)` for an SQL `IN` with one placeholder per value (the values go as parameters)."""
    return "(" + ", ".join("?" for _ in values) + ")"


def _records(rows: Iterable[sqlite3.Row]) -> list[TaskRecord]:
    """Rows as records; a row that cannot be read even leniently is skipped (and logged), never fatal."""
    records = []
    for row in rows:
        try:
            records.append(_record(row))
        except Exception as error:  # one odd row must not hide the others (or stop the app)
            log.warning("journal: skipped an unreadable row (%s: %s)", type(error).__name__, error)
    return records


def _record(row: sqlite3.Row) -> TaskRecord:
    """One row, repaired where its fields are odd: text is text, numbers are numbers, params a dict."""
    fields = {name: row[name] for name in row.keys() if name in _RECORD_FIELDS}  # columns of later versions ignored
    for name in _TEXT_FIELDS:
        fields[name] = "" if fields.get(name) is None else str(fields[name])
    for name in _OPTIONAL_TEXT_FIELDS:
        fields[name] = str(fields[name]) if fields.get(name) else None
    fields["status"] = TaskStatus.from_row(fields.get("status"))
    fields["key_source"] = KeySource.from_row(fields.get("key_source"))
    fields["params"] = _params(fields.get("params"))
    fields["created_at"] = _number(fields.get("created_at")) or 0.0
    fields["updated_at"] = _number(fields.get("updated_at")) or fields["created_at"]
    fields["finished_at"] = _number(fields.get("finished_at"))
    milliseconds = _number(fields.get("inference_ms"))
    fields["inference_ms"] = int(milliseconds) if milliseconds and milliseconds > 0 else None
    price = _number(fields.get("price"))
    fields["price"] = price if price is not None and price >= 0 else None
    fields["sent_at"] = _number(fields.get("sent_at"))
    fields["sent"] = {str(name): str(url) for name, url in _params(fields.get("sent")).items()
                      if isinstance(url, str) and url}
    if not fields["task_id"]:
        raise ValueError("a row without a task id")
    return TaskRecord(**fields)


def _params(raw: object) -> dict[str, Any]:
    """The params JSON as a dict; anything else (bad JSON, null, a list) as an empty dict."""
    try:
        value = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    """A finite float, or None for null, text and the like."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
