"""One exception tree: every error a user can see says what happened, what to do, and the task id once known."""

from __future__ import annotations


class KlingDemoError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id

    def __str__(self) -> str:
        if self.task_id and self.task_id not in self.message:
            return f"{self.message} (task id: {self.task_id})"
        return self.message


class InputRejected(KlingDemoError):
    """The input breaks a documented limit; nothing was uploaded or paid for."""


class AuthenticationFailed(KlingDemoError):
    """The API rejected the key (HTTP 401/403)."""


class KeyRequired(KlingDemoError):
    """This needs the visitor's own WaveSpeed key (the Space requires one, or the task was paid with it)."""


class RateLimited(KlingDemoError):
    """The API asked us to slow down (HTTP 429) and retries ran out."""

    def __init__(self, message: str, *, retry_after: float | None = None, task_id: str | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.retry_after = retry_after


class InsufficientBalance(KlingDemoError):
    """The key's balance cannot pay for this video (HTTP 402); nothing was created or billed."""


class ApiInputRefused(KlingDemoError):
    """The API refused the input (HTTP 400); its message names the field."""


class ServiceUnavailable(KlingDemoError):
    """The API or the network failed on a request that is safe to repeat, and retries ran out.

    `reason` says how in a few words ("connection refused", "HTTP 503"); `retry_after` is the server's ask."""

    def __init__(self, message: str, *, task_id: str | None = None, reason: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.reason = reason
        self.retry_after = retry_after


class NothingSubmitted(ServiceUnavailable):
    """The submit's connection never opened, so no task exists and it may be sent again."""


class SubmissionOutcomeUnknown(KlingDemoError):
    """The submit answer was lost: the task may exist and be billed, so it was not resubmitted."""


class TaskFailed(KlingDemoError):
    """The task ended without a video; carries the API's error text and its final status."""

    def __init__(self, message: str, *, task_id: str | None = None, status: str = "failed") -> None:
        super().__init__(message, task_id=task_id)
        self.status = status


class TaskTimedOut(KlingDemoError):
    """The overall deadline passed while the task was still running."""


class JobStopped(KlingDemoError):
    """The user stopped waiting; the remote task may still finish and be billed."""


class StorageUnavailable(KlingDemoError):
    """The data dir is full or cannot be written, so a job was refused before anything was paid for."""


class DownloadFailed(KlingDemoError):
    """The finished video could not be fetched or was too large."""


class AlreadyFollowing(KlingDemoError):
    """Another job of this process is already polling this task."""


class NotYours(KlingDemoError):
    """The task is not in this visitor's history and no key of theirs was given to fetch it."""


class WebhookRejected(KlingDemoError):
    """A webhook that is not WaveSpeed's, is too old, or was seen before: refused, and nothing changes."""


class BudgetExceeded(KlingDemoError):
    """A spending limit on the server's key is reached; nothing was submitted. `frees_at` is a Unix time."""

    def __init__(self, message: str, *, frees_at: float | None = None, task_id: str | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.frees_at = frees_at
