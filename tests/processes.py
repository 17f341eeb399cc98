"""Start the sandbox and the app as real processes on free loopback ports, for tests that kill them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
NO_BUDGETS = {"KLING_DEMO_VISITOR_BUDGET_USD": "off", "KLING_DEMO_DAILY_BUDGET_USD": "off",
              "KLING_DEMO_SUBMITS_PER_MINUTE": "off"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 60.0,
                       log_path: Path | None = None) -> None:
    """Return once `url` answers; a process that exits or never answers fails with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before serving {url}\n{_tail(log_path)}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s\n{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:]) if log_path else ""
    except OSError:
        return "(no log)"


@dataclass
class Served:
    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sandbox_process(*flags: str, log_path: Path | None = None) -> Served:
    port = free_port()
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "kling_demo.sandbox", "--host", "127.0.0.1", "--port",
                                str(port), *flags], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url + "/sandbox/stats", process, log_path=log_path)
    return Served(process, url)


def start_app_process(data_dir: Path, *, env: dict[str, str] | None = None, log_path: Path | None = None,
                      app_script: Path | None = None) -> Served:
    """`python app.py` from an empty working directory (so no stray .env is read), on a free port."""
    port = free_port()
    workdir = data_dir.parent / f"cwd-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("WAVESPEED_", "KLING_DEMO_", "GRADIO_"))}
    environment.update({"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                        "KLING_DEMO_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)})
    environment.update(NO_BUDGETS)  # tests of other things run many jobs from one address; test_budgets sets them
    environment.update(env or {})
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, str(app_script or ROOT / "app.py")], cwd=workdir, env=environment,
                               stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, timeout=90, log_path=log_path)
    except (RuntimeError, TimeoutError):
        Served(process, url).stop()
        raise
    return Served(process, url)
