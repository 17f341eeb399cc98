"""The sandbox's knobs: how long tasks take, how often things fail, which key passes, where files live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves: task duration, seeded fault shares, the accepted key, storage."""

    inference_seconds: float = 6.0
    fault_rate: float = 0.0
    lost_answer_rate: float = 0.0
    listing_lag_seconds: float = 0.0  # a new task shows in POST /api/v3/predictions only after this long
    task_failure_rate: float = 0.0
    # The error text of a task failed by task_failure_rate; "{api_key}" in it becomes the submitting key, as an API
    # that echoes credentials would say it (tests of masking and of text shown as text). "": the usual sentence.
    failure_message: str = ""
    api_key: str | None = None  # None: any non-empty bearer token passes; set: only this one
    seed: int | None = None
    data_dir: Path | None = None  # where uploads/outputs live; None → a temp dir removed on stop
    # Finished renders kept by content and reused by every sandbox sharing the folder (restarts, tests).
    render_store: Path | None = None
    sync_wait_seconds: float = 30.0  # enable_sync_mode holds the POST at most this long
    # A stand-in price (the real Kling 2.0 Master price is not published): 5 s = $1.40, 10 s = $2.80.
    price_per_second: float = 0.28
    balance: float = 1000.0  # USD each API key starts with; each task's price is deducted when it is created
    # (?) Undocumented: by default a task that ends without a video (failed, cancelled, timeout) is refunded
    # (a "refund" billing record, net charge 0); True keeps it charged.
    charge_failed_tasks: bool = False
    # Account level (per key; 0 = unlimited). WaveSpeed's Bronze level is 2 at once and 2 videos a minute.
    max_concurrent_tasks: int = 0  # tasks beyond this wait in "created" until a slot frees
    videos_per_minute: int = 0  # submissions beyond this rate get 429 with Retry-After, creating nothing
    rate_window_seconds: float = 60.0  # the rate's window: WaveSpeed's minute, shorter for quick tests
    # Tests: every task stays "processing" (its render done or not) until POST /sandbox/release, so a test
    # can look at many tasks waiting together however slowly the machine submitted them.
    hold_renders: bool = False
    # Tests: every submit request is held, its task not yet created, until POST /sandbox/release-submissions, so a
    # test can act while a submission is on its way (a Stop between the request and its answer).
    hold_submissions: bool = False
    status_fault_rate: float = 0.0  # share of tasks that end "cancelled" or "timeout" (about half each)
    # Signs `?webhook=` deliveries (a fixed default, so webhooks work out of the box); served at
    # GET /api/v3/webhook/secret. A failed delivery is retried after each of these delays.
    webhook_secret: str = "whsec_sandbox"
    webhook_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    webhook_timeout_seconds: float = 5.0
