"""Waiting on a condition, never on a fixed sleep, and running a coroutine to its end, for every test."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Callable, Coroutine, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "the condition",
             every: float = 0.05) -> T:
    """Return `predicate()`'s first truthy value; fail the test if none comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on its own thread: Playwright's session-wide sync API keeps a loop running on this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
