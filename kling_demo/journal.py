"""Durable record of every submitted task (stdlib sqlite3, WAL), each row scoped to its owner.

A row is written as soon as the submit answer arrives, before the first poll, so a task
that was paid for is never forgotten: not by a closed tab, a crash, or a restart. Keys
are never stored; `key_source` only says whose key paid ("server" or "visitor").
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

RUNNING_STATUSES = ("created", "processing")
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
"""


@dataclass(frozen=True)
class TaskRecord:
    """One submitted task as the journal remembers it."""

    task_id: str
    owner: str
    model: str
    api_base: str
    key_source: str
    params: dict[str, Any]
    first_frame: str | None
    status: str
    created_at: float
    updated_at: float
    finished_at: float | None
    inference_ms: int | None
    video_path: str | None
    error: str

    @property
    def is_running(self) -> bool:
        return self.status in RUNNING_STATUSES

    @property
    def prompt(self) -> str:
        return str(self.params.get("prompt", ""))

    @property
    def duration(self) -> int | None:
        value = self.params.get("duration")
        return int(value) if value is not None else None


@dataclass(frozen=True)
class PruneReport:
    """What a retention pass removed."""

    videos_removed: int
    bytes_freed: int


class Journal:
    """The tasks table. Safe to share between threads and processes (one connection per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.row_factory = sqlite3.Row
        try:
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    def record_submission(self, *, owner: str, task_id: str, model: str, api_base: str, key_source: str,
                          params: dict[str, Any], first_frame: str | None = None, status: str = "created") -> None:
        """Remember a task the moment the API has accepted it."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO tasks (task_id, owner, model, api_base, key_source, params, first_frame,"
                " status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, owner, model, api_base, key_source, json.dumps(params), first_frame, status, now, now),
            )

    def set_status(self, owner: str, task_id: str, status: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE tasks SET status = ?, updated_at = ? WHERE owner = ? AND task_id = ? AND status != ?",
                       (status, time.time(), owner, task_id, status))

    def complete(self, owner: str, task_id: str, *, video_path: str, inference_ms: int | None) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("UPDATE tasks SET status = 'completed', video_path = ?, inference_ms = ?, error = '',"
                       " updated_at = ?, finished_at = ? WHERE owner = ? AND task_id = ?",
                       (video_path, inference_ms, now, now, owner, task_id))

    def set_video_path(self, owner: str, task_id: str, video_path: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE tasks SET video_path = ?, updated_at = ? WHERE owner = ? AND task_id = ?",
                       (video_path, time.time(), owner, task_id))

    def fail(self, owner: str, task_id: str, error: str, *, status: str = "failed") -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("UPDATE tasks SET status = ?, error = ?, updated_at = ?, finished_at = ?"
                       " WHERE owner = ? AND task_id = ?", (status, error, now, now, owner, task_id))

    def get(self, owner: str, task_id: str) -> TaskRecord | None:
        """The owner's task, or None: another owner's task is indistinguishable from a missing one."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM tasks WHERE task_id = ? AND owner = ?", (task_id, owner)).fetchone()
        return _record(row) if row else None

    def for_owner(self, owner: str, limit: int = 50) -> list[TaskRecord]:
        """The owner's tasks, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM tasks WHERE owner = ? ORDER BY created_at DESC LIMIT ?",
                              (owner, limit)).fetchall()
        return [_record(row) for row in rows]

    def running(self, *, owner: str | None = None) -> list[TaskRecord]:
        """Tasks not yet finished (all owners, or one), oldest first."""
        query = f"SELECT * FROM tasks WHERE status IN {RUNNING_STATUSES!r}"  # a constant, not input
        args: tuple[str, ...] = ()
        if owner is not None:
            query += " AND owner = ?"
            args = (owner,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at", args).fetchall()
        return [_record(row) for row in rows]

    def inference_times(self, model: str, limit: int = 20) -> list[tuple[int, float]]:
        """(duration, seconds) of recent completed tasks, newest first, to seed poll timing."""
        with self._connect() as db:
            rows = db.execute("SELECT params, inference_ms FROM tasks WHERE model = ? AND status = 'completed'"
                              " AND inference_ms > 0 ORDER BY finished_at DESC LIMIT ?", (model, limit)).fetchall()
        return [(int(json.loads(row["params"]).get("duration", 5)), row["inference_ms"] / 1000.0) for row in rows]

    def prune(self, *, max_age_days: float | None = None, max_total_bytes: int | None = None) -> PruneReport:
        """Delete videos older than `max_age_days`, then the oldest until the rest fit `max_total_bytes`.

        Rows stay (the history still shows the task); their video path is cleared."""
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT owner, task_id, video_path, finished_at FROM tasks"
                              " WHERE video_path IS NOT NULL ORDER BY finished_at DESC").fetchall()
            cutoff = time.time() - max_age_days * 86400 if max_age_days is not None else None
            kept_bytes, removed, freed = 0, 0, 0
            for row in rows:
                video = Path(row["video_path"])
                size = video.stat().st_size if video.exists() else 0
                too_old = cutoff is not None and (row["finished_at"] or 0) < cutoff
                too_big = max_total_bytes is not None and kept_bytes + size > max_total_bytes
                if not (too_old or too_big):
                    kept_bytes += size
                    continue
                video.unlink(missing_ok=True)
                db.execute("UPDATE tasks SET video_path = NULL, error = 'video removed by retention policy'"
                           " WHERE owner = ? AND task_id = ?", (row["owner"], row["task_id"]))
                removed, freed = removed + 1, freed + size
        if removed:
            log.info("retention: removed %d videos, %.1f MB", removed, freed / 1e6)
        return PruneReport(videos_removed=removed, bytes_freed=freed)


def _record(row: sqlite3.Row) -> TaskRecord:
    fields = dict(row)
    fields["params"] = json.loads(fields["params"])
    return TaskRecord(**fields)
