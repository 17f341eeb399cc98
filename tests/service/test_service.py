"""The service's rules, in-process against a real sandbox: who may resume what with which key, slots, handover."""

from __future__ import annotations

import threading

import pytest
import requests

from kling_demo.service.backend import Backend
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.config import Settings
from kling_demo.store.journal import Journal
from kling_demo.errors import KeyRequired, NotYours, VisitorCapReached
from kling_demo.models import DEFAULT_MODEL, JobRequest, JobUpdate, KeySource, Stage, TaskStatus
from kling_demo.service.running import Job
from kling_demo.service.service import Service
from kling_demo.service.visitors import Visitor
from tests.conftest import SERVER_KEY
from tests.waiting import wait_for

ALICE, BOB = Visitor("browser:alice"), Visitor("browser:bob")


def run_to_end(job) -> list:
    with job:
        return list(job)


def submitted_elsewhere(sandbox, image) -> str:
    """A task submitted with Bob's own key from outside this app."""
    with WaveSpeedClient(sandbox.base_url, "bob's key") as client:
        return client.submit(DEFAULT_MODEL, {"image": client.upload(image, "image/png"), "prompt": "elsewhere",
                                             "duration": 5}).task_id


def test_a_job_lands_in_its_owners_history_only(make_sandbox, make_service, make_image):
    service = make_service(make_sandbox())
    updates = run_to_end(service.generate(JobRequest(image=make_image(), prompt="a kite"), ALICE))
    assert updates[-1].stage is Stage.DONE
    (record,) = service.tasks(ALICE)
    assert record.status is TaskStatus.COMPLETED and record.key_source is KeySource.SERVER
    assert record.prompt == "a kite"
    assert service.tasks(BOB) == [] and service.task(BOB, record.task_id) is None


def test_resume_rules(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    alice_task = run_to_end(service.generate(JobRequest(image=make_image(), prompt="mine"), ALICE))[-1].task_id
    polls = sandbox.stats()["result_polls"]

    # Another visitor cannot fetch it by id without a key of their own …
    with pytest.raises(NotYours):
        service.resume(alice_task, BOB)
    # … and the owner gets it from the history, without asking the API again.
    (done,) = run_to_end(service.resume(alice_task, ALICE))
    assert done.stage is Stage.DONE and done.video_path.exists()
    assert sandbox.stats()["result_polls"] == polls

    # With their own key, a visitor fetches a task made elsewhere into their history; it then needs that key.
    elsewhere = submitted_elsewhere(sandbox, make_image())
    bob_with_key = Visitor(BOB.owner, "bob's key")
    assert run_to_end(service.resume(elsewhere, bob_with_key))[-1].stage is Stage.DONE
    assert service.task(BOB, elsewhere).key_source is KeySource.VISITOR
    assert service.task(ALICE, elsewhere) is None


def test_a_task_paid_with_ones_own_key_needs_it_again(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(inference_seconds=3)
    service = make_service(sandbox)
    own = Visitor(ALICE.owner, "alice's key")
    job = service.generate(JobRequest(image=make_image(), prompt="own key"), own)
    task_id = next(u.task_id for u in job if u.stage is Stage.SUBMITTED)
    job.close()
    with pytest.raises(KeyRequired, match="your own key"):
        service.resume(task_id, ALICE)


def test_a_space_that_requires_a_key_refuses_before_anything_is_sent(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox, require_user_key=True)
    with pytest.raises(KeyRequired):
        service.generate(JobRequest(image=make_image(), prompt="x"), ALICE)
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0


def test_slots_cap_one_visitor_on_the_servers_key_and_free_up(make_sandbox, make_service, make_image):
    service = make_service(make_sandbox(inference_seconds=3), max_jobs_per_visitor=1)
    first = service.generate(JobRequest(image=make_image(), prompt="one"), ALICE)
    with pytest.raises(VisitorCapReached, match="at once"):
        service.generate(JobRequest(image=make_image(), prompt="two"), ALICE)
    other = service.generate(JobRequest(image=make_image(), prompt="other visitor"), BOB)
    own_key = service.generate(JobRequest(image=make_image(), prompt="own key"), Visitor(ALICE.owner, "k2"))
    for job in (first, other, own_key):
        job.close()
    service.generate(JobRequest(image=make_image(), prompt="again"), ALICE).close()


def test_the_free_sandbox_caps_no_visitor(make_sandbox, tmp_path, make_image):
    """In sandbox mode nothing is paid for, so one visitor runs more jobs at once than `max_jobs_per_visitor`:
    three jobs of one visitor are all rendering at the sandbox together (held there), none is refused, and each
    ends with its video."""
    sandbox = make_sandbox(inference_seconds=0.5, hold_renders=True)
    service = Service(Settings(data_dir=tmp_path / "sandboxed", max_jobs_per_visitor=1, api_concurrency=3),
                      Backend(base_url=sandbox.base_url, api_key="sandbox-local", sandbox=sandbox))
    assert service.is_sandbox
    ended: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            ended[n] = run_to_end(service.generate(JobRequest(image=make_image(), prompt=f"job {n}"), ALICE))
        except BaseException as error:  # VisitorCapReached or anything else: the assert below names it
            errors.append(error)

    def at_the_sandbox() -> list[dict]:
        return requests.get(sandbox.base_url + "/sandbox/tasks", timeout=10).json()

    workers = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    try:
        for worker in workers:
            worker.start()
        # Held renders never end, so three tasks there at one moment were three jobs of ALICE running at once.
        running = wait_for(lambda: errors or ((rows := at_the_sandbox()) and len(rows) == 3
                                              and all(row["status"] == "processing" for row in rows) and rows),
                           30, "three jobs of one visitor to run at the sandbox at once")
        assert errors == [] and len(running) == 3
        requests.post(sandbox.base_url + "/sandbox/release", timeout=10).raise_for_status()
        for worker in workers:
            worker.join(60)
    finally:
        requests.post(sandbox.base_url + "/sandbox/release", timeout=10)
        service.close()  # stops the sandbox too; the fixture's stop then does nothing
    assert errors == []
    assert sorted(ended) == [0, 1, 2] and all(updates[-1].stage is Stage.DONE for updates in ended.values())
    assert sandbox.stats()["submissions"] == 3
    assert {record.status for record in service.tasks(ALICE)} == {TaskStatus.COMPLETED}


def test_closing_a_job_after_submission_hands_the_task_to_recovery(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(inference_seconds=2)
    service = make_service(sandbox)
    job = service.generate(JobRequest(image=make_image(), prompt="left behind"), ALICE)
    task_id = next(u.task_id for u in job if u.stage is Stage.SUBMITTED)
    job.close()  # the tab went away
    record = wait_for(lambda: (r := service.task(ALICE, task_id)) and r.status is TaskStatus.COMPLETED and r)
    assert record.video_path and sandbox.stats()["submissions"] == 1


def test_after_a_restart_recovery_follows_more_tasks_at_once_than_it_has_threads(make_sandbox, make_service,
                                                                                  make_image, tmp_path):
    """Twelve tasks left running by a previous run, held at WaveSpeed: all are followed (polled) together by
    recovery's four threads, because waiting for a poll holds none; released, all land in the history."""
    sandbox = make_sandbox(inference_seconds=0.5, hold_renders=True)
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    with WaveSpeedClient(sandbox.base_url, SERVER_KEY) as client:
        image = client.upload(make_image(), "image/png")
        task_ids = [client.submit(DEFAULT_MODEL, {"image": image, "prompt": f"left running {n}", "duration": 5}).task_id
                    for n in range(12)]
    for task_id in task_ids:
        journal.record_submission(owner=ALICE.owner, task_id=task_id, model=DEFAULT_MODEL.model_id, api_base=sandbox.base_url,
                                  key_source=KeySource.SERVER, params={"prompt": "left running", "duration": 5})
    service = make_service(sandbox)  # starts recovery, as the app does at start
    assert service.recovery._pool._max_workers < len(task_ids)

    def polled() -> set[str]:
        return {row["id"] for row in requests.get(sandbox.base_url + "/sandbox/tasks", timeout=10).json()
                if row["result_polls"] >= 2}

    wait_for(lambda: polled() == set(task_ids), 30, "every held task to be polled twice")
    requests.post(sandbox.base_url + "/sandbox/release", timeout=10).raise_for_status()
    wait_for(lambda: all(r.status is TaskStatus.COMPLETED and r.video_path for r in service.tasks(ALICE)), 60,
             "every task to land in the history")
    assert len(service.tasks(ALICE)) == 12 and sandbox.stats()["submissions"] == 12


def test_task_status_from_the_wire():
    assert TaskStatus.parse("completed") is TaskStatus.COMPLETED and TaskStatus.COMPLETED.is_final
    assert TaskStatus.parse("Timeout") is TaskStatus.TIMEOUT and TaskStatus.TIMEOUT.is_final
    assert TaskStatus.parse(None) is TaskStatus.CREATED and not TaskStatus.CREATED.is_final
    assert TaskStatus.parse("warming-up") is TaskStatus.PROCESSING  # unknown: keep polling
    assert TaskStatus.COMPLETED == "completed"  # stored and compared as its wire text


def test_a_job_closed_while_a_step_runs_in_a_worker_closes_once_the_step_returns(make_service, sandbox):
    """Stop or a closed tab lands while a worker thread runs a step: no "generator already executing", and the
    job is handed over once the step returns (this raced before, and the visitor saw an internal error)."""
    service = make_service(sandbox)
    entered, release, handed, results = threading.Event(), threading.Event(), [], []

    def steps():
        entered.set()
        release.wait(30)
        yield JobUpdate(Stage.PREPARING, 0.0)
        yield JobUpdate(Stage.UPLOADING, 0.0, frames=1)

    ctx = service.context(ALICE.owner)
    job = Job(steps(), ctx, hand_over=lambda: handed.append(True))
    worker = threading.Thread(target=lambda: results.extend(job))
    worker.start()
    assert entered.wait(30)
    job.close()  # from the event loop's thread, while the worker is inside the generator
    assert ctx.stop.is_set() and handed == []
    release.set()
    worker.join(30)
    assert not worker.is_alive()
    # The step under way ends with its update; the job then ends, handed over, and nothing more is stepped.
    assert [update.stage for update in results] == [Stage.PREPARING] and handed == [True]
    assert job.error is None and list(job) == []
