"""Which WaveSpeed server the app talks to: the real API with a key, else the embedded sandbox."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config import Settings
from ..sandbox import SandboxConfig, SandboxHandle, start_sandbox

log = logging.getLogger(__name__)

SANDBOX_TOKEN = "sandbox-local"  # the embedded sandbox accepts any bearer token
EMBEDDED_SANDBOX_BALANCE = 1e12


@dataclass(frozen=True)
class Backend:
    """Where requests go and with which key; `sandbox` is set when we started one."""

    base_url: str
    api_key: str = field(repr=False)
    sandbox: SandboxHandle | None = None

    @property
    def is_sandbox(self) -> bool:
        return self.sandbox is not None

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.stop()


def open_backend(settings: Settings, base_url: str | None = None) -> Backend:
    """The real API when a key is configured; otherwise start the sandbox on a free loopback port. `base_url` (the
    command line's --base-url) names another WaveSpeed-compatible server: with the key, or else the placeholder
    token only a sandbox accepts."""
    if base_url:
        return Backend(base_url=base_url.rstrip("/"), api_key=settings.api_key or SANDBOX_TOKEN)
    if settings.api_key:
        return Backend(base_url=settings.base_url, api_key=settings.api_key)
    # The offline demo never runs dry: a balance no run of the app can spend.
    # It signs webhooks with WAVESPEED_WEBHOOK_SECRET when one is set, so KLING_DEMO_PUBLIC_URL works offline too.
    secret = {"webhook_secret": settings.webhook_secret} if settings.webhook_secret else {}
    handle = start_sandbox(SandboxConfig(inference_seconds=settings.sandbox_inference_seconds,
                                         balance=EMBEDDED_SANDBOX_BALANCE,
                                         render_store=settings.sandbox_render_store, **secret))
    log.info("WAVESPEED_API_KEY is not set, so the local sandbox at %s is used (no AI, no cost)", handle.base_url)
    return Backend(base_url=handle.base_url, api_key=SANDBOX_TOKEN, sandbox=handle)
