"""The app as a real process under hostile images and uploads: refused plainly, memory bounded and given back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file
from PIL import Image

from kling_demo.web.page import MAX_UPLOAD
from tests.harness import Served, start_app_process
from tests.service.test_media import truncated, write_bilevel_png, write_flat_jpeg, write_flat_png

PEAK_TARGET_MB = 600  # issue 12: three 9400×9400 PNGs at once keep the app's peak RSS under this
SETTLED_MARGIN_MB = 100  # how close to its baseline the app's RSS must come back
CAP_BYTES = 50 * 1024 * 1024
assert MAX_UPLOAD == "50mb", "this module's cap figures follow ui.MAX_UPLOAD"

BOMB_REFUSAL = ("The first frame image is 9400×9400 px (88 megapixels); PNG images over 16 megapixels are refused, "
                "as the model makes video of at most 1080p — use a smaller image (at most 4000×4000 px).")
TRUNCATED_REFUSAL = "The end frame image is damaged or incomplete — export it again as JPEG or PNG."


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    """The app in sandbox mode (no key) as its own process, with its upload cache where the test can see it."""
    root = tmp_path_factory.mktemp("image-memory")
    uploads = root / "gradio"
    served = start_app_process(root / "data", env={"GRADIO_TEMP_DIR": str(uploads)}, log_path=root / "app.log")
    yield served, uploads
    served.stop()


def refusal_of(url: str, image: Path, end_image: Path | None = None) -> str:
    """Run /generate as its own visitor; the error text the client gets (fails if the job succeeds)."""
    client = Client(url, verbose=False)
    try:
        with pytest.raises(Exception) as refused:
            client.predict(handle_file(str(image)), "a lake at dusk", "", 0.5, 5,
                           handle_file(str(end_image)) if end_image else None, api_name="/generate")
    finally:
        client.close()
    return str(refused.value)


def test_png_bombs_and_a_truncated_end_frame_are_refused_with_memory_bounded_and_returned(app, tmp_path):
    served, _ = app
    pid = served.process.pid
    bomb = write_flat_png(tmp_path / "bomb.png", 9400, 9400)  # ~350 kB on disk, 353 MB decoded
    first = write_flat_png(tmp_path / "first.png", 4000, 4000, (200, 120, 40, 128))  # allowed: 64 MB decoded
    broken_end = truncated(tmp_path, "end.png", "PNG")
    small = tmp_path / "small.png"
    Image.new("RGB", (640, 480), (40, 90, 160)).save(small)
    refusal_of(served.url, small, broken_end)  # warm-up: the first job loads what every job needs
    baseline = memory_mb(pid, "VmRSS")

    with ThreadPoolExecutor(max_workers=4) as pool:
        bombs = [pool.submit(refusal_of, served.url, bomb) for _ in range(3)]
        end_frame = pool.submit(refusal_of, served.url, first, broken_end)
        messages = [job.result(timeout=180) for job in bombs]
        end_message = end_frame.result(timeout=180)

    for message in messages:
        assert BOMB_REFUSAL in message, message
    assert TRUNCATED_REFUSAL in end_message, end_message
    for message in [*messages, end_message]:
        assert "Decompression" not in message and "preprocess" not in message and "/tmp" not in message
    peak = memory_mb(pid, "VmHWM")
    assert peak < PEAK_TARGET_MB, f"peak RSS {peak:.0f} MB"
    deadline = time.monotonic() + 60
    while memory_mb(pid, "VmRSS") > baseline + SETTLED_MARGIN_MB and time.monotonic() < deadline:
        time.sleep(0.5)
    settled = memory_mb(pid, "VmRSS")
    assert settled <= baseline + SETTLED_MARGIN_MB, f"RSS stayed at {settled:.0f} MB (baseline {baseline:.0f} MB)"


def test_a_bomb_past_pillows_hard_limit_gets_our_sentence_not_a_preprocess_error(app, tmp_path):
    """Pillow raises on opening a 900 MP PNG: the page's input must not open it, so our check speaks."""
    served, _ = app
    message = refusal_of(served.url, write_bilevel_png(tmp_path / "bomb.png", 30000, 30000))
    assert ("The first frame image is 900 megapixels; images over 89 megapixels are refused as a possible "
            "decompression bomb — use a smaller image (at most 16 megapixels).") in message, message
    assert "preprocess" not in message and "DecompressionBombError" not in message and "/tmp" not in message


def test_progressive_jpeg_bombs_are_refused_from_their_header_with_what_would_do(app, tmp_path):
    """1 MB progressive JPEGs of 9400×9400 held 530 MB (RGB) / 707 MB (CMYK) each while decoding, even at 1/8."""
    served, _ = app
    for components, largest in ((3, "4000×4000"), (4, "3464×3464")):
        bomb = write_flat_jpeg(tmp_path / f"bomb-{components}.jpg", 9400, 9400, components, scans="progressive")
        message = refusal_of(served.url, bomb)
        assert ("The first frame image is a progressive JPEG of 9400×9400 px (88 megapixels), too large to decode: "
                "a progressive JPEG is held in memory whole, however much it is reduced — save it as a baseline "
                f"(non-progressive) JPEG, or at most {largest} px.") in message, message


def uploaded_files(uploads: Path) -> set[Path]:
    return {path for path in uploads.rglob("*") if path.is_file()} if uploads.exists() else set()


def test_an_upload_over_the_cap_is_refused_and_not_kept(app, tmp_path):
    served, uploads = app
    before = uploaded_files(uploads)
    too_big = tmp_path / "too-big.png"
    with too_big.open("wb") as file:
        file.truncate(CAP_BYTES + 1)
    with too_big.open("rb") as file:
        answer = requests.post(served.url + "gradio_api/upload", files={"files": ("too-big.png", file)}, timeout=120)
    assert answer.status_code == 413
    assert f"maximum allowed size of {CAP_BYTES} bytes" in answer.text
    assert uploaded_files(uploads) == before, "nothing of the refused upload stays in Gradio's cache"


def test_an_upload_at_the_cap_is_accepted(app, tmp_path):
    """The cap is where the README says: a 50 MB file still goes through, to be re-encoded under 10 MB."""
    served, _ = app
    at_cap = tmp_path / "at-cap.png"
    with at_cap.open("wb") as file:
        file.truncate(CAP_BYTES)
    with at_cap.open("rb") as file:
        answer = requests.post(served.url + "gradio_api/upload", files={"files": ("at-cap.png", file)}, timeout=120)
    assert answer.status_code == 200, answer.text
