"""Money in view, in-process against a real sandbox treated as the live API (its table: $1.40 per 5 s video):
the quote cache, the low-balance refusal that submits nothing, the quote kept with the task, what WaveSpeed's
billing charged (a failed task refunded, or kept charged), the cost stated one way everywhere, the key's status."""

from __future__ import annotations

import sqlite3

import pytest
import requests

from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.config import Settings
from kling_demo.errors import InsufficientBalance, ServiceUnavailable, TaskFailed
from kling_demo.store.journal import Journal
from kling_demo.models import (DEFAULT_MODEL, Balance, Charge, JobRequest, KeyCheck, KeyState, Payer, PriceView, Quote,
                               Spend, Stage)
from kling_demo.service.money import Charges, QuoteCache, price_guard
from kling_demo.service.service import Service
from kling_demo.service.visitors import Visitor
from kling_demo.web import views
from kling_demo.words import money

SERVER_KEY = "server-key"
ALICE = Visitor("browser:alice")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(job) -> list:
    with job:
        return list(job)


def test_money_reads_with_two_decimals_in_the_apis_currency():
    assert money(1.4) == "$1.40" and money(1234.5) == "$1,234.50" and money(2.8, "eur") == "2.80 EUR"


def test_quotes_are_cached_briefly_per_key_and_duration(make_sandbox):
    sandbox, clock = make_sandbox(), Clock()
    cache = QuoteCache(ttl=60, clock=clock)
    with WaveSpeedClient(sandbox.base_url, "key-a") as client:
        assert cache.quote(client, "key-a", DEFAULT_MODEL, {"duration": 5, "prompt": "x"}).price == pytest.approx(1.40)
        assert cache.quote(client, "key-a", DEFAULT_MODEL, {"duration": 5, "prompt": "other"}).price == pytest.approx(1.40)
        assert cache.asked == 1, "the prompt does not change the price, so the second quote is the cached one"
        assert cache.quote(client, "key-a", DEFAULT_MODEL, {"duration": 10}).price == pytest.approx(2.80)
        assert cache.asked == 2
        cache.quote(client, "key-b", DEFAULT_MODEL, {"duration": 5})
        assert cache.asked == 3, "another key is asked for its own quote"
        clock.now += 61
        cache.quote(client, "key-a", DEFAULT_MODEL, {"duration": 5})
        assert cache.asked == 4, "an expired quote is asked again"
    assert sandbox.stats()["submissions"] == 0


def test_the_price_line_shows_the_apis_quote_or_says_it_is_unavailable(make_sandbox, make_service):
    sandbox = make_sandbox(price_per_second=0.5)
    service = make_service(sandbox, background=False, show_balance=True)
    server_paid = service.price(ALICE, 5)
    assert server_paid == PriceView(5, Payer.SERVER_KEY, Quote(pytest.approx(2.50), "USD"),
                                    balance=Balance(pytest.approx(1000.0), "USD"))
    assert service.voice.price_line(server_paid) == ("Price: $2.50 for this 5 s video, billed to this app's key at "
                                                     "WaveSpeed. Its balance: $1,000.00.")
    own = Visitor("browser:alice", "own-key")
    own_paid = service.price(own, 10)
    assert own_paid == PriceView(10, Payer.OWN_KEY, Quote(pytest.approx(5.00), "USD"))  # no balance of theirs shown
    assert service.voice.price_line(own_paid) == "Price: $5.00 for this 10 s video, billed to your WaveSpeed key."
    service.quotes.ttl = 0  # nothing cached: the next line must ask the API, which is gone
    sandbox.stop()
    gone = service.price(ALICE, 10)
    assert gone == PriceView(10, Payer.SERVER_KEY)  # no quote, and none made up
    assert service.voice.price_line(gone).startswith("Price unavailable")


def test_a_balance_below_the_price_is_refused_with_both_amounts_and_nothing_submitted(make_sandbox, make_service,
                                                                                       make_image):
    sandbox = make_sandbox(balance=1.0)  # a 5 s video costs $1.40
    service = make_service(sandbox, background=False)
    own = Visitor("browser:alice", "own-key")
    with pytest.raises(InsufficientBalance) as refused:
        run(service.generate(JobRequest(image=make_image(), prompt="a kite"), own))
    assert str(refused.value).startswith("Your WaveSpeed balance is $1.00, less than this video's price of $1.40.")
    # On the Space's key the refusal states its balance only where the owner shows it.
    with pytest.raises(InsufficientBalance) as refused:
        run(service.generate(JobRequest(image=make_image(), prompt="a kite"), ALICE))
    assert "$1.40" in str(refused.value) and "$1.00" not in str(refused.value)
    stats = sandbox.stats()
    assert stats["submissions"] == 0 and stats["uploads"] == 0 and stats["insufficient_balance"] == 0
    assert service.tasks(ALICE) == [], "nothing was submitted, so nothing waits in the history"


def test_a_balance_that_cannot_be_had_does_not_block(make_sandbox, make_service):
    sandbox = make_sandbox()
    cache = QuoteCache()
    with WaveSpeedClient(sandbox.base_url, SERVER_KEY, max_attempts=1) as client:
        guard = price_guard(cache, client, SERVER_KEY, DEFAULT_MODEL, whose="Your", show_balance=False)
        assert guard({"duration": 5}).price == pytest.approx(1.40)  # quoted and cached
        sandbox.stop()  # the balance call now fails: the job goes on, WaveSpeed's 402 stays the backstop
        assert guard({"duration": 5}).price == pytest.approx(1.40)


def test_the_quote_is_kept_with_the_task_and_the_charge_is_shown_when_it_is_done(make_sandbox, make_service,
                                                                                   make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox, background=False)
    voice = service.voice
    updates = run(service.generate(JobRequest(image=make_image(), prompt="a kite", duration=10), ALICE))
    uploading = next(u for u in updates if u.stage is Stage.UPLOADING)
    assert uploading.price == Quote(pytest.approx(2.80), "USD") and "Price: $2.80." in voice.status(uploading)
    done = updates[-1]
    assert done.stage is Stage.DONE and done.price == Quote(pytest.approx(2.80), "USD")
    assert done.charge == Charge(pytest.approx(2.80), settled=True), "the server's key reads its own billing"
    assert "cost $2.80 (charged)" in voice.status(done)
    (record,) = service.tasks(ALICE)
    assert record.quote == Quote(pytest.approx(2.80), "USD")
    run(service.generate(JobRequest(image=make_image(), prompt="again"), ALICE))
    assert service.spend(ALICE) == (Spend("USD", charged=pytest.approx(4.20), charged_tasks=2),)
    assert voice.spend_line(service.spend(ALICE)) == "Spent so far: $4.20 on 2 tasks, as WaveSpeed charged them."
    assert service.spend(Visitor("browser:bob")) == ()
    assert voice.spend_line(service.spend(Visitor("browser:bob"))) == "Spent so far: nothing yet."
    assert sandbox.stats()["submissions"] == 2


def test_an_entered_key_is_checked_at_once_and_never_echoed(make_sandbox, make_service):
    sandbox = make_sandbox(api_key=SERVER_KEY, balance=12.4)
    service = make_service(sandbox, background=False)
    accepted = service.check_key(SERVER_KEY, ALICE)
    assert accepted == KeyCheck(KeyState.ACCEPTED, balance=Balance(pytest.approx(12.4), "USD"))
    assert service.voice.key_status(accepted) == "Key accepted · balance $12.40"
    refused = service.check_key("not-a-real-key", ALICE)
    assert refused == KeyCheck(KeyState.REFUSED)
    rejected = service.voice.key_status(refused)
    assert rejected.startswith("WaveSpeed rejected this key.") and "not-a-real-key" not in rejected
    assert service.check_key(None, ALICE) is None and service.voice.key_status(None) == ""
    assert sandbox.stats()["submissions"] == 0


def test_the_sandbox_never_pretends_a_charge(tmp_path, make_image):
    service = Service(Settings(data_dir=tmp_path / "data", sandbox_inference_seconds=1.0), background=False)
    voice = service.voice
    try:
        assert service.price(ALICE, 10) is None
        assert voice.price_line(service.price(ALICE, 10)) == "Free (sandbox): nothing here costs money."
        updates = run(service.generate(JobRequest(image=make_image(), prompt="x"), ALICE))
        assert updates[-1].stage is Stage.DONE and all(update.price is None for update in updates)
        assert "cost" not in voice.status(updates[-1]) and "$" not in voice.status(updates[-1])
        (record,) = service.tasks(ALICE)
        assert record.price is None and record.quote is None and voice.cost(record.quote) == ""
        assert service.spend(ALICE) == () and service.charge(record) is None
        assert voice.spend_line(service.spend(ALICE)) == "Sandbox mode: nothing you make here costs money."
    finally:
        service.close()


def test_an_older_journal_gains_the_price_columns_and_keeps_its_tasks(tmp_path):
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:  # the tasks table as the first release wrote it
        db.executescript("""
            CREATE TABLE tasks (task_id TEXT NOT NULL, owner TEXT NOT NULL, model TEXT NOT NULL,
                api_base TEXT NOT NULL, key_source TEXT NOT NULL, params TEXT NOT NULL, first_frame TEXT,
                status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
                inference_ms INTEGER, video_path TEXT, error TEXT NOT NULL DEFAULT '', PRIMARY KEY (owner, task_id));
            INSERT INTO tasks VALUES ('t1', 'o', 'm', 'b', 'server', '{"prompt": "old"}', NULL, 'completed', 1, 1,
                                      1, NULL, NULL, '');
        """)
    db.close()
    journal = Journal(path)
    (old,) = journal.for_owner("o")
    assert old.prompt == "old" and old.price is None
    journal.record_submission(owner="o", task_id="t2", model="m", api_base="b", key_source="server",
                              params={}, status="completed")
    journal.set_price("o", "t2", 1.4, "USD")
    assert journal.get("o", "t2").price == pytest.approx(1.4)
    assert [record.quote for record in journal.costed("o")] == [Quote(pytest.approx(1.4)), None]
    assert Journal(path).get("o", "t1") is not None, "opening it again migrates nothing twice"


def test_a_quote_that_cannot_be_had_raises_a_plain_error(make_sandbox):
    sandbox = make_sandbox()
    base_url = sandbox.base_url
    sandbox.stop()
    with WaveSpeedClient(base_url, "k", max_attempts=1) as client, pytest.raises(ServiceUnavailable):
        QuoteCache().quote(client, "k", DEFAULT_MODEL, {"duration": 5})


# --- what a task cost, stated one way everywhere (issue 25) ---------------------------------------------------------

def done_cost(service, update) -> str:
    """The cost as the done status states it ("$1.40 (charged)")."""
    return next(part for part in service.voice.status(update).split(" · ") if part.startswith("cost ")).removeprefix(
        "cost ")


def detail_cost(service, record) -> str:
    """The cost as the history's detail states it."""
    text = views.detail(record, service.voice, charge=service.charge(record))
    return next(line for line in text.split("\n\n") if line.startswith("**Cost:** ")).removeprefix("**Cost:** ")


def test_a_server_key_task_states_its_charge_and_an_own_key_task_its_quote_the_same_everywhere(
        make_sandbox, make_service, make_image):
    """Only the key that paid can read a task's billing: the server's is kept, a visitor's own key is not. So the
    server key's task is stated at its charge, the visitor's at its quote, labelled: in the done status, the
    history's detail and "Spent so far" alike."""
    sandbox = make_sandbox()
    service = make_service(sandbox, background=False)
    server = run(service.generate(JobRequest(image=make_image(), prompt="server"), ALICE))[-1]
    own = run(service.generate(JobRequest(image=make_image(), prompt="own"), Visitor("browser:alice", "own-key")))[-1]
    assert server.charge == Charge(pytest.approx(1.40), settled=True) and own.charge is None
    by_prompt = {record.prompt: record for record in service.tasks(ALICE)}
    assert done_cost(service, server) == detail_cost(service, by_prompt["server"]) == "$1.40 (charged)"
    assert done_cost(service, own) == detail_cost(service, by_prompt["own"]) == "$1.40 (quoted at submission)"
    assert service.spend(ALICE) == (Spend("USD", charged=pytest.approx(1.40), charged_tasks=1,
                                          quoted=pytest.approx(1.40), quoted_tasks=1),)
    assert service.voice.spend_line(service.spend(ALICE)) == (
        "Spent so far: $2.80 on 2 tasks: $1.40 charged by WaveSpeed for 1 and $1.40 quoted at submission for 1 (its "
        "charge is not known here).")


@pytest.mark.parametrize("charged", [False, True], ids=["refunded", "kept charged"])
def test_a_failed_task_costs_what_wavespeed_billed_in_its_detail_and_in_the_spend(charged, make_sandbox, make_service,
                                                                                  make_image):
    """A failed task was shown "Cost: $1.40" while "Spent so far" left it out. Now both say what WaveSpeed's billing
    says: refunded ($0, counted as a task) by default, or kept charged (the sandbox's --charge-failed-tasks)."""
    sandbox = make_sandbox(task_failure_rate=1.0, charge_failed_tasks=charged)
    service = make_service(sandbox, background=False)
    with pytest.raises(TaskFailed):
        run(service.generate(JobRequest(image=make_image(), prompt="doomed"), ALICE))
    (record,) = service.tasks(ALICE)
    assert service.charge(record) == Charge(pytest.approx(1.40 if charged else 0.0), settled=True)
    assert detail_cost(service, record) == ("$1.40 (charged)" if charged else "$0.00 (refunded)")
    assert service.spend(ALICE) == (Spend("USD", charged=pytest.approx(1.40 if charged else 0.0), charged_tasks=1,
                                          refunded_tasks=0 if charged else 1),)
    assert service.voice.spend_line(service.spend(ALICE)) == (
        "Spent so far: $1.40 on 1 task, as WaveSpeed charged it." if charged else
        "Spent so far: $0.00 on 1 task, as WaveSpeed charged it (1 refunded).")
    # The balance says the same: the refund came back to the key.
    assert service.balance(ALICE).amount == pytest.approx(1000.0 - (1.40 if charged else 0.0))


def test_charges_are_read_once_when_settled_and_again_while_provisional(make_sandbox, make_service, make_image):
    """The history redraws every few seconds: a settled charge never changes, so it is read once; one still
    provisional (the task runs: its order is "pre") is read again only after the cache's short wait."""
    sandbox = make_sandbox(hold_renders=True)
    service = make_service(sandbox, background=False)
    clock = Clock()
    service.charges = Charges(ttl=30, clock=clock)
    with service.generate(JobRequest(image=make_image(), prompt="held"), ALICE) as job:
        updates = iter(job)
        while next(updates).stage is not Stage.PROCESSING:
            pass
        (record,) = service.tasks(ALICE)
        searches = sandbox.stats()["billing_searches"]
        assert service.charge(record) == Charge(pytest.approx(1.40), settled=False)
        assert service.voice.cost(record.quote, charged=1.40, settled=False) == \
            "cost $1.40 (charged so far; not settled yet)"
        for _ in range(5):
            service.spend(ALICE), service.charge(record)
        assert sandbox.stats()["billing_searches"] == searches + 1, "within the wait, the cached charge is shown"
        clock.now += 31
        service.charge(record)
        assert sandbox.stats()["billing_searches"] == searches + 2, "a provisional charge is read again"
        requests.post(sandbox.base_url + "/sandbox/release", timeout=10).raise_for_status()
        done = list(updates)[-1]
    assert done.charge == Charge(pytest.approx(1.40), settled=True)
    settled_at = sandbox.stats()["billing_searches"]
    clock.now += 3600
    for _ in range(5):
        service.spend(ALICE), service.charge(service.tasks(ALICE)[0])
    assert sandbox.stats()["billing_searches"] == settled_at, "a settled charge is never asked again"


def test_the_budgets_quote_is_the_cached_one(make_sandbox, make_service, make_image):
    """Every job on the server's key asked /model/price for the budgets before decoding, besides the cached quote the
    price line and the balance check share. Now the budgets use the cache too: one quote for the page and two jobs."""
    sandbox = make_sandbox()
    service = make_service(sandbox, background=False, visitor_budget_usd=5.0)
    visitor = Visitor("browser:alice", spender="ip:1.2.3.4")
    assert service.price(visitor, 5).quote == Quote(pytest.approx(1.40))
    for prompt in ("one", "two"):
        assert run(service.generate(JobRequest(image=make_image(), prompt=prompt), visitor))[-1].stage is Stage.DONE
    assert sandbox.stats()["price_quotes"] == 1 and service.quotes.asked == 1


# --- the key's balance, now ------------------------------------------------------------------------------------------

def test_the_balance_shown_again_after_a_job_is_the_balance_now_and_uses_up_no_key_check(make_sandbox, make_service,
                                                                                       make_image):
    """"Key accepted · balance $20.00" stayed after $7.00 of videos. Checked again after a job, the key's balance is
    what it is now; and as a key already accepted for this browser is no guess, showing it again any number of times
    does not use up the key-check limit (5 a minute per browser), which still holds for other keys."""
    sandbox = make_sandbox(balance=20.0)
    service = make_service(sandbox, background=False)
    own = Visitor("browser:alice", "alices-key")
    assert service.check_key("alices-key", ALICE) == KeyCheck(KeyState.ACCEPTED, balance=Balance(pytest.approx(20.0)))
    run(service.generate(JobRequest(image=make_image(), prompt="one"), own))
    run(service.generate(JobRequest(image=make_image(), prompt="two", duration=10), own))
    for _ in range(8):  # every job's end and every return to the page
        assert service.check_key("alices-key", ALICE) == KeyCheck(KeyState.ACCEPTED,
                                                                 balance=Balance(pytest.approx(20.0 - 4.20)))
    assert service.price(own, 5).quote is not None, "its price is no guess either"
    # The limit still holds for new keys: the first check of this key and four others fill the browser's minute.
    guesses = [service.check_key(f"guess-{n}", ALICE).state for n in range(6)]
    assert guesses == [KeyState.ACCEPTED] * 4 + [KeyState.THROTTLED] * 2
