"""The data dir's room: refusing before paying, whole videos only, and no half-written leftovers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kling_demo.errors import AuthenticationFailed, DownloadFailed, StorageUnavailable
from kling_demo.jobs.record import Records
from kling_demo.jobs.runner import run
from kling_demo.jobs.steps import JobContext, JobRequest, Stage, generate
from kling_demo.models import DEFAULT_MODEL, KeySource
from kling_demo.store.files import (
    NO_ROOM_MESSAGE,
    check_room,
    partial_file,
    remove_orphan_parts,
)
from kling_demo.store.journal import Journal
from kling_demo.store.videos import probe_video
from kling_demo.wavespeed.client import WaveSpeedClient
from tests.conftest import fill
from tests.service.test_client import run_to_completion


def job_context(sandbox, api_key: str, journal: Journal, owner: str, videos_dir: Path, **fields) -> JobContext:
    """A job's surroundings that keep its rows in `journal`, under `owner`."""
    client = WaveSpeedClient(sandbox.base_url, api_key)
    records = Records(journal, owner, DEFAULT_MODEL.model_id, client.base_url, KeySource.SERVER, videos_dir)
    return JobContext(client=client, videos_dir=videos_dir, records=records, **fields)


def test_a_floor_above_the_free_space_refuses_in_a_plain_sentence(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_room(tmp_path / "videos", free // 2)  # room enough: no complaint, and the folder exists
    assert (tmp_path / "videos").is_dir() and list((tmp_path / "videos").iterdir()) == []
    with pytest.raises(StorageUnavailable) as refused:
        check_room(tmp_path / "videos", free + 2**40)
    assert str(refused.value) == NO_ROOM_MESSAGE
    assert "nothing was submitted and nothing was billed" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)


def test_a_data_dir_that_cannot_be_created_refuses(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageUnavailable, match="storage is full or read-only"):
        check_room(blocker / "videos", 0)


def test_a_partial_file_appears_under_its_name_only_when_complete(tmp_path):
    target = tmp_path / "video.mp4"
    with partial_file(target) as out:
        out.write(b"first half")
        assert not target.exists() and [p.name for p in tmp_path.iterdir()] == [".video.mp4.part"]
    assert target.read_bytes() == b"first half" and [p.name for p in tmp_path.iterdir()] == ["video.mp4"]

    with pytest.raises(RuntimeError):
        with partial_file(tmp_path / "broken.mp4") as out:
            out.write(b"some bytes")
            raise RuntimeError("the connection dropped")
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"], "a failed write leaves nothing behind"


HOLDER = """
import sys, time
from pathlib import Path
from kling_demo.store.files import partial_file
with partial_file(Path(sys.argv[1])) as out:
    out.write(b"downloading")
    out.flush()
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_orphaned_parts_are_removed_but_a_live_download_is_kept(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / ".dead1.mp4.part").write_bytes(b"left by a killed process")
    (videos / ".dead2.mp4.part").write_bytes(b"")
    (videos / "whole.mp4").write_bytes(b"a finished video")
    live = subprocess.Popen([sys.executable, "-c", HOLDER, str(videos / "live.mp4")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=str(__import__("tests.processes").harness.ROOT))
    try:
        assert live.stdout.readline().strip() == b"holding"
        assert remove_orphan_parts(videos) == 2
        assert sorted(p.name for p in videos.iterdir()) == [".live.mp4.part", "whole.mp4"]
    finally:
        live.stdin.close()
        assert live.wait(timeout=30) == 0
    assert sorted(p.name for p in videos.iterdir()) == ["live.mp4", "whole.mp4"]
    assert remove_orphan_parts(videos) == 0


def test_a_download_goes_to_a_temporary_name_and_is_renamed_when_complete(sandbox, make_image, tmp_path):
    videos = tmp_path / "videos"
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        video = client.download(prediction.outputs[0], videos, max_bytes=50_000_000)
    assert [p.name for p in videos.iterdir()] == [video.name] and video.suffix == ".mp4"
    assert probe_video(video).duration_seconds == pytest.approx(5.0)


def test_a_full_disk_fails_the_download_in_a_plain_sentence_and_leaves_no_part(sandbox, make_image, tiny_disk):
    (tiny_disk / "videos").mkdir()
    fill(tiny_disk, leave_bytes=8192)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        with pytest.raises(DownloadFailed) as failed:
            client.download(prediction.outputs[0], tiny_disk / "videos", max_bytes=50_000_000)
    message = str(failed.value)
    assert "storage is full" in message and "resume it later by its task id" in message
    assert "Errno" not in message and str(tiny_disk) not in message
    assert list((tiny_disk / "videos").iterdir()) == []


# --- a data dir the app cannot write: it starts, shows an empty history and refuses jobs ----------------------


@pytest.fixture
def unwritable_data_dir(request, tiny_disk):
    """A fresh data dir on a disk without a byte free, or on a read-only one (root ignores file modes, so a
    read-only mount it is)."""
    if request.param == "full":
        fill(tiny_disk)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    return tiny_disk / "kling_demo"


@pytest.mark.parametrize("unwritable_data_dir", ["full", "read-only"], indirect=True)
def test_the_app_starts_on_a_fresh_data_dir_it_cannot_write(tmp_path, unwritable_data_dir, make_image):
    from gradio_client import Client, handle_file

    from tests.harness import start_app_process

    log_path = tmp_path / "app.log"
    app = start_app_process(tmp_path / "elsewhere", log_path=log_path,
                            env={"KLING_DEMO_DATA_DIR": str(unwritable_data_dir)})
    try:
        client = Client(app.url, verbose=False)
        assert client.predict(api_name="/history") == []
        with pytest.raises(Exception, match="cannot save your video right now"):
            client.predict(handle_file(str(make_image())), "nowhere to keep it", "", 0.5, 5, None,
                           api_name="/generate")
        log = log_path.read_text()
        assert "for this run only" in log and "KLING_DEMO_SECRET" in log
        assert "Traceback" not in log
        assert app.process.poll() is None
    finally:
        app.stop()
    assert not (unwritable_data_dir / "owner-secret").exists()


def test_a_directory_in_the_journals_place_is_one_sentence_not_a_traceback(tmp_path, make_image):
    from gradio_client import Client, handle_file

    from tests.harness import start_app_process

    data = tmp_path / "data"
    (data / "journal.sqlite3").mkdir(parents=True)
    log_path = tmp_path / "app.log"
    app = start_app_process(data, log_path=log_path)
    try:
        client = Client(app.url, verbose=False)
        assert client.predict(api_name="/history") == []
        with pytest.raises(Exception, match="nothing was submitted"):
            client.predict(handle_file(str(make_image())), "no journal", "", 0.5, 5, None, api_name="/generate")
    finally:
        app.stop()
    log = log_path.read_text()
    assert "Traceback" not in log
    (line,) = [line for line in log.splitlines() if "kling_demo.store.journal:" in line and "is a directory" in line]
    assert "journal.sqlite3" in line and "moved elsewhere" in line and str(tmp_path) not in line


# --- a refusal on a nearly full disk leaves nothing that says "Outcome unknown" ------------------------------


def test_refusals_on_a_full_disk_never_leave_an_outcome_unknown_row(make_sandbox, make_image, tiny_disk, tmp_path):
    """The intent row fits, the disk fills, the job is refused (a key WaveSpeed rejects): the row cannot be
    deleted then. It must not become "Outcome unknown" at the next start: nothing was sent."""
    sandbox = make_sandbox(api_key="the-right-key")
    journal = Journal(tiny_disk / "journal.sqlite3")
    refused = []
    for attempt in range(4):
        ctx = job_context(sandbox, "a-wrong-key", journal, "alice", tmp_path / "videos", min_free_bytes=0)
        try:
            for update in run(generate(JobRequest(image=make_image(), prompt=f"refused {attempt}"), ctx), ctx.stop):
                if update.stage is Stage.UPLOADING and attempt % 2 == 0:
                    fill(tiny_disk)  # the last room went to this row: its withdrawal cannot be written
        except (AuthenticationFailed, StorageUnavailable) as error:
            refused.append(type(error).__name__)
        finally:
            ctx.client.close()
        if attempt % 2 == 0:
            assert journal.for_owner("alice") == [], "a refused job leaves no entry in the history"
            for filler in tiny_disk.glob("filler-*"):
                filler.unlink()
    assert refused.count("AuthenticationFailed") == 4
    assert sandbox.stats()["submissions"] == 0
    assert list((tmp_path / "videos").glob("*.jpg")) == [], "no preview of a refused job is kept"

    # A restart: nothing refused is "Outcome unknown", nothing is left in the file either.
    restarted = Journal(tiny_disk / "journal.sqlite3")
    assert restarted.settle_intents() == 0
    assert restarted.for_owner("alice") == []
    import sqlite3

    with sqlite3.connect(tiny_disk / "journal.sqlite3") as db:  # at most set aside as never sent
        assert db.execute("SELECT COUNT(*) FROM tasks WHERE status != 'unsent'").fetchone()[0] == 0


def test_a_withdrawal_the_disk_refused_is_done_at_the_next_write(tiny_disk):
    import sqlite3

    journal = Journal(tiny_disk / "journal.sqlite3")
    first = journal.record_intent(owner="alice", model="m", api_base="a", key_source=KeySource.SERVER, params={"prompt": "p"})
    fill(tiny_disk)
    assert journal.withdraw_intent("alice", first) is False and journal.for_owner("alice") == []
    for filler in tiny_disk.glob("filler-*"):
        filler.unlink()
    second = journal.record_intent(owner="alice", model="m", api_base="a", key_source=KeySource.SERVER, params={"prompt": "q"})
    with sqlite3.connect(tiny_disk / "journal.sqlite3") as db:
        assert [row[0] for row in db.execute("SELECT task_id FROM tasks")] == [second]


def test_a_submission_the_journal_cannot_mark_as_sent_is_never_sent(sandbox, make_image, tiny_disk, tmp_path):
    """The row must say what the POST carries before it goes; a full disk refuses the job instead (nothing is
    sent, nothing billed), and the next start drops the row rather than call its outcome unknown."""
    journal = Journal(tiny_disk / "journal.sqlite3")
    ctx = job_context(sandbox, "k", journal, "alice", tmp_path / "videos", min_free_bytes=0)
    with pytest.raises(StorageUnavailable) as refused:
        for update in run(generate(JobRequest(image=make_image(), prompt="no room to say it"), ctx), ctx.stop):
            if update.stage is Stage.UPLOADING:
                fill(tiny_disk)
    ctx.client.close()
    assert str(refused.value) == NO_ROOM_MESSAGE
    assert (sandbox.stats()["uploads"], sandbox.stats()["submissions"]) == (1, 0)
    assert journal.for_owner("alice") == []
    for filler in tiny_disk.glob("filler-*"):
        filler.unlink()
    restarted = Journal(tiny_disk / "journal.sqlite3")
    assert restarted.settle_intents() == 0 and restarted.for_owner("alice") == []
