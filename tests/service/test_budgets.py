"""Budgets in money, in-process: the ledger's rolling window and releases, who the spender is, the price quote,
and the guard a server-key job passes right before it uploads (against a real sandbox on loopback)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from kling_demo.jobs.slots import slot_key
from kling_demo.service.budgets import PRICE_UNKNOWN, Budgets, Ledger, Limits
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.config import Settings
from kling_demo.errors import (BudgetExceeded, InputRejected, InsufficientBalance, JobStopped, ServiceUnavailable,
                               StorageUnavailable, TryLater)
from kling_demo.service.identity import key_id, oauth_enabled, spender_id, visitor_address
from kling_demo.store.journal import Journal
from kling_demo.jobs.images import check_before_decoding, prepare_image
from kling_demo.models import DEFAULT_MODEL, BudgetView, JobRequest, Stage, Submission
from kling_demo.service.visitors import Visitor
from tests.conftest import SERVER_KEY
from tests.service.test_media import write_flat_jpeg

DAY = 24 * 3600


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path):
    clock = Clock()
    journal = Journal(tmp_path / "journal.sqlite3")  # the ledger lives in the journal's file
    made = Ledger(journal.path, clock=clock)
    made.clock_ = clock  # type: ignore[attr-defined]
    return made


# --- the ledger -------------------------------------------------------------------------------------------------

def test_a_visitor_spends_up_to_the_budget_and_is_told_when_it_frees_up(ledger):
    limits, clock = Limits(visitor_usd=3.00), ledger.clock_
    ledger.reserve("ip:1.2.3.4", 1.40, limits)
    clock.now += 3600
    ledger.reserve("ip:1.2.3.4", 1.40, limits)
    clock.now += 60
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("ip:1.2.3.4", 1.40, limits, what="this 5 s video")
    message = str(refused.value)
    assert "You have used $2.80 of your daily budget on this Space's key ($3.00 per 24 hours)" in message
    assert "this 5 s video costs $1.40" in message and "own WaveSpeed key lifts this limit" in message
    assert "Nothing was submitted." in message
    # The first spend leaves the window first: that is when one more video fits again.
    assert refused.value.frees_at == pytest.approx(1_000_000.0 + DAY)
    assert "(in 22 h 59 min)" in message, message
    ledger.reserve("ip:5.6.7.8", 1.40, limits)  # another visitor has their own budget

    clock.now = 1_000_000.0 + DAY + 1  # rolling: the first spend no longer counts
    ledger.reserve("ip:1.2.3.4", 1.40, limits)
    assert ledger.usage("ip:1.2.3.4").spender_usd == pytest.approx(2.80)


def test_a_released_reservation_no_longer_counts(ledger):
    limits = Limits(visitor_usd=1.50, app_usd=10.0)
    reservation = ledger.reserve("ip:1.2.3.4", 1.40, limits)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("ip:1.2.3.4", 1.40, limits)
    reservation.release()
    reservation.release()  # twice is harmless
    ledger.reserve("ip:1.2.3.4", 1.40, limits)
    assert ledger.usage("ip:1.2.3.4") .spender_usd == pytest.approx(1.40)
    assert ledger.usage("anyone").app_usd == pytest.approx(1.40)


def test_the_app_wide_budget_stops_everyone(ledger):
    limits = Limits(visitor_usd=5.0, app_usd=4.0)
    for n in range(2):
        ledger.reserve(f"ip:10.0.0.{n}", 1.40, limits)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("ip:10.0.0.9", 1.40, limits)
    assert "This Space has used $2.80 of this Space's daily budget on its key ($4.00 per 24 hours)" in str(
        refused.value)


def test_a_video_dearer_than_the_whole_budget_says_so(ledger):
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("ip:1.2.3.4", 2.80, Limits(visitor_usd=2.00), what="this 10 s video")
    assert "This 10 s video costs $2.80, more than your daily budget" in str(refused.value)
    assert "shorter video" in str(refused.value) and refused.value.frees_at is None


def test_submits_per_minute_counts_per_spender(ledger):
    limits, clock = Limits(submits_per_minute=2), ledger.clock_
    ledger.reserve("ip:1.2.3.4", 0.0, limits)
    clock.now += 10
    ledger.reserve("ip:1.2.3.4", 0.0, limits)
    clock.now += 5
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("ip:1.2.3.4", 0.0, limits)
    assert "(2 a minute)" in str(refused.value) and "Try again in 45 s" in str(refused.value)
    ledger.reserve("ip:9.9.9.9", 0.0, limits)
    clock.now += 46
    ledger.reserve("ip:1.2.3.4", 0.0, limits)


def test_zero_means_nothing_may_be_spent(ledger):
    with pytest.raises(BudgetExceeded):
        ledger.reserve("ip:1.2.3.4", 1.40, Limits(app_usd=0.0))
    with pytest.raises(BudgetExceeded, match="off"):
        ledger.reserve("ip:1.2.3.4", 1.40, Limits(submits_per_minute=0))


def test_reservations_at_once_never_overshoot_the_budget(ledger):
    limits, granted, refused = Limits(visitor_usd=3.00), [], []

    def spend() -> None:
        try:
            granted.append(Ledger(ledger.path, clock=ledger.clock_).reserve("ip:1.2.3.4", 1.40, limits))
        except BudgetExceeded:
            refused.append(1)

    threads = [threading.Thread(target=spend) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 2 and len(refused) == 10


def test_an_old_journal_gains_the_ledger_and_keeps_its_tasks(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.record_submission(owner="o", task_id="t1", model="m", api_base="b", key_source="server",
                              params={"prompt": "p"})
    with sqlite3.connect(path) as db:
        assert "spend" not in {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    Ledger(path).reserve("ip:1.2.3.4", 1.0, Limits(visitor_usd=5.0))
    assert Journal(path).get("o", "t1") is not None
    assert Ledger(path).usage("ip:1.2.3.4").spender_usd == 1.0


# --- who is spending ----------------------------------------------------------------------------------------------

def test_the_spender_is_the_key_hash_then_the_hf_user_then_the_ip():
    ip = visitor_address(None, "203.0.113.7", secret="server-secret")
    assert spender_id(ip=ip) == "ip:203.0.113.7"
    assert spender_id(ip=ip, hf_username="ada") == "hf:ada"
    by_key = spender_id(ip=ip, hf_username="ada", api_key="ws-secret", secret="server-secret")
    assert by_key == key_id("server-secret", "ws-secret") and by_key.startswith("key:")
    assert len(by_key) == len("key:") + 32 and "ws-secret" not in by_key
    assert key_id("another-secret", "ws-secret") != by_key


def test_addresses_are_normalized_and_never_read_from_x_forwarded_for():
    # uvicorn applies the proxy rule before the app sees the request; the app never parses the header itself.
    assert visitor_address({"x-forwarded-for": "198.51.100.1"}, "10.0.0.2", secret="s") == "10.0.0.2"
    # One IPv6 /64 is one visitor: rotating addresses inside it buys no new budget.
    first = visitor_address(None, "2001:db8:1:2::1", secret="s")
    assert first == visitor_address(None, "2001:db8:1:2:ffff::9", secret="s") == "2001:db8:1:2::/64"
    assert visitor_address(None, "::ffff:192.0.2.5", secret="s") == "192.0.2.5"
    assert visitor_address(None, None, secret="s") == "unknown"


def test_the_login_button_appears_only_on_a_space_with_oauth():
    space = {"SYSTEM": "spaces", "SPACE_ID": "me/app"}
    oauth = {"OAUTH_CLIENT_ID": "c", "OAUTH_CLIENT_SECRET": "s", "OAUTH_SCOPES": "openid profile",
             "OPENID_PROVIDER_URL": "https://huggingface.co"}
    assert oauth_enabled({**space, **oauth})
    assert not oauth_enabled(oauth) and not oauth_enabled(space)
    assert not oauth_enabled({**space, **oauth, "OAUTH_SCOPES": ""})
    # Gradio knows a Space by SYSTEM=spaces; without it, it would mock the sign-in with the machine's own token.
    assert not oauth_enabled({"SPACE_ID": "me/app", **oauth})


def test_budget_defaults_apply_on_a_real_key_only():
    sandbox = Settings.from_env({}, None)
    assert (sandbox.visitor_budget_usd, sandbox.daily_budget_usd, sandbox.submits_per_minute) == (None, None, None)
    paid = Settings.from_env({"WAVESPEED_API_KEY": "k"}, None)
    assert (paid.visitor_budget_usd, paid.daily_budget_usd, paid.submits_per_minute) == (5.0, 50.0, 3)
    tuned = Settings.from_env({"WAVESPEED_API_KEY": "k", "KLING_DEMO_VISITOR_BUDGET_USD": "off",
                               "KLING_DEMO_DAILY_BUDGET_USD": "0", "KLING_DEMO_SUBMITS_PER_MINUTE": "10"}, None)
    assert (tuned.visitor_budget_usd, tuned.daily_budget_usd, tuned.submits_per_minute) == (None, 0.0, 10)
    explicit_in_sandbox = Settings.from_env({"KLING_DEMO_VISITOR_BUDGET_USD": "2.5"}, None)
    assert explicit_in_sandbox.visitor_budget_usd == 2.5
    with pytest.raises(ValueError, match="KLING_DEMO_DAILY_BUDGET_USD"):
        Settings.from_env({"KLING_DEMO_DAILY_BUDGET_USD": "-1"}, None)


# --- the quote and the guard, against a real sandbox ------------------------------------------------------------------

def test_the_price_quote_comes_from_the_api(make_sandbox):
    sandbox = make_sandbox(price_per_second=0.28)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        assert client.price(DEFAULT_MODEL, {"duration": 5}).price == pytest.approx(1.40)
        assert client.price(DEFAULT_MODEL, {"duration": 10, "prompt": "x"}).price == pytest.approx(2.80)
        assert client.price(DEFAULT_MODEL, {"duration": 5}).currency == "USD"
    assert sandbox.stats()["submissions"] == 0, "a quote creates nothing"


def run(job) -> list:
    with job:
        return list(job)


def test_a_refused_job_uploads_and_submits_nothing(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=1.50)
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    assert run(service.generate(JobRequest(image=make_image(), prompt="one"), visitor))[-1].stage is Stage.DONE
    assert service.budget(visitor) == BudgetView(spent=pytest.approx(1.40), limit=1.50, app_spent=pytest.approx(1.40),
                                                 app_limit=None)
    assert service.voice.budget_line(service.budget(visitor)) == ("Last 24 h on this app's key: $1.40 of $1.50 used · "
                                                                  "your own key lifts this")
    with pytest.raises(BudgetExceeded, match="daily budget"):
        run(service.generate(JobRequest(image=make_image(), prompt="two"), Visitor("browser:b", spender="ip:1.2.3.4")))
    assert sandbox.stats()["uploads"] == 1 and sandbox.stats()["submissions"] == 1
    assert [r.prompt for r in service.tasks(Visitor("browser:b"))] == [], "no entry is left for a refused job"
    # One's own key is neither refused nor charged; the operator at the command line is not budgeted.
    own = Visitor("browser:a", "own-key", spender="ip:1.2.3.4")
    assert run(service.generate(JobRequest(image=make_image(), prompt="own"), own))[-1].stage is Stage.DONE
    operator = Visitor("cli", operator=True)
    assert run(service.generate(JobRequest(image=make_image(), prompt="cli"), operator))[-1].stage is Stage.DONE
    assert service.budgets.ledger.usage("ip:1.2.3.4").app_usd == pytest.approx(1.40)
    assert service.budget(own) is None and service.budget(operator) is None
    assert service.voice.budget_line(service.budget(own)) == ""


def test_a_job_stopped_before_its_submit_is_released(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=5.0)
    updates = []
    with service.generate(JobRequest(image=make_image(), prompt="x"), Visitor("browser:a", spender="ip:1.2.3.4")) as job:
        with pytest.raises(JobStopped) as stopped:
            for update in job:
                updates.append(update)
                if update.stage is Stage.UPLOADING:  # reserved by now; Stop lands before the submit POST
                    assert service.budgets.ledger.usage("ip:1.2.3.4").spender_usd == pytest.approx(1.40)
                    assert job.stop().submission is Submission.NONE
    assert stopped.value.submission is Submission.NONE and not stopped.value.may_be_billed
    assert updates[-1].stage is Stage.STOPPED and updates[-1].submission is Submission.NONE
    assert sandbox.stats()["submissions"] == 0
    assert service.budgets.ledger.usage("ip:1.2.3.4").spender_usd == 0.0


def test_a_submission_refused_by_the_api_is_released(make_sandbox, make_service, make_image):
    sandbox = make_sandbox(balance=2.0)  # room for one $1.40 video: the second submit is answered 402
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=5.0)
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    first = service.generate(JobRequest(image=make_image(), prompt="one"), visitor)
    second = service.generate(JobRequest(image=make_image(), prompt="two"), visitor)
    with first, second:
        first_updates, second_updates = iter(first), iter(second)
        for updates in (first_updates, second_updates):  # both reserved and past the balance check, neither submitted
            while next(updates).stage is not Stage.UPLOADING:
                pass
        while next(first_updates).stage is not Stage.SUBMITTED:
            pass
        with pytest.raises(InsufficientBalance):
            list(second_updates)
    assert sandbox.stats()["submissions"] == 1
    assert service.budgets.ledger.usage("ip:1.2.3.4").spender_usd == pytest.approx(1.40), "only the first counts"


def test_no_price_no_submission(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=5.0)
    sandbox.stop()  # the quote cannot be had: the job is refused, not guessed
    with pytest.raises(ServiceUnavailable) as refused:
        run(service.generate(JobRequest(image=make_image(), prompt="x"), Visitor("browser:a", spender="ip:1.2.3.4")))
    assert str(refused.value) == PRICE_UNKNOWN
    assert service.budgets.ledger.usage("ip:1.2.3.4").spender_usd == 0.0


def test_no_limits_no_guard(tmp_path):
    budgets = Budgets(Ledger(tmp_path / "j.sqlite3"), Limits(), DEFAULT_MODEL)
    assert budgets.guard("ip:1.2.3.4", WaveSpeedClient("http://127.0.0.1:9", "k")) is None
    assert budgets.view("ip:1.2.3.4") is None


# --- the guard comes before anything costs the app ------------------------------------------------------------------

def undecodable_jpeg(path: Path, width: int = 9400, height: int = 9400) -> Path:
    """A JPEG of `width`×`height` px whose header and end pass every check that reads no pixels, while its frame names
    a quantization table the file never defines: only decoding it (at 1/4 scale here) finds it broken."""
    data = bytearray(write_flat_jpeg(path, width, height).read_bytes())
    frame = data.index(b"\xff\xc0") + 10  # the first component's id, sampling factors, table
    data[frame + 2] = 3
    path.write_bytes(data)
    check_before_decoding(path, DEFAULT_MODEL.first_frame, role="first frame")
    with pytest.raises(InputRejected, match="damaged or incomplete"):
        prepare_image(path, DEFAULT_MODEL.first_frame)
    return path


def spend_rows(service) -> list[tuple[str, float]]:
    """The ledger as it stands: (kind, amount) of every reservation, "submit" while it counts, "released" after."""
    with closing(sqlite3.connect(service.budgets.ledger.path)) as db:
        return db.execute("SELECT kind, amount_usd FROM spend ORDER BY id").fetchall()


def test_a_spent_budget_refuses_the_job_before_its_image_is_decoded(make_sandbox, make_service, tmp_path):
    """Issue 26: with a $0 budget, four jobs of big images each decoded theirs (1,556 MB at the peak) to be refused
    for the budget. The budget speaks first now: the first frame, which only a decode would find broken, is not
    decoded, and nothing reaches the API."""
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, daily_budget_usd=0.0)
    image = undecodable_jpeg(tmp_path / "huge.jpg")
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    with pytest.raises(BudgetExceeded) as refused:
        run(service.generate(JobRequest(image=str(image), prompt="x"), visitor))
    assert str(refused.value).startswith("This 5 s video costs $1.40, more than this Space's daily budget on its key "
                                         "($0.00 per 24 hours).")
    assert str(refused.value).endswith("Nothing was submitted.")
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0
    assert spend_rows(service) == []


def _busy_slot(service) -> None:
    assert service.api_slots.ticket(slot_key(SERVER_KEY)).try_acquire() == 0  # another job holds the only slot


def _stop_while_waiting(service, job) -> None:
    with job:
        updates = iter(job)
        while next(updates).stage is not Stage.WAITING:
            pass
        assert service.budgets.ledger.usage("ip:1.2.3.4").spender_usd == pytest.approx(1.40), "reserved by now"
        job.stop()
        list(updates)


# way out → (settings, the refusal, what the job is given, how it is run)
WAYS_OUT = {
    "an image refused when decoded": ({}, InputRejected, "damaged", lambda service, job: run(job)),
    "no room to record the job": ({"min_free_mb": 1e12}, StorageUnavailable, "", lambda service, job: run(job)),
    "no WaveSpeed slot before the deadline": (
        {"api_concurrency": 1, "deadline_seconds": 0.0}, TryLater, "", lambda service, job: (
            _busy_slot(service), run(job))),
    "Stop while waiting for a slot": (
        {"api_concurrency": 1}, JobStopped, "", lambda service, job: (_busy_slot(service),
                                                                      _stop_while_waiting(service, job))),
}


@pytest.mark.parametrize("way_out", WAYS_OUT)
def test_a_job_that_submits_nothing_gives_its_reservation_back(way_out, make_sandbox, make_service, make_image,
                                                                tmp_path):
    """The price is reserved before the images are decoded, and every way out that submits nothing gives it back:
    the budget line and the per-minute rate are as they were, and the ledger shows one released reservation."""
    settings, refusal, image_kind, go = WAYS_OUT[way_out]
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=5.0, submits_per_minute=1,
                           **settings)
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    before = service.budget(visitor)
    image = undecodable_jpeg(tmp_path / "broken.jpg") if image_kind == "damaged" else make_image()
    with pytest.raises(refusal):
        go(service, service.generate(JobRequest(image=str(image), prompt="x"), visitor))
    assert spend_rows(service) == [("released", pytest.approx(1.40))], "reserved before, given back after"
    assert service.budget(visitor) == before == BudgetView(spent=0.0, limit=5.0, app_spent=0.0, app_limit=None)
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0
