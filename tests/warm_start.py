"""Server processes forked from an interpreter that has already imported Gradio, the app and the sandbox.

`import gradio` and the app cost about 4.5 CPU-seconds per process, and the suite starts some 45 apps and 35
sandboxes on two cores. A forkserver (the standard library's) imports them once per test process; each
server is then a fork of it that takes its own environment, working directory, arguments and log, and runs
`app.py` (or `-m kling_demo.sandbox`) as `__main__`: a separate process on its own port, stopped by signals
like any other. Tests whose subject is a cold start (tests/test_spaces.py) and bench/ keep `python app.py`.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Imported once in the forkserver; anything else is imported by the child as usual.
PRELOAD = ["gradio", "kling_demo.ui", "kling_demo.sandbox.app", "kling_demo.sandbox.render", "av"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


class WarmProcess:
    """A forked server process with the part of subprocess.Popen's interface the harness uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid: int = process.pid  # type: ignore[assignment]

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path | None) -> WarmProcess:
    """Run `command` (`python SCRIPT ARGS…` or `python -m MODULE ARGS…`) as a fork of the warm interpreter."""
    process = _context.Process(target=_run, args=(command[1:], env, str(cwd), str(log_path) if log_path else None),
                               daemon=True)  # stopped with the test process if a test leaks it
    process.start()
    return WarmProcess(process)


def _run(arguments: list[str], env: dict[str, str], cwd: str, log_path: str | None) -> None:
    """In the child: become `python ARGUMENTS` started with `env` in `cwd`, writing to `log_path`."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    _send_output_to(log_path)
    _reread_gradio_settings()
    if arguments[0] == "-m":
        sys.argv = [arguments[1], *arguments[2:]]
        runpy.run_module(arguments[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(arguments)
        sys.path.insert(0, str(Path(arguments[0]).resolve().parent))
        runpy.run_path(arguments[0], run_name="__main__")


def _send_output_to(log_path: str | None) -> None:
    """Both output streams to the log (appended) or nowhere, unbuffered as with PYTHONUNBUFFERED=1."""
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for fd in (1, 2):
        os.dup2(target, fd)
    os.close(target)
    sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True,
                                  errors="backslashreplace")


def _reread_gradio_settings() -> None:
    """Gradio 6.31 reads these variables when it is imported, so the forkserver's values would stick."""
    from gradio import http_server

    http_server.INITIAL_PORT_VALUE = int(os.getenv("GRADIO_SERVER_PORT", "7860"))
    http_server.TRY_NUM_PORTS = int(os.getenv("GRADIO_NUM_PORTS", "100"))
    http_server.LOCALHOST_NAME = os.getenv("GRADIO_SERVER_NAME", "127.0.0.1")
    temp_dir = os.environ.get("GRADIO_TEMP_DIR") or str((Path(tempfile.gettempdir()) / "gradio").resolve())
    for name in ("gradio.route_utils", "gradio.routes", "gradio.mcp", "gradio.screen_recording_utils"):
        if name in sys.modules:
            sys.modules[name].DEFAULT_TEMP_DIR = temp_dir  # type: ignore[attr-defined]
