"""Budgets in money, in-process: the ledger's rolling window and releases (its refusals are facts), who the spender
is, the price quote, and the guard a server-key job passes right before it uploads (against a real sandbox on
loopback)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from kling_demo.jobs.slots import slot_key
from kling_demo.service.money import PRICE_UNKNOWN, Budgets, QuoteCache
from kling_demo.store.ledger import Ledger, Limits, Reservation
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.config import Settings
from kling_demo.errors import (BudgetExceeded, InputRejected, InsufficientBalance, JobStopped, ServiceUnavailable,
                               StorageUnavailable, TryLater)
from kling_demo.service.identity import key_id, oauth_enabled, spender_id, visitor_address
from kling_demo.store.journal import Journal
from kling_demo.jobs.images import check_before_decoding, prepare_image
from kling_demo.models import DEFAULT_MODEL, BudgetRefusal, BudgetView, JobRequest, Limit, Stage, Submission
from kling_demo.service.visitors import Visitor
from kling_demo.words import Voice
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

def refused(held: object) -> BudgetRefusal:
    assert isinstance(held, BudgetRefusal), f"a reservation where a refusal was due: {held}"
    return held


def test_a_visitor_spends_up_to_the_budget_and_is_told_when_it_frees_up(ledger):
    limits, clock = Limits(visitor_usd=3.00), ledger.clock_
    assert isinstance(ledger.reserve("ip:1.2.3.4", 1.40, limits), Reservation)
    clock.now += 3600
    ledger.reserve("ip:1.2.3.4", 1.40, limits)
    clock.now += 60
    assert ledger.check("ip:1.2.3.4", 1.40, limits) == refused(ledger.reserve("ip:1.2.3.4", 1.40, limits)) == \
        BudgetRefusal(Limit.VISITOR, cap=3.0, used=pytest.approx(2.80), price=1.40,
                      # The first spend leaves the window first: that is when one more video fits again.
                      frees_at=pytest.approx(1_000_000.0 + DAY), at=clock.now)
    assert refused(ledger.reserve("ip:1.2.3.4", 1.40, limits)).wait == pytest.approx(DAY - 3660)
    assert ledger.usage("ip:1.2.3.4").spender_usd == pytest.approx(2.80), "a refusal counts nothing"
    ledger.reserve("ip:5.6.7.8", 1.40, limits)  # another visitor has their own budget
    assert ledger.check("ip:5.6.7.8", 1.40, limits) is None

    clock.now = 1_000_000.0 + DAY + 1  # rolling: the first spend no longer counts
    assert ledger.check("ip:1.2.3.4", 1.40, limits) is None
    ledger.reserve("ip:1.2.3.4", 1.40, limits)
    assert ledger.usage("ip:1.2.3.4").spender_usd == pytest.approx(2.80)


def test_a_released_reservation_no_longer_counts(ledger):
    limits = Limits(visitor_usd=1.50, app_usd=10.0)
    reservation = ledger.reserve("ip:1.2.3.4", 1.40, limits)
    assert refused(ledger.reserve("ip:1.2.3.4", 1.40, limits)).limit is Limit.VISITOR
    reservation.release()
    reservation.release()  # twice is harmless
    assert isinstance(ledger.reserve("ip:1.2.3.4", 1.40, limits), Reservation)
    assert ledger.usage("ip:1.2.3.4") .spender_usd == pytest.approx(1.40)
    assert ledger.usage("anyone").app_usd == pytest.approx(1.40)


def test_the_app_wide_budget_stops_everyone(ledger):
    limits = Limits(visitor_usd=5.0, app_usd=4.0)
    for n in range(2):
        ledger.reserve(f"ip:10.0.0.{n}", 1.40, limits)
    assert refused(ledger.reserve("ip:10.0.0.9", 1.40, limits)) == BudgetRefusal(
        Limit.APP, cap=4.0, used=pytest.approx(2.80), price=1.40, frees_at=pytest.approx(1_000_000.0 + DAY),
        at=ledger.clock_.now)


def test_a_video_dearer_than_the_whole_budget_never_frees(ledger):
    refusal = refused(ledger.reserve("ip:1.2.3.4", 2.80, Limits(visitor_usd=2.00)))
    assert (refusal.limit, refusal.used, refusal.cap, refusal.price) == (Limit.VISITOR, 0.0, 2.0, 2.80)
    assert refusal.frees_at is None and refusal.wait is None


def test_submits_per_minute_counts_per_spender(ledger):
    limits, clock = Limits(submits_per_minute=2), ledger.clock_
    ledger.reserve("ip:1.2.3.4", 0.0, limits)
    clock.now += 10
    ledger.reserve("ip:1.2.3.4", 0.0, limits)
    clock.now += 5
    refusal = refused(ledger.reserve("ip:1.2.3.4", 0.0, limits))
    assert (refusal.limit, refusal.cap, refusal.submitted, refusal.wait) == (Limit.RATE, 2, 2, pytest.approx(45))
    ledger.reserve("ip:9.9.9.9", 0.0, limits)
    clock.now += 46
    assert isinstance(ledger.reserve("ip:1.2.3.4", 0.0, limits), Reservation)


def test_zero_means_nothing_may_be_spent(ledger):
    assert refused(ledger.reserve("ip:1.2.3.4", 1.40, Limits(app_usd=0.0))).frees_at is None
    off = refused(ledger.reserve("ip:1.2.3.4", 1.40, Limits(submits_per_minute=0)))
    assert off.limit is Limit.RATE and off.cap == 0 and off.frees_at is None


def test_without_a_quote_only_a_budget_with_nothing_left_refuses(ledger):
    limits = Limits(visitor_usd=1.50)
    assert ledger.check("ip:1.2.3.4", None, limits) is None
    ledger.reserve("ip:1.2.3.4", 1.50, limits)
    refusal = ledger.check("ip:1.2.3.4", None, limits)
    assert refusal is not None and refusal.price is None and refusal.used == pytest.approx(1.50)


# --- the words of a refusal ---------------------------------------------------------------------------------------

AT = 1_000_000.0


def test_a_refusal_is_worded_for_visitors_without_header_names_and_for_programs_with_them():
    used = BudgetRefusal(Limit.VISITOR, cap=5.0, used=4.20, price=1.40, duration=5,
                         frees_at=AT + 3 * 3600 + 11 * 60 + 30, at=AT)
    local = Voice().refused(used)
    assert local == ("You have used $4.20 of your daily budget on this app's key ($5.00 per 24 hours), and a 5 s video "
                     "costs $1.40. It frees up at 16:58 UTC (in 3 h 12 min). Your own WaveSpeed key lifts this limit: "
                     "enter it under “Your WaveSpeed key”.")
    on_space = Voice(on_space=True).refused(used)
    assert "your daily budget on this Space's key" in on_space and "this app" not in on_space
    program = Voice(on_space=True, for_visitors=False).refused(used, ended=True)
    assert "X-WaveSpeed-Key header" in program and program.endswith("Nothing was submitted.")
    for voice in (Voice(), Voice(on_space=True), Voice(sandbox=True)):
        said = voice.refused(used)
        assert "X-WaveSpeed-Key" not in said and "KLING_DEMO" not in said and said[0].isupper()

    app = BudgetRefusal(Limit.APP, cap=4.0, used=2.80, price=1.40, duration=10, frees_at=AT + 30, at=AT)
    assert Voice(on_space=True).refused(app).startswith("This Space has used $2.80 of its daily budget ($4.00 per 24 "
                                                        "hours), and a 10 s video costs $1.40. It frees up in 30 s.")
    dear = BudgetRefusal(Limit.VISITOR, cap=2.0, price=2.80, duration=10, shorter=True, at=AT)
    assert Voice().refused(dear).startswith("A 10 s video costs $2.80, more than your daily budget on this app's key "
                                            "($2.00 per 24 hours). A shorter video costs less.")
    rate = BudgetRefusal(Limit.RATE, cap=3, submitted=3, frees_at=AT + 44.2, at=AT)
    assert Voice().refused(rate).startswith("You have started 3 videos in the last minute, the most one visitor may on "
                                            "this app's key (3 a minute). Try again in 45 s.")
    assert Voice().refused(BudgetRefusal(Limit.RATE, cap=0, at=AT)).startswith("New videos on this app's key are "
                                                                             "switched off.")


def test_reservations_at_once_never_overshoot_the_budget(ledger):
    limits, granted, refused = Limits(visitor_usd=3.00), [], []

    def spend() -> None:
        held = Ledger(ledger.path, clock=ledger.clock_).reserve("ip:1.2.3.4", 1.40, limits)
        (granted if isinstance(held, Reservation) else refused).append(held)

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
    with pytest.raises(BudgetExceeded) as refused:
        run(service.generate(JobRequest(image=make_image(), prompt="two"), Visitor("browser:b", spender="ip:1.2.3.4")))
    assert refused.value.refusal.limit is Limit.VISITOR and refused.value.refusal.used == pytest.approx(1.40)
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
    budgets = Budgets(Ledger(tmp_path / "j.sqlite3"), Limits(), DEFAULT_MODEL, QuoteCache(), Voice())
    assert budgets.guard("ip:1.2.3.4", WaveSpeedClient("http://127.0.0.1:9", "k"), "k") is None
    assert budgets.view("ip:1.2.3.4") is None and budgets.refusal("ip:1.2.3.4", None, 5) is None


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
    assert refused.value.refusal == BudgetRefusal(Limit.APP, cap=0.0, price=pytest.approx(1.40), duration=5,
                                                  at=refused.value.refusal.at)
    assert str(refused.value).startswith("A 5 s video costs $1.40, more than the daily budget of this app ($0.00 per "
                                         "24 hours).")
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


# --- the refusal before the click (issue 25) --------------------------------------------------------------------------

def test_a_budget_smaller_than_one_video_is_known_before_any_click(make_sandbox, make_service, make_image):
    """The page asks what would refuse the next video before anything is clicked; the job, if it is started anyway
    (an API call, a raw queue/join), is refused with the same facts and submits nothing."""
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=1.00)
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    before = service.refusal(visitor, 10)
    assert before == BudgetRefusal(Limit.VISITOR, cap=1.0, price=pytest.approx(2.80), duration=10, shorter=True,
                                   at=before.at)
    assert service.refusal(visitor, 5).price == pytest.approx(1.40) and not service.refusal(visitor, 5).shorter
    assert service.refusal(Visitor("browser:a", "own-key", spender="ip:1.2.3.4"), 5) is None, "own key: no limit"
    assert service.refusal(Visitor("cli", operator=True), 5) is None
    with pytest.raises(BudgetExceeded) as refused:
        run(service.generate(JobRequest(image=make_image(), prompt="x"), visitor))
    assert refused.value.refusal == dataclasses.replace(service.refusal(visitor, 5), at=refused.value.refusal.at)
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0


def test_a_used_up_budget_says_what_is_used_and_when_it_frees_before_the_click(make_sandbox, make_service, make_image):
    """With $4.20 of $5.00 used the page still offered a $1.40 video. The refusal is known before the click: what is
    used, the price, and when the first spend leaves the 24 hours."""
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, visitor_budget_usd=2.00, submits_per_minute=5)
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    assert service.refusal(visitor, 5) is None
    assert run(service.generate(JobRequest(image=make_image(), prompt="one"), visitor))[-1].stage is Stage.DONE
    refusal = service.refusal(visitor, 5)
    assert (refusal.limit, refusal.used, refusal.cap, refusal.price) == (Limit.VISITOR, pytest.approx(1.40), 2.0,
                                                                          pytest.approx(1.40))
    assert DAY - 60 < refusal.wait <= DAY, "it frees when the first video's spend leaves the 24 hours"
    assert service.refusal(Visitor("browser:b", spender="ip:5.6.7.8"), 5) is None, "another visitor's budget"


def test_the_per_minute_rate_is_known_before_the_click(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox.base_url, background=False, submits_per_minute=1)
    visitor = Visitor("browser:a", spender="ip:1.2.3.4")
    run(service.generate(JobRequest(image=make_image(), prompt="one"), visitor))
    refusal = service.refusal(visitor, 5)
    assert (refusal.limit, refusal.cap, refusal.submitted) == (Limit.RATE, 1, 1) and 0 < refusal.wait <= 60
    assert "You have started 1 video in the last minute" in service.voice.refused(refusal)
