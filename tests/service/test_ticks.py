"""API callers get every change they can act on, and a running-time tick only now and then (issue 23).

A real job runs against the sandbox, reached through a proxy that refuses connections for a while mid-render, so
its own updates carry every kind of change (stage, task id, an outage beginning and ending, the video) and the
running-time ticks between them. The thinning the API applies (`worth_sending`) is replayed over those very
updates: no copy of a job's update or sentence is kept here, so a job that changes what it says cannot quietly
stop the thinning while this stays green.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from pathlib import Path

import pytest

from kling_demo.models import JobRequest, JobUpdate, Stage
from kling_demo.service.visitors import Visitor
from kling_demo.web.api import API_TICK_SECONDS, worth_sending
from tests.service.test_outage import FlakyProxy

EVERY = 2.5  # the tick interval replayed over the job (API_TICK_SECONDS would need a render of a minute)
RENDER_SECONDS = 5.0  # polled about once a second: a few ticks to thin on each side of the outage
TICKS_BEFORE_OUTAGE = 2  # the proxy refuses connections once the job reported rendering this many times
OUTAGE_UPDATES = 3  # and lets them through again after the job reported this many updates of the outage


def what_it_says(update: JobUpdate) -> JobUpdate:
    """The update without what only moves with the clock (the running time, the countdown to the next try, the
    runner's wait and the progress view made from the time): what a tick must not change to be thinned."""
    return dataclasses.replace(update, elapsed=0.0, running_for=None, retry_in=None, wait_seconds=0.0,
                               progress=None)


def changed(before: JobUpdate, after: JobUpdate) -> bool:
    """A change an API caller can act on: the stage, the task id, an outage, or the video."""
    return ((before.stage, before.task_id, before.outage, before.video_path)
            != (after.stage, after.task_id, after.outage, after.video_path))


def thinned(updates: list[JobUpdate], every: float) -> list[JobUpdate]:
    """What `Api.stream` sends of `updates`, with its tick interval set to `every`."""
    sent: list[JobUpdate] = []
    for update in updates:
        if update.stage not in (Stage.FAILED, Stage.STOPPED) and worth_sending(sent[-1] if sent else None, update,
                                                                                every=every):
            sent.append(update)
    return sent


@pytest.fixture
def job_updates(make_sandbox, make_service, make_image) -> list[JobUpdate]:
    """Every update of one real job whose render is cut off from the app for a few polls, then reached again."""
    sandbox = make_sandbox(inference_seconds=RENDER_SECONDS)
    proxy = FlakyProxy(int(sandbox.base_url.rsplit(":", 1)[1]))
    service = make_service(proxy.url)
    updates: list[JobUpdate] = []
    cut_off = reached_again = False
    try:
        with service.generate(JobRequest(image=make_image(), prompt="a slow pan"), Visitor("browser:ticks")) as job:
            for update in job:
                updates.append(update)
                rendering = sum(1 for seen in updates if seen.stage is Stage.PROCESSING and not seen.outage)
                if rendering == TICKS_BEFORE_OUTAGE and not cut_off:
                    proxy.refuse()  # WaveSpeed stops answering mid-render
                    cut_off = True
                elif not reached_again and sum(1 for seen in updates if seen.outage) == OUTAGE_UPDATES:
                    proxy.allow()
                    reached_again = True
    finally:
        proxy.close()
    return updates


def test_every_change_is_sent_and_running_time_ticks_between_changes_are_thinned_to_one_per_interval(
        job_updates) -> None:
    # The job really went through every kind of change, and ticked between them: else this would prove nothing.
    stages = [update.stage for update in job_updates]
    assert stages[0] is Stage.PREPARING and stages[-1] is Stage.DONE and job_updates[-1].video_path.is_file()
    assert {Stage.SUBMITTED, Stage.PROCESSING, Stage.DOWNLOADING} <= set(stages)
    assert job_updates[0].task_id is None and job_updates[-1].task_id
    outages = [index for index, update in enumerate(job_updates) if update.outage]
    assert len(outages) >= OUTAGE_UPDATES and not job_updates[outages[-1] + 1].outage, "an outage began and ended"
    ticks = [after for before, after in pairwise(job_updates)
             if after.stage.at_wavespeed and not changed(before, after)]
    # (A poll cut off mid-way says "connection reset", the next ones "connection refused": a change, not a tick.)
    assert any(not tick.outage for tick in ticks) and any(tick.outage for tick in ticks), \
        "running-time ticks at WaveSpeed, while it answered and while it did not"

    sent = thinned(job_updates, EVERY)
    assert sent[0] is job_updates[0], "the first update is always sent"
    for before, after in pairwise(job_updates):
        if changed(before, after):
            assert any(update is after for update in sent), (before, after)
    assert sent[-1] is job_updates[-1] and sent[-1].video_path, "the video is sent"

    held = [update for update in job_updates if not any(update is kept for kept in sent)]
    assert held, "some ticks were held back: the thinning happened at all"
    last_sent = None
    for update in job_updates:
        if any(update is kept for kept in sent):
            last_sent = update
            continue
        assert what_it_says(update) == what_it_says(last_sent), "a held-back update said something new"
        assert update.stage.at_wavespeed, "only waits at WaveSpeed are thinned"
        assert update.elapsed - last_sent.elapsed < EVERY, "a tick was held back past its interval"
    for before, after in pairwise(sent):
        if after.stage.at_wavespeed and what_it_says(before) == what_it_says(after):
            assert after.elapsed - before.elapsed >= EVERY, "two ticks were sent within one interval"


def test_the_thinning_reads_facts_only(job_updates) -> None:
    """Two updates that differ only in the running time are one tick; a difference in a fact is a change."""
    tick = next(update for update in job_updates if update.stage is Stage.PROCESSING and not update.outage)
    later = dataclasses.replace(tick, elapsed=tick.elapsed + 1.0, running_for=(tick.running_for or 0.0) + 1.0,
                                progress=None)
    assert not worth_sending(tick, later)
    assert worth_sending(tick, dataclasses.replace(later, elapsed=tick.elapsed + API_TICK_SECONDS))
    for fact in ({"outage": "connection refused"}, {"stage": Stage.QUEUED}, {"task_id": "another-task"},
                 {"video_path": Path("video.mp4")}, {"fixes": ("rotated upright",)}, {"queued_behind": 2}):
        assert worth_sending(tick, dataclasses.replace(later, **fact)), fact
    waiting = next(update for update in job_updates if update.stage is Stage.PREPARING)
    assert worth_sending(waiting, dataclasses.replace(waiting, elapsed=waiting.elapsed + 1.0)), \
        "updates before the task is at WaveSpeed are never thinned"
