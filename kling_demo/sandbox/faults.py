"""Seeded fault injection: HTTP errors, dropped connections, lost submit answers, failing tasks.

Each sandbox has its own dice and its own table of live connections, so two sandboxes in one
process never share faults or drop each other's connections.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from kling_demo.sandbox.protocol import envelope
from kling_demo.sandbox.tasks import Ending

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "502", "503", "drop")
CONNECTIONS_STATE_KEY = "sandbox_connections"  # where the lifespan state holds a server's Connections


@dataclass
class FaultCounts:
    faults_injected: int = 0
    lost_answers: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in FAULT_KINDS})


class Faults:
    """The dice: separate seeded streams, so e.g. polling more often does not change which tasks fail."""

    def __init__(
        self,
        fault_rate: float,
        lost_answer_rate: float,
        task_failure_rate: float,
        seed: int | None,
        status_fault_rate: float = 0.0,
        failure_message: str = "",
    ) -> None:
        self.fault_rate = fault_rate
        self.lost_answer_rate = lost_answer_rate
        self.task_failure_rate = task_failure_rate
        self.status_fault_rate = status_fault_rate
        self.failure_message = failure_message
        self.counts = FaultCounts()
        self._lock = threading.Lock()
        self._faults = random.Random(None if seed is None else f"{seed}:faults")
        self._lost_answers = random.Random(None if seed is None else f"{seed}:lost-answers")
        self._task_failures = random.Random(None if seed is None else f"{seed}:task-failures")
        self._account_faults = random.Random(None if seed is None else f"{seed}:account-faults")
        self._status_faults = random.Random(None if seed is None else f"{seed}:status-faults")

    def draw(self, allowed: tuple[str, ...] = FAULT_KINDS) -> str | None:
        """Roll for a fault on one faultable request; count and return its kind, or None."""
        return self._draw(self._faults, allowed)

    def draw_account(self) -> str | None:
        """Roll for a fault on a price, balance, listing or billing call, from its own stream so that
        calling them does not change which polls, uploads or submissions fail under a seed."""
        return self._draw(self._account_faults, FAULT_KINDS)

    def _draw(self, dice: random.Random, allowed: tuple[str, ...]) -> str | None:
        if self.fault_rate <= 0:
            return None
        with self._lock:
            if dice.random() >= self.fault_rate:
                return None
            kind = dice.choice(allowed)
            self.counts.faults_injected += 1
            self.counts.faults_by_kind[kind] += 1
        log.info("sandbox: injecting fault %s", kind)
        return kind

    def lose_answer(self) -> bool:
        """Roll for losing a submission's answer (the task is still created); counted as a fault."""
        if self.lost_answer_rate <= 0:
            return False
        with self._lock:
            lost = self._lost_answers.random() < self.lost_answer_rate
            if lost:
                self.counts.faults_injected += 1
                self.counts.lost_answers += 1
        return lost

    def snapshot(self) -> dict[str, Any]:
        """The counts as plain data, for /sandbox/stats."""
        with self._lock:
            return asdict(self.counts)

    def task_ending(self, api_key: str = "") -> Ending | None:
        """Roll for how a new task ends if not by its render: failed, cancelled, timeout, or None. A failure says
        `failure_message` when one is set, with the submitting `api_key` in place of "{api_key}"."""
        with self._lock:
            if self.task_failure_rate > 0 and self._task_failures.random() < self.task_failure_rate:
                said = self.failure_message.replace("{api_key}", api_key)
                return Ending("failed", said or "sandbox: simulated failure (task_failure_rate)")
            if self.status_fault_rate > 0 and self._status_faults.random() < self.status_fault_rate:
                if self._status_faults.random() < 0.5:
                    return Ending("cancelled", "sandbox: simulated cancellation: the task was cancelled (status_fault_rate)")
                return Ending("timeout", "sandbox: simulated timeout: the task ran past its time limit (status_fault_rate)")
        return None


def fault_response(kind: str) -> Response:
    """The answer for an injected fault: an error envelope, or a dropped connection."""
    if kind == "drop":
        return DroppedConnection()
    status = int(kind)
    messages = {429: "Too many requests (sandbox fault injection)", 500: "Internal server error (sandbox fault injection)"}
    message = messages.get(status, f"Upstream unavailable (sandbox fault injection, HTTP {status})")
    response = envelope(None, status, message)
    if status == 429:
        response.headers["Retry-After"] = "1"
    return response


# --- dropped connections ---------------------------------------------------------------------


class Connections:
    """One server's live transports keyed by (client host, client port, server host, server port)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transports: dict[tuple[Any, ...], asyncio.BaseTransport] = {}

    def add(self, key: tuple[Any, ...], transport: asyncio.BaseTransport) -> None:
        with self._lock:
            self._transports[key] = transport

    def remove(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._transports.pop(key, None)

    def get(self, key: tuple[Any, ...]) -> asyncio.BaseTransport | None:
        with self._lock:
            return self._transports.get(key)


class DroppableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that registers its transport so the app can drop the connection.

    The table comes from the app's lifespan state, which uvicorn hands to every connection of
    that server (and copies into each request's scope), so it is per server, not global.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._drop_key = (*(self.client or ("", 0)), *(self.server or ("", 0)))
        self._connections: Connections | None = self.app_state.get(CONNECTIONS_STATE_KEY)
        if self._connections is not None:
            self._connections.add(self._drop_key, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        connections = getattr(self, "_connections", None)
        if connections is not None:
            connections.remove(self._drop_key)
        super().connection_lost(exc)


class DroppedConnection(Response):
    """Closes the connection without sending a status line, as a crashed proxy would."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client, server = scope.get("client") or ("", 0), scope.get("server") or ("", 0)
        connections: Connections | None = (scope.get("state") or {}).get(CONNECTIONS_STATE_KEY)
        transport = connections.get((*client, *server)) if connections is not None else None
        if transport is not None:
            transport.abort()
            for _ in range(3):  # let uvicorn notice the loss so it does not answer 500
                await asyncio.sleep(0)
            return
        # Not served by DroppableH11Protocol: promise a body, then end without it.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024")]})
