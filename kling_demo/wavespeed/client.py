"""WaveSpeedClient: the WaveSpeed REST protocol over one `requests.Session`, with typed errors.

Requests that are safe to repeat (result polls, uploads, file downloads) are retried with
backoff that honours Retry-After. The submit POST is retried only after a 429 or when the
connection never opened: any other lost answer may have created a billed task, so it
raises `SubmissionOutcomeUnknown` instead of paying twice.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, ContextManager, Iterator
from urllib.parse import quote

import requests
from urllib3.exceptions import NewConnectionError

from .. import __version__
from .connections import Connections, new_session
from .retry import retry_after_seconds, retry_delay
from ..errors import (
    is_disk_full,
    ApiInputRefused,
    AuthenticationFailed,
    DownloadFailed,
    InsufficientBalance,
    NotFound,
    NothingSubmitted,
    RateLimited,
    ServiceUnavailable,
    SubmissionOutcomeUnknown,
)
from ..logs import mask_secrets
from ..models import Balance, Charge, ModelSpec, Quote, TaskStatus

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CHUNK_BYTES = 1024 * 1024
# Connection-level failures: the answer (or part of it) never arrived.
TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
# Itemised billing (`POST /api/v3/billings/search`): how a record moves its task's cost, the most one record may
# plausibly be (an older docs page showed 24300 for a $0.0243 charge: other units, so "unknown"), and how many
# pages of records are read before giving up on stating any charge.
BILLING_SIGNS = {"deduct": 1, "refund": -1}
MAX_RECORD_USD = 100.0
MAX_BILLING_PAGES = 50


@dataclass(frozen=True)
class Prediction:
    """One task as the API reports it."""

    task_id: str
    status: TaskStatus
    model: str = ""
    outputs: tuple[str, ...] = ()
    has_nsfw_contents: tuple[bool, ...] = ()
    error: str = ""
    inference_ms: int | None = None
    created_at: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def inputs(self) -> dict[str, Any]:
        """The request fields the API echoes (`inputs` in a listing, `input` in a result), or {}."""
        for key in ("inputs", "input"):
            if isinstance(self.raw.get(key), dict):
                return self.raw[key]
        return {}

    @property
    def created_epoch(self) -> float | None:
        """`created_at` as Unix seconds, or None when it is missing or not an ISO 8601 time with a zone."""
        try:
            moment = datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment.timestamp() if moment.tzinfo is not None else None

    @classmethod
    def from_envelope(cls, envelope: dict[str, Any], secrets: tuple[str, ...] = ()) -> "Prediction":
        """The prediction in an API answer; its texts (the error, or the body of an answer without a task id) are
        masked for `secrets` (the key the request carried) and the app's own secrets before anyone sees them."""
        data = envelope.get("data") or {}
        if not data.get("id"):
            raise ServiceUnavailable(f"The API answered without a task id: "
                                     f"{mask_secrets(str(envelope), secrets)[:200]}")
        inference = (data.get("timings") or {}).get("inference")
        return cls(
            task_id=str(data["id"]),
            status=TaskStatus.parse(data.get("status")),
            model=str(data.get("model") or ""),
            outputs=tuple(data.get("outputs") or ()),
            has_nsfw_contents=tuple(bool(x) for x in data.get("has_nsfw_contents") or ()),
            error=mask_secrets(str(data.get("error") or ""), secrets),
            inference_ms=int(inference) if inference else None,
            created_at=str(data.get("created_at") or ""),
            raw=data,
        )


@dataclass(frozen=True)
class PredictionPage:
    """One page of a key's recent tasks (`POST /api/v3/predictions`), newest first."""

    page: int
    items: tuple[Prediction, ...]
    total: int | None = None


def _iso(epoch: float) -> str:
    """Unix seconds as the ISO 8601 UTC time WaveSpeed's clients send (2025-01-31T12:00:00.000Z)."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _charges(items: list[Any], task_ids: list[str]) -> dict[str, Charge]:
    """Each task's net charge from its billing records. A record that cannot be read makes its task's charge
    unknown (left out), and one that does not say its task makes every task's unknown: no figure is guessed."""
    records: dict[str, tuple[str, float, bool]] = {}  # by record id (a record read twice counts once)
    unknown: set[str] = set()
    for item in items:
        task_id = _billed_task(item)
        if task_id is None:
            return {}
        record_id = item.get("uuid")
        amount = _signed_usd(item)
        if not isinstance(record_id, str) or not record_id or amount is None:
            unknown.add(task_id)
            continue
        order = item.get("order") if isinstance(item.get("order"), dict) else {}
        records[record_id] = (task_id, amount, order.get("state") == "done")
    totals: dict[str, tuple[float, bool]] = {}
    for task_id, amount, done in records.values():
        net, settled = totals.get(task_id, (0.0, True))
        totals[task_id] = (net + amount, settled and done)
    return {task_id: Charge(amount=max(0.0, round(net, 6)), settled=settled)
            for task_id, (net, settled) in totals.items()
            if task_id in task_ids and task_id not in unknown and net > -1e-9}  # more refunded than paid: unknown


def _billed_task(item: Any) -> str | None:
    """The task id a billing record names, or None."""
    prediction = item.get("prediction") if isinstance(item, dict) else None
    task_id = prediction.get("uuid") if isinstance(prediction, dict) else None
    return task_id if isinstance(task_id, str) and task_id else None


def _signed_usd(item: dict[str, Any]) -> float | None:
    """How a record moves its task's cost in USD (+ a deduct, - a refund), or None when its type is not one of
    those or its price is not a plausible USD amount (not a number, negative, NaN, or more than MAX_RECORD_USD)."""
    sign = BILLING_SIGNS.get(item.get("billing_type"))
    price = item.get("price")
    if sign is None or isinstance(price, bool) or not isinstance(price, (int, float)):
        return None
    return sign * float(price) if 0 <= price <= MAX_RECORD_USD else None


def _api_message(response: requests.Response, secrets: tuple[str, ...] = ()) -> str:
    """The error text of an API answer, short, with any credential it echoes masked (before it is cut)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip() or response.reason or f"HTTP {response.status_code}"
    else:
        text = str(body.get("message") or body.get("error") or body) if isinstance(body, dict) else str(body)
    return mask_secrets(text, secrets)[:300]


def _never_sent(exc: Exception) -> bool:
    """True when the connection was never opened, so the request cannot have reached the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _transport_reason(exc: Exception) -> str:
    """How a connection failed, in a few plain words for a status line ("connection refused")."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut off"
    causes = _causes(exc)
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return "connection refused"
    if any(isinstance(cause, ConnectionResetError) for cause in causes):
        return "connection reset"
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return "host not found"
    return "connection failed"


def _status_words(status: int) -> str:
    """"HTTP 503 Service Unavailable": the code with its standard phrase (not the server's, which could say anything)."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps: causes, contexts, urllib3's `reason` and exceptions among the args."""
    found: list[BaseException] = []
    pending: list[object] = [exc]
    while pending and len(found) < 20:
        item = pending.pop()
        if not isinstance(item, BaseException) or any(item is seen for seen in found):
            continue
        found.append(item)
        pending += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return found


class WaveSpeedClient:
    """The four calls the app needs: upload, submit, result, download."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 6,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        connections: Connections | None = None,
    ) -> None:
        """`connections`: the app's shared sessions (this key's pool, and a keyless one for upload URLs and
        downloads); without them the client opens its own, closed by `close()`."""
        if not api_key:
            raise AuthenticationFailed("No WaveSpeed API key was given.")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._sleep = sleep
        headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"kling-demo/{__version__}",
            "X-Client-Name": "kling-demo",
        }
        self._shared = connections is not None
        self.session = connections.account(self.account, headers) if connections else new_session(headers)
        # Signed upload URLs and output URLs are not the API: they must not receive our key.
        self._plain = connections.plain() if connections else None

    def __repr__(self) -> str:
        return f"WaveSpeedClient(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the client's own connections (shared ones stay open for the other jobs of the app)."""
        if not self._shared:
            self.session.close()
            if self._plain is not None:
                self._plain.close()

    @property
    def account(self) -> tuple[str, str]:
        """(base URL, a one-way name of the key): which clients may share connections, never the key itself."""
        return self.base_url, hashlib.sha256(self._api_key.encode()).hexdigest()[:16]

    def clone(self) -> "WaveSpeedClient":
        """The same account and timeouts, for a longer-lived user (the poller's, shared by the key's tasks): on the
        app's shared connections when this client uses them, else on connections of its own."""
        twin = copy.copy(self)
        if not self._shared:
            twin.session = new_session(dict(self.session.headers))
            twin._plain = None
        return twin

    def _keyless(self) -> requests.Session:
        """The session for URLs that must not see the key; a client of its own makes one on first use."""
        if self._plain is None:
            self._plain = new_session()
        return self._plain

    def __enter__(self) -> "WaveSpeedClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol -------------------------------------------------------------

    def upload(self, path: str | Path, content_type: str) -> str:
        """Upload a local file with the ticket flow (POST ticket, PUT bytes); returns its download URL."""
        path = Path(path)
        ticket = self._json("POST", "/api/v3/media/uploads", json={
            "filename": path.name, "size": path.stat().st_size, "content_type": content_type,
        })
        data = ticket.get("data") or {}
        instruction = data.get("upload") or {}
        download_url = data.get("download_url")
        if str(instruction.get("method", "")).upper() != "PUT" or not instruction.get("url") or not download_url:
            raise ServiceUnavailable("The upload service answered without an upload address.")

        def put() -> requests.Response:
            with path.open("rb") as stream:
                # The signed URL is not the API: it must not receive our key.
                return self._keyless().put(instruction["url"], data=stream, headers=instruction.get("headers") or {},
                                           timeout=self.timeout)

        self._with_retries(f"upload of {path.name}", put)
        return str(download_url)

    def submit(self, spec: ModelSpec, payload: dict[str, Any], *, attempts: int | None = None,
               webhook: str | None = None) -> Prediction:
        """Create a task. Never resubmits after an answer that may have been lost.

        Only a 429 (`RateLimited`) or a connection that never opened (`NothingSubmitted`) is certain to have
        created nothing; those are retried here up to `attempts` times (default max_attempts). A job asks for
        one attempt and waits out the retry itself, so no worker thread sleeps in here. `webhook`: a public URL
        WaveSpeed POSTs the final prediction to (sent as the `?webhook=` query parameter)."""
        url = self.base_url + spec.submit_path
        params = {"webhook": webhook} if webhook else None
        attempts = max(1, attempts or self.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = self.session.post(url, json=payload, params=params, timeout=self.timeout)
            except TRANSPORT_ERRORS as exc:
                if _never_sent(exc) and attempt < attempts:
                    self._pause(attempt, None, "submit: could not connect", attempts)
                    continue
                if _never_sent(exc):
                    raise NothingSubmitted(f"Could not reach {self.base_url}; nothing was submitted.",
                                           reason=_transport_reason(exc)) from exc
                raise SubmissionOutcomeUnknown(
                    "The submission's answer was lost (" + type(exc).__name__ + "). The task may exist and be "
                    "billed, so it was not resubmitted: check your WaveSpeed dashboard before trying again."
                ) from exc
            if response.status_code == 429 and attempt < attempts:
                self._pause(attempt, retry_after_seconds(response), "submit: rate limited", attempts)
                continue
            if response.status_code >= 500:
                raise SubmissionOutcomeUnknown(
                    f"The API answered the submission with HTTP {response.status_code}. The task may exist and be "
                    "billed, so it was not resubmitted: check your WaveSpeed dashboard before trying again."
                )
            self._raise_for_status(response, "submission")
            return Prediction.from_envelope(self._decode(response), (self._api_key,))
        raise AssertionError("unreachable")  # pragma: no cover

    def price(self, spec: ModelSpec, inputs: dict[str, Any], *, attempts: int = 3) -> Quote:
        """The price of one run with these inputs (a free quote: it creates nothing, so it is retried).

        The larger of `price` and `discounted_price` is taken, so a budget never counts less than is billed.
        Few attempts by default: a visitor is waiting, and without a price nothing is submitted."""
        body = self._json("POST", "/api/v3/model/price", json={"model_id": spec.model_id, "inputs": inputs},
                          attempts=attempts)
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        amounts = [data.get(name) for name in ("price", "discounted_price")]
        numbers = [float(a) for a in amounts if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if not numbers or any(not 0 <= n < float("inf") for n in numbers):
            raise ServiceUnavailable(f"WaveSpeed answered the price quote without a price: "
                                     f"{self._redact(str(data))[:200]}")
        return Quote(price=max(numbers), currency=str(data.get("currency") or "USD").upper())

    def predictions(self, page: int = 1, page_size: int = 20, *, model: str | None = None, status: str | None = None,
                    created_after: float | None = None, created_before: float | None = None,
                    attempts: int = 3) -> PredictionPage:
        """One page of this key's recent tasks, web and API runs alike (24 h unless a window in Unix seconds is
        given; 7 days at most). A read, so it is retried; items without a task id are skipped."""
        body: dict[str, Any] = {"page": page, "page_size": page_size}
        body.update({name: value for name, value in (("model", model), ("status", status)) if value})
        body.update({name: _iso(moment) for name, moment in (("created_after", created_after),
                                                              ("created_before", created_before)) if moment is not None})
        answer = self._json("POST", "/api/v3/predictions", json=body, attempts=attempts)
        data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
        raw_items = data.get("items") if isinstance(data.get("items"), list) else []
        items = tuple(Prediction.from_envelope({"data": item}, (self._api_key,)) for item in raw_items
                      if isinstance(item, dict) and item.get("id"))
        total = data.get("total")
        return PredictionPage(page=page, items=items, total=total if isinstance(total, int) else None)

    def balance(self, *, attempts: int = 2) -> Balance:
        """The key's account balance (a bad key fails here with `AuthenticationFailed`, before anything is paid).

        Few attempts: it is asked while a visitor waits, and a missing answer only means it is not shown."""
        body = self._json("GET", "/api/v3/balance", attempts=attempts)
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        amount = data.get("balance")
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not -1e15 < amount < 1e15:
            raise ServiceUnavailable(f"WaveSpeed answered the balance without an amount: {self._redact(str(data))[:200]}")
        return Balance(amount=float(amount), currency=str(data.get("currency") or "USD").upper())

    def billing(self, task_ids: Iterable[str], *, page_size: int = 100, attempts: int = 3) -> dict[str, Charge]:
        """What these tasks cost, from WaveSpeed's itemised billing (`POST /api/v3/billings/search`), every page
        read. A task missing from the answer has no charge to state: no record (yet, or not this key's), or one
        that cannot be read. A read, so it is retried; a key that may not read billing raises
        `AuthenticationFailed`."""
        wanted = list(dict.fromkeys(task_id for task_id in task_ids if task_id))
        if not wanted:
            return {}
        items: list[Any] = []
        for page in range(1, MAX_BILLING_PAGES + 1):
            # Oldest first: records written while the pages are read land on later pages instead of shifting them.
            answer = self._json("POST", "/api/v3/billings/search", attempts=attempts, json={
                "prediction_uuids": wanted, "sort": "created_at ASC", "page": page, "page_size": page_size})
            data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
            batch = data.get("items") if isinstance(data.get("items"), list) else []
            items += batch
            total = data.get("total")
            if len(batch) < page_size or (isinstance(total, int) and page * page_size >= total):
                return _charges(items, wanted)
        log.warning("billing: more than %d pages of records; no charge is stated", MAX_BILLING_PAGES)
        return {}

    def result(self, task_id: str, *, attempts: int | None = None) -> Prediction:
        """The task's current state, retried on transient failures up to `attempts` times (default max_attempts).

        A follower that does its own waiting asks for one attempt, so no worker thread sleeps in here."""
        envelope = self._json("GET", f"/api/v3/predictions/{quote(task_id, safe='')}/result", task_id=task_id, attempts=attempts)
        return Prediction.from_envelope(envelope, (self._api_key,))

    def download(self, url: str, dest_dir: str | Path, *, max_bytes: int, deadline_seconds: float = 300.0,
                 suffix: str = ".mp4", attempts: int | None = None,
                 save: Callable[[Path], ContextManager[BinaryIO]] | None = None) -> Path:
        """Stream `url` into a new unique file in `dest_dir`, refusing more than `max_bytes`.

        `save(target)` opens where the bytes go (the app's: a locked, hidden `.part` renamed once complete,
        store.files.partial_file); by default a hidden file renamed once complete, so a video in the folder is
        always whole. A full disk is a plain `DownloadFailed`."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()

        def fetch() -> Path:
            # Output URLs are on a CDN: plain GET, without our key.
            with self._keyless().get(url, stream=True, timeout=self.timeout) as response:
                if response.status_code != 200:
                    response.content  # read the short error body before the stream closes
                    return response  # _with_retries classifies it
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > max_bytes:
                    raise DownloadFailed(f"The video is {declared / 1e6:.0f} MB, above the {max_bytes / 1e6:.0f} MB cap.")
                # Unguessable name: the videos folder is served by path, and names must not leak work.
                target = dest_dir / f"{uuid.uuid4().hex}{suffix}"
                written = 0
                try:
                    with (save or _whole_file)(target) as out:
                        for chunk in response.iter_content(CHUNK_BYTES):
                            written += len(chunk)
                            if written > max_bytes:
                                raise DownloadFailed(f"The video exceeded the {max_bytes / 1e6:.0f} MB cap.")
                            if time.monotonic() - started > deadline_seconds:
                                raise DownloadFailed(f"The download took longer than {deadline_seconds:.0f} s.")
                            out.write(chunk)
                except requests.RequestException:
                    raise  # the network, not the disk: _with_retries decides
                except OSError as error:
                    log.warning("download: could not save the video (%s)",
                                errno.errorcode.get(error.errno or 0, type(error).__name__))
                    reason = "the app's storage is full" if is_disk_full(error) else "the app could not write it"
                    raise DownloadFailed(f"The video is finished but could not be saved because {reason}. The task "
                                         "is kept: resume it later by its task id.") from error
                return target

        return self._with_retries("video download", fetch, attempts=attempts)

    # -- plumbing ---------------------------------------------------------------

    def _json(self, method: str, path: str, *, task_id: str | None = None, attempts: int | None = None,
              **kwargs: Any) -> dict[str, Any]:
        response = self._with_retries(
            f"{method} {path}", lambda: self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs),
            task_id=task_id, attempts=attempts,
        )
        return self._decode(response, task_id=task_id)

    def _with_retries(self, what: str, call: Callable[[], Any], *, task_id: str | None = None,
                      attempts: int | None = None) -> Any:
        """Run a request that is safe to repeat; return its 200 answer or raise a typed error."""
        attempts = max(1, attempts or self.max_attempts)
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = call()
            except TRANSPORT_ERRORS as exc:
                if last:
                    raise self._unavailable(what, attempt, _transport_reason(exc), None, task_id) from exc
                self._pause(attempt, None, f"{what}: {type(exc).__name__}", attempts)
                continue
            if not isinstance(response, requests.Response):
                return response
            if response.status_code in RETRYABLE_STATUS:
                reason, retry_after = _status_words(response.status_code), retry_after_seconds(response)
                if last:
                    raise self._unavailable(what, attempt, reason, retry_after, task_id)
                self._pause(attempt, retry_after, f"{what}: {reason}", attempts)
                continue
            self._raise_for_status(response, what, task_id=task_id)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _unavailable(what: str, attempts: int, reason: str, retry_after: float | None,
                     task_id: str | None) -> ServiceUnavailable:
        """The error for retries that ran out; with a task id it never invites a second, paid submission."""
        tries = f"{attempts} attempts" if attempts > 1 else "one attempt"
        if task_id:
            message = f"WaveSpeed did not answer the {what} ({reason}, {tries}). The task is not lost."
        else:
            message = (f"The {what} failed ({reason}, {tries}): WaveSpeed is unreachable or busy. "
                       "Try again in a minute.")
        return ServiceUnavailable(message, task_id=task_id, reason=reason, retry_after=retry_after)

    def _pause(self, attempt: int, retry_after: float | None, why: str, attempts: int | None = None) -> None:
        """Wait before the next try of a request that is safe to repeat: the one retry rule (retry.py) on this
        client's scale."""
        delay = retry_delay(attempt, retry_after, first=self.backoff_seconds, cap=self.max_backoff_seconds)
        log.info("%s; retrying in %.1f s (attempt %d of %d)", why, delay, attempt + 1, attempts or self.max_attempts)
        self._sleep(delay)

    def _raise_for_status(self, response: requests.Response, what: str, *, task_id: str | None = None) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = _api_message(response, (self._api_key,))
        if status in (401, 403):
            raise AuthenticationFailed(
                f"WaveSpeed rejected the API key (HTTP {status}). Check the key you entered.",
                task_id=task_id)
        if status == 402:
            raise InsufficientBalance("WaveSpeed says this key's balance is too low for this video. Top up at "
                                      "wavespeed.ai, or use another key.", task_id=task_id)
        if status == 429:
            raise RateLimited(f"WaveSpeed is rate limiting requests (HTTP 429) during the {what}. Wait a minute "
                              "and try again.", retry_after=retry_after_seconds(response), task_id=task_id)
        if status in (400, 422):
            raise ApiInputRefused(f"WaveSpeed refused the input: {message}", task_id=task_id)
        if status == 404:
            raise NotFound(f"Not found during the {what} (HTTP 404): {message}", task_id=task_id)
        raise ServiceUnavailable(f"WaveSpeed had trouble with the {what} (HTTP {status}): {message}. "
                                 "Try again in a minute.", task_id=task_id)

    def _decode(self, response: requests.Response, *, task_id: str | None = None) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise ServiceUnavailable("WaveSpeed answered with something that is not JSON.", task_id=task_id) from exc
        code = body.get("code", 200) if isinstance(body, dict) else None
        if code not in (200, None):
            raise ServiceUnavailable(f"WaveSpeed answered code {code}: {self._redact(str(body.get('message')))}",
                                     task_id=task_id)
        return body

    def _redact(self, text: str) -> str:
        return mask_secrets(text, (self._api_key,))


@contextmanager
def _whole_file(target: Path) -> Iterator[BinaryIO]:
    """Write to a hidden file beside `target`, renamed to it only when the block succeeds."""
    part = target.with_name(f".{target.name}.part")
    try:
        with part.open("xb") as out:
            yield out
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
