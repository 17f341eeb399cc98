"""The history at a glance: a tile per task that shows its state, and a detail with every setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kling_demo.models import KeySource, TaskStatus
from kling_demo.store import videos
from kling_demo.store.journal import Journal
from kling_demo.web import tiles, views
from kling_demo.web.views import TileState
from kling_demo.words import Voice

LIVE = Voice()
SANDBOX = Voice(sandbox=True)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite3")


def add(journal: Journal, tmp_path: Path, task_id: str, status: TaskStatus, **params) -> Path:
    frame = tmp_path / f"{task_id}.jpg"
    Image.new("RGB", (320, 180), (40, 160, 60)).save(frame)
    journal.record_submission(owner="a", task_id=task_id, model="m", api_base="http://x", key_source=KeySource.SERVER,
                              params={"prompt": "A fox runs *fast*", "negative_prompt": "blur",
                                      "guidance_scale": 0.65, "duration": 10, "end_image": True, **params},
                              first_frame=str(frame), status=status)
    return frame


def corners(path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The colour of a tile's bottom-right corner (the picture) and of its top (where the band is, clear of the
    gallery's caption)."""
    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
        return rgb.getpixel((rgb.width - 2, rgb.height - 2)), rgb.getpixel((rgb.width - 2, 2))


def test_each_state_has_its_own_symbol_and_tile(journal, tmp_path):
    frames = {task_id: add(journal, tmp_path, task_id, status) for task_id, status in
              (("done1", TaskStatus.CREATED), ("run1", TaskStatus.PROCESSING), ("fail1", TaskStatus.FAILED),
               ("lost1", TaskStatus.LOST))}
    journal.complete("a", "done1", video_path=str(tmp_path / "v.mp4"), inference_ms=41_000)
    journal.fail("a", "fail1", "The generation failed: bad luck")
    intent = journal.record_intent(owner="a", model="m", api_base="http://x", key_source=KeySource.SERVER,
                                   params={"prompt": "lost answer"})
    journal.fail("a", intent, "outcome unknown", status=TaskStatus.UNKNOWN)
    by_id = {record.task_id: record for record in journal.for_owner("a")}

    assert {task_id: views.tile_state(record) for task_id, record in by_id.items()} == {
        "done1": TileState.DONE, "run1": TileState.RENDERING, "fail1": TileState.FAILED,
        "lost1": TileState.FAILED, intent: TileState.UNKNOWN}
    entries = dict(zip(by_id, tiles.items(list(by_id.values()), tmp_path / "pending.png", LIVE)))
    assert entries["done1"] == (str(frames["done1"]), entries["done1"][1]) and entries["done1"][1].startswith("✓ Done")
    assert entries["run1"][1].startswith("⟳ Rendering") and entries["fail1"][1].startswith("✕ Failed")
    assert entries["lost1"][1].startswith("✕ Lost") and entries[intent][1].startswith("⚠ Outcome unknown")
    # A failed and a running tile are copies of the first frame with their own look; the original is untouched.
    failed, running = entries["fail1"][0], entries["run1"][0]
    assert failed != str(frames["fail1"]) and Path(failed).exists()
    plain, band = corners(failed)
    assert max(plain) - min(plain) < 10, "a failed task's picture is greyed"
    assert band[0] > 150 > band[1], "with a red band"
    plain, band = corners(running)
    assert plain[1] > plain[0] and band[2] > 150 > band[0], "a running task keeps its colours, with a blue band"
    # Made once: asking again reuses the copy.
    made = Path(failed).stat().st_mtime_ns
    tiles.items(list(by_id.values()), tmp_path / "pending.png", LIVE)
    assert Path(failed).stat().st_mtime_ns == made


def test_a_task_without_a_first_frame_gets_a_badged_placeholder(journal, tmp_path):
    placeholder = tmp_path / "pending.png"
    Image.new("RGB", (320, 180), (226, 232, 240)).save(placeholder)
    journal.record_submission(owner="a", task_id="byid", model="m", api_base="http://x", key_source=KeySource.VISITOR,
                              params={"prompt": "", "resumed": True}, status=TaskStatus.FAILED)
    ((picture, caption),) = tiles.items(journal.for_owner("a"), placeholder, LIVE)
    assert picture.endswith("pending.failed.jpg") and "(fetched by task id)" in caption


def test_the_sandbox_names_itself_where_wavespeed_ended_a_task(journal, tmp_path):
    add(journal, tmp_path, "c1", TaskStatus.CREATED)
    journal.fail("a", "c1", "cancelled", status=TaskStatus.CANCELLED)
    record = journal.get("a", "c1")
    assert "Cancelled by WaveSpeed" in views.caption(record, LIVE)
    assert "Cancelled by the sandbox" in views.caption(record, SANDBOX)


def test_the_detail_shows_every_setting_and_the_prompt_literally(journal, tmp_path):
    add(journal, tmp_path, "t1", TaskStatus.CREATED)
    journal.complete("a", "t1", video_path=str(tmp_path / "v.mp4"), inference_ms=41_200)
    text = views.detail(journal.get("a", "t1"), LIVE)
    assert "✓ Done" in text and "rendered in 41.2 s" in text
    assert r"A fox runs \*fast\*" in text  # shown as typed, not as emphasis
    assert "**Negative prompt:** blur" in text and "**Guidance:** 0\\.65" in text
    assert "**Duration:** 10 s" in text and "**End frame:** yes" in text and "`t1`" in text


def test_the_detail_of_a_failed_task_says_why(journal, tmp_path):
    add(journal, tmp_path, "t2", TaskStatus.CREATED, end_image=False)
    journal.fail("a", "t2", "The generation failed: <b>nope</b>")
    text = views.detail(journal.get("a", "t2"), LIVE)
    assert "✕ Failed" in text and "**End frame:** no" in text and r"\<b\>nope\</b\>" in text


def test_the_detail_states_the_cost_as_quoted_and_free_in_the_sandbox(journal, tmp_path):
    add(journal, tmp_path, "t5", TaskStatus.CREATED)
    assert "**Cost:**" not in views.detail(journal.get("a", "t5"), LIVE), "no quote kept: no cost is made up"
    journal.set_price("a", "t5", 1.4, "USD")
    journal.complete("a", "t5", video_path=str(tmp_path / "v.mp4"), inference_ms=1000)
    record = journal.get("a", "t5")
    assert "**Cost:** $1.40 (quoted at submission)" in views.detail(record, LIVE)
    assert "**Cost:** Free (sandbox)" in views.detail(record, SANDBOX)
    add(journal, tmp_path, "t6", TaskStatus.CREATED)
    journal.set_price("a", "t6", 1.4, "USD")
    journal.fail("a", "t6", "The generation failed: bad luck")
    assert "whether a task that ended without a video is charged is WaveSpeed's to say" in \
        views.detail(journal.get("a", "t6"), LIVE)


def test_the_end_frame_is_found_beside_the_first_and_its_picture_is_named_in_the_detail(journal, tmp_path,
                                                                                      sandbox, make_service):
    service = make_service(sandbox)
    frame = add(journal, tmp_path, "t3", TaskStatus.CREATED)
    record = journal.get("a", "t3")
    assert service.end_frame(record) is None  # not kept (yet): the detail still says there was one
    assert "**End frame:** yes" in views.detail(record, LIVE)
    kept = frame.with_name(f"{frame.stem}.{videos.FRAME_ROLES[1]}.png")
    Image.new("RGB", (320, 180), (10, 10, 60)).save(kept)
    assert service.end_frame(record) == kept
    assert "**End frame:** yes, pictured" in views.detail(record, LIVE, end_frame_shown=True)
    add(journal, tmp_path, "t4", TaskStatus.CREATED, end_image=False)
    frame.with_name(f"t4.{videos.FRAME_ROLES[1]}.png").write_bytes(kept.read_bytes())
    assert service.end_frame(journal.get("a", "t4")) is None  # a task made without one shows none
