"""A task brought in from "Your WaveSpeed tasks" keeps what its listing showed: prompt, settings and frames.

In process, against a real sandbox over loopback HTTP; the task is made with the visitor's key outside the app.
"""

from __future__ import annotations

from PIL import Image

from kling_demo.jobs import adoption
from kling_demo.jobs.steps import Stage
from kling_demo.models import DEFAULT_MODEL
from kling_demo.service.visitors import Visitor
from kling_demo.wavespeed.client import Prediction, WaveSpeedClient
from tests.service.test_service import BOB, run_to_end

BOBS_KEY = "bob's key"


def test_a_task_brought_in_from_the_listing_keeps_its_prompt_settings_and_frames(make_sandbox, make_service,
                                                                                 make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    first, end = make_image(size=(800, 600)), make_image(size=(800, 600), color=(10, 20, 200))
    with WaveSpeedClient(sandbox.base_url, BOBS_KEY) as client:
        task_id = client.submit(DEFAULT_MODEL, {
            "image": client.upload(first, "image/png"), "end_image": client.upload(end, "image/png"),
            "prompt": "A heron lifts off the water", "negative_prompt": "rain", "guidance_scale": 0.7,
            "duration": 10}).task_id
    bob = Visitor(BOB.owner, BOBS_KEY)
    (listed,) = service.recent_tasks(bob)
    assert listed.prompt == "A heron lifts off the water"

    assert run_to_end(service.adopt(task_id, bob))[-1].stage is Stage.DONE
    record = service.task(bob, task_id)
    assert record is not None and not record.resumed  # its settings are known here
    assert (record.prompt, record.params["negative_prompt"], record.params["guidance_scale"], record.duration,
            record.params["end_image"]) == ("A heron lifts off the water", "rain", 0.7, 10, True)
    fill = service.reuse(bob, task_id)
    assert (fill.prompt, fill.negative_prompt, fill.guidance_scale, fill.duration, fill.missing) == (
        "A heron lifts off the water", "rain", 0.7, 10, ())
    with Image.open(fill.first_frame) as kept_first, Image.open(fill.end_frame) as kept_end:
        assert kept_first.size == kept_end.size == (800, 600)
        assert kept_end.convert("RGB").getpixel((400, 300)) == (10, 20, 200)  # each frame in its place
    assert sandbox.stats()["submissions"] == 1


def test_a_task_resumed_by_id_keeps_no_listing_settings(make_sandbox, make_service, make_image):
    """Only a pick from the listing reads it: a resume by id stays as it was (settings unknown here)."""
    sandbox = make_sandbox()
    service = make_service(sandbox)
    with WaveSpeedClient(sandbox.base_url, BOBS_KEY) as client:
        task_id = client.submit(DEFAULT_MODEL, {"image": client.upload(make_image(), "image/png"),
                                                "prompt": "elsewhere", "duration": 5}).task_id
    bob = Visitor(BOB.owner, BOBS_KEY)
    assert run_to_end(service.resume(task_id, bob))[-1].stage is Stage.DONE
    record = service.task(bob, task_id)
    assert record is not None and record.resumed and record.first_frame is None


def test_only_frames_on_the_apis_or_the_outputs_host_are_fetched():
    """A listed image URL is whatever its submitter sent: the app never fetches one on another host."""
    item = Prediction.from_envelope({"data": {"id": "t1", "status": "completed",
                                              "outputs": ["https://cdn.example.net/outputs/t1.mp4"]}})
    api = "https://api.wavespeed.ai"
    assert adoption._fetchable("https://cdn.example.net/media/a.png", item, api) == \
        "https://cdn.example.net/media/a.png"
    assert adoption._fetchable("https://api.wavespeed.ai/files/a.png", item, api) is not None
    for foreign in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/admin",
                    "https://cdn.example.net.evil.com/a.png", "file:///etc/passwd", "data:image/png;base64,AAAA",
                    "https://user@cdn.example.net/a.png", None, 42):
        assert adoption._fetchable(foreign, item, api) is None, foreign
