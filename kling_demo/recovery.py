"""Finish paid tasks that nobody is watching: after a restart, a closed tab, or Stop.

Every task still running in the journal is polled to completion in the background and its
video downloaded into the data dir, so it appears in its owner's history. Only tasks paid
with the server's key can be resumed here; a visitor's own key is never stored, so those
wait until the visitor comes back and resumes them with the key entered again.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from . import jobs
from .errors import AlreadyFollowing, KlingDemoError
from .jobs import JobContext
from .journal import Journal, TaskRecord

log = logging.getLogger(__name__)


class Recovery:
    """Background followers for journal tasks, bounded to a few threads."""

    def __init__(self, journal: Journal, make_context: Callable[[str, str | None], JobContext], *, api_base: str,
                 sandbox: bool, max_workers: int = 4) -> None:
        self.journal = journal
        self.make_context = make_context  # (owner, visitor key or None) → a JobContext
        self.api_base = api_base
        self.sandbox = sandbox
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="recovery")

    def resume_running(self, owner: str | None = None, api_key: str | None = None) -> int:
        """Adopt every running task (of one owner, or all) that this key can follow; returns how many.

        Without `api_key`, tasks paid with the server's key; with a visitor's key, that owner's own-key tasks."""
        adopted = 0
        for record in self.journal.running(owner=owner):
            if record.key_source != ("visitor" if api_key else "server"):
                continue
            if record.api_base != self.api_base:
                if self.sandbox:
                    # The embedded sandbox keeps tasks in memory: a restart ends them for good.
                    self.journal.fail(record.owner, record.task_id, "The local sandbox that ran this task was "
                                                                    "restarted; sandbox tasks do not survive a "
                                                                    "restart.", status="lost")
                continue
            self.adopt(record, api_key)
            adopted += 1
        return adopted

    def adopt(self, record: TaskRecord, api_key: str | None = None) -> None:
        """Follow one task in the background; a task this process already follows is skipped there.

        `api_key` is a visitor's own key, held in memory only for this follow."""
        self._pool.submit(self._follow, record, api_key)

    def _follow(self, record: TaskRecord, api_key: str | None) -> None:
        ctx = self.make_context(record.owner, api_key)
        try:
            for _ in jobs.resume(record.task_id, ctx, duration=record.duration):
                pass
            log.info("recovered task %s into its owner's history", record.task_id)
        except AlreadyFollowing:
            log.debug("task %s is already followed by a live job", record.task_id)
        except KlingDemoError as error:
            log.warning("could not recover task %s: %s", record.task_id, error)
        finally:
            ctx.client.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
