"""The history at a glance: a tile per task that shows its state, and a detail with every setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kling_demo.store import videos
from kling_demo.web import history_view
from kling_demo.web.history_view import TileState
from kling_demo.store.journal import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite3")


def add(journal: Journal, tmp_path: Path, task_id: str, status: str, **params) -> Path:
    frame = tmp_path / f"{task_id}.jpg"
    Image.new("RGB", (320, 180), (40, 160, 60)).save(frame)
    journal.record_submission(owner="a", task_id=task_id, model="m", api_base="http://x", key_source="server",
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
              (("done1", "created"), ("run1", "processing"), ("fail1", "failed"), ("lost1", "lost"))}
    journal.complete("a", "done1", video_path=str(tmp_path / "v.mp4"), inference_ms=41_000)
    journal.fail("a", "fail1", "The generation failed: bad luck")
    intent = journal.record_intent(owner="a", model="m", api_base="http://x", key_source="server",
                                   params={"prompt": "lost answer"})
    journal.fail("a", intent, "outcome unknown", status="unknown")
    by_id = {record.task_id: record for record in journal.for_owner("a")}

    assert {task_id: history_view.tile_state(record) for task_id, record in by_id.items()} == {
        "done1": TileState.DONE, "run1": TileState.RENDERING, "fail1": TileState.FAILED,
        "lost1": TileState.FAILED, intent: TileState.UNKNOWN}
    tiles = dict(zip(by_id, history_view.items(list(by_id.values()), tmp_path / "pending.png")))
    assert tiles["done1"] == (str(frames["done1"]), tiles["done1"][1]) and tiles["done1"][1].startswith("✓ Done")
    assert tiles["run1"][1].startswith("⟳ Rendering") and tiles["fail1"][1].startswith("✕ Failed")
    assert tiles["lost1"][1].startswith("✕ Lost") and tiles[intent][1].startswith("⚠ Outcome unknown")
    # A failed and a running tile are copies of the first frame with their own look; the original is untouched.
    failed, running = tiles["fail1"][0], tiles["run1"][0]
    assert failed != str(frames["fail1"]) and Path(failed).exists()
    plain, band = corners(failed)
    assert max(plain) - min(plain) < 10, "a failed task's picture is greyed"
    assert band[0] > 150 > band[1], "with a red band"
    plain, band = corners(running)
    assert plain[1] > plain[0] and band[2] > 150 > band[0], "a running task keeps its colours, with a blue band"
    # Made once: asking again reuses the copy.
    made = Path(failed).stat().st_mtime_ns
    history_view.items(list(by_id.values()), tmp_path / "pending.png")
    assert Path(failed).stat().st_mtime_ns == made


def test_a_task_without_a_first_frame_gets_a_badged_placeholder(journal, tmp_path):
    placeholder = tmp_path / "pending.png"
    Image.new("RGB", (320, 180), (226, 232, 240)).save(placeholder)
    journal.record_submission(owner="a", task_id="byid", model="m", api_base="http://x", key_source="visitor",
                              params={"prompt": "", "resumed": True}, status="failed")
    ((picture, caption),) = history_view.items(journal.for_owner("a"), placeholder)
    assert picture.endswith("pending.failed.jpg") and "(fetched by task id)" in caption


def test_the_detail_shows_every_setting_and_the_prompt_literally(journal, tmp_path):
    add(journal, tmp_path, "t1", "created")
    journal.complete("a", "t1", video_path=str(tmp_path / "v.mp4"), inference_ms=41_200)
    text = history_view.detail(journal.get("a", "t1"))
    assert "✓ Done" in text and "rendered in 41.2 s" in text
    assert r"A fox runs \*fast\*" in text  # shown as typed, not as emphasis
    assert "**Negative prompt:** blur" in text and "**Guidance:** 0\\.65" in text
    assert "**Duration:** 10 s" in text and "**End frame:** yes" in text and "`t1`" in text


def test_the_detail_of_a_failed_task_says_why(journal, tmp_path):
    add(journal, tmp_path, "t2", "created", end_image=False)
    journal.fail("a", "t2", "The generation failed: <b>nope</b>")
    text = history_view.detail(journal.get("a", "t2"))
    assert "✕ Failed" in text and "**End frame:** no" in text and r"\<b\>nope\</b\>" in text


def test_the_end_frame_is_found_beside_the_first_and_its_picture_is_named_in_the_detail(journal, tmp_path):
    frame = add(journal, tmp_path, "t3", "created")
    record = journal.get("a", "t3")
    assert history_view.end_frame(record) is None  # not kept (yet): the detail still says there was one
    assert "**End frame:** yes" in history_view.detail(record)
    kept = frame.with_name(f"{frame.stem}.{videos.FRAME_ROLES[1]}.png")
    Image.new("RGB", (320, 180), (10, 10, 60)).save(kept)
    assert history_view.end_frame(record) == kept
    assert "**End frame:** yes, pictured" in history_view.detail(record, end_frame_shown=True)
    assert "**Cost:** Free (sandbox)" in history_view.detail(record, "free (sandbox)")
    assert "**Cost:** $1.40 (WaveSpeed's quote" in history_view.detail(record, "cost $1.40 (WaveSpeed's quote)")
    add(journal, tmp_path, "t4", "created", end_image=False)
    frame.with_name(f"t4.{videos.FRAME_ROLES[1]}.png").write_bytes(kept.read_bytes())
    assert history_view.end_frame(journal.get("a", "t4")) is None  # a task made without one shows none
