"""Many jobs at once through Gradio's own queue protocol, from one asyncio loop (tests and bench/scale.py).

POST /gradio_api/upload, POST /gradio_api/queue/join, then the SSE stream at /gradio_api/queue/data, over
httpx with no connection cap: the client holds no thread per job, so it never limits how many run at once
(gradio_client runs each job in a thread of a bounded pool).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

PROMPT = "a slow dolly-in over a paper boat"


def http_client() -> httpx.AsyncClient:
    """No connection cap; no keep-alive either (a reused connection the server just closed fails as ReadError)."""
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                             timeout=httpx.Timeout(60.0, read=None))


class QueueClient:
    """One served app's `generate` endpoint, driven as the page drives it."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/") + "/"
        self.http = http
        self.fn_index = -1
        self.inputs = 0

    async def load(self) -> "QueueClient":
        config = (await self.http.get(self.url + "config")).json()
        step = next(d for d in config["dependencies"] if d.get("api_name") == "generate")
        self.fn_index, self.inputs = step["id"], len(step["inputs"])
        return self

    async def generate(self, image: Path, duration: int = 5, prompt: str = PROMPT) -> tuple[list[Any], float]:
        """One job to its end: (its outputs, the time.time() they arrived); raises with the app's error."""
        with image.open("rb") as picture:
            uploaded = await self.http.post(self.url + "gradio_api/upload",
                                            files={"files": (image.name, picture, "image/jpeg")})
        uploaded.raise_for_status()
        frame = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
        data = [frame, prompt, "", 0.5, duration] + [None] * (self.inputs - 5)  # states: the server holds them
        session = uuid.uuid4().hex
        joined = await self.http.post(self.url + "gradio_api/queue/join",
                                      json={"data": data, "fn_index": self.fn_index, "session_hash": session,
                                            "trigger_id": None})
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        async with self.http.stream("GET", self.url + "gradio_api/queue/data",
                                    params={"session_hash": session}) as events:
            async for line in events.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id or message.get("msg") != "process_completed":
                    continue
                received = time.time()
                output = message.get("output") or {}
                if not message.get("success"):
                    raise RuntimeError(str(output.get("error"))[:300])
                return list(output.get("data") or []), received
        raise RuntimeError("the event stream ended before the job did")

    async def many(self, image: Path, jobs: int, duration: int = 5,
                   timeout: float = 1800.0) -> list[tuple[list[Any], float] | BaseException]:
        """`jobs` jobs at once; each result, or the exception that ended it."""
        return await asyncio.gather(*(asyncio.wait_for(self.generate(image, duration), timeout)
                                      for _ in range(jobs)), return_exceptions=True)
