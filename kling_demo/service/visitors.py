"""Who is asking: each browser's owner id, the key a visitor brings, per-visitor job caps and key checks.

A browser keeps a *signed* owner id (`owner_id.HMAC`): the server secret never leaves the server, so a
visitor cannot forge another's id. Callers without one (scripts, MCP agents) are known by their key's keyed
hash, else by their IP.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from ..errors import InputRejected, VisitorCapReached
from ..models import KeySource
from .identity import UNKNOWN_ADDRESS, key_id, spender_id, visitor_address

OWNERS_REMEMBERED, KEYS_PER_OWNER = 4096, 4  # accepted keys kept in memory
OWNER_STORAGE_KEY = "kling_demo_owner"
# BrowserState sends its `secret` to every visitor in /config, so it only obfuscates: the value is signed instead.
OWNER_STORAGE_OBFUSCATION = "kling-demo-owner-v2"
KEY_HEADER = "x-wavespeed-key"  # how API clients bring their own key
NO_OWNER_ID = ("This page has not finished loading, so it has no visitor id to keep your history under. Reload "
               "the page and try again; nothing was submitted.")
KEY_WITH_CONTROL_CHARACTER = ("The WaveSpeed key contains a line break or other control character; paste only "
                              "the key.")
KEY_WITH_ODD_CHARACTER = ("The WaveSpeed key contains a space or a character outside plain ASCII letters, digits "
                          "and punctuation; paste only the key.")


FORGED_OWNER = ("This page's visitor id was not issued by this app, so it cannot be used. Reload the page to get "
                "a new one; nothing was submitted.")


def new_owner_id() -> str:
    return uuid.uuid4().hex


def _mac(secret: str, purpose: str, value: str) -> str:
    return hmac.new(secret.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def sign_owner(owner_id: str, secret: str) -> str:
    """The token a browser keeps: its owner id and the server's signature of it."""
    return f"{owner_id}.{_mac(secret, 'owner', owner_id)}"


def verified_owner(token: str | None, secret: str) -> str | None:
    """The owner id in a token this server signed, else None (unsigned, forged or malformed)."""
    owner_id, dot, signature = (token or "").partition(".")
    if not (owner_id and dot) or not hmac.compare_digest(signature, _mac(secret, "owner", owner_id)):
        return None
    return owner_id


def resolve_owner(token: str | None, *, secret: str, api_key: str | None = None, ip: str = UNKNOWN_ADDRESS,
                  from_page: bool = False) -> str:
    """Whose history a request reads and writes: the browser's signed owner id; callers without one (API, MCP)
    are their key's hash, else their IP.

    A token that does not verify is refused, and so is the page without one: its paid work would otherwise
    land under an owner the page never sees."""
    if token:
        owner_id = verified_owner(token, secret)
        if owner_id is None:
            raise InputRejected(FORGED_OWNER)
        return f"browser:{owner_id}"
    if from_page:
        raise InputRejected(NO_OWNER_ID)
    if api_key:
        return key_id(secret, api_key)
    return f"ip:{ip}"


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
    """Caps how many jobs one spender (identity.spender_id: their address, or HF account) runs at once on the
    server's key: a browser's owner id costs nothing to mint, so it cannot be what the cap counts."""

    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, spender: str, limit: int | None, servers_key: str = "this app's key") -> Iterator[None]:
        """`servers_key`: how the refusal names the key the cap guards ("this Space's key" on a Space)."""
        with self._lock:
            if limit is not None and self._running[spender] >= limit:
                running = self._running[spender]
                raise VisitorCapReached(
                    f"{running} generation{'s are' if running != 1 else ' is'} already running for you on "
                    f"{servers_key} (counted by your address, or by your Hugging Face account when signed in), the "
                    f"most one visitor may run at once ({limit}). Wait for one to finish, or enter your own "
                    "WaveSpeed key.")
            self._running[spender] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[spender] -= 1
                if self._running[spender] <= 0:
                    del self._running[spender]


class Throttle:
    """At most `limits[kind]` events per `window` seconds for each name of each kind (e.g. per owner and per
    address); an event counts for all its names or for none. Memory: `limit` times per name, and names idle
    for a window are forgotten."""

    def __init__(self, limits: Mapping[str, int], window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(limits)
        self.window = window
        self._clock = clock
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, **names: str | None) -> int | None:
        """Count one event for every given `kind=name` (None: not counted); if one is at its limit, count
        nothing and return the whole seconds until it is not."""
        with self._lock:
            now = self._clock()
            if len(self._events) > 10_000:
                self._forget_idle(now)
            keys = [(kind, name) for kind, name in names.items() if name is not None]
            wait = 0.0
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.limits[key[0]]:
                    wait = max(wait, (times[0] if times else now) + self.window - now)
            if wait > 0:
                return max(1, math.ceil(wait))
            for key in keys:
                self._events[key].append(now)
            return None

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._events.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def _forget_idle(self, now: float) -> None:
        for key in [key for key, times in self._events.items() if not times or times[-1] <= now - self.window]:
            del self._events[key]



class TriedKeys:
    """Keys each owner (else address) had checked in the last `window` seconds, as one-way hashes in memory: the
    same key used again (the page asks its price, its balance after a job, a Resume with it) is no new guess, so
    it counts against the key-check limit once a window, whatever WaveSpeed said of it."""

    def __init__(self, window: float = 60.0, most: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.most, self._clock = window, most, clock
        self._tried: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def tried(self, who: str, key_hash: str) -> bool:
        """Whether `who` had this key checked within the window."""
        with self._lock:
            at = self._tried.get((who, key_hash))
            return at is not None and self._clock() - at < self.window

    def note(self, who: str, key_hash: str) -> None:
        with self._lock:
            self._tried.pop((who, key_hash), None)
            self._tried[(who, key_hash)] = self._clock()
            while len(self._tried) > self.most:
                self._tried.popitem(last=False)


class AcceptedKeys:
    """Keys WaveSpeed accepted, per owner, as one-way hashes in memory: showing again the balance of a key this
    browser already had accepted is no new guess, so it does not count against the key-check limit."""

    def __init__(self, max_owners: int = OWNERS_REMEMBERED, per_owner: int = KEYS_PER_OWNER) -> None:
        self.max_owners, self.per_owner = max_owners, per_owner
        self._owners: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def knows(self, owner: str, key_hash: str) -> bool:
        with self._lock:
            return bool(owner) and key_hash in self._owners.get(owner, ())

    def remember(self, owner: str, key_hash: str) -> None:
        if not owner:
            return
        with self._lock:
            hashes = [known for known in self._owners.pop(owner, []) if known != key_hash]
            self._owners[owner] = [*hashes, key_hash][-self.per_owner:]
            while len(self._owners) > self.max_owners:
                self._owners.popitem(last=False)

    def forget(self, owner: str, key_hash: str) -> None:
        with self._lock:
            if key_hash in self._owners.get(owner, ()):
                self._owners[owner].remove(key_hash)


class KeyGuesses:
    """Keys visitors bring, as one-way hashes in memory, so that no door (the key's status line, the price, a job,
    a resume, the key's task listing) is an oracle for guessing keys, whether WaveSpeed's answer tells a real key
    from a guess: a key not yet accepted for its owner counts within `limits` per owner and per address, the same
    key counts once a window for one owner (else address), and a key WaveSpeed accepted counts no more."""

    def __init__(self, secret: str, limits: Mapping[str, int], window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.secret = secret
        self._throttle = Throttle(limits, window, clock)
        self._tried = TriedKeys(window, clock=clock)
        self._accepted = AcceptedKeys()

    def wait(self, visitor: Visitor, api_key: str) -> int | None:
        """None when WaveSpeed may be asked about this key for this visitor now (counted if it is a new guess);
        else the whole seconds until it may."""
        hashed = key_id(self.secret, api_key)
        who = visitor.owner or visitor.address or ""
        if self._accepted.knows(visitor.owner, hashed) or (who and self._tried.tried(who, hashed)):
            return None
        # An API caller's owner is the key's own hash, new with every guess: only its address limits it.
        owner = visitor.owner if visitor.owner and visitor.owner != hashed else None
        wait = self._throttle.take(owner=owner, address=visitor.address)
        if wait is None and who:
            self._tried.note(who, hashed)
        return wait

    def accepted(self, owner: str, api_key: str) -> None:
        """WaveSpeed accepted the key for this owner (its balance, its listing, a task taken)."""
        self._accepted.remember(owner, key_id(self.secret, api_key))

    def refused(self, owner: str, api_key: str) -> None:
        """WaveSpeed refused the key: asking about it again counts again (once a window)."""
        self._accepted.forget(owner, key_id(self.secret, api_key))

@dataclass(frozen=True)
class Visitor:
    """Who is asking: the owner whose history they see, and the key they brought (held in memory only)."""

    owner: str
    api_key: str | None = field(default=None, repr=False)
    # The operator at the command line owns the server's key, so may fetch any task of that key by id.
    operator: bool = False
    # Whom the server key's budgets count this visitor as (identity.spender_id); the owner id if not given.
    spender: str = ""
    address: str | None = None  # the caller's address, where a request gave one (key checks are limited by it)

    @property
    def key_source(self) -> KeySource:
        return KeySource.VISITOR if self.api_key else KeySource.SERVER


@dataclass(frozen=True)
class Caller:
    """What one request says of who sent it, as a front end reads it; nothing in it is trusted until `Visitors`
    has checked it (`hf_username` comes from the signed sign-in session only, never from a request's body)."""

    owner_token: str | None = None
    typed_key: str | None = None
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    peer: str | None = None  # the connection's address, as uvicorn resolved it under the trusted proxies
    from_page: bool = False  # the page's own first step ran (it must carry its owner token)
    hf_username: str | None = None


class Visitors:
    """Who a request is, decided once: owner (a browser's signed id, else a key's hash or the address), key, spender."""

    def __init__(self, secret: str) -> None:
        self.secret = secret  # signs owner ids and MCP stamps, hashes keys; never sent to a browser

    def who(self, caller: Caller) -> Visitor:
        """The visitor a job runs for: refused when the page's owner token is missing or forged, or the key could
        not be a key."""
        api_key = visitor_key(caller.typed_key, caller.headers)
        address = self.address(caller)
        owner = resolve_owner(caller.owner_token, secret=self.secret, api_key=api_key, ip=address,
                              from_page=caller.from_page)
        return Visitor(owner, api_key, spender=spender_id(ip=address, api_key=api_key, secret=self.secret,
                                                          hf_username=caller.hf_username), address=address)

    def owner_of(self, caller: Caller) -> Visitor:
        """Whose history a request reads: a caller's key only names them here, it pays for nothing."""
        api_key = visitor_key(None, caller.headers)
        address = self.address(caller)
        return Visitor(resolve_owner(caller.owner_token, secret=self.secret, api_key=api_key, ip=address),
                       address=address, spender=spender_id(ip=address, hf_username=caller.hf_username))

    def payer(self, caller: Caller) -> Visitor:
        """Who would pay for the next video, for the money lines: a malformed key counts as none here (the key's
        own line says what is wrong with it), and no owner is needed."""
        try:
            api_key = visitor_key(caller.typed_key, caller.headers)
        except InputRejected:
            api_key = None
        address = self.address(caller)
        owner = verified_owner(caller.owner_token, self.secret)
        return Visitor(f"browser:{owner}" if owner else "", api_key, address=address,
                       spender=spender_id(ip=address, api_key=api_key, secret=self.secret,
                                          hf_username=caller.hf_username))

    def address(self, caller: Caller) -> str:
        """The caller's address: uvicorn's answer under the trusted proxies, or the one a valid MCP stamp names."""
        return visitor_address(caller.headers, caller.peer, secret=self.secret)

    def issue(self, stored: str | None) -> str:
        """The signed owner token a browser keeps: its own if this server signed it, else a new one."""
        owner_id = verified_owner(stored, self.secret)
        return sign_owner(owner_id or new_owner_id(), self.secret)
