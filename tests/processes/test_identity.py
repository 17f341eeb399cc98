"""Who is asking, and what they may see: signed owner ids, API and MCP callers by key hash or IP, tasks that
stay with the key that made them, and a queue limit that holds under a burst.

The app runs as a real process on its server key against a sandbox process (as in production), with a known
canary as KLING_DEMO_SECRET so a test can tell whether it leaked.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from kling_demo.errors import InputRejected
from kling_demo.service.identity import CALLER_HEADER, key_id, stamp_caller
from kling_demo.service.visitors import (OWNER_STORAGE_OBFUSCATION, resolve_owner,
                                 sign_owner, verified_owner)
from tests.callers import Caller
from tests.page_session import PageSession, error_of
from tests.harness import Served, start_app_process, start_sandbox_process
from tests.processes.test_mcp import call_tool, needs_mcp
from tests.waiting import run_async

SECRET = f"canary-secret-{uuid.uuid4().hex}"
TASK_ID = re.compile(r"\b[0-9a-f]{32}\b")


# --- the pieces -----------------------------------------------------------------------------------------------


def test_an_owner_token_verifies_only_as_signed_by_this_secret():
    token = sign_owner("a" * 32, SECRET)
    assert verified_owner(token, SECRET) == "a" * 32
    assert SECRET not in token
    for forged in ["a" * 32, "a" * 32 + ".", token[:-1] + ("0" if token[-1] != "0" else "1"),
                   sign_owner("a" * 32, OWNER_STORAGE_OBFUSCATION), sign_owner("b" * 32, "another secret"),
                   "b" * 32 + token[32:], "", None]:
        assert verified_owner(forged, SECRET) is None, forged


def test_callers_without_a_page_are_their_keys_hash_else_their_ip():
    assert resolve_owner(sign_owner("c" * 32, SECRET), secret=SECRET, api_key="k", ip="1.2.3.4") == "browser:" + "c" * 32
    by_key = resolve_owner("", secret=SECRET, api_key="ws-key-1", ip="1.2.3.4")
    assert by_key == key_id(SECRET, "ws-key-1") != key_id(SECRET, "ws-key-2")
    assert "ws-key-1" not in by_key and by_key != key_id("another secret", "ws-key-1")
    assert resolve_owner(None, secret=SECRET, ip="1.2.3.4") == "ip:1.2.3.4"
    with pytest.raises(InputRejected, match="not issued by this app"):
        resolve_owner("c" * 32, secret=SECRET, api_key="k")
    with pytest.raises(InputRejected, match="not finished loading"):
        resolve_owner("", secret=SECRET, api_key="k", from_page=True)


# --- the running app ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """Sandbox (any key is an account) + app on its server key, behind a 'proxy' on loopback (with an inner
    proxy at 10.0.0.1), MCP on, a known secret."""
    folder = tmp_path_factory.mktemp("production")
    sandbox = start_sandbox_process("--inference-seconds", "1", log_path=folder / "sandbox.log")
    app = start_app_process(folder / "data", log_path=folder / "app.log",
                            env={"WAVESPEED_API_KEY": "server-key", "WAVESPEED_BASE_URL": sandbox.url,
                                 "KLING_DEMO_SECRET": SECRET, "FORWARDED_ALLOW_IPS": "127.0.0.1,10.0.0.0/8",
                                 "KLING_DEMO_MCP": "1"})
    yield app, sandbox
    app.stop()
    sandbox.stop()


def submissions(sandbox: Served) -> int:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"]


def visitor_at(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": f"{ip}, 10.0.0.1"}


def test_the_server_secret_never_reaches_the_page(production):
    app, _ = production
    config = requests.get(app.url + "config", timeout=10)
    page = requests.get(app.url, timeout=10)
    info = requests.get(app.url + "gradio_api/info", timeout=10)
    assert config.ok and page.ok and info.ok
    for answer in (config, page, info):
        assert SECRET not in answer.text
    (store,) = [c for c in config.json()["components"] if c.get("type") == "browserstate"]
    assert store["props"]["secret"] == OWNER_STORAGE_OBFUSCATION  # public by design; only the signature counts


def test_a_forged_owner_id_gets_a_fresh_owner_and_pays_or_reads_nothing(production, make_image):
    app, sandbox = production
    alice = PageSession(app.url, headers=visitor_at("198.51.100.1"))
    load = next(d for d in alice.config["dependencies"] if any(t == "load" for _, t in d["targets"]))
    token, *_ = alice.run(load, None)["data"]
    alice_id = verified_owner(token, SECRET)
    assert alice_id
    inputs = (alice.upload(make_image()), "a paper boat drifting", "", 0.5, 5, None)
    busy = alice.event("generate", "click")
    assert alice.join(busy, *inputs)["success"]
    done = alice.join(alice.then(busy), *inputs)
    assert done["success"] and "Done" in done["output"]["data"][0]
    (alice_task,) = TASK_ID.findall(done["output"]["data"][1])
    assert len(alice.run(alice.event("refresh-history", "click"))["data"][0]) == 1
    paid = submissions(sandbox)

    # Mallory stores Alice's id unsigned, with a made-up signature, or signed with the public BrowserState secret.
    forgeries = [alice_id, f"{alice_id}.{'0' * 64}", sign_owner(alice_id, OWNER_STORAGE_OBFUSCATION),
                 sign_owner(alice_id, "")]
    for forged in forgeries:
        mallory = PageSession(app.url, headers=visitor_at("203.0.113.66"))
        fresh, _, gallery, _ = mallory.run(load, forged)["data"]
        assert verified_owner(fresh, SECRET) not in (None, alice_id), forged
        assert gallery == [], "a forged id reads nothing"
        assert mallory.run(mallory.event("refresh-history", "click"))["data"][0] == []
        mallory.run(mallory.event("resume", "click"))
        refused = error_of(mallory.join(mallory.then(mallory.event("resume", "click")), alice_task))
        assert "not in your history" in refused, refused

    # A raw join of the page's private first step and then Generate, without a signed id: refused, nothing paid.
    mallory = PageSession(app.url, headers=visitor_at("203.0.113.67"))
    assert mallory.join(busy, *inputs)["success"]
    refused = error_of(mallory.join(mallory.then(busy), *inputs))
    assert "not finished loading" in refused, refused
    assert submissions(sandbox) == paid


@needs_mcp
@pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")
def test_two_mcp_clients_cannot_see_each_others_tasks(production, make_image):
    import base64

    app, sandbox = production
    picture = "data:image/png;base64," + base64.b64encode(make_image(size=(720, 480)).read_bytes()).decode()
    arguments = {"image": picture, "prompt": "a kite over the dunes", "duration": 5}

    def text(result) -> str:
        return " ".join(part.text for part in result.content if hasattr(part, "text"))

    pairs = [  # (one agent, another agent): by their keys, then keyless from two IPs behind the proxy
        ({"X-WaveSpeed-Key": f"ws-agent-{uuid.uuid4().hex}"}, {"X-WaveSpeed-Key": f"ws-agent-{uuid.uuid4().hex}"}),
        (visitor_at("192.0.2.10"), visitor_at("192.0.2.11")),
    ]
    for one, other in pairs:
        made = run_async(call_tool(app, "generate", arguments, one))
        assert not made.isError and "Done" in text(made), text(made)
        task_id = TASK_ID.findall(text(made))[0]
        stolen = run_async(call_tool(app, "resume", {"task_id": task_id}, other))
        assert stolen.isError and ".mp4" not in text(stolen), text(stolen)
        assert "not in your history" in text(stolen) or "not found" in text(stolen), text(stolen)
        again = run_async(call_tool(app, "resume", {"task_id": task_id}, one))  # a new MCP session, same agent
        assert not again.isError and "already in your history" in text(again), text(again)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The app on its server key with MCP on and no proxy trusted: the connection's own address is the caller."""
    folder = tmp_path_factory.mktemp("local")
    sandbox = start_sandbox_process("--inference-seconds", "1", log_path=folder / "sandbox.log")
    app = start_app_process(folder / "data", log_path=folder / "app.log",
                            env={"WAVESPEED_API_KEY": "server-key", "WAVESPEED_BASE_URL": sandbox.url,
                                 "KLING_DEMO_SECRET": SECRET, "KLING_DEMO_MCP": "1"})
    yield app, sandbox
    app.stop()
    sandbox.stop()


async def call_tool_from(source: str, app: Served, name: str, arguments: dict, headers: dict[str, str]):
    """One MCP tool call over Streamable HTTP from a connection that leaves from `source` (a loopback address)."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(headers=headers, transport=transport, timeout=httpx.Timeout(30, read=300)) as http:
        async with streamable_http_client(app.url + "gradio_api/mcp/", http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await asyncio.wait_for(session.call_tool(name, arguments), timeout=60)


def tool_text(result) -> str:
    return " ".join(part.text for part in result.content if hasattr(part, "text"))


@needs_mcp
def test_keyless_mcp_agents_cannot_name_each_others_address(local, make_image):
    """Gradio replays every queued MCP call through one client on loopback with the agent's own headers: what
    the MCP route saw of the agent (127.0.0.2 here) survives as a stamp only the server makes, used once."""
    app, sandbox = local
    picture = "data:image/png;base64," + base64.b64encode(make_image(size=(720, 480)).read_bytes()).decode()
    made = run_async(call_tool_from("127.0.0.2", app, "generate", {"image": picture, "prompt": "a kite"}, {}))
    assert not made.isError and "Done" in tool_text(made), tool_text(made)
    task_id = TASK_ID.findall(tool_text(made))[0]

    genuine = stamp_caller("127.0.0.2", SECRET, time.time())  # as the server would make it: copied, not issued
    posers = [{"X-Forwarded-For": "127.0.0.2"}, {CALLER_HEADER: genuine},
              {CALLER_HEADER: stamp_caller("127.0.0.2", "a guessed secret", time.time())}, {}]
    for headers in posers:  # from 127.0.0.1, which before this change was every keyless agent's identity
        stolen = run_async(call_tool_from("127.0.0.1", app, "resume", {"task_id": task_id}, headers))
        assert stolen.isError and ".mp4" not in tool_text(stolen), (headers, tool_text(stolen))
        assert "not in your history" in tool_text(stolen), tool_text(stolen)
    # The copied stamp through Gradio's own API, without MCP: the door lets in only stamps it made, once.
    resume = next(d for d in Caller(app.url).config["dependencies"] if d.get("api_name") == "resume")
    direct = Caller(app.url, headers={CALLER_HEADER: genuine}).join(resume["id"], [task_id, None, None, None])
    assert not direct["success"] and "not in your history" in str(direct["output"]["error"]), direct["output"]

    again = run_async(call_tool_from("127.0.0.2", app, "resume", {"task_id": task_id}, {}))
    assert not again.isError and "already in your history" in tool_text(again), tool_text(again)
    assert requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"] == 1


# --- sandbox mode: tasks stay with the key that made them --------------------------------------------------------


def test_in_sandbox_mode_a_made_up_key_cannot_fetch_another_visitors_task(tmp_path, make_image):
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log",
                            env={"KLING_DEMO_SANDBOX_SECONDS": "1"})  # no WAVESPEED_API_KEY: the embedded sandbox
    try:
        alice = Client(app.url, verbose=False)
        status, task_id, video = alice.predict(handle_file(str(make_image())), "a lighthouse in fog", "", 0.5, 5,
                                               None, api_name="/generate")
        assert "Done" in status and Path(video).is_file()
        bob = Client(app.url, verbose=False, headers={"X-WaveSpeed-Key": "made-up-key"})
        with pytest.raises(Exception) as refused:
            bob.predict(task_id, api_name="/resume")
        assert "not found" in str(refused.value).lower(), refused.value
        assert bob.predict(api_name="/history") == []
    finally:
        app.stop()


def test_a_sandbox_output_url_is_not_the_task_id_alone(sandbox, make_image):
    from tests.service.test_sandbox import data_uri, submit, wait_until_final

    task_id = submit(sandbox, {"image": data_uri(make_image()), "prompt": "x", "duration": 5}).json()["data"]["id"]
    (url,) = wait_until_final(sandbox, task_id)["outputs"]
    assert requests.get(url, timeout=10).status_code == 200
    assert requests.get(f"{sandbox.base_url}/files/outputs/{task_id}.mp4", timeout=10).status_code == 404
    guessed = url.replace(url.split("/")[-2], "x" * len(url.split("/")[-2]))
    assert requests.get(guessed, timeout=10).status_code == 404
    other_key = requests.get(f"{sandbox.base_url}/api/v3/predictions/{task_id}/result", timeout=10,
                             headers={"Authorization": "Bearer another-key"})
    assert other_key.status_code == 404 and "task not found" in other_key.text


# --- the queue limit under a burst --------------------------------------------------------------------------------


def test_a_burst_beyond_the_queue_limit_is_refused(tmp_path, make_image):
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log",
                            env={"KLING_DEMO_MAX_QUEUE": "3", "KLING_DEMO_CONCURRENCY": "1",
                                 "KLING_DEMO_SANDBOX_SECONDS": "120", "KLING_DEMO_MAX_JOBS_PER_VISITOR": "100"})
    try:
        page = PageSession(app.url)
        generate = next(d for d in page.config["dependencies"] if d.get("api_name") == "generate")
        image = page.upload(make_image())
        bodies = [{"data": [image, f"burst {n}", "", 0.5, 5, None, None, None, None], "fn_index": generate["id"],
                   "session_hash": uuid.uuid4().hex, "trigger_id": None} for n in range(30)]
        start = threading.Barrier(len(bodies))
        answers: list[requests.Response] = []

        def join(body: dict) -> None:
            start.wait()
            answers.append(requests.post(app.url + "gradio_api/queue/join", json=body, timeout=60))

        threads = [threading.Thread(target=join, args=(body,)) for body in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = [a for a in answers if a.status_code == 200]
        busy = [a for a in answers if a.status_code == 503]
        assert len(accepted) + len(busy) == 30, [a.text for a in answers if a.status_code not in (200, 503)]
        assert 1 <= len(accepted) <= 3 + 1, f"{len(accepted)} of 30 accepted with max_queue=3, concurrency=1"
        assert all("Queue is full" in a.text for a in busy)
    finally:
        app.stop()
