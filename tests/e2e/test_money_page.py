"""Money on the page, in a real Chromium: `python app.py` in live mode on a server key, a separate sandbox process
standing in for WaveSpeed (its table: $0.28 a second; it accepts only the server's key)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from kling_demo.models import Quote
from kling_demo.words import Voice
from tests.harness import Served

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

SERVER_KEY = "server-key-for-the-money-page"
BAD_KEY = "wrong-key-3c9d1f"
AMOUNT = re.compile(r"\$(\d+\.\d\d)")
COST = Voice().cost(Quote(2.80))  # "cost $2.80 (…)": the quote at submission, said to be one


@pytest.fixture
def live_app(start_live_app: Callable[..., tuple[Served, Served]]) -> tuple[Served, Served]:
    """(app, sandbox): renders of 2 s; the sandbox accepts only SERVER_KEY."""
    return start_live_app(SERVER_KEY, "--inference-seconds", "2", "--api-key", SERVER_KEY)


def price_shown(page: Any) -> float:
    """The amount the price line shows, once it shows one."""
    line = page.locator("#price")
    expect(line).to_contain_text("Price: $")
    return float(AMOUNT.search(line.inner_text()).group(1))


def submissions(sandbox: Served) -> int:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"]


def test_the_price_follows_the_duration_a_bad_key_is_named_and_the_cost_stays_with_the_task(
        browser: Any, live_app: tuple[Served, Served], pictures: dict[str, Path], screenshot_dir: Path) -> None:
    app, sandbox = live_app
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    try:
        page = context.new_page()
        page.goto(app.url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)

        five = price_shown(page)
        assert five == pytest.approx(1.40), "the sandbox's table quotes $1.40 for 5 s"
        page.locator("#duration").get_by_text("10", exact=True).click()
        expect(page.locator("#price")).to_contain_text("10 s video")
        assert price_shown(page) == pytest.approx(2 * five)

        # A key WaveSpeed refuses is named at once, before Generate, and never shown back.
        page.locator("#key-section").get_by_text("Your WaveSpeed key").click()
        page.locator("#user-key input").fill(BAD_KEY)
        expect(page.locator("#key-status")).to_contain_text("WaveSpeed rejected this key")
        page.locator("#user-key input").fill(SERVER_KEY)  # a key the sandbox accepts, as a visitor's own
        expect(page.locator("#key-status")).to_contain_text("Key accepted · balance $1,000.00")
        expect(page.locator("#price")).to_contain_text("billed to your WaveSpeed key")
        visible = page.evaluate("() => document.body.innerText")
        assert BAD_KEY not in visible and SERVER_KEY not in visible
        assert submissions(sandbox) == 0, "quotes and balances create nothing"

        # After a run, the status, the history's detail and the spend line say what it cost.
        page.set_input_files("#first-frame input[type=file]", str(pictures["first_frame"]))
        expect(page.locator("#first-frame img")).to_be_visible()
        page.fill("#prompt textarea", "Mist lifts off the lake at dawn")
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text(COST, timeout=60_000)
        expect(page.locator("#spend")).to_contain_text("Spent so far: $2.80 on 1 video")
        page.locator("#history .thumbnail-item").first.click()
        expect(page.locator("#history-detail")).to_contain_text(f"Cost: {COST.removeprefix('cost ')}")
        page.screenshot(path=str(screenshot_dir / "money_page.png"), full_page=True)
        assert submissions(sandbox) == 1
    finally:
        context.close()
