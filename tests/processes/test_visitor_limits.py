"""What one visitor may use that is not money: key checks against WaveSpeed, jobs at once on the server's key,
and room in Gradio's upload cache. Each is counted per visitor (their address, whatever browser ids they
mint) and refused with a plain sentence before anything is asked of WaveSpeed or written to disk.
"""

from __future__ import annotations

import concurrent.futures
import os
import uuid
from pathlib import Path

import pytest
import requests

from kling_demo.errors import VisitorCapReached
from kling_demo.models import JobRequest
from kling_demo.service.service import KEY_CHECKS_PER_MINUTE
from kling_demo.service.visitors import Visitor
from kling_demo.web.upload_bounds import MB, UploadBounds, cache_bytes
from kling_demo.service.visitors import Throttle
from tests.callers import Caller
from tests.counting_proxy import CountingProxy
from tests.harness import Served, start_app_process, start_sandbox_process

GOOD_KEY = "visitors-own-key"
TOO_MANY_CHECKS = "Too many keys were checked from this browser or address"


# --- the pieces -----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_counts_an_event_for_all_its_names_or_none():
    clock = Clock()
    throttle = Throttle({"owner": 2, "address": 3}, window=60, clock=clock)
    assert throttle.take(owner="a", address="x") is None and throttle.take(owner="a", address="x") is None
    clock.now += 10
    assert throttle.take(owner="a", address="x") == 50, "the owner is at 2: wait until the first one is a minute old"
    assert throttle.take(owner="b", address="x") is None  # the refused one counted for neither
    assert throttle.take(owner="c", address="x") == 50, "the address is at 3"
    assert throttle.take(owner=None, address="y") is None, "None is not counted"
    clock.now += 51
    assert throttle.take(owner="a", address="x") is None


def test_upload_bounds_hold_per_address_and_in_total(tmp_path):
    clock = Clock()
    bounds = UploadBounds(tmp_path, per_address_bytes=3 * MB, total_bytes=5 * MB, window=3600, clock=clock)
    assert bounds.admit("198.51.100.1", 2 * MB) is None
    refused = bounds.admit("198.51.100.1", 2 * MB)
    assert refused is not None and refused.status == 429 and "2 MB in the last hour" in refused.message
    assert refused.retry_after == 3600
    assert bounds.admit(None, 2 * MB) is None, "a trusted proxy's own upload counts toward the total only"
    full = bounds.admit("198.51.100.2", 2 * MB)  # 4 MB on their way in, 5 MB at most
    assert full is not None and full.status == 503 and "upload space is full" in full.message
    bounds.finished(2 * MB)
    bounds.finished(2 * MB)
    (tmp_path / "on-disk").write_bytes(b"\0" * (4 * MB))  # what arrived is now measured on disk
    assert cache_bytes(tmp_path) == 4 * MB and bounds.admit("198.51.100.2", 2 * MB).status == 503
    clock.now += 3601
    (tmp_path / "on-disk").unlink()  # Gradio's cleanup deleted it
    assert bounds.admit("198.51.100.1", 2 * MB) is None, "an hour later the address may upload again"


def test_the_jobs_at_once_cap_counts_the_spender_not_the_browser(make_sandbox, make_service, make_image):
    service = make_service(make_sandbox(inference_seconds=3), max_jobs_per_visitor=1)
    first = service.generate(JobRequest(image=make_image(), prompt="one"), Visitor("browser:a", spender="ip:1.2.3.4"))
    with pytest.raises(VisitorCapReached, match="at once"):  # a second browser id minted at the same address
        service.generate(JobRequest(image=make_image(), prompt="two"), Visitor("browser:b", spender="ip:1.2.3.4"))
    other = service.generate(JobRequest(image=make_image(), prompt="elsewhere"),
                             Visitor("browser:c", spender="ip:5.6.7.8"))
    for job in (first, other):
        job.close()
    service.generate(JobRequest(image=make_image(), prompt="again"),
                     Visitor("browser:b", spender="ip:1.2.3.4")).close()


# --- the running app ------------------------------------------------------------------------------------------


@pytest.fixture
def app_with(tmp_path):
    """Factory: `python app.py` with `env`; stopped at teardown."""
    started: list[Served] = []

    def start(**env: str) -> Served:
        app = start_app_process(tmp_path / f"data-{len(started)}", log_path=tmp_path / "app.log", env=env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def test_key_checks_are_limited_per_browser_and_per_address(app_with, tmp_path):
    sandbox = start_sandbox_process("--api-key", GOOD_KEY, log_path=tmp_path / "sandbox.log")
    wavespeed = CountingProxy(sandbox.url)  # counts what reaches "WaveSpeed"
    try:
        app = app_with(WAVESPEED_API_KEY="server-key", WAVESPEED_BASE_URL=wavespeed.url)

        def browser(source: str = "127.0.0.1") -> tuple[Caller, int]:
            """A tab that loaded the page (so has its signed owner id), and its key-status step."""
            tab = Caller(app.url, source=source)
            load = next(d for d in tab.config["dependencies"] if d["outputs"] and any(
                target[1] == "load" for target in d["targets"]) and tab.component("history") in d["outputs"])
            assert tab.predict(load["id"], [None])["data"][0], "the page got its owner id"
            status = next(d for d in tab.config["dependencies"] if d["outputs"] == [tab.component("key-status")])
            return tab, status["id"]

        def check(tab: Caller, step: int, key: str | None = None) -> str:
            return tab.predict(step, [key or f"guess-{uuid.uuid4().hex}", None])["data"][0]

        one, step = browser()
        answers = [check(one, step) for _ in range(KEY_CHECKS_PER_MINUTE["owner"])]
        assert all("WaveSpeed rejected this key" in answer for answer in answers), answers
        asked = wavespeed.count("GET /api/v3/balance")
        assert asked == KEY_CHECKS_PER_MINUTE["owner"]
        refused = check(one, step, GOOD_KEY)
        assert TOO_MANY_CHECKS in refused and "not checked" in refused and GOOD_KEY not in refused, refused

        # New tabs are free to open, but the address has its own limit.
        more = [check(*browser()) for _ in range(KEY_CHECKS_PER_MINUTE["address"])]
        allowed = KEY_CHECKS_PER_MINUTE["address"] - KEY_CHECKS_PER_MINUTE["owner"]
        assert sum("WaveSpeed rejected this key" in answer for answer in more) == allowed, more
        assert all(TOO_MANY_CHECKS in answer for answer in more[allowed:]), more
        assert wavespeed.count("GET /api/v3/balance") == asked + allowed, "a refused check asks WaveSpeed nothing"

        elsewhere = check(*browser("127.0.0.2"), GOOD_KEY)  # another address is another visitor
        assert elsewhere.startswith("Key accepted"), elsewhere
    finally:
        wavespeed.stop()
        sandbox.stop()


def test_uploads_are_bounded_per_address_even_in_a_burst(app_with, tmp_path):
    app = app_with(KLING_DEMO_UPLOAD_MB_PER_HOUR="3")
    picture = tmp_path / "one-megabyte.bin"
    picture.write_bytes(os.urandom(MB))  # each upload: 1 MB and the multipart framing, so two fit in 3 MB
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: Caller(app.url).upload(picture), range(8)))
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200] * 2 + [429] * 6, codes
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert "Too much uploaded from your address" in refused.text and "at most 3 MB an hour" in refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert Caller(app.url, source="127.0.0.2").upload(picture).status_code == 200, "another address may upload"
    chunked = requests.post(app.url + "gradio_api/upload", timeout=30,
                            data=(part for part in (b"--x\r\n", b"\r\n--x--\r\n")),
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 411, "an upload that does not say its size is not taken"


def test_the_upload_cache_is_bounded_in_total(app_with, tmp_path):
    app = app_with(KLING_DEMO_UPLOAD_CACHE_GB=str(6 * MB / 1024 ** 3))  # 6 MB for everyone
    cache = Path(next(tmp_path.glob("cwd-*"))) / "gradio"
    answers = []
    for n in range(2, 7):  # each a different 2 MB file (Gradio keeps one copy of equal files), from its own address
        picture = tmp_path / f"two-megabytes-{n}.bin"
        picture.write_bytes(os.urandom(2 * MB))
        answers.append(Caller(app.url, source=f"127.0.0.{n}").upload(picture))
    codes = [answer.status_code for answer in answers]
    assert codes == [200, 200, 503, 503, 503], codes
    assert 4 * MB <= cache_bytes(cache) <= 6 * MB
    assert "upload space is full" in answers[-1].text
