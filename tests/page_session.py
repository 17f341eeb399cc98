"""One browser tab's session, driven over the page's own protocol without a browser.

Events outside the queue go to POST /gradio_api/run/predict, the rest through /gradio_api/queue/join and the
event stream at /gradio_api/queue/data, as Gradio's frontend does. This reaches what gradio_client cannot:
the page's private events and the values the page keeps in session state.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import requests


class PageSession:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}  # e.g. X-Forwarded-For, to stand for another visitor behind a proxy
        self.session_hash = uuid.uuid4().hex
        self.config = requests.get(url + "config", timeout=10).json()

    def component(self, elem_id: str) -> int:
        return next(c["id"] for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id)

    def event(self, elem_id: str, trigger: str) -> dict[str, Any]:
        """The first step the server runs when the component with `elem_id` fires `trigger` (a step the browser
        runs alone, such as naming the job a click starts, is passed over: `browser_step` gives it)."""
        step = self.browser_step(elem_id, trigger)
        while not step["backend_fn"]:
            step = self.then(step)
        return step

    def browser_step(self, elem_id: str, trigger: str) -> dict[str, Any]:
        """The very first step of the event, whoever runs it."""
        target = [self.component(elem_id), trigger]
        return next(d for d in self.config["dependencies"] if target in d["targets"])

    def then(self, step: dict[str, Any]) -> dict[str, Any]:
        """The step the page runs after `step`."""
        return next(d for d in self.config["dependencies"] if d.get("trigger_after") == step["id"])

    def upload(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as picture:
            uploaded = requests.post(self.url + "gradio_api/upload", timeout=30,
                                     files={"files": (path.name, picture, "application/octet-stream")})
        uploaded.raise_for_status()
        return {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}

    def run(self, step: dict[str, Any], *data: Any) -> dict[str, Any]:
        """Run a step outside the queue; returns Gradio's answer (`data`, or `error`)."""
        answer = requests.post(self.url + "gradio_api/run/predict", timeout=30, json=self._body(step, data),
                               headers=self.headers)
        return answer.json()

    def join(self, step: dict[str, Any], *data: Any, timeout: float = 120) -> dict[str, Any]:
        """Run a queued step to its end; returns its `process_completed` message (`success`, `output`)."""
        joined = requests.post(self.url + "gradio_api/queue/join", timeout=30, json=self._body(step, data),
                               headers=self.headers)
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with requests.get(self.url + "gradio_api/queue/data", params={"session_hash": self.session_hash},
                          stream=True, timeout=timeout) as events:
            for line in events.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                message = json.loads(line[len("data:"):])
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    return message
        raise AssertionError("the event stream ended before the step did")

    def _body(self, step: dict[str, Any], data: tuple[Any, ...]) -> dict[str, Any]:
        padded = list(data) + [None] * (len(step["inputs"]) - len(data))  # states: the server holds them
        return {"data": padded, "fn_index": step["id"], "session_hash": self.session_hash, "trigger_id": None}


def error_of(message: dict[str, Any]) -> str:
    """The error a step ended with, "" when it succeeded. The page's own job steps raise nothing: they end
    with the error as their last status, under a heading that says what to do next (`JOB_ENDED`), and the stage
    "failed" as their last output."""
    if not message.get("success"):
        return str((message.get("output") or {}).get("error"))
    data = (message.get("output") or {}).get("data") or []
    status = data[0] if data and isinstance(data[0], str) else ""
    return status if data and data[-1] == "failed" else ""
