"""The sandbox over real HTTP on loopback: protocol, refusals, auth, lifecycle, faults, uploads, CLI."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import wavespeed

from kling_demo.models import KLING_V2_I2V_MASTER
from kling_demo.store.videos import probe_video

MODEL = KLING_V2_I2V_MASTER.model_id
AUTH = {"Authorization": "Bearer test-key"}
TIMEOUT = (3, 10)
FINAL_STATUSES = ("completed", "failed", "cancelled", "timeout")


def data_uri(path: Path) -> str:
    mime = "image/jpeg" if path.suffix in (".jpg", ".jpeg") else f"image/{path.suffix.lstrip('.')}"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def submit(sandbox, body: dict[str, Any], headers: dict[str, str] = AUTH) -> requests.Response:
    return requests.post(f"{sandbox.base_url}/api/v3/{MODEL}", json=body, headers=headers, timeout=TIMEOUT)


def result(sandbox, task_id: str, headers: dict[str, str] = AUTH) -> dict[str, Any]:
    """The task as its submitter's key sees it (another key's task is not found)."""
    answer = requests.get(f"{sandbox.base_url}/api/v3/predictions/{task_id}/result", headers=headers,
                          timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def wait_until_final(sandbox, task_id: str, limit: float = 30.0, headers: dict[str, str] = AUTH) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        data = result(sandbox, task_id, headers)
        if data["status"] in FINAL_STATUSES:
            return data
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not final after {limit} s")


@pytest.fixture
def good_body(make_image) -> dict[str, Any]:
    return {"image": data_uri(make_image()), "prompt": "a cat walks", "duration": 5}


# --- protocol --------------------------------------------------------------------------------


def test_submission_answers_in_the_wavespeed_envelope(sandbox, good_body) -> None:
    answer = submit(sandbox, good_body)
    assert answer.status_code == 200
    envelope = answer.json()
    assert (envelope["code"], envelope["message"]) == (200, "success")
    data = envelope["data"]
    assert data["status"] == "created"
    assert data["model"] == MODEL
    assert data["outputs"] == [] and data["has_nsfw_contents"] == []
    assert data["urls"]["get"] == f"{sandbox.base_url}/api/v3/predictions/{data['id']}/result"
    assert data["error"] == "" and data["timings"] == {"inference": 0}
    assert len(data["created_at"]) == len("2023-04-01T12:34:56.789Z") and data["created_at"].endswith("Z")


def test_urls_follow_the_host_the_client_used(sandbox, good_body) -> None:
    answer = requests.post(
        f"{sandbox.base_url}/api/v3/{MODEL}", json=good_body, headers={**AUTH, "Host": "demo.example:8080"}, timeout=TIMEOUT
    )
    assert answer.json()["data"]["urls"]["get"].startswith("http://demo.example:8080/api/v3/predictions/")


def test_lifecycle_created_processing_completed(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=1.5)
    started = time.monotonic()
    data = submit(sandbox, good_body).json()["data"]  # the answer is computed as the task is created
    task_id, seen = data["id"], [data["status"]]
    while data["status"] not in FINAL_STATUSES:
        time.sleep(0.05)
        data = result(sandbox, task_id)
        if seen[-1] != data["status"]:
            seen.append(data["status"])
    assert time.monotonic() - started >= 1.5
    assert seen == ["created", "processing", "completed"]
    assert data["timings"]["inference"] >= 1500
    assert data["has_nsfw_contents"] == [False]
    video = requests.get(data["outputs"][0], timeout=TIMEOUT)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"


def test_polling_without_result_suffix_works_too(sandbox, good_body) -> None:
    task_id = submit(sandbox, good_body).json()["data"]["id"]
    answer = requests.get(f"{sandbox.base_url}/api/v3/predictions/{task_id}", headers=AUTH, timeout=TIMEOUT)
    assert answer.json()["data"]["id"] == task_id


@pytest.mark.parametrize("duration", [5, 10])
def test_output_video_plays_for_the_requested_duration(make_sandbox, make_image, duration: int, tmp_path: Path) -> None:
    sandbox = make_sandbox(inference_seconds=0.2)
    first, end = make_image(size=(900, 600), color=(220, 20, 20)), make_image(size=(600, 600), color=(20, 20, 220))
    body = {"image": data_uri(first), "end_image": data_uri(end), "prompt": "turns blue", "duration": duration}
    data = wait_until_final(sandbox, submit(sandbox, body).json()["data"]["id"])
    path = tmp_path / "out.mp4"
    path.write_bytes(requests.get(data["outputs"][0], timeout=TIMEOUT).content)
    info = probe_video(path)
    assert info.frames == 24 * duration
    assert (info.codec, info.pixel_format, info.height, info.width) == ("h264", "yuv420p", 480, 720)


def test_output_supports_range_requests_for_browsers(sandbox, good_body) -> None:
    data = wait_until_final(sandbox, submit(sandbox, good_body).json()["data"]["id"])
    part = requests.get(data["outputs"][0], headers={"Range": "bytes=0-99"}, timeout=TIMEOUT)
    assert part.status_code == 206 and len(part.content) == 100


def test_identical_jobs_share_one_render(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(render_store=None)  # the suite's store may hold this render already
    task_ids = [submit(sandbox, good_body).json()["data"]["id"] for _ in range(4)]
    outputs = [wait_until_final(sandbox, task_id)["outputs"][0] for task_id in task_ids]
    assert len(set(outputs)) == 4  # each task has its own URL
    stats = sandbox.stats()
    assert (stats["renders"], stats["render_cache_hits"]) == (1, 3)


def test_a_render_store_shared_by_two_sandboxes_renders_identical_inputs_once(make_sandbox, good_body,
                                                                               tmp_path) -> None:
    store = tmp_path / "renders"
    first, second = make_sandbox(render_store=store), make_sandbox(render_store=store)
    videos = [requests.get(wait_until_final(box, submit(box, good_body).json()["data"]["id"])["outputs"][0],
                           timeout=TIMEOUT).content for box in (first, second)]
    assert videos[0] == videos[1] and len(videos[0]) > 10_000
    assert [(box.stats()["renders"], box.stats()["render_store_hits"]) for box in (first, second)] == [(1, 0), (0, 1)]
    # A stored video without its shape (cut off while it was being kept) is rendered again, not served.
    for shape in store.glob("*.json"):
        shape.unlink()
    third = make_sandbox(render_store=store)
    wait_until_final(third, submit(third, good_body).json()["data"]["id"])
    assert (third.stats()["renders"], third.stats()["render_store_hits"]) == (1, 0)


def test_stats_and_task_list(sandbox, good_body) -> None:
    task_id = submit(sandbox, good_body).json()["data"]["id"]
    wait_until_final(sandbox, task_id)
    stats = requests.get(f"{sandbox.base_url}/sandbox/stats", timeout=TIMEOUT).json()
    assert stats["submissions"] == 1 and stats["result_polls"] >= 1
    assert stats["tasks"] == {"created": 0, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0, "timeout": 0}
    assert stats == {**sandbox.stats(), "result_polls": stats["result_polls"]}
    (row,) = requests.get(f"{sandbox.base_url}/sandbox/tasks", timeout=TIMEOUT).json()
    assert row["id"] == task_id and row["status"] == "completed" and row["duration"] == 5
    assert row["completed_at_epoch"] - row["created_at_epoch"] >= 1.0
    assert row["result_polls"] == stats["result_polls"]


def test_balance(sandbox) -> None:
    answer = requests.get(f"{sandbox.base_url}/api/v3/balance", headers=AUTH, timeout=TIMEOUT).json()
    assert answer["code"] == 200 and answer["data"]["balance"] > 0


def test_unknown_model_is_404(sandbox, good_body) -> None:
    answer = requests.post(f"{sandbox.base_url}/api/v3/kwaivgi/kling-v9-nope", json=good_body, headers=AUTH, timeout=TIMEOUT)
    assert answer.status_code == 404 and answer.json()["code"] == 404
    assert "kwaivgi/kling-v9-nope" in answer.json()["message"]


@pytest.mark.parametrize("suffix", ["/result", ""])
def test_unknown_task_is_404(sandbox, suffix: str) -> None:
    answer = requests.get(f"{sandbox.base_url}/api/v3/predictions/no-such-task{suffix}", headers=AUTH, timeout=TIMEOUT)
    assert answer.status_code == 404 and answer.json() == {"code": 404, "message": "task not found: no-such-task", "data": None}


def test_simulated_task_failure_says_why(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(task_failure_rate=1.0, inference_seconds=0.2)
    data = wait_until_final(sandbox, submit(sandbox, good_body).json()["data"]["id"])
    assert data["status"] == "failed" and data["outputs"] == []
    assert "simulated failure" in data["error"]
    assert sandbox.stats()["tasks"]["failed"] == 1


def test_sync_mode_holds_until_done(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(inference_seconds=0.3)
    data = submit(sandbox, {**good_body, "enable_sync_mode": True}).json()["data"]
    assert data["status"] == "completed" and len(data["outputs"]) == 1


def test_sync_mode_that_runs_out_answers_5004_and_the_sdk_sees_processing(make_sandbox, make_image) -> None:
    sandbox = make_sandbox(inference_seconds=5, sync_wait_seconds=0.3)
    client = wavespeed.Client(api_key="test-key", base_url=sandbox.base_url)
    outcome = client.run_no_throw(MODEL, {"image": data_uri(make_image()), "prompt": "x"}, enable_sync_mode=True)
    assert outcome["status"] == "processing" and outcome["task_id"] != "unknown"
    assert result(sandbox, outcome["task_id"])["status"] in ("created", "processing")


# --- refusals --------------------------------------------------------------------------------


REFUSALS = [
    # (case, body changes, image spec for "image" or None, expected message fragments)
    ("image missing", {"image": None}, None, ["image:", "required"]),
    ("prompt missing", {"prompt": None}, None, ["prompt:", "required"]),
    ("prompt blank", {"prompt": "   "}, None, ["prompt:", "non-empty"]),
    ("guidance too high", {"guidance_scale": 1.5}, None, ["guidance_scale:", "0.00", "1.00", "1.5"]),
    ("guidance negative", {"guidance_scale": -0.1}, None, ["guidance_scale:", "0.00", "1.00"]),
    ("guidance text", {"guidance_scale": "high"}, None, ["guidance_scale:", "number"]),
    ("duration 7", {"duration": 7}, None, ["duration:", "5 or 10", "7"]),
    ("duration text", {"duration": "5"}, None, ["duration:", "5 or 10"]),
    ("image too small", {}, {"size": (200, 200)}, ["image:", "200x200", "minimum 300x300 px"]),
    ("image one side small", {}, {"size": (800, 299)}, ["image:", "800x299", "minimum 300x300 px"]),
    ("image too wide", {}, {"size": (900, 300)}, ["image:", "aspect ratio 3:1", "1:2.5 to 2.5:1"]),
    ("image too tall", {}, {"size": (300, 800)}, ["image:", "aspect ratio 1:2.67", "1:2.5 to 2.5:1"]),
    ("image gif", {}, {"format": "GIF"}, ["image:", "GIF", "JPEG or PNG"]),
    ("image webp", {}, {"format": "WEBP"}, ["image:", "WEBP", "JPEG or PNG"]),
    ("image not an image", {"image": base64.b64encode(b"hello, not a picture").decode()}, None, ["image:", "cannot be decoded"]),
    ("image not base64", {"image": "%%% not base64 %%%"}, None, ["image:", "base64"]),
    ("image outside url", {"image": "https://example.com/cat.png"}, None, ["image:", "https://example.com/cat.png", "not served by this sandbox"]),
]


@pytest.mark.parametrize("case, changes, image_spec, fragments", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_refusal_names_the_field_and_the_limit(sandbox, make_image, good_body, case, changes, image_spec, fragments) -> None:
    body = {**good_body, **changes}
    if image_spec is not None:
        body["image"] = data_uri(make_image(**image_spec))
    body = {key: value for key, value in body.items() if value is not None}
    answer = submit(sandbox, body)
    assert answer.status_code == 400
    envelope = answer.json()
    assert envelope["code"] == 400 and envelope["data"] is None
    for fragment in fragments:
        assert fragment in envelope["message"]
    assert envelope["message"].startswith(fragments[0])
    assert sandbox.stats()["submissions"] == 0


def test_image_over_10_mb_is_refused(sandbox, make_image, good_body) -> None:
    big = make_image(size=(2000, 1800), compress_level=0)
    assert big.stat().st_size > 10 * 1024 * 1024
    answer = submit(sandbox, {**good_body, "image": data_uri(big)})
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("image: file size") and "maximum 10 MB" in answer.json()["message"]


def test_end_image_is_checked_for_size_but_not_aspect(sandbox, make_image, good_body) -> None:
    small = submit(sandbox, {**good_body, "end_image": data_uri(make_image(size=(299, 400)))})
    assert small.status_code == 400 and small.json()["message"].startswith("end_image: resolution 299x400")
    wide = submit(sandbox, {**good_body, "end_image": data_uri(make_image(size=(1200, 300)))})
    assert wide.status_code == 200


@pytest.mark.parametrize("shape", ["bare base64", "jpeg data uri", "aspect at the 2.5:1 bound"])
def test_accepted_image_shapes(sandbox, make_image, good_body, shape: str) -> None:
    if shape == "bare base64":
        image = base64.b64encode(make_image().read_bytes()).decode()
    elif shape == "jpeg data uri":
        image = data_uri(make_image(format="JPEG"))
    else:
        image = data_uri(make_image(size=(1000, 400)))
    assert submit(sandbox, {**good_body, "image": image}).status_code == 200


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}], ids=["none", "empty", "basic"])
def test_missing_token_is_401(sandbox, good_body, headers) -> None:
    answer = submit(sandbox, good_body, headers=headers)
    assert answer.status_code == 401 and answer.json()["code"] == 401
    for path in ("/api/v3/balance", "/api/v3/predictions/x/result"):
        assert requests.get(sandbox.base_url + path, headers=headers, timeout=TIMEOUT).status_code == 401
    assert requests.post(f"{sandbox.base_url}/api/v3/media/uploads", json={"filename": "a.png"}, headers=headers, timeout=TIMEOUT).status_code == 401


def test_with_api_key_only_that_key_passes(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(api_key="right-key")
    assert submit(sandbox, good_body, headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert submit(sandbox, good_body, headers={"Authorization": "Bearer right-key"}).status_code == 200
    assert sandbox.stats()["submissions"] == 1


# --- uploads ---------------------------------------------------------------------------------


def test_upload_ticket_put_then_submit_by_url(sandbox, make_image) -> None:
    png = make_image()
    ticket = requests.post(
        f"{sandbox.base_url}/api/v3/media/uploads",
        json={"filename": png.name, "size": png.stat().st_size, "content_type": "image/png"},
        headers=AUTH,
        timeout=TIMEOUT,
    ).json()["data"]
    assert ticket["upload"]["method"] == "PUT" and ticket["upload"]["url"].startswith(sandbox.base_url)
    assert requests.get(ticket["download_url"], timeout=TIMEOUT).status_code == 404  # nothing stored yet
    put = requests.put(ticket["upload"]["url"], data=png.read_bytes(), headers=ticket["upload"]["headers"], timeout=TIMEOUT)
    assert 200 <= put.status_code < 300
    fetched = requests.get(ticket["download_url"], timeout=TIMEOUT)
    assert fetched.content == png.read_bytes() and fetched.headers["content-type"] == "image/png"
    assert submit(sandbox, {"image": ticket["download_url"], "prompt": "x"}).status_code == 200
    assert sandbox.stats()["uploads"] == 1


def test_put_without_valid_signature_is_refused(sandbox, make_image) -> None:
    ticket = requests.post(f"{sandbox.base_url}/api/v3/media/uploads", json={"filename": "a.png"}, headers=AUTH, timeout=TIMEOUT)
    unsigned = ticket.json()["data"]["download_url"]
    assert requests.put(unsigned, data=b"x", timeout=TIMEOUT).status_code == 403
    assert sandbox.stats()["uploads"] == 0


def test_binary_upload_then_submit_by_url(sandbox, make_image) -> None:
    png = make_image()
    with png.open("rb") as stream:
        answer = requests.post(
            f"{sandbox.base_url}/api/v3/media/upload/binary", files={"file": (png.name, stream, "image/png")}, headers=AUTH, timeout=TIMEOUT
        )
    envelope = answer.json()
    assert envelope["code"] == 200
    assert envelope["data"]["type"] == "image"
    assert envelope["data"]["filename"] == png.name and envelope["data"]["size"] == png.stat().st_size
    assert requests.get(envelope["data"]["download_url"], timeout=TIMEOUT).content == png.read_bytes()
    assert submit(sandbox, {"image": envelope["data"]["download_url"], "prompt": "x"}).status_code == 200
    assert sandbox.stats()["uploads"] == 1


def test_official_sdk_runs_unchanged(make_sandbox, make_image, tmp_path: Path) -> None:
    sandbox = make_sandbox(inference_seconds=0.5)
    client = wavespeed.Client(api_key="k", base_url=sandbox.base_url)
    image_url = client.upload(str(make_image(size=(720, 1280))))
    output = client.run(MODEL, {"image": image_url, "prompt": "a cat walks", "duration": 5}, poll_interval=0.1, timeout=60)
    video = tmp_path / "sdk.mp4"
    video.write_bytes(requests.get(output["outputs"][0], timeout=TIMEOUT).content)
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (120, 480, 854)
    assert sandbox.stats()["uploads"] == 1 and sandbox.stats()["submissions"] == 1


def test_official_sdk_reports_a_failed_task(make_sandbox, make_image) -> None:
    sandbox = make_sandbox(inference_seconds=0.2, task_failure_rate=1.0)
    client = wavespeed.Client(api_key="k", base_url=sandbox.base_url)
    with pytest.raises(RuntimeError, match="simulated failure"):
        client.run(MODEL, {"image": data_uri(make_image()), "prompt": "x"}, poll_interval=0.1, timeout=30)


# --- faults ----------------------------------------------------------------------------------


def poll_outcomes(sandbox, count: int) -> list[str]:
    """Outcome of `count` polls of an unknown task: an HTTP status, or 'drop' for a lost connection."""
    outcomes = []
    for _ in range(count):
        try:
            answer = requests.get(f"{sandbox.base_url}/api/v3/predictions/none/result", headers=AUTH, timeout=TIMEOUT)
        except requests.ConnectionError:
            outcomes.append("drop")
            continue
        if answer.status_code == 429:
            assert answer.headers["Retry-After"] == "1"
        if answer.status_code != 404:
            assert answer.json()["code"] == answer.status_code
        outcomes.append(str(answer.status_code))
    return outcomes


def test_seeded_faults_repeat_exactly(make_sandbox) -> None:
    first = poll_outcomes(make_sandbox(fault_rate=0.6, seed=7), 40)
    second = poll_outcomes(make_sandbox(fault_rate=0.6, seed=7), 40)
    other = poll_outcomes(make_sandbox(fault_rate=0.6, seed=8), 40)
    assert first == second != other
    assert {"404", "429", "500", "502", "503", "drop"} <= set(first)


def test_every_fault_is_counted(make_sandbox) -> None:
    sandbox = make_sandbox(fault_rate=0.5, seed=3)
    outcomes = poll_outcomes(sandbox, 30)
    stats = sandbox.stats()
    assert stats["faults_injected"] == sum(outcome != "404" for outcome in outcomes)
    assert stats["result_polls"] == 30


def test_sandbox_routes_never_fault(make_sandbox) -> None:
    sandbox = make_sandbox(fault_rate=1.0, seed=1)
    for _ in range(10):
        assert requests.get(f"{sandbox.base_url}/sandbox/stats", timeout=TIMEOUT).status_code == 200
    assert sandbox.stats()["faults_injected"] == 0


def test_submit_under_faults_only_gets_429_and_creates_nothing(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(fault_rate=1.0, seed=1)
    for _ in range(8):
        answer = submit(sandbox, good_body)
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
    stats = sandbox.stats()
    assert stats["submissions"] == 0 and stats["faults_injected"] == 8
    assert sum(stats["tasks"].values()) == 0


def test_lost_answer_still_creates_a_task_that_completes(make_sandbox, good_body) -> None:
    sandbox = make_sandbox(lost_answer_rate=1.0, inference_seconds=0.3)
    with pytest.raises(requests.ConnectionError):
        submit(sandbox, good_body)
    assert sandbox.stats()["submissions"] == 1 and sandbox.stats()["faults_injected"] == 1
    (row,) = requests.get(f"{sandbox.base_url}/sandbox/tasks", timeout=TIMEOUT).json()
    assert wait_until_final(sandbox, row["id"])["status"] == "completed"


def test_uploads_and_file_downloads_fault_too(make_sandbox, make_image) -> None:
    sandbox = make_sandbox(fault_rate=1.0, seed=5)
    outcomes = set()
    for _ in range(12):
        try:
            answer = requests.post(f"{sandbox.base_url}/api/v3/media/uploads", json={"filename": "a.png"}, headers=AUTH, timeout=TIMEOUT)
            outcomes.add(answer.status_code)
        except requests.ConnectionError:
            outcomes.add("drop")
    assert 200 not in outcomes and len(outcomes) >= 3
    assert sandbox.stats()["faults_injected"] == 12


def test_sdk_rides_out_poll_faults(make_sandbox, make_image) -> None:
    # fault_rate 0.3, seed 11: the submission's roll passes, some polls fail; the SDK retries GETs.
    sandbox = make_sandbox(fault_rate=0.3, seed=11, inference_seconds=0.5)
    client = wavespeed.Client(api_key="k", base_url=sandbox.base_url, retry_interval=0.05, max_connection_retries=8)
    output = client.run(MODEL, {"image": data_uri(make_image()), "prompt": "x"}, poll_interval=0.05, timeout=60)
    assert output["outputs"] and sandbox.stats()["faults_injected"] >= 1


# --- CLI -------------------------------------------------------------------------------------


