"""Everything a visitor can read on the page, in a real Chromium at 1280×800 and 390×844, in sandbox and live mode,
after a video and after errors: no environment variable, header, HTTP code or "inference"; no Space where the app
is no Space; every sentence begun with a capital; a status that never repeats its heading.

The app runs as `python app.py` (conftest.py): on its embedded sandbox, or live on a sandbox process that takes
only the server's key, so a visitor's own key is refused as WaveSpeed would refuse it. Nothing is mocked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.test_browser import DESKTOP, PHONE, assert_no_status_repeats_its_heading
from tests.e2e.test_where_you_look import open_live, render
from tests.harness import Served

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None

SIZES = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
DEVELOPERS_WORDS = re.compile(r"WAVESPEED_|KLING_DEMO_|X-WaveSpeed-Key|\binference\b|\bHTTP \d{3}|/api/v3", re.I)
# What the visitor reads: the page's rendered text, without what only a screen reader hears (Gradio's own
# live region, which announces untranslated keys such as "common.complete") and without Gradio's own
# passing progress chrome over a component while one of its events runs ("queue: 1/1 | 0.2/0.5s").
VISIBLE_TEXT = """() => {
    const hidden = [...document.querySelectorAll('.sr-only, .progress-text, .meta-text, .meta-text-center')];
    hidden.forEach((element) => { element.dataset.kdDisplay = element.style.display; element.style.display = 'none'; });
    const text = document.body.innerText;
    hidden.forEach((element) => { element.style.display = element.dataset.kdDisplay; });
    return text;
}"""


def sentence_starts(text: str) -> list[str]:
    """The first words of every sentence: each line and after each full stop (a title's dash starts none)."""
    starts = []
    for part in re.split(r"\n+|(?<=[.!?])\s+", text):
        words = part.lstrip(" \t✓⟳✕⚠️*“\"'·•").strip()  # "(task id: …)" after a sentence is no sentence
        if words:
            starts.append(words[:40])
    return starts


def read_everything(page: Any, *, on_space: bool = False) -> str:
    """Check all the page shows now; returns it (for the test's own look)."""
    text = page.evaluate(VISIBLE_TEXT)
    found = DEVELOPERS_WORDS.findall(text)
    assert not found, (found, [line for line in text.splitlines() if DEVELOPERS_WORDS.search(line)])
    if not on_space:
        assert not re.search(r"\bSpace\b", text), [line for line in text.splitlines() if "Space" in line]
    status = page.locator("#status").inner_text()
    sentences = [*sentence_starts(text), *sentence_starts(status.split(" — ", 1)[-1])]  # and after its heading
    lowercase = [start for start in sentences if start[0].islower()]
    assert not lowercase, lowercase
    assert_no_status_repeats_its_heading([status])
    return text


def open_accordions(page: Any, *selectors: str) -> None:
    for selector in selectors:
        page.locator(f"{selector} button.label-wrap").first.click()


@SIZES
def test_the_sandbox_page_speaks_to_visitors(open_page, pictures, viewport):
    page = open_page(viewport)
    open_accordions(page, "#key-section", "#advanced")
    expect(page.locator("#user-key")).to_be_visible()
    read_everything(page)

    page.locator("#examples .thumbnail-item").nth(1).click()  # an example that opens Advanced and says so
    expect(page.locator("#status")).to_contain_text("Example loaded")
    read_everything(page)

    page.fill("#resume-id textarea", "0" * 32)  # an error: not this visitor's task
    page.locator("#resume").click()
    expect(page.locator("#status")).to_contain_text("not in your history")
    read_everything(page)

    render(page, pictures, "Waves roll onto the shore at dawn")
    expect(page.locator("#history-detail")).to_contain_text("Waves roll onto the shore")
    text = read_everything(page)
    assert "rendered in" in text, text


@SIZES
def test_the_live_page_speaks_to_visitors_also_when_wavespeed_refuses_their_key(
        browser, start_live_app: Callable[..., tuple[Served, Served]], pictures, viewport):
    app, _ = start_live_app("server-key", "--api-key", "server-key", "--inference-seconds", "1")
    page = open_live(browser, app.url, viewport)
    try:
        open_accordions(page, "#key-section", "#advanced")
        expect(page.locator("#user-key")).to_be_visible()
        expect(page.locator("#price")).to_contain_text("Price")
        read_everything(page)

        render(page, pictures, "Waves roll onto the shore at dawn")  # on this app's key
        text = read_everything(page)
        assert "rendered in" in text and "this app's key" in text, text

        page.fill("#resume-id textarea", "0" * 32)  # not this visitor's, and no key of theirs to fetch it with
        page.locator("#resume").click()
        expect(page.locator("#status")).to_contain_text("not in your history")
        read_everything(page)

        page.fill("#user-key input", "a-key-wavespeed-refuses")
        expect(page.locator("#key-status")).to_contain_text("rejected this key")
        read_everything(page)
        page.locator("#resume").click()  # now fetched with the visitor's own key, which WaveSpeed refuses
        status = page.locator("#status")
        expect(status).to_contain_text("Check the key")
        expect(status).to_contain_text("rejected the key")
        read_everything(page)
        page.locator("#generate").click()
        expect(page.locator("#generate")).to_be_enabled()
        expect(status).to_contain_text("Check the key")
        read_everything(page)

        open_accordions(page, "#wavespeed-tasks")
        page.locator("#load-wavespeed-tasks").click()
        expect(page.locator(".toast-body")).to_contain_text("rejected the key")
        read_everything(page)
    finally:
        page.context.close()
