"""The history's selection stays one task: the highlighted tile, the detail and the id the buttons act on.

The page's history timer reads the selection when it fires and answers later; meanwhile a job's end may have
selected its own video. These call the page's handlers as the timer and the job's steps do, on a real journal.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pytest

from kling_demo.config import Settings
from kling_demo.models import DEFAULT_MODEL, KeySource, Stage, TaskStatus
from kling_demo.web.handlers import SELECTED_OUTPUTS, Handlers


@pytest.fixture
def page(make_service) -> Handlers:
    service = make_service("http://127.0.0.1:9", background=False)  # nothing here talks to the API
    return Handlers(service, Settings(data_dir=service.settings.data_dir))


def new_visitor(page: Handlers) -> tuple[str, str]:
    """A browser's signed owner id, as the page gets it on loading, and the owner its tasks are kept under."""
    token = page.service.visitors.issue(None)
    return token, page.owner(None, token).owner


def add_task(page: Handlers, owner: str, task_id: str, status: TaskStatus = TaskStatus.PROCESSING) -> None:
    page.service.journal.record_submission(owner=owner, task_id=task_id, model=DEFAULT_MODEL.model_id,
                                           api_base="http://127.0.0.1:9", key_source=KeySource.SERVER,
                                           params={"prompt": task_id, "duration": 5}, status=status)


def finish(page: Handlers, owner: str, task_id: str, tmp_path: Any) -> None:
    video = tmp_path / f"{task_id}.mp4"
    video.write_bytes(b"\0")
    page.service.journal.complete(owner, task_id, video_path=str(video), inference_ms=3000)


def highlighted(gallery_update: dict[str, Any], ids: list[str]) -> str | None:
    index = gallery_update["selected_index"]
    return None if index is None else ids[index]


def test_a_late_timer_answer_leaves_the_job_s_selection_and_keeps_the_highlight_on_the_shown_task(page, tmp_path):
    token, owner = new_visitor(page)
    add_task(page, owner, "first")
    seen_while_first_ran = page.refresh_changed(token, "", "", "", None)[2]
    finish(page, owner, "first", tmp_path)
    add_task(page, owner, "second")
    finish(page, owner, "second", tmp_path)

    # The timer fired while "first" was selected (and shown as completed) and answers after the job's end
    # selected "second": it redraws the tiles, but neither the detail nor the selection goes back to "first".
    gallery, ids, seen, *detail = page.refresh_changed(token, seen_while_first_ran, "first", "completed", None)
    assert detail == [gr.skip()] * SELECTED_OUTPUTS
    assert highlighted(gallery, ids) == "first"  # the tile of the task its detail was shown with
    # Its next look reads the selection the job's end made, and moves the highlight there.
    gallery, ids, _, *detail = page.refresh_changed(token, seen, "second", "completed", None)
    assert highlighted(gallery, ids) == "second"
    assert detail == [gr.skip()] * SELECTED_OUTPUTS


def test_the_shown_task_s_detail_follows_its_status_and_a_new_task_does_not_take_its_highlight(page, tmp_path):
    token, owner = new_visitor(page)
    add_task(page, owner, "older")
    finish(page, owner, "older", tmp_path)
    add_task(page, owner, "rendering")
    gallery, ids, seen, *_ = page.refresh_changed(token, "", "rendering", "processing", None)
    assert ids[0] == "rendering" and highlighted(gallery, ids) == "rendering"

    finish(page, owner, "rendering", tmp_path)
    _, _, seen, video, text, selected, shown, *_ = page.refresh_changed(token, seen, "rendering", "processing", None)
    assert (selected, shown) == ("rendering", "completed") and video and "Done" in text

    add_task(page, owner, "newest")  # tiles move down one place; the highlight goes with its task
    gallery, ids, _, *detail = page.refresh_changed(token, seen, "rendering", "completed", None)
    assert ids[0] == "newest" and highlighted(gallery, ids) == "rendering"
    assert detail == [gr.skip()] * SELECTED_OUTPUTS


def test_after_a_job_that_failed_the_selected_tile_stays_highlighted_among_the_redrawn_ones(page, tmp_path):
    token, owner = new_visitor(page)
    add_task(page, owner, "kept")
    finish(page, owner, "kept", tmp_path)
    add_task(page, owner, "failed-after")
    page.service.journal.fail(owner, "failed-after", "The render failed.")
    items, ids = page.show_history(token, None)  # as `/history` gives them to programs: tiles, no selection
    assert ids == ["failed-after", "kept"] and len(items) == 2
    gallery, *detail = page.select_finished(token, "failed-after", Stage.FAILED.value, ids, "kept", None)
    assert highlighted(gallery, ids) == "kept" and detail == [gr.skip()] * SELECTED_OUTPUTS
