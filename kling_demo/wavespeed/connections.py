"""HTTP connections shared by every job: one `requests.Session` per WaveSpeed account, one without any key.

A session per job meant a new TCP (and TLS) connection for every price quote, upload, submit and download.
Here the jobs of one key share that key's pooled connections, as the poller's polls already do, and the
signed upload URLs and the CDN's video URLs, which must never see a key, share one keyless session.
Sessions are found by a one-way name of the key (`WaveSpeedClient.account`), so no key is a dict key, a
log line or a repr; no session keeps cookies, so nothing one visitor's answers set reaches another's requests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

POOL_SIZE = 64  # connections kept open per host and session: the app's worker threads, with room to spare
MAX_ACCOUNTS = 256  # sessions kept for visitors' own keys; the least recently used beyond that are dropped


class _HeadersOnly(requests.auth.AuthBase):
    """A session's auth that adds nothing. Without one, requests looks up ~/.netrc for every request: an entry
    for the API's host replaced the key's Authorization header (401 with the right key), and one for a file
    host sent its password to signed upload URLs and the CDN."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def new_session(headers: dict[str, str] | None = None) -> requests.Session:
    """A session with a pool big enough for the app's worker threads, that keeps no cookies and reads no
    ~/.netrc (its key, if any, is in `headers`)."""
    session = requests.Session()
    session.auth = _HeadersOnly()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.headers.update(headers or {})
    return session


class Connections:
    """The app's shared sessions; `close()` closes them all (at shutdown)."""

    def __init__(self, max_accounts: int = MAX_ACCOUNTS) -> None:
        self._lock = threading.Lock()
        self._accounts: OrderedDict[tuple[str, str], requests.Session] = OrderedDict()
        self._max_accounts = max(1, max_accounts)
        self._plain: requests.Session | None = None

    def account(self, account: tuple[str, str], headers: dict[str, str]) -> requests.Session:
        """The session of `account` ((base URL, one-way key name)), made with `headers` the first time."""
        with self._lock:
            session = self._accounts.get(account)
            if session is None:
                session = self._accounts[account] = new_session(headers)
                while len(self._accounts) > self._max_accounts:
                    self._accounts.popitem(last=False)  # not closed: a job may still be using it; GC ends it
            self._accounts.move_to_end(account)
            return session

    def plain(self) -> requests.Session:
        """The keyless session, for signed upload URLs and output downloads."""
        with self._lock:
            if self._plain is None:
                self._plain = new_session()
            return self._plain

    def close(self) -> None:
        with self._lock:
            sessions = [*self._accounts.values(), *([self._plain] if self._plain else [])]
            self._accounts.clear()
            self._plain = None
        for session in sessions:
            session.close()
