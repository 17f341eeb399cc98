"""WaveSpeed's pushed completions: check that a webhook is WaveSpeed's, fresh and new, then read its prediction.

Each delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature: v3,<hex>`, where hex is
HMAC-SHA256 over `"{id}.{timestamp}.{raw body}"` keyed by the account's secret without its `whsec_` prefix,
used as text (not base64-decoded, so the `standardwebhooks` package does not match). The body is the bare
prediction object, as the result endpoint's `data`. Anything unsigned, older or newer than five minutes, or
seen before is refused with 401 and changes nothing. Refusals are logged at a bounded rate (a flood of forged
webhooks must not flood the log): the first, then at most one line a minute with how many came since.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any, Callable, Mapping


from ..errors import WebhookRejected

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300.0
MAX_BODY_BYTES = 1024 * 1024  # a prediction is a few kB; anything bigger is not WaveSpeed's
REFUSAL_LOG_INTERVAL_SECONDS = 60.0


def signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC WaveSpeed sends for these bytes (the `webhook-signature` value after `v3,`)."""
    key = secret.removeprefix(SECRET_PREFIX).encode()
    return hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(headers: Mapping[str, str], body: bytes, secret: str, now: float) -> dict[str, Any]:
    """The prediction in a webhook signed with `secret` and sent within five minutes of `now`, else
    `WebhookRejected`. `headers` is looked up by lower-case name (Starlette's headers ignore case)."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    offered = headers.get("webhook-signature", "")
    if not message_id or not timestamp or not offered:
        raise WebhookRejected("The webhook has no webhook-id, webhook-timestamp or webhook-signature header.")
    expected = signature(secret, message_id, timestamp, body)
    # The header may list several signatures ("v3,<hex> v3,<hex>") while a secret is being rotated.
    candidates = [part.partition(",") for part in offered.split()]
    if not any(version == "v3" and hmac.compare_digest(value.encode(), expected.encode())
               for version, _, value in candidates):
        raise WebhookRejected("The webhook's signature does not match WAVESPEED_WEBHOOK_SECRET.")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise WebhookRejected("The webhook's timestamp is more than five minutes away from now.")
    try:
        prediction = json.loads(body)
    except ValueError:
        raise WebhookRejected("The webhook's body is not JSON.") from None
    if not isinstance(prediction, dict) or not isinstance(prediction.get("id"), str) or not prediction["id"]:
        raise WebhookRejected("The webhook's body is not a prediction with an id.")
    return prediction


class Replays:
    """Webhook ids seen in the last ten minutes: a message replayed inside its five-minute window is refused."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, message_id: str, now: float) -> bool:
        """Remember `message_id`; False if it was seen before (older ones fail the timestamp check anyway)."""
        with self._lock:
            self._seen = {seen: at for seen, at in self._seen.items() if now - at <= 2 * TOLERANCE_SECONDS}
            if message_id in self._seen:
                return False
            self._seen[message_id] = now
            return True

    def forget(self, message_id: str) -> None:
        """Let a message in again (it was not acted on, so WaveSpeed's retry must pass)."""
        with self._lock:
            self._seen.pop(message_id, None)


class Receiver:
    """Checks each webhook and hands its prediction to `on_prediction` (called in a worker thread)."""

    def __init__(self, secret: str, on_prediction: Callable[[dict[str, Any]], None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._on_prediction = on_prediction
        self._clock = clock
        self._replays = Replays()

    def receive(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Verify, refuse a replay, then act on the prediction; raises `WebhookRejected` having changed nothing."""
        now = self._clock()
        prediction = verify(headers, body, self._secret, now)
        if not self._replays.first_time(headers["webhook-id"], now):
            raise WebhookRejected("This webhook was already received (its webhook-id was seen before).")
        try:
            self._on_prediction(prediction)
        except BaseException:
            self._replays.forget(headers["webhook-id"])
            raise
        return prediction
