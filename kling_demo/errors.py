"""One exception tree, keyed by what the user can do next; each error says what happened and carries the facts a
front end needs (exit code, whether resuming by id helps, whether a task may have been billed).

    KlingDemoError
    ├── FixTheInput        change what you asked for; nothing was submitted            exit 2
    │   ├── InputRejected, ApiInputRefused, NotYours, NotFound (HTTP 404)
    ├── CheckTheKey        check the key or its balance; nothing was submitted         exit 3
    │   ├── AuthenticationFailed, KeyRequired, InsufficientBalance
    ├── TryLater           nothing was submitted, or the service is out of reach        exit 7
    │   ├── ServiceUnavailable (NothingSubmitted), RateLimited (HTTP 429), StorageUnavailable,
    │   ├── BudgetExceeded, VisitorCapReached, TooManyRequests, AlreadyFollowing
    ├── TaskKept           the task exists and is kept: resume it (or check the dashboard)  exit 5
    │   ├── TaskTimedOut, TaskOutOfReach, DownloadFailed (exit 7), SubmissionOutcomeUnknown (exit 6)
    ├── TaskEnded          the task ended without a video                              exit 4
    │   └── TaskFailed
    ├── JobStopped         the visitor stopped waiting (its facts say what may exist)  exit 5
    └── WebhookRejected    a webhook refused (never shown to a visitor)
"""

from __future__ import annotations

import errno
from typing import ClassVar

from .models import BudgetRefusal, Submission, TaskStatus

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def is_disk_full(error: BaseException) -> bool:
    """True for an OSError that means no room (or no writing) on the disk."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


class KlingDemoError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code: ClassVar[int] = 7  # the command line's exit code (README, "Exit codes")
    may_be_billed: ClassVar[bool] = False  # a task may exist and be charged
    resumable_by_id: ClassVar[bool] = True  # with a task id, resuming it can still bring the video
    retry_later: ClassVar[bool] = False  # background recovery tries the task again after a while

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id

    @property
    def resumable(self) -> bool:
        """A task id exists, and following it again may still end in its video."""
        return bool(self.task_id) and self.resumable_by_id

    def __str__(self) -> str:
        if self.task_id and self.task_id not in self.message:
            return f"{self.message} (task id: {self.task_id})"
        return self.message


# --- fix the input -------------------------------------------------------------------------------------------


class FixTheInput(KlingDemoError):
    """What was asked for cannot be done as it is; nothing was uploaded or paid for."""

    exit_code = 2
    resumable_by_id = False


class InputRejected(FixTheInput):
    """The input breaks a documented limit; nothing was uploaded or paid for."""


class ApiInputRefused(FixTheInput):
    """The API refused the input (HTTP 400); its message names the field."""


class NotYours(FixTheInput):
    """The task is not in this visitor's history and no key of theirs was given to fetch it."""


class NotFound(FixTheInput):
    """The API does not know what was asked for (HTTP 404): a task id it never issued, or one it deleted."""


# --- check the key -------------------------------------------------------------------------------------------


class CheckTheKey(KlingDemoError):
    """The key was refused, is missing, or cannot pay; nothing was submitted."""

    exit_code = 3


class AuthenticationFailed(CheckTheKey):
    """The API rejected the key (HTTP 401/403)."""


class KeyRequired(CheckTheKey):
    """This needs the visitor's own WaveSpeed key (the Space requires one, or the task was paid with it)."""


class InsufficientBalance(CheckTheKey):
    """The key's balance cannot pay for this video (HTTP 402, or the balance read first); nothing was billed."""


# --- try later -----------------------------------------------------------------------------------------------


class TryLater(KlingDemoError):
    """Nothing was submitted (or the service is out of reach for now): the same request may work later."""

    exit_code = 7
    retry_later = True


class ServiceUnavailable(TryLater):
    """The API or the network failed on a request that is safe to repeat, and retries ran out.

    `reason` says how in a few words ("connection refused", "HTTP 503"); `retry_after` is the server's ask."""

    def __init__(self, message: str, *, task_id: str | None = None, reason: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.reason = reason
        self.retry_after = retry_after


class NothingSubmitted(ServiceUnavailable):
    """The submit's connection never opened, so no task exists and it may be sent again."""


class RateLimited(TryLater):
    """The API answered HTTP 429 (the key's rate or account level) and waiting ran out; nothing was created."""

    def __init__(self, message: str, *, retry_after: float | None = None, task_id: str | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.retry_after = retry_after


class StorageUnavailable(TryLater):
    """The data dir is full or cannot be written, so a job was refused before anything was paid for."""


class BudgetExceeded(TryLater):
    """A spending limit on the server's key is reached; nothing was submitted. `refusal` says which limit, what is
    used and when it frees (the message is the API's wording of it; a page words it with its own voice)."""

    def __init__(self, message: str, *, refusal: BudgetRefusal | None = None, task_id: str | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.refusal = refusal

    @property
    def frees_at(self) -> float | None:
        """When the limit frees (Unix time), or None when it does not."""
        return self.refusal.frees_at if self.refusal is not None else None


class VisitorCapReached(TryLater):
    """The visitor already runs as many jobs at once as this app allows on its key (not an HTTP 429)."""


class TooManyRequests(TryLater):
    """This app's own limit on a kind of request (key checks, uploads) per visitor or address; nothing was asked."""


class AlreadyFollowing(TryLater):
    """Another job of this process is already following this task."""


# --- the task is kept ----------------------------------------------------------------------------------------


class TaskKept(KlingDemoError):
    """The task exists at WaveSpeed and this job stopped following it; it may still finish and be billed."""

    exit_code = 5
    may_be_billed = True
    retry_later = True


class TaskTimedOut(TaskKept):
    """The overall deadline passed while the task was still running."""


class TaskOutOfReach(TaskKept):
    """WaveSpeed stopped answering about a submitted task until this job's time limit was up."""

    def __init__(self, message: str, *, task_id: str | None = None, reason: str = "") -> None:
        super().__init__(message, task_id=task_id)
        self.reason = reason


class DownloadFailed(TaskKept):
    """The finished video could not be fetched, saved, or was too large."""

    exit_code = 7


class SubmissionOutcomeUnknown(TaskKept):
    """The submit answer was lost: the task may exist and be billed, so it was not resubmitted."""

    exit_code = 6
    retry_later = False


# --- the task ended ------------------------------------------------------------------------------------------


class TaskEnded(KlingDemoError):
    """The task ended at WaveSpeed without a video."""

    exit_code = 4
    resumable_by_id = False
    may_be_billed = True  # whether a failed task is charged is WaveSpeed's to say


class TaskFailed(TaskEnded):
    """The task ended without a video; carries the API's error text and its final status."""

    def __init__(self, message: str, *, task_id: str | None = None, status: TaskStatus = TaskStatus.FAILED) -> None:
        super().__init__(message, task_id=task_id)
        self.status = status


# --- the visitor stopped -------------------------------------------------------------------------------------


class JobStopped(KlingDemoError):
    """The visitor stopped waiting. `submission` says whether a task may exist (and be billed) at that moment."""

    exit_code = 5

    def __init__(self, message: str, *, task_id: str | None = None,
                 submission: Submission = Submission.NONE) -> None:
        super().__init__(message, task_id=task_id)
        self.submission = Submission.EXISTS if task_id else submission

    @property
    def may_be_billed(self) -> bool:  # type: ignore[override]
        return self.submission is not Submission.NONE


# --- never shown to a visitor --------------------------------------------------------------------------------


class WebhookRejected(KlingDemoError):
    """A webhook that is not WaveSpeed's, is too old, or was seen before: refused, and nothing changes."""
