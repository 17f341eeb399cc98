"""A task's journal row and its one writer: what a job (or recovery) records of its task, from intent to ending.

A job holds one `TaskRow`: written before anything is uploaded ("prepared"), told what the submit carries right
before it is sent ("submitting"), given the task id when WaveSpeed answers, and its status, video or failure as
the task goes on. Where no journal is kept (a script's context, or a journal that failed mid-job) the same calls
do nothing, so the job itself never asks whether there is a journal. A write that fails is logged; only the two
before anything is paid for (the intent, and the mark before the submit) refuse the job instead.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageUnavailable
from ..models import KeySource, Quote, TaskStatus
from ..store import files, videos
from ..store.journal import Journal, TaskRecord
from . import images

log = logging.getLogger(__name__)
JOURNAL_ERRORS = (OSError, sqlite3.Error)


@dataclass(frozen=True)
class Records:
    """Where a job's rows go: the journal (or none), under one owner, for one key and API."""

    journal: Journal | None
    owner: str
    model: str
    api_base: str
    key_source: KeySource
    videos_dir: Path

    def intend(self, params: dict[str, Any], first: images.PreparedImage,
               end: images.PreparedImage | None = None) -> "TaskRow":
        """The row of a submission to come, with its frames kept for "reuse these settings"; raises
        `StorageUnavailable` when it cannot be written (nothing is uploaded or paid for then)."""
        if self.journal is None:
            return TaskRow(self, None)
        preview: Path | None = None
        try:
            preview = images.save_preview(first, self.videos_dir)
            videos.keep_frames(preview, first, end)
            intent_id = self.journal.record_intent(owner=self.owner, model=self.model, api_base=self.api_base,
                                                   key_source=self.key_source, params=params,
                                                   first_frame=str(preview))
        except JOURNAL_ERRORS as error:
            log.warning("journal: cannot record a new submission (%s: %s); refusing it before anything is paid for",
                        type(error).__name__, error)
            if preview is not None:
                files.remove_files([preview])
            raise StorageUnavailable(files.NO_ROOM_MESSAGE) from error
        return TaskRow(self, intent_id, preview)

    def fetched(self, task_id: str, status: TaskStatus, params: dict[str, Any],
                first_frame: Path | None = None) -> "TaskRow":
        """The row of a task fetched by its id (an existing row of the owner's is kept as it is); `first_frame`: the
        preview its kept frames sit beside, when it came with them."""
        row = TaskRow(self, task_id)
        row._write("record task %s", task_id, lambda journal: journal.record_submission(
            owner=self.owner, task_id=task_id, model=self.model, api_base=self.api_base,
            key_source=self.key_source, status=status, params=params,
            first_frame=str(first_frame) if first_frame else None), level=logging.ERROR)
        return row

    def current(self, record: TaskRecord) -> TaskRecord | None:
        """`record`'s row as it is now (a read, for a page watching a task that someone else writes). A submission's
        row that got its task id meanwhile is found under it by its first frame, which is its own; None when the row
        is gone (a withdrawn submission: nothing was sent) or cannot be read."""
        if self.journal is None:
            return None
        now = self.journal.get(self.owner, record.task_id)
        if now is not None or not record.is_intent or not record.first_frame:
            return now
        return next((row for row in self.journal.for_owner(self.owner) if row.first_frame == record.first_frame), None)

    def existing(self, task_id: str) -> "TaskRow":
        """The row of a task already in the journal (recovery, the history's actions)."""
        return TaskRow(self, task_id)


class TaskRow:
    """The journal row of one task (or of a submission not yet answered); every write of it goes through here."""

    def __init__(self, records: Records, row_id: str | None, preview: Path | None = None) -> None:
        self._records, self._journal, self.row_id, self._preview = records, records.journal, row_id, preview

    @property
    def kept(self) -> bool:
        """Whether the journal holds this row (the task will reach the history, whoever follows it)."""
        return self.record is not None

    @property
    def record(self) -> TaskRecord | None:
        if self._journal is None or self.row_id is None:
            return None
        return self._journal.get(self._records.owner, self.row_id)

    # -- before the answer ----------------------------------------------------------------------------------------

    def priced(self, quote: Quote | None) -> None:
        """Keep WaveSpeed's quote with the row; without it the task only lacks its cost in the history."""
        if quote is not None:
            self._write("keep the price of %s", self.row_id,
                        lambda journal: journal.set_price(self._owner, self.row_id, quote.price, quote.currency))

    def sending(self, payload: dict[str, object]) -> None:
        """Right before the submit request: when it began and which uploaded images it carries, so only this very
        task can be adopted if its answer is lost. Raises `StorageUnavailable` (nothing is sent) if it fails."""
        if self._journal is None or self.row_id is None:
            return
        sent = {name: str(payload[name]) for name in ("image", "end_image") if payload.get(name)}
        try:
            self._journal.mark_sending(self._owner, self.row_id, sent)
        except JOURNAL_ERRORS as error:
            log.warning("journal: cannot record the submission about to be sent (%s: %s); refusing it before "
                        "anything is paid for", type(error).__name__, error)
            raise StorageUnavailable(files.NO_ROOM_MESSAGE) from error

    def withdraw(self) -> None:
        """Nothing was created: the row goes (at once, or at a later write if the disk is full: hidden till then)."""
        if self._journal is None or self.row_id is None:
            return
        self._journal.withdraw_intent(self._owner, self.row_id)
        if self._preview is not None:
            files.remove_files([self._preview])  # with the frames kept beside it

    def outcome_unknown(self, reason: str) -> None:
        """The answer was lost: the row stays in the history, saying a task may exist and be billed."""
        self._write("mark %s as outcome unknown", self.row_id,
                    lambda journal: journal.fail(self._owner, self.row_id, reason, status=TaskStatus.UNKNOWN))

    def attach(self, task_id: str, status: TaskStatus) -> None:
        """WaveSpeed answered with the task id. If the row cannot take it the job goes on without the journal (the
        visitor sees the id; the log keeps it)."""
        previous, self.row_id = self.row_id, task_id
        if previous is None or self._journal is None:
            return
        self._write("record submitted task %s", task_id, lambda journal: journal.attach_task(
            self._owner, previous, task_id, status), level=logging.ERROR)

    # -- while the task runs, and its ending -------------------------------------------------------------------

    def running(self, status: TaskStatus) -> None:
        """A new running status seen by the poller (a row that ended keeps its ending)."""
        self._write("record the status of task %s", self.row_id,
                    lambda journal: journal.set_status(self._owner, self.row_id, status), forget=False)

    def fill_duration(self, duration: int | None) -> None:
        """The video's length where the row has none (a task fetched by id)."""
        if duration:
            self._write("record the duration of task %s", self.row_id,
                        lambda journal: journal.fill_duration(self._owner, self.row_id, duration), forget=False)

    def complete(self, video_path: Path, inference_ms: int | None) -> None:
        self._write("record the video of task %s", self.row_id, lambda journal: journal.complete(
            self._owner, self.row_id, video_path=str(video_path), inference_ms=inference_ms))

    def fail(self, reason: str, status: TaskStatus = TaskStatus.FAILED) -> None:
        self._write("record the failure of task %s", self.row_id,
                    lambda journal: journal.fail(self._owner, self.row_id, reason, status=status))

    def moved(self, video_path: Path) -> None:
        """The owner moved the finished video (the command line's --out): the history points at its new place."""
        self._write("record the new place of the video of %s", self.row_id,
                    lambda journal: journal.set_video_path(self._owner, self.row_id, str(video_path)))

    def adopted(self, intent_id: str, task_id: str, status: TaskStatus) -> None:
        """Recovery found the task of a submission whose answer was lost: the row takes its id."""
        self.row_id = intent_id
        self.attach(task_id, status)

    # -- inside -------------------------------------------------------------------------------------------------

    @property
    def _owner(self) -> str:
        return self._records.owner

    def _write(self, what: str, subject: object, write: Any, *, level: int = logging.WARNING,
               forget: bool = True) -> None:
        """One write; a failure is logged (never raised: the task is paid already) and, unless `forget` is False,
        this row is followed without the journal from then on (its later writes would fail the same way)."""
        if self._journal is None or self.row_id is None:
            return
        try:
            write(self._journal)
        except JOURNAL_ERRORS as error:
            log.log(level, "journal: could not %s (%s: %s)%s", what % (subject,), type(error).__name__, error,
                    "; it is followed without the journal" if forget else "")
            if forget:
                self._journal = None
