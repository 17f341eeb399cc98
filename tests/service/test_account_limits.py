"""The real WaveSpeed's limits, in-process against a real sandbox: slots per key, 429, 402, every final
status, and the schema's prompt caps. (The 8-job run through the app process is in test_account_app.py.)"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from kling_demo.jobs.slots import RECHECK_SECONDS, SETTLE_SECONDS, ApiSlots, slot_key
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.errors import InputRejected, InsufficientBalance, JobStopped, KlingDemoError, TaskFailed
from kling_demo.models import DEFAULT_MODEL, JobRequest, Stage, Submission, TaskStatus
from kling_demo.service.visitors import Visitor
from kling_demo.words import Voice
from kling_demo.cli import format_update
from kling_demo.web.views import caption, status_markdown
from tests.service.test_sandbox_account import rows
from tests.waiting import wait_for

SERVER_KEY = "server-key"
ALICE = Visitor("browser:alice")


def run(job) -> tuple[list, KlingDemoError | None]:
    """Every update of a job to its end, and the error it ended with (if any)."""
    updates: list = []
    return updates, run_into(job, updates)


def run_into(job, updates: list) -> KlingDemoError | None:
    """Drive a job to its end, appending each update to `updates` (others may read it meanwhile)."""
    with job:
        try:
            for update in job:
                updates.append(update)
        except KlingDemoError as error:
            return error
    return None


# --- the slot table ---------------------------------------------------------------------------------


def test_slots_are_first_come_and_a_submitted_task_keeps_its_slot_until_it_ends() -> None:
    slots = ApiSlots(2)
    first, second, third, fourth = (slots.ticket("key") for _ in range(4))
    assert [ticket.try_acquire() for ticket in (first, second, third, fourth)] == [0, 0, 1, 2]
    assert slots.ticket("other key").try_acquire() == 0, "each key has its own slots"

    first.bind("task-1")
    first.release()  # the page went away after the submit: the task still runs, so it keeps the slot
    second.release()  # refused before submitting: its slot goes to the next job
    assert (third.try_acquire(), fourth.try_acquire()) == (0, 1)
    slots.finish("task-1")
    assert fourth.try_acquire() == 0
    assert slots.running("key") == 2


def test_a_job_that_leaves_the_queue_lets_the_ones_behind_it_move_up() -> None:
    slots = ApiSlots(1)
    holder, leaving, behind = (slots.ticket("key") for _ in range(3))
    assert [ticket.try_acquire() for ticket in (holder, leaving, behind)] == [0, 1, 2]
    leaving.release()
    assert behind.try_acquire() == 1
    slots.adopt("key", "recovered-task")  # a task found running after a restart counts too
    holder.release()
    assert behind.try_acquire() == 1
    slots.finish("recovered-task")
    assert behind.try_acquire() == 0


def test_a_waiting_job_is_woken_when_the_line_moves_not_on_a_timer() -> None:
    slots = ApiSlots(1)
    holder, waiting, behind = (slots.ticket("key") for _ in range(3))
    assert [ticket.try_acquire() for ticket in (holder, waiting, behind)] == [0, 1, 2]
    holder.bind("task-1")
    assert not waiting.bell.is_set and not behind.bell.is_set, "nothing moved: nobody is woken"
    slots.ticket("other key").release()  # another key's line moving wakes nobody here
    assert not waiting.bell.is_set
    slots.finish("task-1")
    assert waiting.bell.is_set and behind.bell.is_set, "a freed slot wakes the line at once"
    assert waiting.try_acquire() == 0 and not waiting.bell.is_set
    assert behind.bell.is_set and behind.try_acquire() == 1, "the next one moved up a place and was told"


def test_the_slot_table_never_holds_a_key() -> None:
    assert SERVER_KEY not in slot_key(SERVER_KEY) and slot_key("a") != slot_key("b")


class Clock:
    """The slot table's clock, moved by hand, so a test of what it learns over minutes takes no time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def submitted(slots: ApiSlots, key: str, *task_ids: str) -> None:
    for task_id in task_ids:
        ticket = slots.ticket(key)
        assert ticket.try_acquire() == 0
        ticket.bind(task_id)


def test_a_task_waiting_in_created_lowers_its_keys_limit_to_the_tasks_running_beside_it(caplog) -> None:
    clock = Clock()
    slots = ApiSlots(3, clock=clock)
    submitted(slots, "key", "task-1", "task-2", "task-3")
    slots.seen("task-1", "processing")
    slots.seen("task-3", "created")  # a second after its submission: WaveSpeed may just not have started it
    assert slots.limit_for("key") == 3 and slots.learned("key") is None
    clock.now += SETTLE_SECONDS
    with caplog.at_level("INFO", logger="kling_demo.jobs.slots"):
        slots.seen("task-3", "created")  # still waiting: the account runs the other two (task-2 not polled yet)
    assert slots.limit_for("key") == 2 and slots.learned("key") == 2
    assert slots.limit_for("other key") == 3, "each key learns its own"
    (line,) = [record.getMessage() for record in caplog.records]
    assert "key" in line and "at most 2 at once from now on (was 3)" in line

    waiting = slots.ticket("key")
    slots.finish("task-1")  # the waiting task takes the freed slot at WaveSpeed: nothing to send yet
    assert waiting.try_acquire() == 1
    slots.seen("task-3", "processing")  # a hand-over, not more room
    assert slots.limit_for("key") == 2
    slots.finish("task-2")
    assert waiting.try_acquire() == 0


def test_a_key_whose_every_task_waits_runs_one_at_a_time() -> None:
    """Another program holds the account's slots: the app sends one task at a time until it learns more."""
    clock = Clock()
    slots = ApiSlots(3, clock=clock)
    submitted(slots, "key", "task-1", "task-2")
    clock.now += SETTLE_SECONDS
    slots.seen("task-1", "created")
    slots.seen("task-2", "created")
    assert slots.limit_for("key") == 1 and slots.learned("key") == 1


def test_a_learned_limit_is_tried_one_higher_after_a_while_and_settles_on_what_runs() -> None:
    clock = Clock()
    slots = ApiSlots(4, clock=clock)
    submitted(slots, "key", "task-1", "task-2", "task-3")
    clock.now += SETTLE_SECONDS
    slots.seen("task-1", "processing")
    slots.seen("task-2", "processing")
    slots.seen("task-3", "created")
    assert slots.limit_for("key") == 2
    slots.finish("task-3")  # it ran and ended; two are still at WaveSpeed

    clock.now += RECHECK_SECONDS
    assert slots.limit_for("key") == 3, "one more may go, to see whether the account has more room now"
    probe, behind = slots.ticket("key"), slots.ticket("key")
    assert (probe.try_acquire(), behind.try_acquire()) == (0, 1), "only one more"
    behind.release()
    probe.bind("task-4")
    clock.now += SETTLE_SECONDS
    slots.seen("task-4", "created")  # no more room: settled again, for another while
    assert slots.limit_for("key") == 2 and slots.learned("key") == 2

    slots.finish("task-4")
    clock.now += RECHECK_SECONDS
    submitted(slots, "key", "task-5")
    slots.seen("task-5", "processing")  # three run at once: the room grew
    assert slots.learned("key") == 3 and slots.limit_for("key") == 4, "still on test: one more may go"
    submitted(slots, "key", "task-6")
    slots.seen("task-6", "processing")
    assert slots.learned("key") is None and slots.limit_for("key") == 4, "the configured limit holds again"


def test_without_a_cap_nothing_is_learned() -> None:
    clock = Clock()
    slots = ApiSlots(0, clock=clock)
    submitted(slots, "key", "task-1", "task-2")
    clock.now += SETTLE_SECONDS
    slots.seen("task-2", "created")
    assert slots.limit_for("key") == 0 and slots.learned("key") is None


# --- jobs against the sandbox ------------------------------------------------------------------------


def test_a_job_beyond_the_keys_slots_waits_in_the_app_and_stop_ends_the_wait(make_sandbox, make_service,
                                                                              make_image) -> None:
    sandbox = make_sandbox()
    service = make_service(sandbox, api_concurrency=1)
    busy = service.api_slots.ticket(slot_key(SERVER_KEY))
    assert busy.try_acquire() == 0  # another job holds the key's only slot
    job = service.generate(JobRequest(image=make_image(), prompt="a lighthouse"), ALICE)
    with job:
        steps = iter(job)
        updates = [next(steps), next(steps)]
        assert updates[-1].stage is Stage.WAITING and (updates[-1].place, updates[-1].slot_limit) == (1, 1)
        assert service.voice.status(updates[-1]).startswith("You are next in line for a free slot at WaveSpeed.")
        assert updates[-1].wait_seconds > 0, "the wait is the caller's, so no worker thread sleeps through it"
        assert updates[-1].wake is not None and not updates[-1].wake.is_set
        busy.release()  # the slot frees: the waiting job's wake rings at once
        assert updates[-1].wake.is_set
        busy = service.api_slots.ticket(slot_key(SERVER_KEY))
        report = job.stop()
        assert report.submission is Submission.NONE and "nothing was billed" in service.voice.stopped(report)
        with pytest.raises(JobStopped) as stopped:
            list(steps)
        assert stopped.value.submission is Submission.NONE
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0
    busy.release()
    assert service.api_slots.ticket(slot_key(SERVER_KEY)).try_acquire() == 0, "the stopped job left the queue"


def test_a_task_waiting_for_a_slot_at_wavespeed_is_told_apart_from_one_rendering(make_sandbox, make_service,
                                                                                  make_image) -> None:
    sandbox = make_sandbox(max_concurrent_tasks=1, inference_seconds=2.0)
    service = make_service(sandbox, api_concurrency=5)  # the app thinks the account is bigger than it is
    with WaveSpeedClient(sandbox.base_url, SERVER_KEY) as client:  # the account's one slot is taken
        client.submit(DEFAULT_MODEL, {"image": client.upload(make_image(), "image/png"), "prompt": "elsewhere"})
    updates, error = run(service.generate(JobRequest(image=make_image(), prompt="a kite"), ALICE))
    assert error is None and updates[-1].stage is Stage.DONE
    voice = service.voice
    queued = [update for update in updates if update.stage is Stage.QUEUED]
    assert queued and voice.heading(queued[0]) == "Queued"
    assert voice.status(queued[0]).startswith("Waiting for a free slot of the account at WaveSpeed…")
    assert all(update.slot_limit is None for update in queued), \
        "the configured 5 did not hold, and the app has learned no number yet: it names none"
    rendering = [update for update in updates if update.stage is Stage.PROCESSING]
    assert rendering and updates.index(rendering[0]) > updates.index(queued[-1])
    assert voice.heading(rendering[0]) == "Rendering"
    assert voice.status(rendering[0]).startswith("WaveSpeed is making your video…")


def test_once_a_task_waited_in_created_the_app_runs_what_the_account_runs_and_keeps_the_rest_in_line(
        make_sandbox, make_service, make_image, caplog) -> None:
    """The app is told 3 at once; the account runs 2. The third task waits in `created` at WaveSpeed, once: from
    then on the app runs 2, and a job beyond them waits in the app with its place in line, not blind at WaveSpeed."""
    sandbox = make_sandbox(max_concurrent_tasks=2, hold_renders=True, inference_seconds=2.0)
    service = make_service(sandbox, api_concurrency=3)
    key = slot_key(SERVER_KEY)
    jobs: dict[int, list] = {}
    endings: list[Future] = []

    def start(number: int) -> None:
        jobs[number] = updates = []
        job = service.generate(JobRequest(image=make_image(), prompt=f"job {number}"),
                               Visitor(f"browser:visitor-{number}"))  # one job each: no visitor's cap applies
        endings.append(pool.submit(run_into, job, updates))

    def last(number: int):
        return jobs[number][-1] if jobs[number] else None

    def release() -> None:
        requests.post(sandbox.base_url + "/sandbox/release", timeout=10).raise_for_status()

    with ThreadPoolExecutor(5) as pool, caplog.at_level("INFO", logger="kling_demo.jobs.slots"):
        try:
            for number in (1, 2, 3):
                start(number)
            wait_for(lambda: len(table := rows(sandbox)) == 3 and sum(row["started_at_epoch"] is None
                                                                      for row in table) == 1,
                     30, "two tasks rendering (held) and the third waiting in 'created' at the sandbox")
            learned = wait_for(lambda: next((update for number in (1, 2, 3) for update in list(jobs[number])
                                             if update.stage is Stage.QUEUED and update.slot_limit), None),
                               30, "the job waiting at WaveSpeed to say what the account runs")
            assert learned.slot_limit == 2 and service.api_slots.limit_for(key) == 2

            start(4)
            wait_for(lambda: (update := last(4)) and update.stage is Stage.WAITING, 30, "job 4 to wait in the app")
            start(5)
            waiting = wait_for(lambda: (update := last(5)) and update.stage is Stage.WAITING and update, 30,
                               "job 5 to wait in the app")
            assert (last(4).place, waiting.place) == (1, 2)
            assert waiting.slot_limit == 2
            assert "This key runs 2 tasks at once; nothing has been uploaded or billed yet." in \
                service.voice.status(waiting)
            assert sandbox.stats()["submissions"] == 3
        finally:
            release()  # also when an assertion failed: the held jobs end instead of waiting out their deadline
        assert [future.result(timeout=60) for future in endings] == [None] * 5
    assert all(updates[-1].stage is Stage.DONE for updates in jobs.values())

    by_task = {row["id"]: row for row in rows(sandbox)}
    (taught,) = [row for row in by_task.values() if row["started_at_epoch"] != row["created_at_epoch"]]
    fourth, fifth = (by_task[jobs[number][-1].task_id] for number in (4, 5))
    assert fifth["created_at_epoch"] >= min(taught["completed_at_epoch"], fourth["completed_at_epoch"]), \
        "job 5 was sent only once one of the two tasks at WaveSpeed had ended, so it never waited there"
    lines = [record.getMessage() for record in caplog.records if "at once from now on" in record.getMessage()]
    assert lines and all(key in line and SERVER_KEY not in line for line in lines)


def test_cancelled_and_timed_out_tasks_end_clearly_and_land_in_history_as_such(make_sandbox, make_service,
                                                                               make_image) -> None:
    # Seed 0 ends the first task "timeout" and the second "cancelled".
    service = make_service(make_sandbox(status_fault_rate=1.0, seed=0))
    endings = {}
    for prompt in ("first", "second"):
        updates, error = run(service.generate(JobRequest(image=make_image(), prompt=prompt), ALICE))
        assert isinstance(error, TaskFailed)
        assert updates[-1].stage is Stage.FAILED and updates[-1].error is error  # the last update says how it ended
        assert service.voice.heading(updates[-1]) == "Failed"
        record = service.task(ALICE, error.task_id)
        assert record.status is error.status
        endings[record.status] = (str(error), record)
    assert set(endings) == {TaskStatus.TIMEOUT, TaskStatus.CANCELLED}
    assert "WaveSpeed timed the task out" in endings[TaskStatus.TIMEOUT][0]
    assert "WaveSpeed cancelled the task" in endings[TaskStatus.CANCELLED][0]
    captions = [caption(record, service.voice) for record in service.tasks(ALICE)]
    assert any(Voice().task_status(TaskStatus.TIMEOUT) in caption for caption in captions)
    assert any(Voice().task_status(TaskStatus.CANCELLED) in caption for caption in captions)
    assert service.api_slots.running(slot_key(SERVER_KEY)) == 0, "a task that ended gave its slot back"


def test_a_429_on_submit_is_waited_out_in_the_job_and_submitted_once(make_sandbox, make_service, make_image) -> None:
    sandbox = make_sandbox(videos_per_minute=1, rate_window_seconds=10)  # WaveSpeed's minute, shortened
    service = make_service(sandbox)
    first = service.generate(JobRequest(image=make_image(), prompt="first"), ALICE)
    with first:
        first_steps = iter(first)
        while next(first_steps).stage is not Stage.SUBMITTED:  # the key's one video of this window
            pass
        updates, error = run(service.generate(JobRequest(image=make_image(), prompt="second"), ALICE))
        assert error is None and updates[-1].stage is Stage.DONE
        assert [update.stage for update in first_steps][-1] is Stage.DONE
    waits = [update for update in updates if update.stage is Stage.WAITING]
    assert len(waits) == 1 and waits[0].rate_limited and waits[0].wait_seconds >= 1
    assert waits[0].retry_in == waits[0].wait_seconds, "the wait it announces is the wait it takes"
    seconds = math.ceil(waits[0].wait_seconds)
    precise = dataclasses.replace(service.voice, for_visitors=False)  # the API's and the CLI's words
    said = f"WaveSpeed is rate limiting this key (HTTP 429); trying again in {seconds} s. Nothing was submitted yet."
    assert said in format_update(waits[0], precise), "the CLI says so"
    assert (f"WaveSpeed asked this key to slow down; trying again in {seconds} s. Nothing was submitted yet."
            in status_markdown(waits[0], service.voice)), "the page says so, without the HTTP code"
    stats = sandbox.stats()
    assert stats["rate_limited"] == 1, "it waited out WaveSpeed's Retry-After: an early retry would meet another 429"
    assert stats["submissions"] == 2, "the refused submission was sent again once, never twice"
    key = slot_key(SERVER_KEY)
    assert (service.api_slots.limit_for(key), service.api_slots.learned(key)) == (2, None), \
        "a 429 is the per-minute rate: it says nothing about how many tasks the account runs at once"
    assert [record.status for record in service.tasks(ALICE)] == [TaskStatus.COMPLETED, TaskStatus.COMPLETED]


def test_a_balance_too_low_is_a_plain_refusal_with_nothing_billed(make_sandbox, make_service, make_image) -> None:
    """Two jobs that each fit the $2.00 balance pass the app's balance check; the second submit finds the first's
    $1.40 held, and WaveSpeed's 402 (the backstop behind the check) refuses it, creating nothing."""
    sandbox = make_sandbox(balance=2.0)  # a 5 s video costs 1.40
    service = make_service(sandbox)
    first = service.generate(JobRequest(image=make_image(), prompt="a kite"), ALICE)
    second = service.generate(JobRequest(image=make_image(), prompt="a boat"), Visitor("browser:bob"))
    with first, second:
        first_steps, second_steps = iter(first), iter(second)
        for steps in (first_steps, second_steps):  # both past the balance check, neither submitted yet
            while next(steps).stage is not Stage.UPLOADING:
                pass
        while next(first_steps).stage is not Stage.SUBMITTED:
            pass
        with pytest.raises(InsufficientBalance) as refused:
            list(second_steps)
    assert str(refused.value) == ("WaveSpeed says this key's balance is too low for this video. Top up at "
                                  "wavespeed.ai, or use another key.")
    assert sandbox.stats()["submissions"] == 1 and sandbox.stats()["insufficient_balance"] == 1
    assert service.tasks(Visitor("browser:bob")) == [], "nothing was created, so nothing waits in the history"


def test_a_prompt_over_the_schemas_cap_is_refused_before_upload(make_sandbox, make_service, make_image) -> None:
    sandbox = make_sandbox()
    service = make_service(sandbox)
    updates, error = run(service.generate(JobRequest(image=make_image(), prompt="x" * 2100), ALICE))
    assert isinstance(error, InputRejected) and "2100 characters long; the limit is 2000" in str(error)
    long_negative, error = run(service.generate(JobRequest(image=make_image(), prompt="a kite",
                                                           negative_prompt="y" * 2600), ALICE))
    assert isinstance(error, InputRejected) and "negative prompt" in str(error) and "2500" in str(error)
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0
