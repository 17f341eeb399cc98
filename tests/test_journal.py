"""The journal: owner-scoped rows, retention, and concurrent writers that lose nothing."""

from __future__ import annotations

import subprocess
import sys
import time

from kling_demo.journal import Journal


def submit(journal: Journal, owner: str, task_id: str, **params) -> None:
    journal.record_submission(owner=owner, task_id=task_id, model="m", api_base="http://api", key_source="server",
                              params={"prompt": "p", "duration": 5, **params})


def test_rows_are_scoped_to_their_owner(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    submit(journal, "alice", "t1")
    submit(journal, "bob", "t2")
    assert [r.task_id for r in journal.for_owner("alice")] == ["t1"]
    assert journal.get("bob", "t1") is None, "another owner's task looks exactly like a missing one"
    journal.complete("bob", "t1", video_path="/x.mp4", inference_ms=5)  # not bob's: changes nothing
    assert journal.get("alice", "t1").status == "created"


def test_lifecycle_is_recorded_and_never_stores_a_key(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    submit(journal, "alice", "t1")
    journal.set_status("alice", "t1", "processing")
    assert [r.task_id for r in journal.running()] == ["t1"]
    journal.complete("alice", "t1", video_path=str(tmp_path / "v.mp4"), inference_ms=93_000)
    record = journal.get("alice", "t1")
    assert record.status == "completed" and record.inference_ms == 93_000 and record.finished_at
    assert journal.running() == []
    assert journal.inference_times("m") == [(5, 93.0)]
    columns = {row[1] for row in __import__("sqlite3").connect(journal.path).execute("PRAGMA table_info(tasks)")}
    assert not any("key" in column and column != "key_source" for column in columns)


def test_retention_removes_old_and_excess_videos_and_reports_it(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    for index in range(3):
        video = tmp_path / f"v{index}.mp4"
        video.write_bytes(b"x" * 1000)
        submit(journal, "alice", f"t{index}")
        journal.complete("alice", f"t{index}", video_path=str(video), inference_ms=1)
        time.sleep(0.01)
    report = journal.prune(max_total_bytes=2000)
    assert (report.videos_removed, report.bytes_freed) == (1, 1000)
    assert not (tmp_path / "v0.mp4").exists() and (tmp_path / "v2.mp4").exists()
    assert journal.get("alice", "t0").video_path is None
    report = journal.prune(max_age_days=0)
    assert report.videos_removed == 2


WRITER = """
import sys
from kling_demo.journal import Journal
journal = Journal(sys.argv[1])
for index in range(int(sys.argv[3])):
    task = f"{sys.argv[2]}-{index}"
    journal.record_submission(owner=sys.argv[2], task_id=task, model="m", api_base="a", key_source="server",
                              params={"prompt": "p"})
    journal.set_status(sys.argv[2], task, "processing")
    journal.complete(sys.argv[2], task, video_path="/v.mp4", inference_ms=index)
"""


def test_concurrent_writers_in_separate_processes_lose_no_rows(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"owner{n}", "60"]) for n in range(6)]
    assert all(writer.wait(timeout=120) == 0 for writer in writers)
    journal = Journal(path)
    for n in range(6):
        records = journal.for_owner(f"owner{n}", limit=1000)
        assert len(records) == 60
        assert all(record.status == "completed" for record in records)
