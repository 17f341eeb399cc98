"""The page's `/generate` API driven through gradio_client, as scripts and agents use it."""

from __future__ import annotations

import socket

import pytest
from gradio_client import Client, handle_file

from kling_demo.backend import Backend
from kling_demo.config import Settings
from kling_demo.media import probe_video
from kling_demo.ui import build_app, launch_options


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_url(make_sandbox, tmp_path):
    sandbox = make_sandbox(inference_seconds=2.5)
    settings = Settings(data_dir=tmp_path / "data")
    demo = build_app(settings, Backend(base_url=sandbox.base_url, api_key="k", sandbox=sandbox))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    yield f"http://127.0.0.1:{port}/", sandbox
    demo.close()


def test_generate_streams_statuses_then_the_video(app_url, make_image):
    url, sandbox = app_url
    client = Client(url, verbose=False)
    job = client.submit(handle_file(str(make_image(size=(720, 480)))), "a paper boat drifting", "", 0.5, 5, None,
                        api_name="/generate")
    status, task_id, video = job.result(timeout=120)
    statuses = [output[0] for output in job.outputs()]
    assert len(set(statuses)) >= 3, statuses
    assert any("Submitted" in s for s in statuses) and any("Rendering" in s for s in statuses)
    assert "Done" in status and task_id and task_id in status
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    assert sandbox.stats()["submissions"] == 1


def test_the_api_names_its_parameters_as_documented(app_url):
    url, _ = app_url
    info = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert parameters == ["image", "prompt", "negative_prompt", "guidance_scale", "duration", "end_image"]


def test_a_refused_image_is_reported_and_nothing_is_uploaded(app_url, make_image):
    url, sandbox = app_url
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="300"):
        client.predict(handle_file(str(make_image(size=(200, 200)))), "tiny", "", 0.5, 5, None, api_name="/generate")
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0
