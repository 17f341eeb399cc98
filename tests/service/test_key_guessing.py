"""A visitor's own key is a guess until WaveSpeed accepted it once: listing its tasks, generating or resuming with
it counts within the key-check limit, so none of these is an oracle for guessing keys (whether WaveSpeed refuses
a key shows in the answer). In process, against a real sandbox over loopback HTTP, counted by a real proxy."""

from __future__ import annotations

import uuid

import pytest

from kling_demo.errors import AuthenticationFailed, TooManyRequests
from kling_demo.models import JobRequest, Stage
from kling_demo.service.identity import key_id
from kling_demo.service.service import KEY_CHECKS_PER_MINUTE
from kling_demo.service.visitors import Visitor
from tests.conftest import SERVER_KEY
from tests.counting_proxy import CountingProxy

ADDRESS = "198.51.100.7"


def guess() -> str:
    return f"guess-{uuid.uuid4().hex}"


@pytest.fixture
def counted(make_sandbox):
    """A sandbox that accepts only the server's key, behind a counting proxy."""
    proxy = CountingProxy(make_sandbox(api_key=SERVER_KEY).base_url)
    yield proxy
    proxy.stop()


def asked(proxy: CountingProxy) -> int:
    return sum(proxy.counts.values())


def test_guessed_keys_are_limited_whichever_door_they_come_through(counted, make_service, make_image):
    service = make_service(counted.url)
    tab = lambda key: Visitor("browser:guesser", key, address=ADDRESS)  # noqa: E731
    for _ in range(KEY_CHECKS_PER_MINUTE["owner"]):
        with pytest.raises(AuthenticationFailed):
            service.recent_tasks(tab(guess()))
    before = asked(counted)
    with pytest.raises(TooManyRequests, match="Try again in"):
        service.recent_tasks(tab(guess()))
    with pytest.raises(TooManyRequests):
        service.generate(JobRequest(image=make_image(), prompt="a guess"), tab(guess()))
    with pytest.raises(TooManyRequests):
        service.resume("0" * 32, tab(guess()))
    assert asked(counted) == before, "a guess past the limit reaches WaveSpeed with nothing"

    other_tab = Visitor("browser:another-tab", guess(), address=ADDRESS)  # a new tab: the address's limit
    extra = KEY_CHECKS_PER_MINUTE["address"] - KEY_CHECKS_PER_MINUTE["owner"]  # a refused guess counts nothing
    for _ in range(extra):
        with pytest.raises(AuthenticationFailed):
            service.recent_tasks(Visitor(f"browser:{uuid.uuid4().hex}", guess(), address=ADDRESS))
    with pytest.raises(TooManyRequests):
        service.recent_tasks(other_tab)
    with pytest.raises(AuthenticationFailed):
        service.recent_tasks(Visitor("browser:elsewhere", guess(), address="203.0.113.9"))


def test_a_key_wavespeed_took_a_task_from_is_no_guess_any_more(make_sandbox, make_service, make_image):
    service = make_service(make_sandbox())  # this sandbox accepts any key: the visitor's is real
    visitor = Visitor("browser:owner", "the visitor's real key", address=ADDRESS)
    done = [update for update in service.generate(JobRequest(image=make_image(), prompt="one"), visitor)][-1]
    assert done.stage is Stage.DONE
    for _ in range(KEY_CHECKS_PER_MINUTE["owner"] * 2):  # beyond the limit: the key is known now
        service.recent_tasks(visitor)


def test_a_program_may_start_a_batch_with_a_new_key(make_sandbox, make_service, make_image):
    """An API caller's owner is its key's hash, new with every guess, so only its address counts: a batch of jobs
    started at once with a key not yet seen is not refused by the per-owner limit."""
    service = make_service(make_sandbox())
    key = "a program's real key"
    caller = Visitor(key_id(service.visitors.secret, key), key, address=ADDRESS)
    jobs = [service.generate(JobRequest(image=make_image(), prompt=f"take {n}"), caller)
            for n in range(KEY_CHECKS_PER_MINUTE["owner"] + 2)]
    for job in jobs:
        job.close()


def test_one_mistyped_key_used_again_and_again_is_one_guess(counted, make_service):
    """The page asks about the key in the box on every change, after each job and on focus, and the visitor may
    press Resume or Load my tasks more than once: the same key is one guess, and WaveSpeed's answer stays theirs."""
    service = make_service(counted.url)
    visitor = Visitor("browser:typo", "a-key-with-a-typo", address=ADDRESS)
    for _ in range(KEY_CHECKS_PER_MINUTE["address"] + 2):
        with pytest.raises(AuthenticationFailed):
            service.recent_tasks(visitor)
        assert service.check_key(visitor.api_key, visitor).state.name == "REFUSED"
    for _ in range(KEY_CHECKS_PER_MINUTE["owner"] - 1):  # four more guesses fit in the browser's minute
        with pytest.raises(AuthenticationFailed):
            service.recent_tasks(Visitor("browser:typo", guess(), address=ADDRESS))
    with pytest.raises(TooManyRequests):
        service.recent_tasks(Visitor("browser:typo", guess(), address=ADDRESS))
