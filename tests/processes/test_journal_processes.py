"""The journal shared by processes: no write lost when others write or close the file."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from kling_demo.models import TaskStatus
from kling_demo.store.journal import Journal
from tests.service.test_journal import WRITER, submit


def test_a_write_is_never_lost_when_another_process_closes_the_file(tmp_path):
    """Closing any descriptor of the file drops every SQLite lock this process holds on it; the journal never
    does, or another process's close takes itself for the last one and deletes the WAL our next write goes to."""
    journal = Journal(tmp_path / "j.sqlite3")
    submit(journal, "alice", "t1")
    read_in_thread = threading.Thread(target=journal.get, args=("alice", "t1"))  # a second thread's connection
    read_in_thread.start()
    read_in_thread.join()

    def status_seen_by_another_process() -> str:
        return subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
             "print(db.execute('SELECT status FROM tasks').fetchone()[0]); db.close()", str(journal.path)],
            check=True, capture_output=True, text=True).stdout.strip()

    assert status_seen_by_another_process() == "created"
    journal.complete("alice", "t1", video_path=str(tmp_path / "v.mp4"), inference_ms=5)
    assert status_seen_by_another_process() == "completed"
    assert Path(f"{journal.path}-wal").exists(), "the WAL was deleted under the journal's open connections"


def test_concurrent_writers_in_separate_processes_lose_no_rows(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"owner{n}", "60"]) for n in range(6)]
    assert all(writer.wait(timeout=120) == 0 for writer in writers)
    journal = Journal(path)
    for n in range(6):
        records = journal.for_owner(f"owner{n}", limit=1000)
        assert len(records) == 60
        assert all(record.status is TaskStatus.COMPLETED for record in records)


def test_threads_sharing_one_journal_and_other_processes_lose_no_rows_and_see_each_other(tmp_path):
    """Each thread reuses its own connection: nothing is lost, and none reads a stale snapshot."""
    import threading

    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    submit(journal, "early", "t0")  # this thread's connection has read and written before the others start
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"proc{n}", "40"]) for n in range(3)]

    def write(owner: str) -> None:
        for index in range(40):
            submit(journal, owner, f"{owner}-{index}")
            journal.complete(owner, f"{owner}-{index}", video_path="/v.mp4", inference_ms=index)

    threads = [threading.Thread(target=write, args=(f"thread{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(writer.wait(timeout=120) == 0 for writer in writers)
    for owner in [f"thread{n}" for n in range(6)] + [f"proc{n}" for n in range(3)]:
        records = journal.for_owner(owner, limit=1000)  # read on this thread's reused connection
        assert len(records) == 40 and all(record.status is TaskStatus.COMPLETED for record in records), owner
