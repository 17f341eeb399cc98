"""Pushed completions: the final prediction POSTed to the submitter's `?webhook=` URL, signed.

Signature as WaveSpeed's clients verify it: `webhook-signature: v3,<hex>`, where hex is
HMAC-SHA256 over `"{webhook-id}.{webhook-timestamp}.{raw body}"` keyed by the secret without
its `whsec_` prefix (used as text, not base64-decoded). The body is the bare prediction object,
as WaveSpeed's webhook docs show it (id, model, input, outputs, urls, status, error, ...).
Failed deliveries are retried with growing delays (WaveSpeed documents no retry policy).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from kling_demo.sandbox.protocol import ApiError

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
TICK_SECONDS = 0.05  # how often the sender looks for tasks that ended


@dataclass(frozen=True)
class Delivery:
    """One message: where to, and the prediction it carries."""

    url: str
    payload: dict[str, Any]


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for these bytes."""
    key = secret.removeprefix(SECRET_PREFIX).encode()
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v3,{digest}"


def checked_webhook_url(url: str | None) -> str | None:
    """The `?webhook=` URL, or a 400; http:// is accepted here (WaveSpeed wants public https)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, f"webhook: must be an http:// or https:// URL (got {url!r})", error_code="invalid_parameter")
    return url


class WebhookSender:
    """Delivers queued messages from a background task, each with its retries, and counts outcomes."""

    def __init__(self, secret: str, retry_delays: tuple[float, ...], timeout_seconds: float) -> None:
        self.secret = secret
        self.retry_delays = retry_delays
        self.timeout_seconds = timeout_seconds
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self._in_flight: set[asyncio.Task] = set()

    def send(self, delivery: Delivery, client: httpx.AsyncClient) -> None:
        """Start delivering in the background (call from the event loop)."""
        job = asyncio.create_task(self._deliver(delivery, client))
        self._in_flight.add(job)
        job.add_done_callback(self._in_flight.discard)

    async def _deliver(self, delivery: Delivery, client: httpx.AsyncClient) -> None:
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        message_id = f"msg_{uuid.uuid4().hex}"  # one id for every attempt, so a receiver can drop repeats
        for attempt, delay in enumerate((*self.retry_delays, None)):
            self.attempts += 1
            if await self._attempt(delivery.url, message_id, body, client):
                self.delivered += 1
                return
            if delay is None:
                break
            log.info("sandbox: webhook %s attempt %d failed; retrying in %g s", message_id, attempt + 1, delay)
            await asyncio.sleep(delay)
        self.failed += 1
        log.warning("sandbox: webhook for task %s not delivered after %d attempts", delivery.payload.get("id"), attempt + 1)

    async def _attempt(self, url: str, message_id: str, body: bytes, client: httpx.AsyncClient) -> bool:
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self.secret, message_id, timestamp, body),
        }
        try:
            response = await client.post(url, content=body, headers=headers, timeout=self.timeout_seconds)
        except httpx.HTTPError as error:
            log.info("sandbox: webhook POST failed: %s", type(error).__name__)
            return False
        return 200 <= response.status_code < 300

    async def close(self) -> None:
        """Abandon deliveries still in progress (the server is stopping)."""
        for job in list(self._in_flight):
            job.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
