"""Logging set-up for the app's entry points, with a filter that keeps API keys out of every record.

`mask_secrets` is also what every text from the API passes before it reaches a visitor or a log: it masks the key
the caller names (the one its request carried), the app's own secrets (`remember_secrets`, done by
`configure_logging`) and the environment's WAVESPEED_API_KEY, so either key is masked whichever paid."""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable

MASK = "***"
_remembered: set[str] = set()  # the app's own secrets (its key, its webhook secret): masked in every text
# A bearer token, and the value of a header or field that carries a credential, as an error body echoing our
# request shows it: `Authorization: Basic abc`, `'x-wavespeed-key': 'abc'`, `api_key=abc`.
_BEARER = re.compile(r"\b(Bearer\s+)[^\s'\",;}\]]+", re.IGNORECASE)
_FIELD = re.compile(r"((?:authorization|x-wavespeed-key|api[-_ ]?key)[\"']?\s*[:=]\s*[\"']?"
                    r"(?:(?:Bearer|Basic|Token)\s+)?)[^\s'\",;}\]]+", re.IGNORECASE)


def remember_secrets(*secrets: str | None) -> None:
    """Mask these in every text `mask_secrets` handles from now on (the server's key, the webhook secret)."""
    _remembered.update(secret for secret in secrets if secret)


def mask_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with bearer tokens, echoed credential headers, each of `secrets` and the app's own secrets replaced
    by ***."""
    known = {*(secret for secret in secrets if secret), *_remembered, os.environ.get("WAVESPEED_API_KEY", "").strip()}
    for secret in sorted(filter(None, known), key=len, reverse=True):  # a longer secret before one inside it
        text = text.replace(secret, MASK)
    text = _BEARER.sub(rf"\1{MASK}", text)
    return _FIELD.sub(rf"\1{MASK}", text)


class RedactSecrets(logging.Filter):
    """Masks bearer tokens and known keys in any log record, its traceback included."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets + (os.environ.get("WAVESPEED_API_KEY", ""),)
        message = record.getMessage()
        redacted = mask_secrets(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:  # formatted here, so the handler prints the masked text
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, secrets)
        return True


def configure_logging(level: str | None = None, secrets: tuple[str, ...] = ()) -> None:
    """Plain timestamped logs on stderr, with bearer tokens and `secrets` masked."""
    remember_secrets(*secrets)
    logging.basicConfig(level=level or os.environ.get("KLING_DEMO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets(secrets))
