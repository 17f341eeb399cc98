"""Money in view, in-process against a real sandbox treated as the live API (its table: $1.40 per 5 s video):
the quote cache, the low-balance refusal that submits nothing, the quote kept with the task, the key's status."""

from __future__ import annotations

import sqlite3

import pytest

from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.config import Settings
from kling_demo.errors import InsufficientBalance, ServiceUnavailable
from kling_demo.store.journal import Journal
from kling_demo.models import (DEFAULT_MODEL, Balance, JobRequest, KeyCheck, KeyState, Payer, PriceView, Quote,
                               Stage)
from kling_demo.service.prices import QuoteCache, price_guard
from kling_demo.service.service import Service
from kling_demo.service.visitors import Visitor
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


def test_the_quote_is_kept_with_the_task_and_shown_when_it_is_done(make_sandbox, make_service, make_image):
    sandbox = make_sandbox()
    service = make_service(sandbox, background=False)
    voice = service.voice
    updates = run(service.generate(JobRequest(image=make_image(), prompt="a kite", duration=10), ALICE))
    uploading = next(u for u in updates if u.stage is Stage.UPLOADING)
    assert uploading.price == Quote(pytest.approx(2.80), "USD") and "Price: $2.80." in voice.status(uploading)
    done = updates[-1]
    assert done.stage is Stage.DONE and done.price == Quote(pytest.approx(2.80), "USD")
    assert "cost $2.80 (quoted at submission)" in voice.status(done)
    (record,) = service.tasks(ALICE)
    assert record.quote == Quote(pytest.approx(2.80), "USD")
    assert voice.cost(record.quote) == "cost $2.80 (quoted at submission)"
    run(service.generate(JobRequest(image=make_image(), prompt="again"), ALICE))
    assert service.spend(ALICE) == {"USD": (pytest.approx(4.20), 2)}
    assert voice.spend_line(service.spend(ALICE)) == ("Spent so far: $4.20 on 2 videos (WaveSpeed's quotes at "
                                                      "submission).")
    assert service.spend(Visitor("browser:bob")) == {}
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
        assert service.spend(ALICE) == {}
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
    assert journal.spend("o") == {"USD": (pytest.approx(1.4), 1)}
    assert Journal(path).get("o", "t1") is not None, "opening it again migrates nothing twice"


def test_a_quote_that_cannot_be_had_raises_a_plain_error(make_sandbox):
    sandbox = make_sandbox()
    base_url = sandbox.base_url
    sandbox.stop()
    with WaveSpeedClient(base_url, "k", max_attempts=1) as client, pytest.raises(ServiceUnavailable):
        QuoteCache().quote(client, "k", DEFAULT_MODEL, {"duration": 5})
