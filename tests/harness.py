"""The one process harness for tests and bench/: the sandbox and the app as real processes on free loopback ports."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests import warm_start

ROOT = Path(__file__).resolve().parent.parent
# Settings a developer's shell (or an app launched in the test process) may carry: never let them reach a process
# under test. The proxy, Space and sign-in ones change who a visitor is.
FOREIGN_SETTINGS = ("WAVESPEED_", "KLING_DEMO_", "GRADIO_", "FORWARDED_ALLOW_IPS", "SPACE_", "SYSTEM", "OAUTH_",
                    "OPENID_PROVIDER_URL")
# Spending limits off: tests of other things run many jobs from one address; the budget tests set them.
NO_BUDGETS = {"KLING_DEMO_VISITOR_BUDGET_USD": "off", "KLING_DEMO_DAILY_BUDGET_USD": "off",
              "KLING_DEMO_SUBMITS_PER_MINUTE": "off"}


# tests/conftest.py turns this on: servers are forked from a warm interpreter (tests/warm_start.py) instead of
# each importing Gradio anew, if the installed Gradio is the pinned one. bench/ and tests of a cold start keep
# `python app.py`.
warm_starts = False
# tests/conftest.py sets this: every sandbox of the run, in an app or not, keeps and reuses renders there.
render_store: Path | None = None

_started: list = []  # every process started here, so none outlives the run that started it


@atexit.register
def _stop_leftovers() -> None:
    """Stop what a fixture that failed half-way (or a killed test) left running."""
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start(args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path | None, cold: bool = False):
    """`args` (`python …`) as a new process with its output appended to `log_path`: a Popen or a WarmProcess."""
    if warm_starts and not cold and warm_start.usable():
        process = warm_start.start(args, env=env, cwd=cwd, log_path=log_path)
    else:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=_output(log_path), stderr=subprocess.STDOUT)
    _started.append(process)
    return process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any WaveSpeed, app or Gradio setting, with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_SETTINGS)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def wait_until_serving(url: str, process, timeout: float = 60.0,
                       log_path: Path | None = None) -> float:
    """Return time.monotonic() once `url` answers; a process that exits or never answers fails with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before serving {url}\n{_tail(log_path)}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer within {timeout} s\n{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:]) if log_path else ""
    except OSError:
        return "(no log)"


@dataclass
class Served:
    """A started server process: its URL and, for the app, how long it took to answer (cold start)."""

    process: subprocess.Popen  # or a tests.warm_start.WarmProcess: the same poll/wait/send_signal/kill/pid
    url: str
    cold_start: float = 0.0

    def stop(self, stop_signal: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _output(log_path: Path | None):
    return log_path.open("ab") if log_path else subprocess.DEVNULL


def start_sandbox_process(*flags: str, log_path: Path | None = None) -> Served:
    """`python -m kling_demo.sandbox` with `flags` on a free port."""
    port = free_port()
    if render_store is not None:
        flags = ("--render-store", str(render_store), *flags)
    process = _start([sys.executable, "-m", "kling_demo.sandbox", "--host", "127.0.0.1", "--port", str(port),
                      *flags], cwd=ROOT, env=clean_env(), log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url + "/sandbox/stats", process, log_path=log_path)
    except (RuntimeError, TimeoutError):
        Served(process, url).stop()
        raise
    return Served(process, url)


def start_app_process(data_dir: Path, *, env: dict[str, str] | None = None, log_path: Path | None = None,
                      app_script: Path | None = None, port: int | None = None, cold: bool = False) -> Served:
    """`python app.py` from an empty working directory (so no stray .env is read), on `port` or a free one;
    `cold` starts a new interpreter even when the run forks warm ones."""
    port = port or free_port()
    workdir = data_dir.parent / f"cwd-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    environment = clean_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
                            GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", KLING_DEMO_DATA_DIR=str(data_dir),
                            # Its own upload cache: an app deletes what it cached when it stops, and cached
                            # paths are content hashes, so apps sharing one would delete each other's uploads.
                            GRADIO_TEMP_DIR=str(workdir / "gradio"))
    environment.update(NO_BUDGETS)
    if render_store is not None:
        environment["KLING_DEMO_SANDBOX_RENDERS"] = str(render_store)
    environment.update(env or {})
    started = time.monotonic()
    process = _start([sys.executable, str(app_script or ROOT / "app.py")], cwd=workdir, env=environment,
                     log_path=log_path, cold=cold)
    url = f"http://127.0.0.1:{port}/"
    try:
        ready = wait_until_serving(url, process, timeout=90, log_path=log_path)
    except (RuntimeError, TimeoutError):
        Served(process, url).stop()
        raise
    return Served(process, url, cold_start=ready - started)
