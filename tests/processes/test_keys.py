"""Bring your own key: a visitor's key pays for that visitor's request only, and is never kept or shown.

Everything runs as real processes: the sandbox (standing in for api.wavespeed.ai) with `--api-key`, so it
accepts exactly one key, and `python app.py` configured with a *different* server key. A generation that
succeeds therefore proves which key was used.
"""

from __future__ import annotations

import re
import uuid
import time
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file

from kling_demo.store.videos import probe_video
from tests.page_session import PageSession
from tests.page_session import error_of as error_of_step
from tests.harness import Served, start_app_process, start_sandbox_process

SERVER_KEY = "server-key"
KEY_HEADER = "X-WaveSpeed-Key"
REJECTED = "rejected the API key"


def canary() -> str:
    return f"ws-canary-{uuid.uuid4().hex}"


def stats(sandbox: Served) -> dict:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()


def client(app: Served, key: str | None = None) -> Client:
    return Client(app.url, verbose=False, headers={KEY_HEADER: key} if key else None)


def submit(api: Client, image: Path, prompt: str = "a lighthouse in fog"):
    return api.submit(handle_file(str(image)), prompt, "", 0.5, 5, None, api_name="/generate")


def error_of(job, timeout: float = 60) -> str:
    """The message a failed job ends with (fails the test when the job succeeds)."""
    with pytest.raises(Exception) as failure:
        job.result(timeout=timeout)
    return str(failure.value)


@pytest.fixture
def processes(tmp_path):
    """Factory: `processes(sandbox_flags, app_env)` → (sandbox, app, logs); all are stopped at teardown."""
    started: list[Served] = []

    def factory(sandbox_flags: tuple[str, ...], app_env: dict[str, str]) -> tuple[Served, Served, dict[str, Path]]:
        run = len(started) // 2
        logs = {"sandbox": tmp_path / f"sandbox-{run}.log", "app": tmp_path / f"app-{run}.log"}
        sandbox = start_sandbox_process("--inference-seconds", "1", "--log-level", "DEBUG", *sandbox_flags,
                                        log_path=logs["sandbox"])
        started.append(sandbox)
        env = {"WAVESPEED_API_KEY": SERVER_KEY, "WAVESPEED_BASE_URL": sandbox.url, "KLING_DEMO_LOG_LEVEL": "DEBUG",
               "PYTHONUNBUFFERED": "1", **app_env}
        app = start_app_process(tmp_path / f"data-{run}", env=env, log_path=logs["app"])
        started.append(app)
        return sandbox, app, logs

    yield factory
    for served in reversed(started):
        served.stop()


# --- the REST API, read raw, so that every byte the app sends back is checked ------------------------------------

def raw_generate(app: Served, image: Path, key: str | None, prompt: str = "a lighthouse in fog") -> str:
    """POST /gradio_api/call/generate and return the whole event stream as text."""
    headers = {KEY_HEADER: key} if key else {}
    with image.open("rb") as picture:
        uploaded = requests.post(app.url + "gradio_api/upload", files={"files": (image.name, picture, "image/png")},
                                 timeout=30)
    uploaded.raise_for_status()
    file_data = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
    call = requests.post(app.url + "gradio_api/call/generate", headers=headers, timeout=30,
                         json={"data": [file_data, prompt, "", 0.5, 5, None]})
    call.raise_for_status()
    stream = requests.get(f"{app.url}gradio_api/call/generate/{call.json()['event_id']}", headers=headers,
                          timeout=120)
    return stream.text


def raw_resume(app: Served, task_id: str, key: str) -> str:
    headers = {KEY_HEADER: key}
    call = requests.post(app.url + "gradio_api/call/resume", headers=headers, json={"data": [task_id]}, timeout=30)
    call.raise_for_status()
    return requests.get(f"{app.url}gradio_api/call/resume/{call.json()['event_id']}", headers=headers,
                        timeout=60).text


def everything_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def test_a_canary_key_pays_for_its_request_and_is_found_nowhere_afterwards(processes, make_image, tmp_path):
    key, wrong_key = canary(), canary()
    sandbox, app, logs = processes(("--api-key", key), {})

    succeeded = raw_generate(app, make_image(size=(720, 480)), key)
    assert "event: complete" in succeeded and "Done" in succeeded, succeeded[-2000:]
    task_id = re.search(r"task ([0-9a-f]{16,})", succeeded).group(1)
    assert stats(sandbox)["submissions"] == 1, "only the canary key opens this sandbox, so it was used"

    refused = raw_generate(app, make_image(), wrong_key)  # a key the API rejects: the error must not echo it
    assert "event: error" in refused and REJECTED in refused, refused[-2000:]
    not_found = raw_resume(app, "0" * 32, key)  # an error raised while the canary key is in use
    assert "event: error" in not_found, not_found[-2000:]
    again = raw_resume(app, task_id, key)
    assert "event: complete" in again, again[-2000:]
    page = requests.get(app.url, timeout=10).text + requests.get(app.url + "config", timeout=10).text
    # The key travels only as a header: the API's parameters stay the six documented ones.
    info = Client(app.url, verbose=False).view_api(return_format="dict", print_info=False)
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert parameters == ["image", "prompt", "negative_prompt", "guidance_scale", "duration", "end_image"]

    app.stop()  # flush and close everything the app writes
    sandbox.stop()
    for name, text in {"API answers": succeeded + refused + not_found + again, "page and config": page}.items():
        for secret in (key, wrong_key, SERVER_KEY):
            assert secret not in text, f"a key appears in the {name}"
    for name, log in logs.items():
        text = log.read_text(errors="replace")
        assert "DEBUG" in text or name == "sandbox", f"the {name} did not log at DEBUG, so this proves little"
        for secret in (key, wrong_key):
            assert secret not in text, f"the canary key appears in the {name} log"
    assert SERVER_KEY not in logs["app"].read_text(errors="replace"), "the server's key appears in the app log"

    data_files = everything_under(tmp_path / "data-0")
    assert any(path.name == "journal.sqlite3" for path in data_files)
    assert any(path.suffix == ".mp4" for path in data_files)
    for path in data_files:  # the journal and its WAL, videos, frames, the owner secret: raw bytes
        content = path.read_bytes()
        for secret in (key, wrong_key, SERVER_KEY):
            assert secret.encode() not in content, f"a key is stored in {path}"


@pytest.mark.parametrize("sandbox_accepts", ["visitor", "server"])
def test_a_visitors_key_is_used_for_that_visitors_requests_only(processes, make_image, sandbox_accepts):
    visitor_key = canary()
    accepted = visitor_key if sandbox_accepts == "visitor" else SERVER_KEY
    sandbox, app, _ = processes(("--api-key", accepted), {})
    own_key_header = visitor_key if sandbox_accepts == "visitor" else "wrong-" + visitor_key
    with_key, without_key = client(app, own_key_header), client(app)

    # At the same time, from two sessions: each request runs on its own key, not the other's.
    job_with, job_without = submit(with_key, make_image()), submit(without_key, make_image())
    if sandbox_accepts == "visitor":
        status, _, video = job_with.result(timeout=90)
        assert "Done" in status and probe_video(video).duration_seconds == pytest.approx(5.0)
        message = error_of(job_without)
    else:
        status, _, video = job_without.result(timeout=90)
        assert "Done" in status and probe_video(video).duration_seconds == pytest.approx(5.0)
        message = error_of(job_with)
    assert REJECTED in message and "key you entered" in message, message
    assert visitor_key not in message and SERVER_KEY not in message

    # And afterwards: the key of the earlier request does not stick to the session, the app, or the other client.
    if sandbox_accepts == "visitor":
        assert REJECTED in error_of(submit(without_key, make_image()))
        assert "Done" in submit(with_key, make_image()).result(timeout=90)[0]
    else:
        assert REJECTED in error_of(submit(with_key, make_image()))
        assert "Done" in submit(without_key, make_image()).result(timeout=90)[0]
    assert stats(sandbox)["submissions"] == 2


def test_a_space_that_requires_your_own_key_refuses_a_request_without_one(processes, make_image):
    sandbox, app, _ = processes((), {"KLING_DEMO_REQUIRE_USER_KEY": "true"})
    message = error_of(submit(client(app), make_image()))
    assert "bring their own WaveSpeed key" in message and "Your WaveSpeed key" in message, message
    assert stats(sandbox)["uploads"] == 0 and stats(sandbox)["submissions"] == 0, "nothing was uploaded or paid"

    status, _, video = submit(client(app, canary()), make_image()).result(timeout=90)
    assert "Done" in status and Path(video).is_file()
    assert stats(sandbox)["submissions"] == 1


def test_one_visitor_runs_at_most_the_cap_on_the_servers_key(processes, make_image):
    sandbox, app, _ = processes(("--inference-seconds", "8"), {"KLING_DEMO_MAX_JOBS_PER_VISITOR": "1",
                                                                "FORWARDED_ALLOW_IPS": "127.0.0.1"})
    # Without a page, a visitor is their IP (the X-Forwarded-For hop the trusted proxy on loopback appended).
    visitor = Client(app.url, verbose=False, headers={"X-Forwarded-For": "198.51.100.1"})
    other = Client(app.url, verbose=False, headers={"X-Forwarded-For": "198.51.100.2"})
    own_key = client(app, canary())

    first, second = submit(visitor, make_image(), "first"), submit(visitor, make_image(), "second")
    refused, (running,) = wait_for_refusal([first, second])
    # Only one of them is refused, and at once; the refusal names the cap and the way around it.
    assert "(1)" in refused[0] and "at once" in refused[0] and "your own WaveSpeed key" in refused[0], refused[0]

    # While the first still runs, another visitor and a visitor with their own key are not held back.
    others = [submit(other, make_image(), "another visitor"),
              submit(own_key, make_image(), "own key 1"), submit(own_key, make_image(), "own key 2")]
    assert all("Done" in job.result(timeout=90)[0] for job in [running, *others])
    assert stats(sandbox)["submissions"] == 4


def wait_for_refusal(jobs: list, timeout: float = 30) -> tuple[list[str], list]:
    """(messages of the jobs refused, jobs still running) once one job has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(job.done() for job in jobs):
            break
        time.sleep(0.1)
    refused = []
    for job in jobs:
        if job.done():
            try:
                job.result(timeout=0)
            except Exception as error:  # gradio_client raises AppError for a gr.Error
                refused.append(str(error))
    running = [job for job in jobs if not job.done()]
    assert len(refused) == 1 and len(running) == 1, (refused, [job.status() for job in jobs])
    return refused, running



# --- a malformed key is refused before use, and never echoed or printed ------------------------------------------

def page_generate(app: Served, image: Path, typed_key: str) -> str:
    """Generate as the page does, with a key typed in its box; returns the error the job ends with."""
    page = PageSession(app.url)
    page.run(page.event("user-key", "change"), typed_key)
    generate = next(d for d in page.config["dependencies"] if d.get("api_name") == "generate")
    return error_of_step(page.join(generate, page.upload(image), "a lighthouse in fog", "", 0.5, 5, None))


def test_a_key_with_a_line_break_or_control_character_is_refused_unechoed(processes, make_image):
    secret = canary()
    sandbox, app, logs = processes((), {})
    # httpx (under gradio_client) refuses to send CR or LF in a header; other control characters do arrive.
    from_header = error_of(submit(client(app, f"{secret}\x01X-Evil: 1"), make_image()))
    typed = page_generate(app, make_image(), f"{secret}\r\nX-Evil: 1")
    for message in (from_header, typed):
        assert "The WaveSpeed key contains a line break or other control character; paste only the key." in message
        assert secret not in message
    assert stats(sandbox)["uploads"] == 0 and stats(sandbox)["submissions"] == 0, "nothing was sent with that key"
    app.stop()
    log = logs["app"].read_text(errors="replace")
    assert "DEBUG" in log, "the app did not log at DEBUG, so this proves little"
    assert secret not in log, "the malformed key was printed in the app log"
