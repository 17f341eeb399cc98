"""Make the README's screenshots: the page idle, rendering and done and a history at 1280×800, and a phone (390×844).

    python docs/screenshots.py            # writes docs/page-*.png

It starts `python app.py` on the embedded sandbox (no key, no cost) from an empty folder and drives Debian's
Chromium through Playwright, as the browser tests do (`E2E_CHROMIUM` names another Chromium). The history shot
comes from an app live on a sandbox process that fails the second of four tasks (`--task-failure-rate`, seeded),
so it shows a failed tile beside done ones; nothing reaches WaveSpeed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.harness import start_app_process, start_sandbox_process  # noqa: E402

DOCS = ROOT / "docs"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
RENDER_SECONDS = "20"  # long enough to catch the page mid-render
# With seed 0 and a failure rate of 0.5, the sandbox's task failures roll ok, failed, ok, ok.
FAILING_SANDBOX = ("--inference-seconds", "2", "--task-failure-rate", "0.5", "--seed", "0")
HISTORY_EXAMPLES = (3, 2, 1, 4)  # the cat, the astronaut (fails), day to night with its end frame, the coffee


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kling-screenshots-") as folder:
        app = start_app_process(Path(folder) / "data", log_path=Path(folder) / "app.log",
                                env={"KLING_DEMO_SANDBOX_SECONDS": RENDER_SECONDS})
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(os.environ.get("E2E_CHROMIUM") or CHROMIUM),
                                                     args=CHROMIUM_ARGS)
                shoot_desktop(browser, app.url)
                shoot_phone(browser, app.url)
                shoot_history(browser, Path(folder))
                browser.close()
        finally:
            app.stop()
    for shot in DOCS.glob("page-*.png"):
        shrink(shot)


def shrink(path: Path) -> None:
    """256 colours are plenty for a page: the PNG gets 3–4× smaller in the repository."""
    with Image.open(path) as picture:
        small = picture.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shoot_desktop(browser, url: str) -> None:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(url)
    page.locator("#generate").wait_for(state="visible", timeout=30_000)
    page.screenshot(path=str(DOCS / "page-idle.png"))
    page.locator("#examples .thumbnail-item").nth(4).click()  # the coffee cup, a camera move
    expect(page.locator("#first-frame img")).to_be_visible()
    page.click("#generate")
    expect(page.locator("#progress")).to_contain_text("to go", timeout=30_000)
    expect(page.locator("#status")).to_contain_text("Rendering", timeout=30_000)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / "page-rendering.png"))
    expect(page.locator("#status")).to_contain_text("Done", timeout=120_000)
    page.wait_for_function("() => { const v = document.querySelector('#video video'); "
                           "return v && v.currentTime > 1; }", timeout=30_000)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / "page-done.png"))
    page.close()


def shoot_history(browser, folder: Path) -> None:
    """A history of four tasks, one failed, with the detail of the one made with an end frame."""
    sandbox = start_sandbox_process(*FAILING_SANDBOX)
    app = start_app_process(folder / "live-data", log_path=folder / "live.log",
                            env={"WAVESPEED_API_KEY": "sandbox-key", "WAVESPEED_BASE_URL": sandbox.url})
    try:
        page = browser.new_page(viewport=DESKTOP)
        page.goto(app.url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        for number, example in enumerate(HISTORY_EXAMPLES, start=1):
            page.locator("#examples .thumbnail-item").nth(example).click()
            expect(page.locator("#first-frame img")).to_be_visible()
            page.click("#generate")
            expect(page.locator("#stop")).to_be_enabled()
            expect(page.locator("#stop")).to_be_disabled(timeout=60_000)  # the job ended, done or failed
            expect(page.locator("#history .thumbnail-item")).to_have_count(number, timeout=30_000)
        page.locator("#history").get_by_text("Dusk falls").first.click()
        expect(page.locator("#history-end-frame img")).to_be_visible()
        expect(page.locator("#reuse-settings")).to_be_enabled()
        page.wait_for_function("() => { const v = document.querySelector('#history-video video'); "
                               "return v && v.readyState >= 2; }", timeout=30_000)
        page.locator("#history-section").evaluate("section => section.scrollIntoView()")
        page.screenshot(path=str(DOCS / "page-history.png"))
        page.close()
    finally:
        app.stop()
        sandbox.stop()


def shoot_phone(browser, url: str) -> None:
    page = browser.new_page(viewport=PHONE, device_scale_factor=1)
    page.goto(url)
    page.locator("#generate").wait_for(state="visible", timeout=30_000)
    page.locator("#examples .thumbnail-item").nth(3).click()  # the cat
    expect(page.locator("#first-frame img")).to_be_visible()
    page.locator("#generate").scroll_into_view_if_needed()
    page.evaluate("() => window.scrollBy(0, 200)")
    page.screenshot(path=str(DOCS / "page-phone.png"))
    page.close()


if __name__ == "__main__":
    main()
