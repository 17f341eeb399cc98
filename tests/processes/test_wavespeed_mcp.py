"""WaveSpeed's own MCP server (`wavespeed-mcp`, PyPI) as a second real client of the sandbox, over stdio MCP.

It sends inputs its own way (a local image as a data URI, Wan-style extra fields, `guidance_scale=5` by
default) and reaches any host through WAVESPEED_API_HOST. Its pins (fastapi 0.109, requests 2.31, ...) clash
with gradio's, while at run time it needs only `mcp`, `requests`, `pydantic` and `python-dotenv`, so it is
installed with `pip install --no-deps -r requirements-mcp-client.txt` (see .ci/run).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys

import pytest
import requests

from kling_demo.store.videos import probe_video
from kling_demo.models import DEFAULT_MODEL
from tests.harness import start_sandbox_process
from tests.waiting import run_async

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("wavespeed_mcp") is None or importlib.util.find_spec("mcp") is None,
    reason="wavespeed-mcp is not installed: pip install --no-deps -r requirements-mcp-client.txt")


@pytest.fixture
def sandbox(tmp_path):
    served = start_sandbox_process("--inference-seconds", "1", log_path=tmp_path / "sandbox.log")
    yield served
    served.stop()


def call_generate_video(sandbox_url: str, cwd, **arguments) -> dict:
    """Start `wavespeed-mcp` on stdio, call its generate_video tool once, and return the JSON it answers."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    environment = {k: v for k, v in os.environ.items() if not k.startswith("WAVESPEED_")}
    environment.update({"WAVESPEED_API_KEY": "mcp-test-key", "WAVESPEED_API_HOST": sandbox_url,
                        "WAVESPEED_API_RESOURCE_MODE": "url", "WAVESPEED_WAIT_RESULT_TIMEOUT": "60",
                        "WAVESPEED_REQUEST_TIMEOUT": "30", "WAVESPEED_LOG_FILE": str(cwd / "wavespeed-mcp.log")})
    server = StdioServerParameters(command=sys.executable,
                                   args=["-c", "from wavespeed_mcp.server import main; main()"],
                                   env=environment, cwd=str(cwd))

    async def run() -> dict:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert "generate_video" in tools, tools
            result = await session.call_tool("generate_video", arguments)
            (content,) = result.content
            return json.loads(content.text)

    return run_async(asyncio.wait_for(run(), 120))


def test_an_image_to_video_call_with_kling_succeeds(sandbox, tmp_path, make_image):
    answer = call_generate_video(sandbox.url, tmp_path, image=str(make_image(size=(800, 600))),
                                 prompt="a kite rising over the dunes", model=DEFAULT_MODEL.model_id,
                                 guidance_scale=0.5, duration=5)
    assert answer["status"] == "success", answer
    (url,) = answer["urls"]
    video = tmp_path / "from-mcp.mp4"
    video.write_bytes(requests.get(url, timeout=30).content)
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    stats = requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()
    assert stats["submissions"] == 1


def test_its_wan_style_guidance_default_gets_the_sandbox_clear_400(sandbox, tmp_path, make_image):
    answer = call_generate_video(sandbox.url, tmp_path, image=str(make_image(size=(800, 600))),
                                 prompt="a kite rising over the dunes", model=DEFAULT_MODEL.model_id)
    assert answer["status"] == "error"
    assert "guidance_scale: must be a number between 0.00 and 1.00 (got 5)" in answer["error"], answer["error"]
    assert requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"] == 0, "nothing was created"
