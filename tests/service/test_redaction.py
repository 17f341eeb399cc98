"""What reaches a visitor or the log is redacted and human: keys masked, task ids checked, internal errors plain."""

from __future__ import annotations

from pathlib import Path

import json
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gradio as gr
import pytest
import requests

from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.errors import ApiInputRefused, InputRejected, KlingDemoError, ServiceUnavailable
from kling_demo.logs import RedactSecrets
from kling_demo.jobs.inputs import check_task_id
from kling_demo.models import KLING_V2_I2V_MASTER as SPEC
from kling_demo.web.api import plain_errors
from kling_demo.service.visitors import KEY_WITH_CONTROL_CHARACTER, visitor_key

KEY = "ws-test-0123456789abcdef0123456789abcdef"
OTHER_TOKEN = "tok-9f8e7d6c5b4a39281706"


def pieces(secret: str, size: int = 6) -> list[str]:
    """Every run of `size` characters of `secret`: none may survive, not even where a message was cut."""
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


class EchoingApi(BaseHTTPRequestHandler):
    """Stands in for an API that answers 400 with an error body echoing the request's headers."""

    style = "json"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        echoed = f"Authorization: {self.headers['Authorization']}, X-Upstream: Bearer {OTHER_TOKEN}"
        if self.style == "no-id":  # a 200 without a task id, quoting the bare key (no header name, no "Bearer")
            return self._answer(200, {"code": 200, "data": {"note": f"queued for {self._key()}"}})
        if self.style == "json":
            body = json.dumps({"code": 400, "message": f"invalid request; headers were {{{echoed}}}"})
        elif self.style == "text":
            body = f"Bad Request\n{echoed}\n"
        else:  # the key starts 6 characters before the cut at 300 characters that an error message gets
            echoed = f" 'authorization': '{self.headers['Authorization']}'"
            body = json.dumps({"code": 400, "message": "x" * 268 + echoed})
        data = body.encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json" if self.style != "text" else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        """A result poll: the task failed, and its error quotes the bare key."""
        self._answer(200, {"code": 200, "data": {"id": "t1", "status": "failed", "outputs": [],
                                                 "error": f"quota of account {self._key()} exceeded"}})

    def _key(self) -> str:
        return self.headers["Authorization"].removeprefix("Bearer ")

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echoing_api() -> Iterator[tuple[str, type[EchoingApi]]]:
    handler = type("Handler", (EchoingApi,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("style", ["json", "text", "cut"])
def test_an_error_body_that_echoes_credentials_is_masked(echoing_api, style, caplog):
    url, handler = echoing_api
    handler.style = style
    caplog.set_level(logging.DEBUG)
    with WaveSpeedClient(url, KEY, max_attempts=1) as client:
        with pytest.raises(ApiInputRefused) as refused:
            client.submit(SPEC, {"image": "https://example.com/a.png", "prompt": "a lighthouse"})
    message = str(refused.value)
    assert "***" in message and "WaveSpeed refused the input" in message
    shown_and_logged = message + caplog.text
    for secret in (KEY, OTHER_TOKEN):
        for piece in pieces(secret):
            assert piece not in shown_and_logged, f"{piece!r} of a credential reached the message or the log"


def test_a_task_error_and_an_answer_without_a_task_id_that_quote_the_bare_key_are_masked(echoing_api, caplog):
    url, handler = echoing_api
    caplog.set_level(logging.DEBUG)
    with WaveSpeedClient(url, KEY, max_attempts=1) as client:
        handler.style = "no-id"
        with pytest.raises(ServiceUnavailable) as no_id:
            client.submit(SPEC, {"image": "https://example.com/a.png", "prompt": "a lighthouse"})
        failed = client.result("t1")
    assert "answered without a task id" in str(no_id.value) and "***" in str(no_id.value)
    assert failed.error == "quota of account *** exceeded"
    for text in (str(no_id.value), failed.error, caplog.text):
        assert not [piece for piece in pieces(KEY) if piece in text]


def test_the_servers_own_key_is_masked_in_any_api_text_once_remembered():
    from kling_demo.wavespeed.client import Prediction
    from kling_demo.logs import remember_secrets

    server_key = f"ws-{OTHER_TOKEN}-server"
    remember_secrets(server_key)  # what configure_logging does for the app's own secrets
    pushed = Prediction.from_envelope({"data": {"id": "t1", "status": "failed", "error": f"bad key {server_key}"}})
    assert pushed.error == "bad key ***", "a webhook's prediction (no client involved) is masked too"


def test_the_log_masks_bearer_tokens_and_keys_in_tracebacks_too(caplog):
    logger = logging.getLogger("kling_demo.test_redaction")
    caplog.handler.addFilter(RedactSecrets((KEY,)))
    try:
        raise ValueError(f"Invalid header value b'Bearer {OTHER_TOKEN}' for key {KEY}")
    except ValueError:
        logger.exception("request failed with %s", f"Bearer {OTHER_TOKEN}")
    assert caplog.records and caplog.text.count("***") >= 3
    assert KEY not in caplog.text and OTHER_TOKEN not in caplog.text


@pytest.mark.parametrize("typed, header", [
    ("abc\r\nX-Evil: 1", None), ("abc\ndef", None), ("abc\x01def", None), ("abc\tdef", None),
    ("", "abc\r\nX-Evil: 1"), ("", "abc\x7fdef"), (None, "abc\x00def"),
])
def test_a_key_with_a_line_break_or_control_character_is_refused_without_echoing_it(typed, header):
    with pytest.raises(InputRejected) as refused:
        visitor_key(typed, {"x-wavespeed-key": header} if header else {})
    assert str(refused.value) == KEY_WITH_CONTROL_CHARACTER
    assert "abc" not in str(refused.value)


@pytest.mark.parametrize("key", ["ws key", "wś-key", "ws\u2028key"])
def test_a_key_with_a_space_or_non_ascii_is_refused(key):
    with pytest.raises(InputRejected, match="paste only the key"):
        visitor_key(key, None)


def test_a_plain_key_passes_trimmed():
    assert visitor_key("  ws-abc_123.XYZ  ", None) == "ws-abc_123.XYZ"
    assert visitor_key(None, {"x-wavespeed-key": " ws-abc "}) == "ws-abc"
    assert visitor_key("", {}) is None


@pytest.mark.parametrize("task_id", ["abc?x=1", "abc/../x", "abc def", "abc#x", "a%2Fb", "tâche", "a\x00b"])
def test_a_task_id_with_other_characters_is_refused(task_id):
    with pytest.raises(InputRejected, match="^A task id has only letters, digits, - and _; check what you pasted.$"):
        check_task_id(task_id)


def test_a_task_id_is_trimmed_and_at_most_128_characters():
    assert check_task_id("  0a1b-2c_3D \n") == "0a1b-2c_3D"
    assert check_task_id("x" * 128) == "x" * 128
    with pytest.raises(InputRejected, match="at most 128 characters"):
        check_task_id("x" * 129)
    with pytest.raises(InputRejected, match="Enter the task id"):
        check_task_id("   ")


def test_a_task_id_goes_into_the_api_path_url_encoded(sandbox, make_image):
    with WaveSpeedClient(sandbox.base_url, "any-key") as client:
        image_url = client.upload(make_image(), "image/png")
        task_id = client.submit(SPEC, {"image": image_url, "prompt": "a lighthouse"}).task_id
        # Unencoded, `?` would end the path and this would read the real task's result.
        with pytest.raises(KlingDemoError, match="HTTP 404"):
            client.result(f"{task_id}?x=1")
    (row,) = [row for row in requests.get(sandbox.base_url + "/sandbox/tasks", timeout=5).json()
              if row["id"] == task_id]
    assert row["result_polls"] == 0


def test_an_internal_error_becomes_a_sentence_with_a_reference_and_the_details_go_to_the_log(tmp_path, caplog):
    missing = tmp_path / "no-such-folder" / "video.mp4"
    with pytest.raises(gr.Error) as shown:
        with plain_errors():
            missing.open("rb")  # a real OSError, errno text and server path included
    message = shown.value.message
    assert message.startswith("Something went wrong on the server (reference ")
    assert str(tmp_path) not in message and "Errno" not in message and "No such file" not in message
    reference = re.search(r"reference (\w+)\)", message).group(1)
    (record,) = [r for r in caplog.records if reference in r.getMessage()]
    assert record.exc_info and "No such file" in caplog.text


def test_a_path_in_one_of_our_messages_is_cut_to_its_file_name(tmp_path):
    with pytest.raises(gr.Error) as shown:
        with plain_errors():
            raise KlingDemoError(f"Could not save {tmp_path / 'videos' / 'clip.mp4'}; see https://example.com/a/b.")
    assert shown.value.message == "Could not save clip.mp4; see https://example.com/a/b."


# --- through the app's API, as a visitor's script meets it --------------------------------------------------------

@pytest.fixture
def app_url(make_sandbox, tmp_path):
    from kling_demo.service.backend import Backend
    from kling_demo.config import Settings
    from kling_demo.web.page import build_app, launch_options
    from tests.harness import free_port

    sandbox = make_sandbox()
    settings = Settings(data_dir=tmp_path / "data")
    demo = build_app(settings, Backend(base_url=sandbox.base_url, api_key="server-key", sandbox=sandbox))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings))
    yield f"http://127.0.0.1:{port}/", sandbox, tmp_path / "data"
    demo.close()


def submitted_elsewhere(sandbox, make_image) -> str:
    with WaveSpeedClient(sandbox.base_url, "my-own-key") as elsewhere:
        image_url = elsewhere.upload(make_image(), "image/png")
        return elsewhere.submit(SPEC, {"image": image_url, "prompt": "made elsewhere"}).task_id


def test_a_pasted_task_id_with_a_query_is_refused_before_any_request(app_url, make_image):
    from gradio_client import Client

    url, sandbox, _ = app_url
    task_id = submitted_elsewhere(sandbox, make_image)
    visitor = Client(url, verbose=False, headers={"X-WaveSpeed-Key": "my-own-key"})
    with pytest.raises(Exception, match="A task id has only letters, digits, - and _; check what you pasted."):
        visitor.predict(f"{task_id}?x=1", api_name="/resume")
    assert sandbox.stats()["result_polls"] == 0


def test_a_journal_broken_while_running_never_reaches_the_page(app_url, make_image, caplog):
    from gradio_client import Client

    url, sandbox, data_dir = app_url
    task_id = submitted_elsewhere(sandbox, make_image)
    with (data_dir / "journal.sqlite3").open("r+b") as journal:
        journal.write(b"\xff" * 4096)  # sqlite3.DatabaseError: file is not a database
    visitor = Client(url, verbose=False, headers={"X-WaveSpeed-Key": "my-own-key"})
    statuses = []
    job = visitor.submit(task_id, api_name="/resume")
    status, resumed_id, video = job.result(timeout=60)
    statuses = [output[0] for output in job.outputs()]
    history = visitor.predict(api_name="/history")
    # The paid task is still followed to its video; nothing about databases or paths is shown.
    assert resumed_id == task_id and "Done" in status and Path(video).stat().st_size > 0
    for shown in statuses + [str(history)]:
        assert "database" not in shown.lower() and str(data_dir) not in shown
    assert any(task_id in r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "WARNING")), \
        "the log says which task went unrecorded"


def test_plain_log_lines_about_keys_are_left_readable():
    from kling_demo.logs import mask_secrets

    line = "WAVESPEED_API_KEY is not set, so the local sandbox at http://127.0.0.1:1 is used (no AI, no cost)"
    assert mask_secrets(line) == line
    assert mask_secrets("headers: {'Authorization': 'Bearer sk-live-123'}") == "headers: {'Authorization': 'Bearer ***'}"
