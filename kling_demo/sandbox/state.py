"""One sandbox's state: its tasks, uploads, renders, dice, connections and counters (nothing global)."""

from __future__ import annotations

import hmac
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
from kling_demo.sandbox.billing import BillingQuery
from kling_demo.sandbox.config import SandboxConfig
from kling_demo.sandbox.faults import Connections, Faults
from kling_demo.sandbox.limits import RateLimit, Slots
from kling_demo.sandbox.listing import ListingQuery
from kling_demo.sandbox.protocol import ApiError
from kling_demo.sandbox.render import RenderedVideo
from kling_demo.sandbox.tasks import FINAL_STATUSES, STATUSES, RenderCache, Task
from kling_demo.sandbox.uploads import UploadStore
from kling_demo.sandbox.validation import Submission
from kling_demo.sandbox.webhooks import Delivery, WebhookSender

log = logging.getLogger(__name__)


class SandboxState:
    """Everything the routes of one sandbox share."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._owns_data_dir = config.data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="kling-sandbox-")) if config.data_dir is None else Path(config.data_dir)
        self.uploads = UploadStore(self.data_dir / "uploads")
        self.renders = RenderCache(self.data_dir / "outputs", config.render_store)
        self.faults = Faults(
            config.fault_rate, config.lost_answer_rate, config.task_failure_rate, config.seed, config.status_fault_rate,
            config.failure_message,
        )
        self.connections = Connections()
        self.accounts = Accounts(config.price_per_second, config.balance)
        self.slots = Slots(config.max_concurrent_tasks)
        self.rate = RateLimit(config.videos_per_minute, config.rate_window_seconds)
        self.webhooks = WebhookSender(config.webhook_secret, config.webhook_retry_delays, config.webhook_timeout_seconds)
        self._outbox: list[Delivery] = []
        self.lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        self._open: list[Task] = []  # not yet settled, oldest first
        self.submissions = 0
        self.result_polls = 0
        self.rate_limited = 0
        self.insufficient_balance = 0
        self.billing_searches = 0
        self.price_quotes = 0
        self.closed = False
        self.holding = config.hold_renders
        self.holding_submissions = config.hold_submissions
        self.submissions_held = 0  # submit requests waiting for POST /sandbox/release-submissions

    def create_task(
        self, owner: str, spec: ModelSpec, submission: Submission, webhook: str | None = None, origin: str = ""
    ) -> Task:
        """A new task for a validated submission, billed its price: past `owner`'s rate (429) and balance (402),
        or nothing."""
        price = self.accounts.quote(spec, submission.duration).discounted_price
        task_id = uuid.uuid4().hex
        with self.lock:
            now = time.time()
            self._advance(now)
            self._admit(owner, task_id, spec.model_id, price, now)
            ending = self.faults.task_ending(owner)
            render = None if ending else self.renders.render_for(submission.first_frame, submission.end_frame, submission.duration)
            task = Task(
                task_id=task_id,
                model_id=spec.model_id,
                duration=submission.duration,
                created_epoch=now,
                inference_seconds=self.config.inference_seconds,
                render=render,
                ending=ending,
                owner=owner,
                inputs=submission.inputs,
                price=price,
                webhook=webhook,
                origin=origin,
                held=self.holding,
            )
            self.tasks[task.task_id] = task
            self._open.append(task)
            self.slots.add(task)
            self.submissions += 1
            self._advance(now)
        log.info("sandbox: task %s created (%d s video)", task.task_id, task.duration)
        return task

    def _admit(self, owner: str, task_id: str, model_id: str, price: float, now: float) -> None:
        """The gateway's checks, rate first, then money (the price is deducted at once, as WaveSpeed does);
        a refusal is counted and creates nothing."""
        try:
            self.rate.check(owner, now)
        except ApiError:
            self.rate_limited += 1
            raise
        try:
            self.accounts.deduct(owner, task_id, model_id, price, now)
        except ApiError:
            self.insufficient_balance += 1
            raise
        self.rate.record(owner, now)

    def poll(self, task_id: str, owner: str) -> Task | None:
        """Count one result poll (of any id) and return the task, if it exists and `owner` submitted it.

        Assumption: the real API answers another account's task id as it answers an unknown one (404)."""
        with self.lock:
            self.result_polls += 1
            task = self.tasks.get(task_id)
            if task is None or not hmac.compare_digest(task.owner.encode(), owner.encode()):
                return None
            task.result_polls += 1
        return task

    def release(self) -> int:
        """End the hold: held tasks end now (or when their own time is up), later ones are not held.
        Returns how many tasks were held."""
        with self.lock:
            now = time.time()
            self.holding = False
            held = [task for task in self.tasks.values() if task.held]
            for task in held:
                task.held = False
                if task.started_epoch is not None:
                    task.inference_seconds = max(task.inference_seconds, now - task.started_epoch)
            self._advance(now)
        return len(held)

    def release_submissions(self) -> int:
        """Let held submit requests (and every later one) through; returns how many were waiting."""
        with self.lock:
            self.holding_submissions = False
            return self.submissions_held

    def advance(self) -> None:
        """Bring every task up to now: settle those that ended, give their slots to waiting ones."""
        with self.lock:
            self._advance(time.time())

    def _advance(self, now: float) -> None:
        while True:
            self._settle_ended(now)
            if not self.slots.start_waiting():  # a task started in the past may have ended already
                return

    def _settle_ended(self, now: float) -> None:
        still_open = []
        for task in self._open:
            status, ended, _ = task.state(now)
            if status in FINAL_STATUSES and ended is not None:
                self._settle(task, status, ended, now)
            else:
                still_open.append(task)
        self._open = still_open

    def _settle(self, task: Task, status: str, ended: float, now: float) -> None:
        task.settled = True
        self.slots.release(task, ended)
        # (?) Whether WaveSpeed refunds a task that ended without a video is not documented: assumed it does.
        refund = status != "completed" and not self.config.charge_failed_tasks
        self.accounts.settle(task.task_id, refund, now)
        if task.webhook is not None:
            self._outbox.append(Delivery(task.webhook, task.to_data(task.origin, now)))

    def take_deliveries(self) -> list[Delivery]:
        """Webhook messages of tasks that ended since the last call."""
        with self.lock:
            self._advance(time.time())
            deliveries, self._outbox = self._outbox, []
        return deliveries

    def data(self, task: Task, base_url: str) -> dict[str, Any]:
        """The task as the API shows it now."""
        with self.lock:
            now = time.time()
            self._advance(now)
            return task.to_data(base_url, now)

    def output(self, task_id: str, output_token: str) -> RenderedVideo | None:
        """The video of a completed task whose output URL carries `output_token`, else None."""
        with self.lock:
            now = time.time()
            self._advance(now)
            task = self.tasks.get(task_id)
            if task is None or not hmac.compare_digest(task.output_token.encode(), output_token.encode()):
                return None
            return task.output(now)

    def balance(self, owner: str) -> float:
        """`owner`'s balance: less every task's price from its creation, plus the refunds of tasks that ended
        without a video."""
        self.advance()
        return self.accounts.balance(owner)

    def listing(self, owner: str, query: ListingQuery, base_url: str) -> dict[str, Any]:
        """One page of `owner`'s tasks matching `query`, newest first."""
        now = time.time()
        with self.lock:
            self._advance(now)
            listed_before = now - self.config.listing_lag_seconds  # the listing may lag a new task
            mine = [task for task in self.tasks.values() if task.owner == owner and task.created_epoch <= listed_before]
            matching = [task for task in mine if query.matches(task, task.state(now)[0])]
            matching.sort(key=lambda task: task.created_epoch, reverse=True)
            start = (query.page - 1) * query.page_size
            items = [task.listing_item(base_url, now) for task in matching[start : start + query.page_size]]
        return {"page": query.page, "page_size": query.page_size, "total": len(matching), "items": items}

    def count_billing_search(self) -> None:
        with self.lock:
            self.billing_searches += 1

    def count_price_quote(self) -> None:
        with self.lock:
            self.price_quotes += 1

    def billing(self, owner: str, query: BillingQuery) -> dict[str, Any]:
        """One page of `owner`'s billing records matching `query`, each with its task's current status."""
        now = time.time()
        with self.lock:
            self._advance(now)
            total, records = self.accounts.search(owner, query)
            items = [record.to_item(self.tasks[record.task_id].state(now)[0]) for record in records]
        return {"page": query.page, "total": total, "items": items}

    def stats(self) -> dict[str, Any]:
        """Counters and tasks per status, as served at GET /sandbox/stats."""
        now = time.time()
        with self.lock:
            self._advance(now)
            per_status = dict.fromkeys(STATUSES, 0)
            for task in self.tasks.values():
                per_status[task.state(now)[0]] += 1
            counters = {
                "submissions": self.submissions,
                "result_polls": self.result_polls,
                "rate_limited": self.rate_limited,
                "insufficient_balance": self.insufficient_balance,
                "billing_searches": self.billing_searches,
                "price_quotes": self.price_quotes,
                "submissions_held": self.submissions_held,
                "max_running": self._max_running(now),
                "webhooks_delivered": self.webhooks.delivered,
                "webhooks_failed": self.webhooks.failed,
                "webhook_attempts": self.webhooks.attempts,
            }
        counters.update(
            uploads=self.uploads.uploads,
            upload_tickets=self.uploads.upload_tickets,
            renders=self.renders.renders,
            render_cache_hits=self.renders.render_cache_hits,
            render_store_hits=self.renders.render_store_hits,
            **self.faults.snapshot(),
        )
        private = ("api_key", "data_dir", "webhook_secret", "render_store")
        config = {key: list(value) if isinstance(value, tuple) else value  # as JSON shows it
                  for key, value in asdict(self.config).items() if key not in private}
        return {**counters, "tasks": per_status, "config": config}

    def _max_running(self, now: float) -> int:
        """The most tasks that held a slot at the same moment, over the sandbox's life (all keys)."""
        events = []
        for task in self.tasks.values():
            if task.started_epoch is not None:
                ended = task.state(now)[1]
                events.append((task.started_epoch, 1))
                if ended is not None:
                    events.append((ended, -1))
        running = most = 0
        for _, change in sorted(events):  # at a tie an end (-1) sorts before a start: the slot is handed over
            running += change
            most = max(most, running)
        return most

    def task_rows(self) -> list[dict[str, Any]]:
        """One row per task for benchmarks, oldest first."""
        now = time.time()
        with self.lock:
            self._advance(now)
            tasks = sorted(self.tasks.values(), key=lambda task: task.created_epoch)
            rows = []
            for task in tasks:
                status, completed_at, _ = task.state(now)
                rows.append(
                    {
                        "id": task.task_id,
                        "status": status,
                        "created_at_epoch": task.created_epoch,
                        "started_at_epoch": task.started_epoch,
                        "completed_at_epoch": completed_at,
                        "duration": task.duration,
                        "price": task.price,
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
