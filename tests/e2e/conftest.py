"""Browser fixtures: the app as a real subprocess on the sandbox, Debian's Chromium through Playwright.

Without `/usr/bin/chromium` or the `playwright` package these tests skip with the reason; with `CI=true`
either one missing is a failure, so CI cannot go green by not running them.
Every test leaves one screenshot in `E2E_SCREENSHOT_DIR` (default: a fresh temp dir), named in the summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Served, start_app_process, start_sandbox_process

from .pictures import draw_landscape, draw_small_image

CHROMIUM = Path(os.environ.get("E2E_CHROMIUM") or "/usr/bin/chromium")  # Debian's; never `playwright install`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPECT_TIMEOUT_MS = 15_000
SANDBOX_SECONDS = "3"  # short renders keep the whole browser run well under two minutes





def _missing_browser(reason: str) -> None:
    """Skip locally; fail under CI, where a browser test that did not run must not pass."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


# --- the app ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` as a visitor's server would run it: a new interpreter (not a warm fork), no key, so the
    embedded sandbox, on a free port.

    It runs from an empty temp dir, so a developer's `.env` (perhaps with a real key) is never read.
    `E2E_APP=/path/to/app.py` runs another checkout's app instead of this one.
    """
    workdir = tmp_path_factory.mktemp("app")
    app_script = os.environ.get("E2E_APP")
    served = start_app_process(workdir / "data", log_path=workdir / "app.log",
                               app_script=Path(app_script) if app_script else None,
                               env={"KLING_DEMO_SANDBOX_SECONDS": SANDBOX_SECONDS}, cold=True)
    try:
        yield served.url
    finally:
        served.stop()


@pytest.fixture
def start_live_app(tmp_path: Path) -> Iterator[Callable[..., tuple[Served, Served]]]:
    """Factory: `start_live_app(server_key, *sandbox_args, **app_env)` runs a sandbox process (quick renders) and
    `python app.py` in live mode on it, paying with `server_key` (with `app_env` set, e.g. a budget); returns (app,
    sandbox), both stopped at teardown."""
    started: list[Served] = []

    def factory(server_key: str, *sandbox_args: str, **app_env: str) -> tuple[Served, Served]:
        sandbox = start_sandbox_process(*sandbox_args, log_path=tmp_path / "sandbox.log")
        started.append(sandbox)
        app = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log",
                                env={"WAVESPEED_API_KEY": server_key, "WAVESPEED_BASE_URL": sandbox.url, **app_env})
        started.append(app)
        return app, sandbox

    yield factory
    for served in reversed(started):
        served.stop()


# --- the browser -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, with a fresh profile (Playwright gives each launch its own temp profile)."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing_browser("the `playwright` package is not installed (pip install -r requirements-dev.txt)")
    # Assertions wait for their condition up to 15 s, not Playwright's 5 s: four test workers share two cores,
    # and a page that is right a little late is not wrong (each still passes as soon as it holds).
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _missing_browser(f"no Chromium at {CHROMIUM} (apt-get install chromium; never `playwright install`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """The run's screenshot folder (`E2E_SCREENSHOT_DIR`, or a temp dir tests/conftest.py made and shows)."""
    folder = Path(os.environ["E2E_SCREENSHOT_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def open_page(browser: Any, app_url: str, screenshot_dir: Path,
              request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Factory: `open_page({"width": 1280, "height": 800})` loads the app in a fresh context, ready to use.

    At teardown, whether the test passed or not, the last page opened is saved as `<test name>.png`.
    """
    contexts: list[Any] = []
    pages: list[Any] = []

    def factory(viewport: dict[str, int], **context_options: Any) -> Any:
        context = browser.new_context(viewport=viewport, **context_options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(app_url)
        page.locator("#generate").wait_for(state="visible", timeout=30_000)
        pages.append(page)
        return page

    yield factory
    if pages:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name).strip("_")
        try:
            pages[-1].screenshot(path=str(screenshot_dir / f"{name}.png"), full_page=True)
        except Exception as error:  # a screenshot must never hide the test's own outcome
            print(f"screenshot of {request.node.name} failed: {error}", file=sys.stderr)
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page: Callable[..., Any]) -> Any:
    """The app at 1280×800."""
    return open_page({"width": 1280, "height": 800})


# --- pictures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`first_frame` (sunset over a lake, 1280×720), `end_frame` (the same at night), `too_small` (200×150)."""
    folder = tmp_path_factory.mktemp("pictures")
    return {
        "first_frame": draw_landscape(folder / "sunset-lake.png"),
        "end_frame": draw_landscape(folder / "night-lake.png", night=True),
        "too_small": draw_small_image(folder / "too-small.png"),
    }
