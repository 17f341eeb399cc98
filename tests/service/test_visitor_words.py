"""What a visitor reads carries no developer's words: no environment variable, header, HTTP code or "inference",
"this Space's key" only on a Space, every sentence begun with a capital. Programs keep the precise words.

The errors are the client's own, raised by real requests to a sandbox over loopback HTTP.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from kling_demo.errors import KlingDemoError, VisitorCapReached
from kling_demo.models import JobRequest, JobUpdate, Stage, Submission
from kling_demo.service.visitors import Visitor
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.words import Voice
from tests.unit.test_progress import ENDINGS, every_update
from tests.harness import free_port

DEVELOPERS_WORDS = re.compile(r"WAVESPEED_|KLING_DEMO_|X-WaveSpeed-Key|\binference\b|\bHTTP\b|/api/v3", re.I)


def real_errors(make_sandbox) -> list[KlingDemoError]:
    """The errors a visitor's job may end on that the client raises in API words: a refused key, an unknown task,
    a service out of reach (each from a real request)."""
    sandbox = make_sandbox(api_key="the-right-key")
    found: list[KlingDemoError] = []
    attempts = [(sandbox.base_url, "a-wrong-key", "t1"), (sandbox.base_url, "the-right-key", "no-such-task"),
                (f"http://127.0.0.1:{free_port()}", "the-right-key", "t2")]
    for base_url, key, task_id in attempts:
        with WaveSpeedClient(base_url, key, max_attempts=1) as client:
            with pytest.raises(KlingDemoError) as caught:
                client.result(task_id)
        found.append(caught.value)
    assert [type(error).__name__ for error in found] == ["AuthenticationFailed", "NotFound", "ServiceUnavailable"]
    return found


def sentences(text: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+|\n+", text) if part.strip()]


def test_a_visitor_reads_no_developers_words_and_a_program_keeps_them(make_sandbox):
    errors = real_errors(make_sandbox)
    for sandbox in (False, True):
        for on_space in (False, True):
            visitor = Voice(sandbox=sandbox, on_space=on_space)
            # (The test's own made-up endings are headed only: their sentences are this file's, not the app's.)
            said = [visitor.line(update) for update in every_update()] + [
                f"{visitor.error_heading(error)} — Ended." for error in ENDINGS]
            said += [visitor.line(JobUpdate(Stage.FAILED, 3.0, task_id=error.task_id, error=error,
                                            submission=Submission.EXISTS if error.task_id else Submission.NONE))
                     for error in errors]
            for words in said:
                assert not DEVELOPERS_WORDS.search(words), words
                assert ("Space" in words) <= on_space, words
                for sentence in sentences(words.split(" — ", 1)[1]):
                    assert not sentence[0].islower(), (sentence, words)
    program = dataclasses.replace(Voice(), for_visitors=False)
    assert all(program.error_text(error) == str(error) for error in errors)
    assert "HTTP 401" in program.error_text(errors[0]) and "HTTP 404" in program.error_text(errors[1])
    assert "inference 6.0 s" in program.status(every_update()[13])
    assert "this app's key" in Voice().error_text(errors[0]) and "this Space's key" in Voice(
        on_space=True).error_text(errors[0])


@pytest.mark.parametrize("on_space", [False, True])
def test_the_per_visitor_cap_names_the_key_it_guards(make_sandbox, make_service, make_image, on_space):
    service = make_service(make_sandbox(), max_jobs_per_visitor=1, on_space=on_space)
    visitor = Visitor("browser:carol", spender="ip:10.0.0.7")
    with service.generate(JobRequest(image=make_image(), prompt="a kite"), visitor):  # holds the one place
        with pytest.raises(VisitorCapReached) as refused:
            service.generate(JobRequest(image=make_image(), prompt="another kite"), visitor)
    message = refused.value.message
    assert ("this Space's key" in message) is on_space and ("this app's key" in message) is not on_space, message
    assert message.startswith("1 generation is already running for you on"), message
