"""The server secret that signs owner ids: stored whole or not at all, never empty or short, and a run on a disk
that cannot keep it still starts (with a secret for this run only, said plainly in the log)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from kling_demo.config import Settings
from kling_demo.service.visitors import sign_owner, verified_owner
from tests.conftest import fill
from tests.harness import ROOT

MIN_SECRET_CHARS = 32  # what the README promises: a shorter secret is refused


def test_a_secret_is_generated_once_and_kept(tmp_path):
    first = Settings(data_dir=tmp_path / "data").owner_secret()
    assert len(first) >= MIN_SECRET_CHARS
    assert Settings(data_dir=tmp_path / "data").owner_secret() == first
    stored = tmp_path / "data" / "owner-secret"
    assert stored.read_text().strip() == first and stored.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["owner-secret"], "no temporary file is left"


def test_a_full_disk_at_the_first_start_leaves_no_empty_secret_and_still_starts(tiny_disk, caplog):
    data = tiny_disk / "data"
    data.mkdir()
    fill(tiny_disk)
    with caplog.at_level("WARNING", logger="kling_demo.config"):
        for_this_run = Settings(data_dir=data).owner_secret()
    assert len(for_this_run) >= MIN_SECRET_CHARS
    assert Settings(data_dir=data).owner_secret() == for_this_run, "one secret for the whole run"
    assert not (data / "owner-secret").exists(), "nothing half-written is left to sign with later"
    assert [p.name for p in data.iterdir()] == []
    (line,) = [r.getMessage() for r in caplog.records if "this run only" in r.getMessage()]
    assert "KLING_DEMO_SECRET" in line and str(tiny_disk) not in line

    for filler in tiny_disk.glob("filler-*"):
        filler.unlink()  # room again: the next start stores a secret of its own, whole
    assert Settings(data_dir=data).owner_secret() == for_this_run, "this run keeps the tokens it signed valid"
    stored = _fresh_process_secret(data)
    assert len(stored) >= MIN_SECRET_CHARS and (data / "owner-secret").read_text().strip() == stored


def _fresh_process_secret(data) -> str:
    """The owner secret a new process (a restart) reads or makes in `data`."""
    return subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from kling_demo.config import Settings; "
                           "print(Settings(data_dir=Path(sys.argv[1])).owner_secret())", str(data)],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("content", ["", "\n", "short-secret"])
def test_an_empty_or_short_stored_secret_is_refused_saying_what_to_do(tmp_path, content):
    data = tmp_path / "data"
    data.mkdir()
    (data / "owner-secret").write_text(content)  # what a full disk left at an earlier first start
    with pytest.raises(ValueError) as refused:
        Settings(data_dir=data).owner_secret()
    message = str(refused.value)
    assert "owner-secret" in message and "delete it" in message and "KLING_DEMO_SECRET" in message
    assert str(tmp_path) not in message
    forged = sign_owner("a" * 32, content.strip())  # what anyone can sign with an empty or guessable key
    assert verified_owner(forged, content.strip()) == "a" * 32, "why it must never be used"


def test_a_short_kling_demo_secret_is_refused(tmp_path):
    with pytest.raises(ValueError, match=f"KLING_DEMO_SECRET .*at least {MIN_SECRET_CHARS}"):
        Settings.from_env({"KLING_DEMO_SECRET": "hunter2", "KLING_DEMO_DATA_DIR": str(tmp_path)},
                          dotenv_path=None).owner_secret()
    long_enough = uuid.uuid4().hex
    assert Settings.from_env({"KLING_DEMO_SECRET": long_enough, "KLING_DEMO_DATA_DIR": str(tmp_path)},
                             dotenv_path=None).owner_secret() == long_enough
    assert not (tmp_path / "owner-secret").exists()


RACER = """
import sys
from pathlib import Path
from kling_demo.config import Settings
sys.stdin.readline()  # all start together
print(Settings(data_dir=Path(sys.argv[1])).owner_secret(), flush=True)
"""


def test_processes_starting_together_all_sign_with_the_one_stored_secret(tmp_path):
    data = tmp_path / "data"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(data)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    seen = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert seen == {(data / "owner-secret").read_text().strip()}
    assert all(len(secret) >= MIN_SECRET_CHARS for secret in seen)
