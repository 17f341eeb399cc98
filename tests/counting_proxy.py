"""A real HTTP hop in front of a server (the sandbox) that passes every request on and counts them by path,
so a test can tell how often the app asked WaveSpeed something the sandbox itself does not count; it can hold a
kind of request until the test lets it through."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

PASSED_HEADERS = ("authorization", "content-type", "accept")


class CountingProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.counts: Counter[str] = Counter()
        self._holds: dict[str, tuple[threading.Event, str | None]] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _pass_on(self) -> None:
                path = self.path.split("?")[0]
                with proxy._lock:
                    proxy.counts[f"{self.command} {path}"] += 1
                    gate, key = proxy._holds.get(f"{self.command} {path}", (None, None))
                if gate is not None and (key is None or self.headers.get("Authorization") == f"Bearer {key}"):
                    gate.wait(60)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name: value for name, value in self.headers.items() if name.lower() in PASSED_HEADERS}
                answer = requests.request(self.command, proxy.target + self.path, headers=headers, data=body or None,
                                          timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = _pass_on

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def count(self, request: str) -> int:
        """How many requests such as "GET /api/v3/balance" were passed on."""
        with self._lock:
            return self.counts[request]

    def hold(self, request: str, *, key: str | None = None) -> threading.Event:
        """Hold every request such as "POST /api/v3/media/uploads" (counted as it arrives; only those made with
        `key`, if given) until the returned event is set, so a test can act while a request is certainly on its way."""
        gate = threading.Event()
        with self._lock:
            self._holds[request] = (gate, key)
        return gate

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
