"""`python -m kling_demo generate`, run as a real subprocess against real sandboxes on loopback."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.store.videos import probe_video
from kling_demo.models import DEFAULT_MODEL, JobUpdate, Stage
from kling_demo.words import Voice
from tests.harness import clean_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CANARY_KEY = "canary-key-7f3a9c1e-must-never-be-printed"
RUN_TIMEOUT = 60


def cli_env(tmp_path: Path, *, api_key: str | None, base_url: str | None = None, **extra: str) -> dict[str, str]:
    """The process environment minus any real settings, plus ours (data dir inside tmp_path)."""
    env = clean_env(KLING_DEMO_DATA_DIR=str(tmp_path / "data"))
    if api_key is not None:
        env["WAVESPEED_API_KEY"] = api_key
    if base_url is not None:
        env["WAVESPEED_BASE_URL"] = base_url
    env.update(extra)
    return env


def run_cli(tmp_path: Path, *args: object, **env_fields: object) -> subprocess.CompletedProcess[str]:
    # cwd=tmp_path so no stray `.env` in the checkout can change the backend.
    return subprocess.run([sys.executable, "-m", "kling_demo", *map(str, args)], cwd=tmp_path,
                          env=cli_env(tmp_path, **env_fields), capture_output=True, text=True, timeout=RUN_TIMEOUT)


def only_path(result: subprocess.CompletedProcess[str]) -> Path:
    """stdout holds exactly one line: an existing file's absolute path."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    path = Path(lines[0])
    assert path.is_absolute() and path.is_file(), path
    return path


def test_generate_writes_the_video_to_out_and_prints_only_its_path(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(inference_seconds=1.5)
    out = tmp_path / "results" / "nested" / "waves.mp4"
    result = run_cli(tmp_path, "generate", make_image(size=(960, 540)), "--prompt", "waves roll in",
                     "--negative-prompt", "blur", "--guidance", "0.7", "--out", out,
                     api_key=CANARY_KEY, base_url=sandbox.base_url)

    assert only_path(result) == out.resolve()
    info = probe_video(out)
    assert info.duration_seconds == pytest.approx(5)
    assert info.width / info.height == pytest.approx(960 / 540, rel=0.01)
    assert not list((tmp_path / "data" / "videos").rglob("*.mp4"))  # moved, not copied
    assert [path for path in (tmp_path / "data" / "videos").iterdir() if path.is_dir()] == []  # nor its folder

    task_id = _only_task_id(sandbox)
    stages = [line.split()[2] for line in result.stderr.splitlines() if line.startswith("[")]
    assert {"submitted", "processing", "done"} <= set(stages), result.stderr
    assert any("submitted" in line and task_id in line for line in result.stderr.splitlines())
    rendering = [sentence for stage, sentence in progress_lines(result.stderr) if stage is Stage.PROCESSING]
    assert rendering and all("WaveSpeed" in sentence for sentence in rendering), result.stderr  # a key: WaveSpeed
    assert CANARY_KEY not in result.stdout + result.stderr
    assert "sandbox" not in result.stderr.lower()  # a key was given: the CLI must not claim sandbox mode


def test_without_a_key_the_embedded_sandbox_renders_a_ten_second_video(make_image, tmp_path):
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "a slow pan", "--duration", "10",
                     api_key=None, KLING_DEMO_SANDBOX_SECONDS="1")

    video = only_path(result)
    assert video.parent.parent == (tmp_path / "data" / "videos").resolve()  # default: left in the videos dir
    assert video.name.endswith("_a-slow-pan.mp4")  # in its own folder, named for what it is
    assert probe_video(video).duration_seconds == pytest.approx(10)
    assert "sandbox" in result.stderr.lower() and "no ai" in result.stderr.lower()
    assert "done" in result.stderr


PROGRESS_LINE = re.compile(r"^\[\s*[\d.]+s\] (?P<stage>[a-z]+) +(?:task=\S+ +)?(?P<sentence>.*)$")


def progress_lines(stderr: str) -> list[tuple[Stage, str]]:
    """The (stage, sentence) of every progress line: `[  12.3s] processing  task=…  <sentence>`."""
    found = [PROGRESS_LINE.match(line) for line in stderr.splitlines() if line.startswith("[")]
    assert found and all(found), stderr
    return [(Stage(match["stage"]), match["sentence"]) for match in found]


def test_the_embedded_sandbox_never_says_wavespeed_and_no_line_repeats_its_stage(make_image, tmp_path):
    """Issue 23: without a key nothing of the run talks of WaveSpeed (it is not involved), and no update says its
    own stage twice ("Submitted — Submitted", "Queued at the sandbox — Queued at the sandbox")."""
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "waves", api_key=None,
                     KLING_DEMO_SANDBOX_SECONDS="3")

    only_path(result)
    assert "WaveSpeed" not in result.stderr, result.stderr
    lines = progress_lines(result.stderr)
    seen = {stage for stage, _ in lines}
    assert {Stage.PREPARING, Stage.UPLOADING, Stage.SUBMITTED, Stage.DOWNLOADING, Stage.DONE} <= seen, result.stderr
    voice = Voice(sandbox=True, for_visitors=False)
    for stage, sentence in lines:
        heading = voice.heading(JobUpdate(stage, 0.0))  # what the page puts before the same sentence
        for said_already in (stage.value, heading):
            assert not sentence.lower().startswith(said_already.lower()), f"{stage.value}: {sentence}"
        parts = [part.strip(" .…").lower() for part in sentence.split(" — ")]
        assert all(a != b for a, b in zip(parts, parts[1:])), f"{stage.value}: {sentence}"


def test_a_too_small_image_exits_2_naming_300_px_and_uploads_nothing(sandbox, make_image, tmp_path):
    result = run_cli(tmp_path, "generate", make_image(size=(200, 150)), "--prompt", "tiny",
                     api_key=CANARY_KEY, base_url=sandbox.base_url)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "300" in result.stderr and "px" in result.stderr
    assert "Traceback" not in result.stderr
    stats = sandbox.stats()
    assert stats["uploads"] == 0 and stats["submissions"] == 0


def test_usage_errors_exit_2_and_help_documents_the_exit_codes(tmp_path):
    no_image = run_cli(tmp_path, "generate", "--prompt", "x", api_key=None)
    assert no_image.returncode == 2 and "--resume" in no_image.stderr
    missing_file = run_cli(tmp_path, "generate", tmp_path / "nope.png", "--prompt", "x", api_key=None)
    assert missing_file.returncode == 2 and "nope.png" in missing_file.stderr and "Traceback" not in missing_file.stderr
    helped = run_cli(tmp_path, "generate", "--help", api_key=None)
    assert helped.returncode == 0
    for code in range(2, 8):
        assert f"\n  {code}  " in helped.stdout, helped.stdout


def test_a_rejected_key_exits_3_without_printing_the_key(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(api_key="right")
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "waves",
                     api_key=CANARY_KEY, base_url=sandbox.base_url)

    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert CANARY_KEY not in result.stdout + result.stderr


def test_a_balance_that_cannot_pay_exits_3_and_submits_nothing(make_sandbox, make_image, tmp_path):
    """The key's balance is the user's to fix (top up, another key), not service trouble."""
    sandbox = make_sandbox(balance=0.5)
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "waves",
                     api_key=CANARY_KEY, base_url=sandbox.base_url)

    assert result.returncode == 3, result.stderr
    assert result.stdout == "" and "balance" in result.stderr and "Nothing was submitted" in result.stderr
    assert sandbox.stats()["submissions"] == 0
    assert CANARY_KEY not in result.stderr


def test_a_failed_task_exits_4_with_its_task_id(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(task_failure_rate=1.0, seed=3)
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "a storm",
                     api_key=CANARY_KEY, base_url=sandbox.base_url)

    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    task_id = _only_task_id(sandbox)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and task_id in error_lines[0]
    assert "Traceback" not in result.stderr and CANARY_KEY not in result.stderr


def test_the_deadline_exits_5_with_the_resume_command(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(inference_seconds=30)
    result = run_cli(tmp_path, "generate", make_image(), "--prompt", "slow",
                     api_key=CANARY_KEY, base_url=sandbox.base_url, KLING_DEMO_DEADLINE_SECONDS="1")

    assert result.returncode == 5, result.stderr
    assert result.stdout == ""
    assert f"--resume {_only_task_id(sandbox)}" in result.stderr


def test_resume_fetches_the_video_of_a_task_submitted_elsewhere(sandbox, make_image, tmp_path):
    with WaveSpeedClient(sandbox.base_url, CANARY_KEY) as client:
        image_url = client.upload(make_image(), "image/png")
        prediction = client.submit(DEFAULT_MODEL, {"image": image_url, "prompt": "waves", "duration": 5,
                                                   "guidance_scale": 0.5})

    result = run_cli(tmp_path, "generate", "--resume", prediction.task_id,
                     api_key=CANARY_KEY, base_url=sandbox.base_url)

    video = only_path(result)
    assert probe_video(video).duration_seconds == pytest.approx(5)
    assert prediction.task_id in result.stderr
    assert sandbox.stats()["submissions"] == 1  # resuming never submits again


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child differs on Windows")
def test_ctrl_c_while_waiting_exits_5_and_the_printed_command_resumes_the_task(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(inference_seconds=4)
    out = tmp_path / "later.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "kling_demo", "generate", str(make_image()), "--prompt", "waves", "--out", str(out)],
        cwd=tmp_path, env=cli_env(tmp_path, api_key=CANARY_KEY, base_url=sandbox.base_url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell without job control starts background jobs with SIGINT ignored; a terminal's child has it on.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = []
        for line in process.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if "submitted" in line:
                break
        time.sleep(0.2)  # let it settle into the wait between polls
        process.send_signal(signal.SIGINT)
        rest_out, rest_err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(seen) + rest_err

    assert process.returncode == 5, stderr
    assert rest_out == ""
    task_id = _only_task_id(sandbox)
    assert "billed" in stderr and "Traceback" not in stderr
    resume_line = next(line for line in stderr.splitlines() if "--resume" in line)
    assert f"--resume {task_id}" in resume_line
    assert CANARY_KEY not in stderr

    command = resume_line[resume_line.index("python -m kling_demo"):].split()
    assert command[:3] == ["python", "-m", "kling_demo"]
    resumed = run_cli(tmp_path, *command[3:], api_key=CANARY_KEY, base_url=sandbox.base_url)
    assert only_path(resumed) == out.resolve()
    assert probe_video(out).duration_seconds == pytest.approx(5)
    assert sandbox.stats()["submissions"] == 1


def _only_task_id(sandbox) -> str:
    import requests

    rows = requests.get(sandbox.base_url + "/sandbox/tasks", timeout=10).json()
    assert len(rows) == 1, rows
    return str(rows[0]["id"])


def test_history_lists_a_cli_task_and_a_later_run_resumes_it_by_id(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(inference_seconds=4)
    stopped = run_cli(tmp_path, "generate", make_image(), "--prompt", "a heron  lands\non the pier",
                      api_key=CANARY_KEY, base_url=sandbox.base_url, KLING_DEMO_DEADLINE_SECONDS="1")
    assert stopped.returncode == 5, stopped.stderr
    task_id = _only_task_id(sandbox)

    listed = run_cli(tmp_path, "history", api_key=CANARY_KEY)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split("\t") for line in listed.stdout.splitlines()]
    assert row[0] == task_id and row[1] in ("created", "processing")
    assert row[3] == "a heron lands on the pier" and row[4] == ""

    resumed = run_cli(tmp_path, "generate", "--resume", task_id, api_key=CANARY_KEY, base_url=sandbox.base_url,
                      KLING_DEMO_DEADLINE_SECONDS="120")
    video = only_path(resumed)
    assert probe_video(video).duration_seconds == pytest.approx(5)
    assert sandbox.stats()["submissions"] == 1

    (row,) = [line.split("\t") for line in run_cli(tmp_path, "history", api_key=None).stdout.splitlines()]
    assert row[0] == task_id and row[1] == "completed" and Path(row[4]) == video
