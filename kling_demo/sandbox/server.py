"""Serving the sandbox: `start_sandbox` runs the app with uvicorn on a port in a daemon thread.

The app itself is built by `app.create_app`; both names (and `SandboxConfig`) are re-exported
here and from the package.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from kling_demo.sandbox.app import create_app
from kling_demo.sandbox.config import SandboxConfig
from kling_demo.sandbox.faults import DroppableH11Protocol
from kling_demo.sandbox.state import SandboxState

__all__ = ["SandboxConfig", "SandboxHandle", "create_app", "start_sandbox"]

log = logging.getLogger(__name__)


class SandboxHandle:
    """A running sandbox: its base URL, config, live stats, and `stop()`; also a context manager."""

    def __init__(self, base_url: str, config: SandboxConfig, server: uvicorn.Server, thread: threading.Thread, state: SandboxState) -> None:
        self.base_url = base_url
        self.config = config
        self._server = server
        self._thread = thread
        self._state = state
        self._stopped = False

    def stats(self) -> dict[str, Any]:
        """The same JSON as GET /sandbox/stats."""
        return self._state.stats()

    def stop(self) -> None:
        """Shut the server down and release its files; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.warning("sandbox at %s did not stop within 10 s", self.base_url)
        self._state.close()
        log.info("sandbox at %s stopped", self.base_url)

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxHandle(base_url={self.base_url!r})"


def start_sandbox(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> SandboxHandle:
    """Serve a sandbox on `host`:`port` (0 → a free port) in a daemon thread; return once it answers."""
    config = config or SandboxConfig()
    app = create_app(config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = _bind(family, host, port)
    bound_port = listener.getsockname()[1]
    uvicorn_config = uvicorn.Config(
        app,
        http=DroppableH11Protocol,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(uvicorn_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True, name=f"sandbox-{bound_port}")
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            app.state.sandbox.close()
            listener.close()
            raise RuntimeError(f"sandbox failed to start on {host}:{bound_port}")
        time.sleep(0.01)
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    base_url = f"http://{url_host}:{bound_port}"
    log.info("sandbox serving at %s", base_url)
    return SandboxHandle(base_url, config, server, thread, app.state.sandbox)


def _bind(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener
