"""Logging set-up for the app's entry points, with a filter that keeps API keys out of every record."""

from __future__ import annotations

import logging
import os
import re

_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-]+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Masks bearer tokens and the configured key in any log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _BEARER.sub(r"\1***", message)
        key = os.environ.get("WAVESPEED_API_KEY")
        if key:
            redacted = redacted.replace(key, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: str | None = None) -> None:
    """Plain timestamped logs on stderr, with secrets masked."""
    logging.basicConfig(level=level or os.environ.get("KLING_DEMO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
