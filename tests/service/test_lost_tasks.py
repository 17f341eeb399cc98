"""The key's recent tasks: the listing, finding the task of a lost submit answer, and "Your WaveSpeed tasks".

In process, against a real sandbox over loopback HTTP; the sandbox drops submit answers (`lost_answer_rate`)
and can list new tasks late (`listing_lag_seconds`), as the real listing may.
"""

from __future__ import annotations

import base64
import time

import pytest

from kling_demo.errors import KeyRequired, SubmissionOutcomeUnknown
from kling_demo.jobs.steps import JobRequest, Stage
from kling_demo.models import DEFAULT_MODEL, KeySource, TaskStatus
from kling_demo.service.visitors import Visitor
from kling_demo.store.journal import Journal
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.wavespeed.lost_tasks import find_submitted
from tests.conftest import SERVER_KEY
from tests.service.test_service import ALICE, BOB, run_to_end, submitted_elsewhere
from tests.waiting import wait_for

BOBS_KEY = "bob's key"


def run(job) -> list:
    """Every update of a job, then the error it ended with, if any."""
    updates: list = []
    with job:
        try:
            updates.extend(job)
        except Exception as error:  # the test inspects both
            updates.append(error)
    return updates


def test_the_listing_pages_and_filters_a_keys_tasks(make_sandbox, make_image):
    sandbox = make_sandbox()
    first, second = submitted_elsewhere(sandbox, make_image()), submitted_elsewhere(sandbox, make_image())
    with WaveSpeedClient(sandbox.base_url, BOBS_KEY) as client:
        page_one = client.predictions(1, 1, model=DEFAULT_MODEL.model_id)
        page_two = client.predictions(2, 1, model=DEFAULT_MODEL.model_id)
        assert [page_one.items[0].task_id, page_two.items[0].task_id] == [second, first]  # newest first
        assert page_one.total == 2
        listed = page_one.items[0]
        assert listed.model == DEFAULT_MODEL.model_id and listed.status in (TaskStatus.CREATED, TaskStatus.PROCESSING)
        assert listed.inputs["prompt"] == "elsewhere" and listed.inputs["duration"] == 5
        assert abs(listed.created_epoch - time.time()) < 60
        assert client.predictions(created_after=time.time() + 3600, created_before=time.time() + 7200).items == ()
        assert client.predictions(model="some/other-model").items == ()
    with WaveSpeedClient(sandbox.base_url, "alice's key") as client:
        assert client.predictions().items == (), "another key's tasks are not listed"


@pytest.mark.parametrize("listing_lag", [0.0, 1.5])
def test_a_lost_submit_answer_finds_its_task_and_lands_in_the_history_with_one_submission(
        make_sandbox, make_service, make_image, listing_lag):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1, listing_lag_seconds=listing_lag)
    service = make_service(sandbox)
    updates = run(service.generate(JobRequest(image=make_image(), prompt="a storm", duration=10), ALICE))
    final = updates[-1]
    assert final.stage is Stage.DONE and final.video_path.is_file(), final
    assert any(u.stage is Stage.SEARCHING for u in updates[:-1]), "the visitor is told the task is looked for"
    (record,) = service.tasks(ALICE)
    assert not record.is_intent and record.task_id == final.task_id
    assert record.status is TaskStatus.COMPLETED and record.video_path == str(final.video_path)
    assert (record.prompt, record.duration) == ("a storm", 10)
    assert sandbox.stats()["submissions"] == 1


def test_a_lost_answer_whose_task_is_not_listed_stays_outcome_unknown(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1, listing_lag_seconds=600)
    service = make_service(sandbox)
    updates = run(service.generate(JobRequest(image=make_image(), prompt="a storm"), ALICE))
    error = updates[-1]
    assert isinstance(error, SubmissionOutcomeUnknown)
    assert "no matching task was found" in str(error) and "not resubmitted" in str(error)
    (record,) = service.tasks(ALICE)
    assert record.is_intent and record.status is TaskStatus.UNKNOWN and "no matching task was found" in record.error
    assert sandbox.stats()["submissions"] == 1


def test_two_tasks_that_both_fit_are_never_guessed_between(make_sandbox, make_image):
    sandbox = make_sandbox()
    inline = "data:image/png;base64," + base64.b64encode(make_image().read_bytes()).decode()
    body = {"image": inline, "prompt": "twice", "duration": 5}  # an inline image is not echoed by the listing
    with WaveSpeedClient(sandbox.base_url, BOBS_KEY) as client:
        since = time.time()
        client.submit(DEFAULT_MODEL, body)
        lookup = find_submitted(client, DEFAULT_MODEL, {"negative_prompt": "", **body}, since=since, until=time.time())
        assert lookup.prediction is not None and lookup.matches == 1
        assert find_submitted(client, DEFAULT_MODEL, {**body, "prompt": "other"}, since=since,
                              until=time.time()).matches == 0
        client.submit(DEFAULT_MODEL, body)
        lookup = find_submitted(client, DEFAULT_MODEL, body, since=since, until=time.time())
        assert (lookup.prediction, lookup.matches) == (None, 2)


def test_a_submission_cut_off_by_a_restart_is_found_at_the_next_start(make_sandbox, make_service, make_image,
                                                                     tmp_path):
    sandbox = make_sandbox()
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    params = {"prompt": "before the crash", "negative_prompt": "", "guidance_scale": 0.5, "duration": 5,
              "end_image": False}
    intent = journal.record_intent(owner=ALICE.owner, model=DEFAULT_MODEL.model_id, api_base=sandbox.base_url,
                                   key_source=KeySource.SERVER, params=params)
    with WaveSpeedClient(sandbox.base_url, "server-key") as client:  # the POST that went out before the crash
        image_url = client.upload(make_image(), "image/png")
        journal.mark_sending(ALICE.owner, intent, {"image": image_url})
        sent = client.submit(DEFAULT_MODEL, {"image": image_url,
                                             **{k: params[k] for k in ("prompt", "guidance_scale", "duration")}})
    service = make_service(sandbox)  # settles the intent as outcome unknown, then looks for its task
    record = wait_for(lambda: (r := service.task(ALICE, sent.task_id)) and r.status is TaskStatus.COMPLETED and r)
    assert record.video_path and record.prompt == "before the crash"
    assert service.task(ALICE, intent) is None and len(service.tasks(ALICE)) == 1
    assert sandbox.stats()["submissions"] == 1


def test_your_wavespeed_tasks_need_your_own_key_and_bring_a_task_into_your_history(make_sandbox, make_service,
                                                                                   make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    made_elsewhere = submitted_elsewhere(sandbox, make_image())
    with pytest.raises(KeyRequired, match="own WaveSpeed key"):
        service.recent_tasks(BOB)
    with pytest.raises(KeyRequired, match="own WaveSpeed key"):
        service.adopt(made_elsewhere, BOB)
    bob = Visitor(BOB.owner, BOBS_KEY)
    (listed,) = service.recent_tasks(bob)
    assert listed.task_id == made_elsewhere and listed.prompt == "elsewhere" and not listed.in_history
    assert service.recent_tasks(Visitor(ALICE.owner, "alice's key")) == []
    final = run_to_end(service.adopt(listed.task_id, bob))[-1]
    assert final.stage is Stage.DONE and final.video_path.is_file()
    (record,) = service.tasks(bob)
    assert (record.task_id, record.status, record.key_source) == (made_elsewhere, TaskStatus.COMPLETED,
                                                                  KeySource.VISITOR)
    assert record.video_path == str(final.video_path)
    assert [task.in_history for task in service.recent_tasks(bob)] == [True]
    assert sandbox.stats()["submissions"] == 1


# --- adoption at start-up takes only the very task the lost POST created --------------------------------------

CAT = {"prompt": "A cat stretches in the sun", "negative_prompt": "", "guidance_scale": 0.5, "duration": 5}


def alices_intent(journal: Journal, sandbox) -> str:
    """Alice's "Cat" submission as the journal holds it before its POST (the same settings as Bob's)."""
    return journal.record_intent(owner=ALICE.owner, model=DEFAULT_MODEL.model_id, api_base=sandbox.base_url,
                                 key_source=KeySource.SERVER, params={**CAT, "end_image": False})


def submitted_on_the_server_key(sandbox, image_url: str) -> str:
    """A "Cat" task on the server's key that no lost POST of Alice's created (another job, another program)."""
    with WaveSpeedClient(sandbox.base_url, SERVER_KEY) as client:
        return client.submit(DEFAULT_MODEL, {"image": image_url, **{k: v for k, v in CAT.items() if v != ""}}).task_id


def upload(sandbox, image) -> str:
    with WaveSpeedClient(sandbox.base_url, SERVER_KEY) as client:
        return client.upload(image, "image/png")


def looked_for(caplog, intent_id: str) -> bool:
    return any(intent_id in r.getMessage() and "no task found" in r.getMessage() for r in caplog.records)


def test_a_restart_never_gives_an_unsent_submission_another_visitors_deleted_task(make_sandbox, make_service,
                                                                                  make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    cat = make_image(color=(200, 120, 40))
    bobs = run_to_end(service.generate(JobRequest(image=cat, **CAT), BOB))[-1]
    assert bobs.stage is Stage.DONE
    service.delete(BOB, bobs.task_id)
    unsent = alices_intent(service.journal, sandbox)  # the app stopped before Alice's POST
    service.close()

    restarted = make_service(sandbox)
    assert restarted.tasks(ALICE) == [], "nothing was sent, so there is no outcome to be unsure of"
    assert restarted.task(ALICE, unsent) is None and restarted.task(ALICE, bobs.task_id) is None
    assert restarted.journal.unknown_outcomes() == []
    assert sandbox.stats()["submissions"] == 1


def test_a_lost_submission_is_matched_by_the_image_its_post_carried(make_sandbox, make_service, make_image,
                                                                    caplog):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    someone_elses = submitted_on_the_server_key(sandbox, upload(sandbox, make_image(color=(200, 120, 40))))
    with WaveSpeedClient(sandbox.base_url, SERVER_KEY) as client:
        (listed,) = client.predictions().items
    assert listed.task_id == someone_elses and listed.inputs["image"].startswith("http"), \
        "the listing echoes the uploaded image's URL, as WaveSpeed's does"
    lost = alices_intent(service.journal, sandbox)
    service.journal.mark_sending(ALICE.owner, lost, {"image": upload(sandbox, make_image(color=(20, 60, 200)))})
    service.close()  # Alice's POST never reached WaveSpeed, and the app stopped

    caplog.set_level("INFO", logger="kling_demo.service.recovery")
    restarted = make_service(sandbox)
    wait_for(lambda: looked_for(caplog, lost), what="the start-up search for Alice's task")
    (record,) = restarted.tasks(ALICE)
    assert (record.task_id, record.status, record.video_path) == (lost, TaskStatus.UNKNOWN, None)
    assert not restarted.journal.has_task(someone_elses), "a task with another image is not Alice's"


def test_a_lost_submission_is_looked_for_around_its_post_not_over_the_downtime(make_sandbox, make_service,
                                                                               make_image, caplog):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    image_url = upload(sandbox, make_image())
    lost = alices_intent(service.journal, sandbox)
    # Her POST began ten minutes ago and its answer was lost; the app was down since.
    service.journal.mark_sending(ALICE.owner, lost, {"image": image_url}, at=time.time() - 600)
    service.close()
    later = submitted_on_the_server_key(sandbox, image_url)  # made during the downtime, long after her POST

    caplog.set_level("INFO", logger="kling_demo.service.recovery")
    restarted = make_service(sandbox)
    wait_for(lambda: looked_for(caplog, lost), what="the start-up search for Alice's task")
    (record,) = restarted.tasks(ALICE)
    assert (record.task_id, record.status) == (lost, TaskStatus.UNKNOWN)
    assert not restarted.journal.has_task(later)


def test_a_task_deleted_from_a_history_is_never_adopted(make_sandbox, make_service, make_image, caplog):
    sandbox = make_sandbox()
    service = make_service(sandbox)
    image_url = upload(sandbox, make_image())
    lost = alices_intent(service.journal, sandbox)
    service.journal.mark_sending(ALICE.owner, lost, {"image": image_url})
    task_id = submitted_on_the_server_key(sandbox, image_url)
    service.journal.record_submission(owner=BOB.owner, task_id=task_id, model=DEFAULT_MODEL.model_id,
                                      api_base=sandbox.base_url, key_source=KeySource.SERVER, params=dict(CAT))
    service.journal.fail(BOB.owner, task_id, "ended")
    service.delete(BOB, task_id)  # in Bob's history once: it is Bob's, deleted or not
    service.close()

    caplog.set_level("INFO", logger="kling_demo.service.recovery")
    restarted = make_service(sandbox)
    wait_for(lambda: looked_for(caplog, lost), what="the start-up search for Alice's task")
    (record,) = restarted.tasks(ALICE)
    assert (record.task_id, record.status) == (lost, TaskStatus.UNKNOWN)
    assert restarted.task(ALICE, task_id) is None
