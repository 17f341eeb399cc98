"""`KLING_DEMO_MCP=1`: the app is also an MCP server whose `generate` tool is described by its docstring.

Needs the `gradio[mcp]` extra (the `mcp` package); without it the MCP tests skip with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import uuid

import pytest
import requests

from tests.harness import Served, start_app_process, start_sandbox_process
from tests.waiting import run_async

needs_mcp = pytest.mark.skipif(importlib.util.find_spec("mcp") is None,
                               reason='the `mcp` package is not installed: pip install "gradio[mcp]==<pinned gradio>"')
DOCUMENTED = ["image", "prompt", "negative_prompt", "guidance_scale", "duration", "end_image"]


def schema(app: Served) -> requests.Response:
    return requests.get(app.url + "gradio_api/mcp/schema", timeout=10)


def test_the_mcp_server_is_off_unless_asked_for(tmp_path):
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log")
    try:
        assert schema(app).status_code == 404
    finally:
        app.stop()


@pytest.fixture
def mcp_app(tmp_path):
    """The app with KLING_DEMO_MCP=1 on its server key, against a sandbox that accepts only a visitor's key."""
    visitor_key = f"ws-canary-{uuid.uuid4().hex}"
    sandbox = start_sandbox_process("--inference-seconds", "1", "--api-key", visitor_key)
    app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log",
                            env={"KLING_DEMO_MCP": "1", "WAVESPEED_API_KEY": "server-key",
                                 "WAVESPEED_BASE_URL": sandbox.url})
    yield app, sandbox, visitor_key
    app.stop()
    sandbox.stop()


@needs_mcp
@pytest.mark.filterwarnings("ignore:Use `streamable_http_client`:DeprecationWarning")
def test_the_generate_tool_is_described_by_its_docstring_and_callable_with_your_key(mcp_app, make_image):
    app, sandbox, visitor_key = mcp_app
    answer = schema(app)
    assert answer.status_code == 200
    tools = {tool["name"]: tool for tool in answer.json()}
    assert set(tools) <= {"generate", "resume", "show_history"}, "page-only events must not become tools"
    generate = tools["generate"]
    assert generate["meta"]["endpoint_name"] == "generate"

    summary = "Turn one still image into a 5 or 10 second video with Kling 2.0 Master (WaveSpeedAI)."
    assert generate["description"].startswith(summary)  # the first line of `generate`'s docstring
    properties = generate["inputSchema"]["properties"]
    assert list(properties) == DOCUMENTED
    assert "300×300" in properties["image"]["description"] and "5 or 10" in properties["duration"]["description"]
    # An agent may leave out what the page leaves optional, and say `duration: 5` as the schema allows.
    assert generate["inputSchema"]["required"] == ["image", "prompt"]
    # Integer constants, not an `enum`: gradio_client writes any enum as quoted strings on the API page.
    assert properties["duration"]["type"] == "integer"
    assert [choice["const"] for choice in properties["duration"]["oneOf"]] == [5, 10]

    picture = "data:image/png;base64," + base64.b64encode(make_image(size=(720, 480)).read_bytes()).decode()
    arguments = {"image": picture, "prompt": "a kite over the dunes", "duration": 5}
    with_key = run_async(call_tool(app, "generate", arguments, {"X-WaveSpeed-Key": visitor_key}))
    assert not with_key.isError, with_key.content
    assert "Done" in with_key.content[0].text and ".mp4" in with_key.content[0].text
    assert requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"] == 1

    without_key = run_async(call_tool(app, "generate", arguments, {}))  # the server's key: this sandbox says no
    assert without_key.isError and "rejected the API key" in without_key.content[0].text
    assert all(visitor_key not in part.text for part in [*with_key.content, *without_key.content]
               if hasattr(part, "text"))


async def call_tool(app: Served, name: str, arguments: dict, headers: dict[str, str]):
    """One MCP tool call over Streamable HTTP, as an agent makes it, with `headers` on every request."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(app.url + "gradio_api/mcp/", headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await asyncio.wait_for(session.call_tool(name, arguments), timeout=60)
