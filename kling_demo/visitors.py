"""Who is asking: each browser's owner id, the key a visitor brings, and per-visitor job caps."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Mapping

from .errors import RateLimited

OWNER_STORAGE_KEY = "kling_demo_owner"
KEY_HEADER = "x-wavespeed-key"  # how API clients bring their own key


def new_owner_id() -> str:
    return uuid.uuid4().hex


def resolve_owner(browser_owner: str | None, session_hash: str | None) -> str:
    """The browser's persistent owner id; API clients without one own their session."""
    if browser_owner:
        return f"browser:{browser_owner}"
    return f"session:{session_hash or 'anonymous'}"


def visitor_key(typed_key: str | None, headers: Mapping[str, str] | None) -> str | None:
    """The visitor's own WaveSpeed key: typed in the page, or sent by an API client as a header."""
    key = (typed_key or "").strip()
    if not key and headers is not None:
        key = (headers.get(KEY_HEADER) or "").strip()
    return key or None


class JobSlots:
    """Caps how many jobs one visitor runs at once on the server's key."""

    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, owner: str, limit: int | None) -> Iterator[None]:
        with self._lock:
            if limit is not None and self._running[owner] >= limit:
                raise RateLimited(
                    f"You already have {self._running[owner]} generation(s) running, the most one visitor may run "
                    f"at once on this Space's key ({limit}). Wait for one to finish, or enter your own WaveSpeed key.")
            self._running[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[owner] -= 1
                if self._running[owner] <= 0:
                    del self._running[owner]
