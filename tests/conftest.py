"""Shared fixtures: real sandboxes on loopback and real image files on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # so plain `pytest` works without installing the package
    sys.path.insert(0, str(PROJECT_ROOT))

from kling_demo.sandbox import SandboxConfig, SandboxHandle, start_sandbox  # noqa: E402
from tests import processes  # noqa: E402

RENDER_STORE = "KLING_TESTS_RENDER_STORE"  # the run's sandbox render store (tests/processes.py)
SCREENSHOT_DIR = pytest.StashKey[Path]()  # where the browser tests leave a screenshot each
FAST_INFERENCE_SECONDS = 1.0
SERVER_KEY = "server-key"  # the app's own key in tests that run the service in live mode against a sandbox
# Whole modules that start app processes, a browser or long renders: `pytest -m "not slow"` leaves them out
# for a quick local loop; CI runs everything.
SLOW_MODULES = ("test_durability", "test_waiting", "test_keys", "test_outage", "test_image_memory", "test_spaces", "test_mcp",
                "test_cli", "test_storage", "test_browser", "test_queue_identity", "test_prompt_counter",
                "test_account_app", "test_account_limits", "test_budgets_app", "test_identity", "test_webhooks",
                "test_wavespeed_mcp", "test_sandbox_account", "test_wavespeed_tasks", "test_money_cli",
                "test_money_page", "test_history_reuse", "test_page_states", "test_proxies", "test_sign_in",
                "test_visitor_limits", "test_continuity")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if _shares_a_started_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.path.name))


def _shares_a_started_fixture(item: pytest.Item) -> bool:
    """True for a test using one of our module- or session-wide fixtures (an app, a browser): `--dist loadgroup`
    runs its whole module on one worker, so each worker starts them once, not once per test it happens to get."""
    info = getattr(item, "_fixtureinfo", None)
    for definitions in (info.name2fixturedefs.values() if info else ()):
        if any(d.scope in ("module", "session") and d.baseid.startswith("tests") for d in definitions):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    """Gradio's upload cache of this test process (before anything imports gradio); warm server starts; one
    sandbox render store and one screenshot folder for the whole run, the test workers' included (they
    inherit the environment)."""
    # Upload paths are content hashes, and an app deletes the files it cached when it stops: apps of parallel
    # workers sharing /tmp/gradio deleted each other's uploads mid-test. App processes get theirs from
    # tests/processes.py.
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="kling-tests-gradio-")
    processes.warm_starts = True  # apps and sandboxes fork from one warm interpreter per test process
    if hasattr(config, "workerinput"):
        processes.render_store = Path(os.environ[RENDER_STORE])
        return
    # One render store for the whole run, workers included: identical inputs are rendered once per run.
    store = os.environ[RENDER_STORE] = tempfile.mkdtemp(prefix="kling-tests-renders-")
    processes.render_store = Path(store)
    config.add_cleanup(lambda: shutil.rmtree(store, ignore_errors=True))
    folder = os.environ.get("E2E_SCREENSHOT_DIR", "").strip() or tempfile.mkdtemp(prefix="kling-e2e-screenshots-")
    os.environ["E2E_SCREENSHOT_DIR"] = folder
    config.stash[SCREENSHOT_DIR] = Path(folder)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    folder = config.stash.get(SCREENSHOT_DIR, None)
    shots = sorted(folder.glob("*.png")) if folder is not None else []
    if shots:
        terminalreporter.write_sep("-", "browser screenshots")
        terminalreporter.write_line(f"{len(shots)} screenshot(s) in {folder}")

# CI replays the same examples every run (a submission must not be rejected by a lucky draw);
# local runs keep exploring new ones. HYPOTHESIS_PROFILE overrides either.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "explore"))


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., SandboxHandle]]:
    """Factory: `make_sandbox(**SandboxConfig fields)` starts a sandbox; all are stopped at teardown."""
    started: list[SandboxHandle] = []

    def factory(**config_fields: Any) -> SandboxHandle:
        config_fields.setdefault("inference_seconds", FAST_INFERENCE_SECONDS)
        config_fields.setdefault("render_store", processes.render_store)
        handle = start_sandbox(SandboxConfig(**config_fields))
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: `make_service(sandbox or base URL, background=True, **Settings fields)`: a Service that treats
    the sandbox as the real API, paying with SERVER_KEY (live mode: prices, balances and budgets apply, tasks
    are resumable); all are closed at teardown."""
    from kling_demo.service.backend import Backend
    from kling_demo.config import Settings
    from kling_demo.service.service import Service

    made: list[Service] = []

    def factory(target: SandboxHandle | str, *, background: bool = True, **settings_fields: Any) -> Service:
        base_url = target if isinstance(target, str) else target.base_url
        service = Service(Settings(data_dir=tmp_path / "data", **settings_fields),
                          Backend(base_url=base_url, api_key=SERVER_KEY), background=background)
        made.append(service)
        return service

    yield factory
    for service in made:
        service.close()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., SandboxHandle]) -> SandboxHandle:
    """One started sandbox with default settings and fast (1 s) inference."""
    return make_sandbox()


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a real image file: `make_image(size=(640, 480), format="PNG", mode="RGB", color=...)`."""
    counter = iter(range(1_000_000))

    def factory(
        size: tuple[int, int] = (640, 480),
        format: str = "PNG",
        mode: str = "RGB",
        color: Any = None,
        name: str | None = None,
        **save_options: Any,
    ) -> Path:
        if color is None:
            # A diagonal gradient, so motion and scaling are visible, in the requested mode.
            gradient = Image.linear_gradient("L").rotate(45, expand=False).resize(size)
            picture = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)).convert(mode)
        else:
            picture = Image.new(mode, size, color)
        suffix = {"JPEG": "jpg"}.get(format.upper(), format.lower())
        path = tmp_path / (name or f"image-{next(counter)}.{suffix}")
        if format.upper() == "JPEG" and picture.mode not in ("RGB", "L", "CMYK"):
            picture = picture.convert("RGB")
        picture.save(path, format=format, **save_options)
        return path

    return factory


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs of our own (CI runs as root); without mount rights the test skips, saying why."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(folder: Path, leave_bytes: int = 0) -> None:
    """Take all but `leave_bytes` of the free space of the disk under `folder`."""
    free = shutil.disk_usage(folder).free
    with (folder / f"filler-{free}").open("wb") as out:
        out.write(b"\0" * max(0, free - leave_bytes))
