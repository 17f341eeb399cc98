"""Clients of a served app that differ in what a server can and cannot check: the loopback address their
connection comes from (127.0.0.2 stands in for a proxy), the headers they write (X-Forwarded-For), the
cookies they hold (a sign-in session) and extra fields in the request body (an `oauth_token`).

A job runs through Gradio's own queue protocol: POST /gradio_api/upload, POST /gradio_api/queue/join, then
the event stream at /gradio_api/queue/data.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter


class FromAddress(HTTPAdapter):
    """Connections that leave from `address` (any 127.x.y.z reaches a server listening on 127.0.0.1)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


class Caller:
    """One client of the app at `url`."""

    def __init__(self, url: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None,
                 cookies: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") + "/"
        self.http = requests.Session()
        self.http.mount("http://", FromAddress(source))
        self.http.headers.update(headers or {})
        self.http.cookies.update(cookies or {})
        self.body = body or {}  # extra fields of every join, e.g. a forged oauth_token
        self.session_hash = uuid.uuid4().hex  # one tab's: the steps outside the queue share its state
        self._config: dict[str, Any] | None = None

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = self.http.get(self.url + "config", timeout=30).json()
        return self._config

    def component(self, elem_id: str) -> int:
        return next(c["id"] for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id)

    def upload(self, path: Path) -> requests.Response:
        with path.open("rb") as picture:
            return self.http.post(self.url + "gradio_api/upload", timeout=60,
                                  files={"files": (path.name, picture, "application/octet-stream")})

    def generate(self, image: Path, prompt: str = "a paper boat drifting", timeout: float = 120) -> str:
        """One /generate job to its end: its last status, or the error it ended with."""
        uploaded = self.upload(image)
        uploaded.raise_for_status()
        frame = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
        step = next(d for d in self.config["dependencies"] if d.get("api_name") == "generate")
        data = [frame, prompt, "", 0.5, 5] + [None] * (len(step["inputs"]) - 5)  # states: the server holds them
        message = self.join(step["id"], data, timeout=timeout)
        output = message.get("output") or {}
        return str(output["data"][0]) if message.get("success") else str(output.get("error"))

    def join(self, fn_index: int, data: list[Any], timeout: float = 120) -> dict[str, Any]:
        """Run a queued step in a session of its own (jobs of one caller may run at once); its
        `process_completed` message."""
        session = uuid.uuid4().hex
        joined = self.http.post(self.url + "gradio_api/queue/join", timeout=30,
                                json={"data": data, "fn_index": fn_index, "session_hash": session,
                                      "trigger_id": None, **self.body})
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with self.http.get(self.url + "gradio_api/queue/data", params={"session_hash": session}, stream=True,
                           timeout=timeout) as events:
            for line in events.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    message = json.loads(line[len("data:"):])
                    if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                        return message
        raise AssertionError("the event stream ended before the step did")

    def predict(self, fn_index: int, data: list[Any]) -> dict[str, Any]:
        """Run a step outside the queue (POST /gradio_api/run/predict) in this tab's session; Gradio's answer."""
        answer = self.http.post(self.url + "gradio_api/run/predict", timeout=30,
                                json={"data": data, "fn_index": fn_index, "session_hash": self.session_hash,
                                      "trigger_id": None, **self.body})
        return answer.json()
