"""The app's ASGI front door, before Gradio's routes: MCP callers stamped with their own address, uploads
bounded per address and in total, and the first forwarded request's header shape logged for the owner.

It runs inside uvicorn's proxy-headers middleware, so `scope["client"]` already names the visitor by the one
rule (identity.py): the rightmost X-Forwarded-For address that is not a trusted proxy.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, MutableMapping

import anyio

from ..service.identity import (CALLER_HEADER, UNKNOWN_ADDRESS, TrustedProxies, forwarded_shape, normalized_address,
                       stamp_caller)
from .upload_bounds import Refusal, UploadBounds

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MCP_PATH = "/gradio_api/mcp"  # Gradio's MCP server: streamable HTTP, and SSE with its /messages/
UPLOAD_PATH = "/gradio_api/upload"
DRAIN_BYTES = 64 * 1024 * 1024  # a refused body up to this size is read first, so the client hears the answer
_CALLER = CALLER_HEADER.encode()
NO_LENGTH = Refusal(411, "An upload must say its size (Content-Length); chunked uploads are not taken.")
# A stamp is let in once, within this many seconds of being made: Gradio replays an MCP call at once.
STAMP_ENTRY_SECONDS = 60.0
STAMPS_KEPT = 100_000  # stamps made and not yet let in, at most (an MCP request that is no tool call uses none)


class FrontDoor:
    """ASGI middleware; `secret` signs MCP callers' stamps, `trusted` are the proxies uvicorn trusts."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, secret: str,
                 trusted: TrustedProxies, uploads: UploadBounds, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.secret = secret
        self.trusted = trusted
        self.uploads = uploads
        self.clock = clock
        self._shape_logged = False
        self._issued: OrderedDict[bytes, float] = OrderedDict()  # stamps made, not yet let in → until when

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or (None, 0))[0]
        path = scope.get("path", "")
        if not self._shape_logged:
            self._log_shape(scope, client)
        if path.startswith(MCP_PATH):
            self._stamp(scope, client)
        else:
            self._let_in_once(scope)
        if scope.get("method") == "POST" and (path.rstrip("/") == UPLOAD_PATH or path.startswith(MCP_PATH)):
            await self._bounded(scope, receive, send, client)
            return
        await self.app(scope, receive, send)

    def _stamp(self, scope: Scope, client: str | None) -> None:
        """Replace any copy the caller sent with a stamp of the address this route saw: Gradio replays the MCP
        request's headers through its own client on loopback, and the stamp is what survives the trip."""
        headers = [(name, value) for name, value in scope["headers"] if name != _CALLER]
        if client:
            now = self.clock()
            stamp = stamp_caller(client, self.secret, now).encode("latin-1")
            headers.append((_CALLER, stamp))
            self._issued[stamp] = now + STAMP_ENTRY_SECONDS
            while self._issued and (len(self._issued) > STAMPS_KEPT or next(iter(self._issued.values())) < now):
                self._issued.popitem(last=False)
        scope["headers"] = headers

    def _let_in_once(self, scope: Scope) -> None:
        """Anywhere else a stamp passes only as the replay of the MCP call it was made for: once, and soon. Any
        other copy (one a client wrote, or a second use) is dropped, so it names nobody even if it verifies."""
        stamps = [value for name, value in scope["headers"] if name == _CALLER]
        if not stamps:
            return
        until = self._issued.pop(stamps[0], None) if len(stamps) == 1 else None
        if until is None or until < self.clock():
            scope["headers"] = [(name, value) for name, value in scope["headers"] if name != _CALLER]

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, client: str | None) -> None:
        """Pass a body that fits its sender's hourly bound and the cache's; refuse it with a plain answer."""
        size = _content_length(scope)
        if size is None:
            await _refuse(receive, send, NO_LENGTH, drain=False)
            return
        # A trusted proxy's own request (Gradio's MCP client re-uploading an agent's image) is no visitor:
        # the agent's bytes were counted at the MCP route, so these count toward the total only.
        address = None if client in self.trusted else (normalized_address(client or "") or UNKNOWN_ADDRESS)
        refusal = await anyio.to_thread.run_sync(self.uploads.admit, address, size)
        if refusal is not None:
            log.info("refused a %d-byte body to %s (HTTP %d)", size, scope.get("path"), refusal.status)
            await _refuse(receive, send, refusal, drain=size <= DRAIN_BYTES)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.uploads.finished(size)

    def _log_shape(self, scope: Scope, client: str | None) -> None:
        forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"]
        if forwarded:
            self._shape_logged = True
            log.info("proxy check (logged once per start): %s", forwarded_shape(", ".join(forwarded), client,
                                                                                  self.trusted))


def _content_length(scope: Scope) -> int | None:
    values = [value for name, value in scope["headers"] if name == b"content-length"]
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


async def _refuse(receive: Receive, send: Send, refusal: Refusal, *, drain: bool) -> None:
    """Answer with `refusal`; the body is read and dropped first when `drain`, so the client is not cut off
    while it is still sending, and nothing of it reaches the disk."""
    while drain:
        message = await receive()
        drain = message.get("type") == "http.request" and bool(message.get("more_body"))
    body = refusal.message.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
