"""The page's `/generate` API driven through gradio_client, as scripts and agents use it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from gradio_client.utils import Status

from kling_demo.service.backend import Backend
from kling_demo.config import Settings
from kling_demo.store.videos import probe_video
from kling_demo.web.page import build_app, launch_options
from tests.harness import free_port
from tests.waiting import wait_for


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


def test_generate_streams_statuses_then_the_video(app_url, make_image, tmp_path):
    url, sandbox = app_url
    client = Client(url, verbose=False, download_files=str(tmp_path / "client-downloads"))
    job = client.submit(handle_file(str(make_image(size=(720, 480)))), "a paper boat drifting", "", 0.5, 5, None,
                        api_name="/generate")
    status, task_id, video = job.result(timeout=120)
    statuses = [output[0] for output in job.outputs()]
    assert len(set(statuses)) >= 3, statuses
    assert any("Submitted" in s for s in statuses) and any("Rendering" in s for s in statuses)
    assert "Done" in status and task_id and task_id in status
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    assert sandbox.stats()["submissions"] == 1
    # The page serves the downloaded file in place: Gradio made no copy of it in its cache.
    (kept,) = (tmp_path / "data" / "videos").rglob("*.mp4")
    assert list(Path(get_upload_folder()).rglob(kept.name)) == []


def test_the_api_names_its_parameters_as_documented(app_url):
    url, _ = app_url
    info = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert parameters == ["image", "prompt", "negative_prompt", "guidance_scale", "duration", "end_image"]


def test_the_api_page_documents_an_integer_duration_named_outputs_and_the_docstring(app_url, make_image, tmp_path):
    url, _ = app_url
    endpoint = requests.get(url + "gradio_api/info", timeout=10).json()["named_endpoints"]["/generate"]
    duration = next(p for p in endpoint["parameters"] if p["parameter_name"] == "duration")
    assert duration["python_type"]["type"] == "int" and duration["parameter_default"] == 5
    assert [choice["const"] for choice in duration["type"]["oneOf"]] == [5, 10]
    assert "5 or 10" in duration["python_type"]["description"]
    assert [r["label"] for r in endpoint["returns"]] == ["status", "task_id", "video"]
    # What the API page's snippet says works as written, by keyword.
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    status, task_id, video = client.predict(image=handle_file(str(make_image())), prompt="a kite", duration=5,
                                            api_name="/generate")
    assert "Done" in status and task_id and Path(video).is_file()


@pytest.mark.parametrize("kind, expected", [("tiny", "300"), ("random bytes", "not an image"), ("empty", "empty")])
def test_a_refused_image_is_reported_and_nothing_is_uploaded(app_url, make_image, tmp_path, kind, expected):
    url, sandbox = app_url
    if kind == "tiny":
        image = make_image(size=(200, 200))
    else:
        image = tmp_path / "upload.png"
        image.write_bytes(os.urandom(4000) if kind == "random bytes" else b"")
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=expected):
        client.predict(handle_file(str(image)), "tiny", "", 0.5, 5, None, api_name="/generate")
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0


def test_a_fixed_input_says_what_was_changed(app_url, make_image):
    url, sandbox = app_url
    client = Client(url, verbose=False)
    webp = make_image(size=(640, 400), format="WEBP", mode="RGBA", color=(200, 40, 40, 128))
    status, task_id, video = client.predict(handle_file(str(webp)), "a red veil", "", 0.5, 5, None,
                                            api_name="/generate")
    assert "Done" in status and "Fixed before upload" in status
    assert "WebP" in status and "transparency" in status
    assert probe_video(video).frames == 120


def test_a_task_submitted_elsewhere_is_fetched_by_id_with_your_own_key(app_url, make_image):
    from kling_demo.wavespeed.client import WaveSpeedClient
    from kling_demo.models import KLING_V2_I2V_MASTER

    url, sandbox = app_url
    with WaveSpeedClient(sandbox.base_url, "my-own-key") as elsewhere:
        image_url = elsewhere.upload(make_image(), "image/png")
        task_id = elsewhere.submit(KLING_V2_I2V_MASTER, {"image": image_url, "prompt": "made elsewhere"}).task_id
    without_key = Client(url, verbose=False)
    with pytest.raises(Exception, match="enter your own key"):
        without_key.predict(task_id, api_name="/resume")
    visitor = Client(url, verbose=False, headers={"X-WaveSpeed-Key": "my-own-key"})
    status, resumed_id, video = visitor.predict(task_id, api_name="/resume")
    assert resumed_id == task_id and "Done" in status
    assert probe_video(video).duration_seconds == pytest.approx(5.0)
    (entry,) = visitor.predict(api_name="/history")
    assert "fetched by task id" in entry["caption"]
    assert sandbox.stats()["submissions"] == 1


def test_a_full_queue_says_the_app_is_busy_instead_of_waiting_forever(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(inference_seconds=4)
    settings = Settings(data_dir=tmp_path / "data", concurrency=1, max_queue=1, max_jobs_per_visitor=10)
    demo = build_app(settings, Backend(base_url=sandbox.base_url, api_key="k", sandbox=sandbox))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image = handle_file(str(make_image()))
        running = client.submit(image, "first", "", 0.5, 5, None, api_name="/generate")
        wait_for(running.outputs, 60, "the first job to run")  # the queue now has room for one more
        waiting = client.submit(image, "second", "", 0.5, 5, None, api_name="/generate")
        wait_for(lambda: waiting.status().code is Status.IN_QUEUE, 30, "the second job to wait in the queue")
        with pytest.raises(Exception, match="(?i)queue is full"):
            client.predict(image, "third", "", 0.5, 5, None, api_name="/generate")
        assert "Done" in running.result(timeout=60)[0] and "Done" in waiting.result(timeout=60)[0]
    finally:
        demo.close()


def test_a_page_without_its_owner_id_is_refused_and_gets_one_from_the_load_event(app_url, make_image):
    from tests.page_session import PageSession, error_of

    url, sandbox = app_url
    page = PageSession(url)  # a tab whose load event never ran: it has no owner id
    inputs = (page.upload(make_image()), "a paper boat drifting", "", 0.5, 5, None)
    busy = page.event("generate", "click")
    assert page.join(busy, *inputs)["success"]
    refused = error_of(page.join(page.then(busy), *inputs))
    resume_busy = page.event("resume", "click")
    page.run(resume_busy)
    refused_resume = error_of(page.join(page.then(resume_busy), "0" * 32))
    for message in (refused, refused_resume):
        assert "has not finished loading" in message and "Reload the page" in message, message
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0

    load = next(d for d in page.config["dependencies"] if any(trigger == "load" for _, trigger in d["targets"]))
    owner_store, *_ = page.run(load, None)["data"]  # as the page calls it: outside the queue
    assert re.fullmatch(r"[0-9a-f]{32}\.[0-9a-f]{64}", owner_store), "the browser keeps its signed owner id"
    done = page.join(page.then(busy), *inputs)
    assert done["success"] and "Done" in done["output"]["data"][0]
    gallery, _ = page.run(page.event("refresh-history", "click"))["data"]
    assert len(gallery) == 1, "the video is in this tab's history"
