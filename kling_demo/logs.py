"""Logging set-up for the app's entry points, with a filter that keeps API keys out of every record."""

from __future__ import annotations

import logging
import os
import re

_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-]+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Masks bearer tokens and known keys in any log record."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _BEARER.sub(r"\1***", message)
        for secret in self.secrets + (os.environ.get("WAVESPEED_API_KEY", ""),):
            if secret:
                redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: str | None = None, secrets: tuple[str, ...] = ()) -> None:
    """Plain timestamped logs on stderr, with bearer tokens and `secrets` masked."""
    logging.basicConfig(level=level or os.environ.get("KLING_DEMO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets(secrets))
