"""One SQLite connection per thread, opened once and reused: a journal write costs a statement, not an open.

SQLite connections must not be shared between threads, and opening one (plus its WAL index) on every call
was most of what a journal write cost. Each thread keeps its own here; other processes share the file
through SQLite's own locking (WAL, a 30 s busy timeout) as before. A connection that raised is closed and
opened afresh at the next use (a full disk must not stay stuck), a file replaced or deleted under a
connection is reopened by path, `reset()` makes every thread reopen (the file was moved aside), and a forked
child never uses its parent's connections. `check(head)`, run on the file's first bytes before each
transaction, lets the owner refuse a file that went bad while open (a connection alone would go on writing
to its WAL without noticing).

Those first bytes are read through one descriptor kept open, never through an open-read-close: closing any
descriptor of a file drops every POSIX lock this process holds on it, SQLite's included, so a close in one
thread can let another process (or connection) checkpoint and delete the WAL another thread is writing to,
and a committed write is lost (https://sqlite.org/howtocorrupt.html, section 2.2).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

BUSY_TIMEOUT_SECONDS = 30.0
HEAD_BYTES = 16  # "SQLite format 3\0"


class ThreadConnections:
    """Per-thread connections to one database file; `session()` runs one transaction on this thread's."""

    def __init__(self, path: str | Path, *, isolation_level: str | None = "",
                 check: Callable[[bytes], None] = lambda head: None) -> None:
        self.path = Path(path)
        self._isolation_level = isolation_level
        self._check = check
        self._local = threading.local()
        self._generation = 0
        self._head_lock = threading.Lock()
        self._head_file: tuple[int, int] | None = None  # the file whose kept descriptor `head` reads
        self._give_back = weakref.finalize(self, lambda: None)

    def head(self) -> bytes:
        """The file's first bytes (empty for a missing or empty file), read without closing any descriptor of it."""
        return self._head(_identity(self.path))

    def _head(self, current: tuple[int, int] | None) -> bytes:
        """`head()` of the file whose identity is `current` (None: none is there)."""
        if current is None:
            return b""
        with self._head_lock:
            if current != self._head_file:
                try:
                    file = _HEADS.take(self.path)
                except FileNotFoundError:
                    return b""
                if self._head_file is not None:
                    _HEADS.give_back(self._head_file)
                self._head_file = file
                self._give_back.detach()
                self._give_back = weakref.finalize(self, _HEADS.give_back, file)
            return _HEADS.read(self._head_file, HEAD_BYTES)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (or after `reset`, an error, or a fork)."""
        current = _identity(self.path)  # one stat a transaction: the header check and the reopen test share it
        self._check(self._head(current))
        local = self._local
        db: sqlite3.Connection | None = getattr(local, "db", None)
        if db is not None and (local.generation != self._generation or local.pid != os.getpid()
                               or local.file != current):
            self.discard()
            db = None
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=self._isolation_level)
            db.row_factory = sqlite3.Row
            local.db, local.generation, local.pid = db, self._generation, os.getpid()
            local.file = _identity(self.path)
        return db

    @contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection in one transaction: committed on success, rolled back on error.

        An SQLite error also closes the connection, so the next call starts from a fresh open."""
        db = self.connection()
        try:
            with db:
                yield db
        except sqlite3.Error:
            self.discard()
            raise

    def discard(self) -> None:
        """Close this thread's connection (if any); the next use opens a new one."""
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None and getattr(self._local, "pid", None) == os.getpid():
            try:
                db.close()
            except sqlite3.Error:
                pass

    def reset(self) -> None:
        """Make every thread open a new connection at its next use (the file behind the old ones is gone)."""
        self._generation += 1
        self.discard()


class _KeptDescriptors:
    """One read-only descriptor per database file in this process, shared by every ThreadConnections on it
    (the journal and the spending ledger share one file) and closed only when the last of them is gone, when
    no connection of this process needs the locks a close would drop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, int], list[int]] = {}  # (device, inode) → [descriptor, users]
        self._spare: list[int] = []

    def take(self, path: Path) -> tuple[int, int]:
        """The identity of the file at `path`, with a kept descriptor for it (raises FileNotFoundError).

        A file already kept is not opened again: closing that second descriptor would drop the locks."""
        with self._lock:
            current = _identity(path)
            if current is None:
                raise FileNotFoundError(path)
            if current not in self._open:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                info = os.fstat(fd)
                current = (info.st_dev, info.st_ino)
                if current in self._open:  # replaced between the stat and the open by a file kept already:
                    self._spare.append(fd)  # never closed, for the same reason
                else:
                    self._open[current] = [fd, 0]
            self._open[current][1] += 1
            return current

    def read(self, file: tuple[int, int], size: int) -> bytes:
        with self._lock:
            fd = self._open[file][0]
        return os.pread(fd, size, 0)

    def give_back(self, file: tuple[int, int]) -> None:
        with self._lock:
            kept = self._open[file]
            kept[1] -= 1
            if kept[1]:
                return
            del self._open[file]
        os.close(kept[0])


_HEADS = _KeptDescriptors()


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None when there is none: tells a replaced file from the open one."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
