"""One sandbox's state: its tasks, uploads, renders, dice, connections and counters (nothing global)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kling_demo.models import ModelSpec
from kling_demo.sandbox.account import Accounts
from kling_demo.sandbox.config import SandboxConfig
from kling_demo.sandbox.faults import Connections, Faults
from kling_demo.sandbox.listing import ListingQuery
from kling_demo.sandbox.tasks import FINAL_STATUSES, RenderCache, Task
from kling_demo.sandbox.uploads import UploadStore
from kling_demo.sandbox.validation import Submission

log = logging.getLogger(__name__)


class SandboxState:
    """Everything the routes of one sandbox share."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._owns_data_dir = config.data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="kling-sandbox-")) if config.data_dir is None else Path(config.data_dir)
        self.uploads = UploadStore(self.data_dir / "uploads")
        self.renders = RenderCache(self.data_dir / "outputs")
        self.faults = Faults(config.fault_rate, config.lost_answer_rate, config.task_failure_rate, config.seed)
        self.connections = Connections()
        self.accounts = Accounts(config.price_per_second, config.balance)
        self.lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        self._open: list[Task] = []  # not yet settled, oldest first
        self.submissions = 0
        self.result_polls = 0
        self.closed = False

    def create_task(self, owner: str, spec: ModelSpec, submission: Submission) -> Task:
        """A new task for a validated submission, its price held on `owner`'s balance (402 creates nothing)."""
        price = self.accounts.quote(spec, submission.duration).discounted_price
        with self.lock:
            self._advance(time.time())
            self.accounts.reserve(owner, price)
            failing = self.faults.fail_task()
            render = None if failing else self.renders.render_for(submission.first_frame, submission.end_frame, submission.duration)
            task = Task(
                task_id=uuid.uuid4().hex,
                model_id=spec.model_id,
                duration=submission.duration,
                created_epoch=time.time(),
                inference_seconds=self.config.inference_seconds,
                simulated_failure=failing,
                render=render,
                owner=owner,
                inputs=submission.inputs,
                price=price,
            )
            self.tasks[task.task_id] = task
            self._open.append(task)
            self.submissions += 1
        log.info("sandbox: task %s created (%d s video)", task.task_id, task.duration)
        return task

    def poll(self, task_id: str) -> Task | None:
        """Count one result poll (of any id) and return the task, if it exists."""
        with self.lock:
            self.result_polls += 1
            task = self.tasks.get(task_id)
            if task is not None:
                task.result_polls += 1
        return task

    def advance(self) -> None:
        """Bring every task up to now: settle those that ended."""
        with self.lock:
            self._advance(time.time())

    def _advance(self, now: float) -> None:
        still_open = []
        for task in self._open:
            status = task.state(now)[0]
            if status in FINAL_STATUSES:
                self._settle(task, status)
            else:
                still_open.append(task)
        self._open = still_open

    def _settle(self, task: Task, status: str) -> None:
        task.settled = True
        self.accounts.settle(task.owner, task.price, charge=status == "completed")

    def balance(self, owner: str) -> float:
        """`owner`'s balance after every task that has ended so far."""
        self.advance()
        return self.accounts.balance(owner)

    def listing(self, owner: str, query: ListingQuery, base_url: str) -> dict[str, Any]:
        """One page of `owner`'s tasks matching `query`, newest first."""
        now = time.time()
        with self.lock:
            self._advance(now)
            mine = [task for task in self.tasks.values() if task.owner == owner]
            matching = [task for task in mine if query.matches(task, task.state(now)[0])]
        matching.sort(key=lambda task: task.created_epoch, reverse=True)
        start = (query.page - 1) * query.page_size
        items = [task.listing_item(base_url, now) for task in matching[start : start + query.page_size]]
        return {"page": query.page, "page_size": query.page_size, "total": len(matching), "items": items}

    def stats(self) -> dict[str, Any]:
        """Counters and tasks per status, as served at GET /sandbox/stats."""
        now = time.time()
        with self.lock:
            per_status = {"created": 0, "processing": 0, "completed": 0, "failed": 0}
            for task in self.tasks.values():
                status = task.state(now)[0]
                per_status[status] = per_status.get(status, 0) + 1
            counters = {"submissions": self.submissions, "result_polls": self.result_polls}
        counters.update(
            uploads=self.uploads.uploads,
            upload_tickets=self.uploads.upload_tickets,
            renders=self.renders.renders,
            render_cache_hits=self.renders.render_cache_hits,
            **self.faults.snapshot(),
        )
        config = {key: value for key, value in asdict(self.config).items() if key not in ("api_key", "data_dir")}
        return {**counters, "tasks": per_status, "config": config}

    def task_rows(self) -> list[dict[str, Any]]:
        """One row per task for benchmarks, oldest first."""
        now = time.time()
        with self.lock:
            tasks = sorted(self.tasks.values(), key=lambda task: task.created_epoch)
        rows = []
        for task in tasks:
            status, completed_at, _ = task.state(now)
            rows.append(
                {
                    "id": task.task_id,
                    "status": status,
                    "created_at_epoch": task.created_epoch,
                    "completed_at_epoch": completed_at,
                    "duration": task.duration,
                    "result_polls": task.result_polls,
                }
            )
        return rows

    def close(self) -> None:
        """Stop rendering and remove the temporary data directory; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.renders.close()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
