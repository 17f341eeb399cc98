"""Who is asking: each browser's owner id, the key a visitor brings, and per-visitor job caps."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Mapping

from .errors import InputRejected, RateLimited

OWNER_STORAGE_KEY = "kling_demo_owner"
KEY_HEADER = "x-wavespeed-key"  # how API clients bring their own key
NO_OWNER_ID = ("This page has not finished loading, so it has no visitor id to keep your history under. Reload "
               "the page and try again; nothing was submitted.")
KEY_WITH_CONTROL_CHARACTER = ("The WaveSpeed key contains a line break or other control character; paste only "
                              "the key.")
KEY_WITH_ODD_CHARACTER = ("The WaveSpeed key contains a space or a character outside plain ASCII letters, digits "
                          "and punctuation; paste only the key.")


def new_owner_id() -> str:
    return uuid.uuid4().hex


def resolve_owner(browser_owner: str | None, session_hash: str | None, *, from_page: bool = False) -> str:
    """The browser's persistent owner id; API clients without one own their session.

    The page itself is refused without one: its paid work would land under a throw-away session owner."""
    if browser_owner:
        return f"browser:{browser_owner}"
    if from_page:
        raise InputRejected(NO_OWNER_ID)
    return f"session:{session_hash or 'anonymous'}"


def visitor_key(typed_key: str | None, headers: Mapping[str, str] | None) -> str | None:
    """The visitor's own WaveSpeed key: typed in the page, or sent by an API client as a header.

    Refused before any use when it could not be a key: in a header it would fail (and be printed in full) or
    smuggle in another header."""
    key = (typed_key or "").strip()
    if not key and headers is not None:
        key = (headers.get(KEY_HEADER) or "").strip()
    check_key_characters(key)
    return key or None


def check_key_characters(key: str) -> None:
    """Refuse a key with anything but visible ASCII; the message never repeats the key."""
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in key):
        raise InputRejected(KEY_WITH_CONTROL_CHARACTER)
    if any(not 0x21 <= ord(character) <= 0x7E for character in key):
        raise InputRejected(KEY_WITH_ODD_CHARACTER)


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
