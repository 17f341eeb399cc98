"""Building on one's history: reuse a task's settings, continue from its last frame, delete it; only one's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kling_demo.service.backend import Backend
from kling_demo.config import Settings
from kling_demo.errors import InputRejected, NotYours
from kling_demo.models import JobRequest, Stage
from kling_demo.service.service import Service
from kling_demo.service.visitors import Visitor
from kling_demo.web.views import filled

ALICE, BOB = Visitor("browser:alice"), Visitor("browser:bob")


@pytest.fixture
def service(make_sandbox, tmp_path):
    made = Service(Settings(data_dir=tmp_path / "data"), Backend(base_url=make_sandbox().base_url,
                                                                 api_key="server-key"))
    yield made
    made.close()


def finished(service: Service, visitor: Visitor, request: JobRequest) -> str:
    with service.generate(request, visitor) as job:
        updates = list(job)
    assert updates[-1].stage is Stage.DONE, updates[-1]
    return updates[-1].task_id


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_reuse_gives_back_every_setting_and_both_frames_as_uploaded(service, make_image):
    first, end = make_image(size=(640, 360), color=(200, 30, 30)), make_image(size=(640, 360), color=(30, 30, 200))
    task_id = finished(service, ALICE, JobRequest(image=first, prompt="a red dawn", negative_prompt="fog",
                                                  guidance_scale=0.35, duration=10, end_image=end))
    fill = service.reuse(ALICE, task_id)
    assert (fill.prompt, fill.negative_prompt, fill.guidance_scale, fill.duration) == ("a red dawn", "fog", 0.35, 10)
    assert not fill.clear_end_frame and fill.missing == () and not fill.from_last_frame
    assert "not kept" not in filled(fill)
    with Image.open(fill.first_frame) as kept_first, Image.open(fill.end_frame) as kept_end:
        assert kept_first.size == (640, 360) and kept_first.convert("RGB").getpixel((5, 5))[0] > 150
        assert kept_end.convert("RGB").getpixel((5, 5))[2] > 150


def test_continue_takes_the_last_frame_and_keeps_the_prompt(service, make_image):
    task_id = finished(service, ALICE, JobRequest(image=make_image(size=(640, 360), color=(200, 30, 30)),
                                                  prompt="onwards", end_image=make_image(size=(640, 360),
                                                                                         color=(30, 30, 200))))
    fill = service.continue_from(ALICE, task_id)
    assert fill.prompt == "onwards" and fill.clear_end_frame and fill.end_frame is None and fill.from_last_frame
    with Image.open(fill.first_frame) as last:
        red, _, blue = last.convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert blue > red, "the sandbox video ends on the blue end frame"
    assert fill.first_frame.parent.is_relative_to(service.videos_dir)


def test_nobody_reads_or_deletes_another_owners_task(service, make_image):
    task_id = finished(service, ALICE, JobRequest(image=make_image(), prompt="mine"))
    for action in (service.reuse, service.continue_from, service.delete):
        for forged in (task_id, "", None, "../journal", ["x"]):
            with pytest.raises(NotYours):
                action(BOB, forged)  # type: ignore[arg-type]
    assert service.task(ALICE, task_id) is not None


def test_delete_removes_the_entry_and_every_local_file_and_says_what_stays_at_wavespeed(service, make_image):
    before = files_under(service.videos_dir)
    task_id = finished(service, ALICE, JobRequest(image=make_image(), prompt="gone soon",
                                                  end_image=make_image(color=(0, 0, 200))))
    service.continue_from(ALICE, task_id)  # a last frame exists too
    assert len(files_under(service.videos_dir) - before) >= 4
    assert service.delete(ALICE, task_id) is None
    message = service.voice.deleted()  # what the page says once it is done (a live backend: the charge stays)
    assert "WaveSpeed" in message and "charge stands" in message
    assert service.task(ALICE, task_id) is None and service.tasks(ALICE) == []
    assert files_under(service.videos_dir) - before == set()
    assert [path for path in service.videos_dir.iterdir() if path.is_dir()] == []  # its folder went too


def test_a_running_task_cannot_be_deleted(service, make_image):
    service.journal.record_submission(owner=ALICE.owner, task_id="running1", model="m", api_base="x",
                                      key_source="server", params={"prompt": "p"}, status="processing")
    with pytest.raises(InputRejected, match="still rendering"):
        service.delete(ALICE, "running1")
    assert service.task(ALICE, "running1") is not None


def test_reuse_of_a_task_from_before_frames_were_kept_says_what_is_missing(service, tmp_path):
    service.journal.record_submission(owner=ALICE.owner, task_id="old1", model="m", api_base="x", key_source="server",
                                      params={"prompt": "old", "guidance_scale": "odd", "duration": 7,
                                              "end_image": True}, status="failed")
    fill = service.reuse(ALICE, "old1")
    assert fill.first_frame is None and fill.end_frame is None
    assert (fill.guidance_scale, fill.duration) == (0.5, 5)  # odd values fall back to the defaults
    assert fill.missing == ("first frame", "end frame")
    assert "first frame and end frame were not kept" in filled(fill)
    with pytest.raises(InputRejected, match="no video"):
        service.continue_from(ALICE, "old1")
