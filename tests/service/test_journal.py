"""The journal: owner-scoped rows, retention, and concurrent writers that lose nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kling_demo.models import TaskStatus
from kling_demo.store.journal import Journal


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
    assert journal.get("alice", "t1").status is TaskStatus.CREATED


def test_lifecycle_is_recorded_and_never_stores_a_key(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    submit(journal, "alice", "t1")
    journal.set_status("alice", "t1", "processing")
    assert [r.task_id for r in journal.running()] == ["t1"]
    journal.complete("alice", "t1", video_path=str(tmp_path / "v.mp4"), inference_ms=93_000)
    record = journal.get("alice", "t1")
    assert record.status is TaskStatus.COMPLETED and record.inference_ms == 93_000 and record.finished_at
    assert journal.running() == []
    assert journal.inference_times("m") == [(5, 93.0)]
    columns = {row[1] for row in __import__("sqlite3").connect(journal.path).execute("PRAGMA table_info(tasks)")}
    assert not any("key" in column and column != "key_source" for column in columns)


def test_a_late_running_status_never_reopens_a_task_that_ended(tmp_path):
    """A poll answered before a webhook ended the task may be written after the job completed it: the row stays
    completed (CI once saw a finished video's row say "created")."""
    journal = Journal(tmp_path / "j.sqlite3")
    submit(journal, "alice", "t1")
    journal.complete("alice", "t1", video_path=str(tmp_path / "v.mp4"), inference_ms=1_000)
    journal.set_status("alice", "t1", "created")
    assert journal.get("alice", "t1").status is TaskStatus.COMPLETED and journal.running() == []



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
from kling_demo.store.journal import Journal
journal = Journal(sys.argv[1])
for index in range(int(sys.argv[3])):
    task = f"{sys.argv[2]}-{index}"
    journal.record_submission(owner=sys.argv[2], task_id=task, model="m", api_base="a", key_source="server",
                              params={"prompt": "p"})
    journal.set_status(sys.argv[2], task, "processing")
    journal.complete(sys.argv[2], task, video_path="/v.mp4", inference_ms=index)
"""



# --- start-up survives any journal content ----------------------------------------------------


def write_raw_row(path, task_id: str, *, owner: str = "alice", params: str = '{"prompt": "p", "duration": 5}',
                  status: str = "completed", inference_ms: object = 90_000, created_at: object = 1.0,
                  finished_at: object = 2.0) -> None:
    """A row as some earlier version (or a damaged disk) may have left it, written past the Journal API."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO tasks (task_id, owner, model, api_base, key_source, params, status, created_at,"
                   " updated_at, finished_at, inference_ms) VALUES (?, ?, 'm', 'a', 'server', ?, ?, ?, ?, ?, ?)",
                   (task_id, owner, params, status, created_at, created_at, finished_at, inference_ms))


def test_odd_rows_are_read_leniently_and_never_stop_a_reader(tmp_path):
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    write_raw_row(path, "resumed-by-id", params='{"prompt": "", "duration": null, "resumed": true}')
    write_raw_row(path, "bad-json", params="{not json")
    write_raw_row(path, "a-list", params="[5]")
    write_raw_row(path, "text-duration", params='{"duration": "ten"}', inference_ms="fast")
    write_raw_row(path, "huge", params='{"duration": 1e400}', created_at="yesterday", finished_at="later")
    write_raw_row(path, "strange-status", status="exploded", params='{"duration": 10}')
    write_raw_row(path, "running-odd", status="processing", params="null", created_at="None")
    write_raw_row(path, "good", params='{"prompt": "waves", "duration": 10}', inference_ms=120_000)

    assert journal.inference_times("m") == [(10, 120.0)], "only rows with a known duration teach poll timing"
    records = {r.task_id: r for r in journal.for_owner("alice")}
    assert len(records) == 8
    assert {r.task_id for r in records.values() if r.duration is None} == set(records) - {"good", "strange-status"}
    assert records["good"].duration == 10 and records["good"].prompt == "waves"
    assert records["bad-json"].params == {} and records["a-list"].params == {}
    assert records["text-duration"].inference_ms is None
    assert records["huge"].created_at == 0.0 and records["huge"].finished_at is None
    # A status nobody knows is read as an ending (shown, never followed), not passed on as text.
    assert records["strange-status"].status is TaskStatus.FAILED and not records["strange-status"].is_running
    assert [r.task_id for r in journal.running()] == ["running-odd"]
    assert journal.get("alice", "bad-json").task_id == "bad-json"
    assert journal.prune(max_age_days=0).videos_removed == 0  # rows without videos are left alone


def test_a_task_record_duration_never_raises():
    from kling_demo.models import positive_int

    for odd in (None, "abc", [5], {"a": 1}, float("nan"), float("inf"), -5, 0, True):
        assert positive_int(odd) is None, odd
    assert [positive_int(v) for v in (5, "10", 10.0)] == [5, 10, 10]


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_journal_starts(tmp_path, caplog):
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"\x00garbage, not SQLite" * 500)
    (tmp_path / "journal.sqlite3-wal").write_bytes(b"more garbage")
    with caplog.at_level("WARNING", logger="kling_demo.store.journal"):
        journal = Journal(path)
    (aside,) = tmp_path.glob("journal.sqlite3.corrupt-*[0-9Z]")
    assert aside.read_bytes().startswith(b"\x00garbage")
    assert (tmp_path / f"{aside.name}-wal").read_bytes() == b"more garbage"
    submit(journal, "alice", "t1")
    assert [r.task_id for r in journal.for_owner("alice")] == ["t1"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "moved it aside" in line and aside.name in line and "\n" not in line


def test_a_truncated_database_is_moved_aside_too(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    for index in range(300):
        submit(journal, "alice", f"t{index}", prompt="x" * 500)
    import sqlite3

    with sqlite3.connect(path) as db:  # fold the WAL into the main file, then cut it short
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    fresh = Journal(path)
    assert list(tmp_path.glob("journal.sqlite3.corrupt-*")), "the damaged file is kept aside"
    assert fresh.for_owner("alice") == []


# --- intents: a row before the submit POST -----------------------------------------------------


def intent(journal: Journal, owner: str = "alice") -> str:
    return journal.record_intent(owner=owner, model="m", api_base="a", key_source="server",
                                 params={"prompt": "p", "duration": 5}, first_frame="/preview.jpg")


def test_an_intent_becomes_an_ordinary_task_once_the_api_answers(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    intent_id = intent(journal)
    (record,) = journal.for_owner("alice")
    assert record.status is TaskStatus.PREPARED and record.is_intent and record.first_frame == "/preview.jpg"
    assert record.sent_at is None and record.sent == {}, "nothing sent yet"
    journal.mark_sending("alice", intent_id, {"image": "https://files.example/a.png"}, at=1234.5)
    (record,) = journal.for_owner("alice")
    assert (record.status, record.sent_at, record.sent) == (TaskStatus.SUBMITTING, 1234.5,
                                                             {"image": "https://files.example/a.png"})
    assert journal.running() == [], "recovery never polls a placeholder id"
    journal.attach_task("alice", intent_id, "real-task", "created")
    (record,) = journal.for_owner("alice")
    assert (record.task_id, record.status, record.is_intent, record.duration) == ("real-task", TaskStatus.CREATED, False, 5)
    assert [r.task_id for r in journal.running()] == ["real-task"]


def test_only_intents_whose_post_began_are_settled_as_outcome_unknown_at_start(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    sent = intent(journal)
    journal.mark_sending("alice", sent, {"image": "https://files.example/a.png"})
    preview = tmp_path / "unsent-preview.jpg"
    preview.write_bytes(b"a preview")
    never_sent = journal.record_intent(owner="alice", model="m", api_base="a", key_source="server",
                                       params={"prompt": "p", "duration": 5}, first_frame=str(preview))
    withdrawn = intent(journal)
    journal.withdraw_intent("alice", withdrawn)
    assert Journal(tmp_path / "j.sqlite3").settle_intents() == 1
    (record,) = journal.for_owner("alice")
    assert record.task_id == sent and record.status is TaskStatus.UNKNOWN and record.finished_at
    assert "outcome is unknown" in record.error and "dashboard" in record.error
    assert journal.get("alice", never_sent) is None, "nothing was sent: nothing to settle, nothing shown"
    assert journal.running() == [] and journal.unknown_outcomes() == [record]

    # The app's job may still be on its way when the command line starts: it sends its row all the same.
    journal.mark_sending("alice", never_sent, {"image": "https://files.example/b.png"})
    assert journal.get("alice", never_sent).status is TaskStatus.SUBMITTING
    journal.withdraw_intent("alice", never_sent)


def test_rows_never_sent_are_deleted_with_their_preview_an_hour_after_they_were_set_aside(tmp_path):
    import sqlite3

    journal = Journal(tmp_path / "j.sqlite3")
    preview = tmp_path / "unsent-preview.jpg"
    preview.write_bytes(b"a preview")
    never_sent = journal.record_intent(owner="alice", model="m", api_base="a", key_source="server",
                                       params={"prompt": "p", "duration": 5}, first_frame=str(preview))
    journal.settle_intents()
    assert preview.exists(), "kept while a job elsewhere might still send it"
    with sqlite3.connect(journal.path) as db:
        db.execute("UPDATE tasks SET updated_at = updated_at - 3601 WHERE task_id = ?", (never_sent,))
    journal.settle_intents()
    assert not preview.exists()
    with sqlite3.connect(journal.path) as db:
        assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0


def test_a_deleted_task_is_still_known_as_someones(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    submit(journal, "bob", "bobs-cat")
    journal.fail("bob", "bobs-cat", "it ended")
    assert journal.has_task("bobs-cat") and not journal.has_task("nobodys")
    assert journal.forget("bob", "bobs-cat") and journal.get("bob", "bobs-cat") is None
    assert journal.has_task("bobs-cat"), "a deleted task must never be adopted by another row"
    assert Journal(tmp_path / "j.sqlite3").has_task("bobs-cat"), "also after a restart"


def test_a_missing_duration_is_filled_in_without_touching_other_params(tmp_path):
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    write_raw_row(path, "resumed", params='{"prompt": "", "duration": null, "resumed": true}')
    write_raw_row(path, "broken", params="{oops")
    journal.fill_duration("alice", "resumed", 10)
    journal.fill_duration("alice", "broken", 5)
    journal.fill_duration("alice", "absent", 5)  # no row: nothing to do
    assert journal.get("alice", "resumed").params == {"prompt": "", "duration": 10, "resumed": True}
    assert journal.get("alice", "broken").duration == 5
    assert journal.inference_times("m") == [(10, 90.0), (5, 90.0)]


# --- a journal of another schema, or a path that is not a file ---------------------------------------------------


def foreign_tasks_table(path: Path) -> None:
    """A `tasks` table some other program made, with columns of its own."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT, done INTEGER)")
        db.execute("INSERT INTO tasks (title, done) VALUES ('buy milk', 0)")


def foreign_database(path: Path) -> None:
    """Another program's SQLite file, with no `tasks` table at all."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO notes (body) VALUES ('not a journal')")


@pytest.mark.parametrize("make_foreign", [foreign_tasks_table, foreign_database])
def test_a_journal_of_another_schema_is_moved_aside_and_a_fresh_one_takes_jobs(tmp_path, caplog, make_foreign):
    import sqlite3

    path = tmp_path / "journal.sqlite3"
    make_foreign(path)
    with caplog.at_level("WARNING", logger="kling_demo.store.journal"):
        journal = Journal(path)
    (aside,) = tmp_path.glob("journal.sqlite3.foreign-*[0-9Z]")
    with sqlite3.connect(aside) as db:  # kept as it was, for its owner to look at
        assert db.execute("SELECT COUNT(*) FROM " + ("tasks" if make_foreign is foreign_tasks_table
                                                      else "notes")).fetchone()[0] == 1
    intent_id = intent(journal)
    assert [r.task_id for r in journal.for_owner("alice")] == [intent_id]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "moved it aside" in line and aside.name in line and "not this app's journal" in line
    assert "\n" not in line and str(tmp_path) not in line


def test_a_journal_path_that_is_a_directory_reads_empty_refuses_writes_and_says_what_to_do(tmp_path, caplog):
    import sqlite3

    path = tmp_path / "journal.sqlite3"
    path.mkdir()
    with caplog.at_level("WARNING", logger="kling_demo.store.journal"):
        journal = Journal(path)  # no traceback: the app starts without a history
        assert journal.for_owner("alice") == [] and journal.running() == []
        with pytest.raises(sqlite3.Error):
            intent(journal)
    sentences = {r.getMessage() for r in caplog.records if "is a directory" in r.getMessage()}
    assert len(sentences) == 1, caplog.text
    (sentence,) = sentences
    assert "journal.sqlite3" in sentence and "KLING_DEMO_DATA_DIR" in sentence and "move" in sentence
    assert str(tmp_path) not in sentence
    assert path.is_dir(), "an operator's directory is never moved"
    path.rmdir()  # once it is moved away, the journal works without a restart
    intent(journal)
    assert len(journal.for_owner("alice")) == 1
