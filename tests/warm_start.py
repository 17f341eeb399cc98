"""Server processes forked from an interpreter that has already imported Gradio, the app and the sandbox.

`import gradio` and the app cost about 4.5 CPU-seconds per process, and the suite starts some 45 apps and 35
sandboxes on two cores. A forkserver (the standard library's) imports them once per test process; each
server is then a fork of it that takes its own environment, working directory, arguments and log, reads again
every setting Gradio took from the environment at import (tests/import_time_settings.py), and runs `app.py`
(or `-m kling_demo.sandbox`) as `__main__`: a separate process on its own port, stopped by signals like any
other. The browser tests' shared app, tests whose subject is a cold start (tests/processes/test_spaces.py) and bench/
keep `python app.py`; so does every server when the installed Gradio is not the one requirements.txt pins, and
a fork whose environment differs from the warm interpreter's in a setting it cannot redo becomes one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import multiprocessing
import os
import re
import runpy
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from tests import import_time_settings

# Imported once in the forkserver; anything else is imported by the child as usual.
PRELOAD = ["gradio", "kling_demo.web.page", "kling_demo.sandbox.app", "kling_demo.sandbox.render", "av"]

# Warm starts are trusted with the Gradio requirements.txt pins; before pinning another, run
# tests/processes/test_warm_start.py against it.
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def gradio_mismatch(requirements: Path = REQUIREMENTS) -> str | None:
    """Why warm starts cannot be trusted with the installed Gradio, or None when it is the pinned one.

    The installed version is the one `gradio.__version__` reports, read from the package's metadata: the test
    process need not import Gradio (3 CPU-s) to learn it."""
    pinned = re.search(r"^gradio(?:\[[^]]*\])?==(\S+)", requirements.read_text(encoding="utf-8"), re.MULTILINE)
    installed = importlib.metadata.version("gradio")
    if pinned is None:
        return f"{requirements.name} pins no gradio version"
    if installed != pinned[1]:
        return f"gradio {installed} is installed but {requirements.name} pins {pinned[1]}"
    return None


@functools.cache
def usable() -> bool:
    """True when servers may be forked warm; otherwise say once why they start cold (`python app.py`).

    A mismatch falls back rather than failing: a developer trying another Gradio still gets a correct run (a
    cold start is how a visitor's server starts), only slower; CI installs the pinned version and forks.
    """
    reason = gradio_mismatch()
    if reason is None:
        try:
            gradio_settings()
        except import_time_settings.UnsupportedRead as error:
            reason = str(error)
    if reason is not None:
        warnings.warn(f"Warm starts are off ({reason}): every app and sandbox starts as a new interpreter, about "
                      f"4.5 CPU-s more each. tests/processes/test_warm_start.py checks the harness against the installed "
                      f"Gradio.", stacklevel=2)
    return reason is None


@functools.cache
def gradio_settings() -> list[import_time_settings.Step]:
    """What a fork redoes of Gradio's import-time reads of the environment (scanned once per test process)."""
    return import_time_settings.scan()


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
    process = _context.Process(target=_run, args=(command[1:], env, str(cwd), str(log_path) if log_path else None,
                                                  gradio_settings()),
                               daemon=True)  # stopped with the test process if a test leaks it
    process.start()
    return WarmProcess(process)


def _run(arguments: list[str], env: dict[str, str], cwd: str, log_path: str | None,
         settings: list[import_time_settings.Step]) -> None:
    """In the child: become `python ARGUMENTS` started with `env` in `cwd`, writing to `log_path`."""
    inherited = dict(os.environ)  # what the warm interpreter's imports read
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    _send_output_to(log_path)
    try:
        import_time_settings.reread(settings, inherited)
    except import_time_settings.ColdStartNeeded as reason:
        print(f"warm start: {reason}; starting as a new interpreter instead", file=sys.stderr)
        os.execv(sys.executable, [sys.executable, *arguments])  # same pid, environment, directory and log
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
