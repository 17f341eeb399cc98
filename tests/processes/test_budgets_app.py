"""Budgets hold as in production: `python app.py` on a server key, a separate sandbox process standing in for
WaveSpeed (its price: $1.40 per 5 s video), and clients that try to get around them. Every paid submission is
counted where the money would go, at the sandbox's /sandbox/stats."""

from __future__ import annotations

import time

import pytest
import requests
from gradio_client import Client, handle_file

from tests.page_session import PageSession
from tests.harness import Served, start_app_process, start_sandbox_process

SERVER_KEY = "server-key"
VISITOR_BUDGET = "your daily budget on this app's key"  # not a Space: no SPACE_ID
APP_BUDGET = "This app has used"


def submissions(sandbox: Served) -> int:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"]


def client(app: Served, forwarded_for: str | None = None, key: str | None = None) -> Client:
    headers = {}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    if key:
        headers["X-WaveSpeed-Key"] = key
    return Client(app.url, verbose=False, headers=headers or None)


def submit(api: Client, image, prompt: str = "a lighthouse in fog"):
    return api.submit(handle_file(str(image)), prompt, "", 0.5, 5, None, api_name="/generate")


def outcome(job, timeout: float = 90) -> str:
    """"Done…" for a finished job, else the message it failed with (a cancelled job: "cancelled")."""
    try:
        return job.result(timeout=timeout)[0]
    except Exception as error:  # gradio_client raises AppError for a gr.Error, CancelledError for a cancel
        return str(error) or type(error).__name__


@pytest.fixture
def stack(tmp_path):
    """Factory: `stack(app_env, sandbox_flags=())` → (sandbox, app); `restart(app)` starts it on the same data."""
    started: list[Served] = []
    sandbox_holder: list[Served] = []

    def factory(app_env: dict[str, str], sandbox_flags: tuple[str, ...] = ()) -> tuple[Served, Served]:
        if not sandbox_holder:
            sandbox_holder.append(start_sandbox_process("--inference-seconds", "2", *sandbox_flags,
                                                        log_path=tmp_path / "sandbox.log"))
            started.append(sandbox_holder[0])
        env = {"WAVESPEED_API_KEY": SERVER_KEY, "WAVESPEED_BASE_URL": sandbox_holder[0].url, **app_env}
        app = start_app_process(tmp_path / "data", env=env, log_path=tmp_path / "app.log")
        started.append(app)
        return sandbox_holder[0], app

    yield factory
    for served in reversed(started):
        served.stop()


def test_fresh_sessions_and_cancel_resubmit_from_one_address_spend_at_most_the_budget(stack, make_image):
    sandbox, app = stack({"KLING_DEMO_VISITOR_BUDGET_USD": "3.00", "KLING_DEMO_DAILY_BUDGET_USD": "off",
                          "KLING_DEMO_SUBMITS_PER_MINUTE": "off"})
    image, outcomes = make_image(), []
    for n in range(10):  # a new gradio_client session each time: a new session hash, the same address
        api = client(app)
        job = submit(api, image, f"try {n}")
        deadline = time.monotonic() + 30
        while not job.done() and not job.outputs() and time.monotonic() < deadline:
            time.sleep(0.05)
        job.cancel()  # Stop, then at once submit again from the same session
        outcomes += [outcome(job), outcome(submit(api, image, f"again {n}"))]
    paid = submissions(sandbox)
    assert 1 <= paid <= 2, f"$3.00 buys two $1.40 videos, and {paid} were submitted: {outcomes}"
    refusals = [text for text in outcomes if VISITOR_BUDGET in text]
    assert len(refusals) >= 20 - 2 * 2, outcomes  # each paid video may have been stopped once on its way
    assert "$3.00 per 24 hours" in refusals[-1] and "own WaveSpeed key lifts this limit" in refusals[-1]
    assert "It frees up at" in refusals[-1], refusals[-1]
    assert "X-WaveSpeed-Key header" in refusals[-1], "an API caller is told how to send its own key"


def test_each_forwarded_visitor_has_a_budget_the_app_has_one_too_and_a_restart_keeps_them(stack, make_image):
    env = {"KLING_DEMO_VISITOR_BUDGET_USD": "1.50", "KLING_DEMO_DAILY_BUDGET_USD": "3.00",
           "KLING_DEMO_SUBMITS_PER_MINUTE": "off", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    sandbox, app = stack(env)
    image = make_image()
    # Behind a trusted proxy (here on loopback) the visitor is the rightmost hop that is not a trusted proxy: the
    # one the proxy appended. What a client wrote before it (here the same forged first hop for all) counts not.
    alice, bob, carol = "198.51.100.9, 203.0.113.1", "198.51.100.9, 203.0.113.2", "198.51.100.9, 203.0.113.3"
    assert "Done" in outcome(submit(client(app, alice), image))
    assert VISITOR_BUDGET in outcome(submit(client(app, alice), image))
    assert "Done" in outcome(submit(client(app, bob), image))
    refused = outcome(submit(client(app, carol), image))  # carol spent nothing, but the Space's budget is gone
    assert APP_BUDGET in refused and "$2.80" in refused and "$3.00 per 24 hours" in refused, refused
    assert submissions(sandbox) == 2

    # One's own key is neither refused nor counted.
    assert "Done" in outcome(submit(client(app, carol, key="carols-own-key"), image))
    assert submissions(sandbox) == 3

    app.stop()
    _, app = stack(env)  # the same data dir: the ledger is in the journal
    assert VISITOR_BUDGET in outcome(submit(client(app, alice), image))
    assert APP_BUDGET in outcome(submit(client(app, carol), image))
    assert submissions(sandbox) == 3

    # The page, before any click: alice's next video is refused (she has used $1.40 of her $1.50), carol's too
    # (the app's $3.00 has $0.20 left), with the facts; Generate is not offered.
    page = PageSession(app.url)
    budget, button = page.component("budget"), page.component("generate")
    show = next(d for d in page.config["dependencies"] if budget in d["outputs"] and
                any(target[1] == "load" for target in d["targets"]))

    def offer(visitor: str) -> tuple[dict, dict]:
        answer = requests.post(app.url + "gradio_api/run/predict", timeout=30, headers={"X-Forwarded-For": visitor},
                               json=page._body(show, (5,))).json()
        shown = dict(zip(show["outputs"], answer["data"]))
        return shown[budget], shown[button]

    line, generate = offer(alice)
    assert line["visible"] and "You have used $1.40 of your daily budget" in line["value"], line
    assert generate["interactive"] is False and generate["value"] == "Over your daily budget", generate
    line, generate = offer("198.51.100.9, 203.0.113.7")  # a visitor who spent nothing: the app's budget speaks
    assert "This app has used $2.80 of its daily budget" in line["value"] and generate["interactive"] is False, line


def test_submits_per_minute_hold_for_one_address(stack, make_image):
    # API callers from one address are one visitor: lift the cap on jobs at once, so the per-minute cap speaks.
    sandbox, app = stack({"KLING_DEMO_VISITOR_BUDGET_USD": "off", "KLING_DEMO_DAILY_BUDGET_USD": "off",
                          "KLING_DEMO_SUBMITS_PER_MINUTE": "2", "KLING_DEMO_MAX_JOBS_PER_VISITOR": "10"})
    image = make_image()
    jobs = [submit(client(app), image, f"burst {n}") for n in range(5)]
    outcomes = [outcome(job) for job in jobs]
    assert sum("Done" in text for text in outcomes) == 2 and submissions(sandbox) == 2, outcomes
    assert all("(2 a minute)" in text for text in outcomes if "Done" not in text), outcomes
