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
    task_failure_rate: float = 0.0
    api_key: str | None = None  # None: any non-empty bearer token passes; set: only this one
    seed: int | None = None
    data_dir: Path | None = None  # where uploads/outputs live; None → a temp dir removed on stop
    sync_wait_seconds: float = 30.0  # enable_sync_mode holds the POST at most this long
