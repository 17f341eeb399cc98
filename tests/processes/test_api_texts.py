"""Texts from the API reach visitors and the log masked and as text: a failed task whose error echoes the key
that paid and carries markup, as a real app process (and Gradio's own console output) shows it.

The sandbox fails every task with `--failure-message`, whose `{api_key}` it fills with the submitting key.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from gradio_client import Client, handle_file

from tests.page_session import PageSession
from tests.harness import start_app_process, start_sandbox_process

pytestmark = pytest.mark.slow  # two processes, shared by the module

SERVER_KEY = f"ws-server-{uuid.uuid4().hex}"
VISITOR_KEY = f"ws-visitor-{uuid.uuid4().hex}"
MARKUP = "<img src=https://evil.example/pixel.png> **bold**"
FAILURE = "Render refused for account {api_key}: " + MARKUP


def pieces(secret: str, size: int = 8) -> list[str]:
    """Every run of `size` characters of `secret` that is not common to both keys: none may show anywhere."""
    return [secret[i:i + size] for i in range(len(secret) - size + 1) if not secret[i:i + size].startswith("ws-")]


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-texts")
    sandbox = start_sandbox_process("--inference-seconds", "0.5", "--task-failure-rate", "1",
                                    "--failure-message", FAILURE, log_path=folder / "sandbox.log")
    app = start_app_process(folder / "data", log_path=folder / "app.log",
                            env={"WAVESPEED_API_KEY": SERVER_KEY, "WAVESPEED_BASE_URL": sandbox.url})
    yield app, folder
    app.stop()
    sandbox.stop()


def failed_generation(url: str, image, headers: dict[str, str] | None = None) -> str:
    """The error (the toast's text) of a /generate call whose task fails at WaveSpeed."""
    with pytest.raises(Exception) as failed:
        Client(url, verbose=False, headers=headers or {}).predict(
            handle_file(str(image)), "a lantern on a pier", "", 0.5, 5, None, api_name="/generate")
    return str(failed.value)


def test_a_failure_that_echoes_the_paying_key_shows_and_logs_neither_key(failing, make_image):
    app, folder = failing
    on_the_servers_key = failed_generation(app.url, make_image())
    on_the_visitors_key = failed_generation(app.url, make_image(), {"X-WaveSpeed-Key": VISITOR_KEY})
    for toast in (on_the_servers_key, on_the_visitors_key):
        assert "could not make this video: Render refused for account ***" in toast, toast
    with sqlite3.connect(folder / "data" / "journal.sqlite3") as db:
        errors = [row[0] for row in db.execute("SELECT error FROM tasks")]
    assert len(errors) == 2 and all("***" in error for error in errors)
    log = (folder / "app.log").read_text()
    for text in (on_the_servers_key, on_the_visitors_key, *errors, log):
        for key in (SERVER_KEY, VISITOR_KEY):
            leaked = [piece for piece in pieces(key) if piece in text]
            assert not leaked, f"{len(leaked)} pieces of a key in: {text[:300]}"
    assert "Traceback" not in log, "Gradio printed a traceback of an expected ending"


def test_markup_in_an_api_error_is_shown_as_text_in_the_toast_and_the_status(failing, make_image):
    app, _ = failing
    toast = failed_generation(app.url, make_image())
    assert "&lt;img src=https://evil.example/pixel.png&gt; **bold**" in toast, toast  # Gradio shows a toast as HTML
    assert "<img" not in toast

    page = PageSession(app.url)
    load = next(d for d in page.config["dependencies"] if any(trigger == "load" for _, trigger in d["targets"]))
    page.run(load, None)
    inputs = (page.upload(make_image()), "a lantern on a pier", "", 0.5, 5, None)
    busy = page.event("generate", "click")
    assert page.join(busy, *inputs)["success"]
    ended = page.join(page.then(busy), *inputs)
    status = ended["output"]["data"][0]  # the page's status, a gr.Markdown
    assert status.startswith("**Failed** — "), status
    assert r"\<img src=https:\/\/evil.example/pixel.png\> \*\*bold\*\*" in status, status
    assert "**bold**" not in status and "<img" not in status.replace(r"\<img", "")
