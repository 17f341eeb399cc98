"""The prompt boxes hold the model's own caps and count characters near them, in a real Chromium."""

from __future__ import annotations

from typing import Any

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None


def test_each_prompt_box_counts_towards_its_own_cap(page: Any) -> None:
    counter = page.locator("#prompt-count")
    page.fill("#prompt textarea", "x" * 100)
    expect(counter).not_to_contain_text("characters")  # far from the cap: nothing to read
    page.fill("#prompt textarea", "x" * 1700)
    expect(counter).to_contain_text("1,700 / 2,000 characters")

    page.locator("#advanced").get_by_text("Advanced").click()
    page.fill("#negative-prompt textarea", "y" * 2400)
    expect(page.locator("#negative-prompt-count")).to_contain_text("2,400 / 2,500 characters")
    assert page.locator("#negative-prompt textarea").get_attribute("maxlength") == "2500"
    assert page.locator("#prompt textarea").get_attribute("maxlength") == "2000"
