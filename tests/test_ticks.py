"""API callers get every change they can act on, and a running-time tick only now and then."""

from __future__ import annotations

from pathlib import Path

from kling_demo.jobs.steps import JobUpdate, Stage
from kling_demo.web.ticks import API_TICK_SECONDS, worth_sending

RENDERING = "WaveSpeed is rendering your video… {} s so far. Renders like this usually take about 30 s."


def rendering(elapsed: float, task_id: str = "t1") -> JobUpdate:
    return JobUpdate(Stage.PROCESSING, RENDERING.format(round(elapsed)), elapsed, task_id=task_id)


def test_a_tick_that_only_moves_the_running_time_waits_for_the_next_refresh() -> None:
    sent = rendering(12.0)
    assert not worth_sending(sent, rendering(14.0))
    assert worth_sending(sent, rendering(12.0 + API_TICK_SECONDS))


def test_the_first_update_and_every_change_of_stage_task_or_words_are_sent() -> None:
    sent = rendering(12.0)
    assert worth_sending(None, sent)
    assert worth_sending(sent, JobUpdate(Stage.DOWNLOADING, "Finished. Downloading the video…", 13.0, task_id="t1"))
    assert worth_sending(sent, rendering(13.0, task_id="t2"))
    outage = JobUpdate(Stage.PROCESSING, "WaveSpeed is not answering (a timeout); still waiting for task t1, "
                                         "retrying in 2 s. Nothing needs to be submitted again.", 13.0, task_id="t1")
    assert worth_sending(sent, outage)
    assert worth_sending(JobUpdate(Stage.QUEUED, "Queued at WaveSpeed… 3 s so far.", 3.0, task_id="t1"), sent)


def test_updates_outside_the_wait_at_wavespeed_are_never_thinned() -> None:
    done = JobUpdate(Stage.DONE, "Done in 31 s.", 31.0, task_id="t1", video_path=Path("/videos/t1.mp4"))
    assert worth_sending(done, done)
    waiting = JobUpdate(Stage.WAITING, "Waiting for a free WaveSpeed slot: 2 ahead of you.", 5.0)
    assert worth_sending(waiting, JobUpdate(Stage.WAITING, "Waiting for a free WaveSpeed slot: 1 ahead of you.", 6.0))
