"""Settings read once from the environment and an optional `.env` file."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from dotenv import dotenv_values

from .storage import DEFAULT_MIN_FREE_MB

DEFAULT_BASE_URL = "https://api.wavespeed.ai"


def default_data_dir(env: Mapping[str, str]) -> Path:
    """`/data` on a Space with persistent storage, else the per-user data dir."""
    if env.get("SPACE_ID") and os.path.isdir("/data") and os.access("/data", os.W_OK):
        return Path("/data/kling_demo")
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "kling_demo"


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _optional_float(env: Mapping[str, str], name: str) -> float | None:
    return _float(env, name, 0.0) if env.get(name, "").strip() else None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_float(env, name, default))


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment. The key is never printed (repr hides it)."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    poll_interval: float = 1.0
    deadline_seconds: float = 30 * 60.0
    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    max_download_bytes: int = 500 * 1024 * 1024
    min_free_mb: float = float(DEFAULT_MIN_FREE_MB)  # below this free space in the data dir, new jobs are refused
    concurrency: int = 32
    api_concurrency: int = 3  # tasks one WaveSpeed key runs at once (its account level; Bronze is 3)
    max_queue: int = 64
    sandbox_inference_seconds: float = 6.0
    secret: str | None = field(default=None, repr=False)  # signs each browser's owner id
    retention_days: float | None = None
    retention_gb: float | None = None
    require_user_key: bool = False
    max_jobs_per_visitor: int = 2  # while the server's key pays
    mcp_server: bool = False

    @property
    def videos_dir(self) -> Path:
        """Finished videos and history previews; the page serves this folder in place."""
        return self.data_dir / "videos"

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, dotenv_path: str | os.PathLike | None = ".env") -> "Settings":
        """Read settings from `env` (default: the process environment) over an optional `.env` file."""
        merged: dict[str, str] = {}
        if dotenv_path and Path(dotenv_path).is_file():
            merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        merged.update(os.environ if env is None else env)
        data_dir = merged.get("KLING_DEMO_DATA_DIR", "").strip()
        return cls(
            api_key=merged.get("WAVESPEED_API_KEY", "").strip() or None,
            base_url=(merged.get("WAVESPEED_BASE_URL", "").strip() or DEFAULT_BASE_URL).rstrip("/"),
            connect_timeout=_float(merged, "KLING_DEMO_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=_float(merged, "KLING_DEMO_READ_TIMEOUT", cls.read_timeout),
            poll_interval=max(1.0, _float(merged, "KLING_DEMO_POLL_INTERVAL", cls.poll_interval)),
            deadline_seconds=_float(merged, "KLING_DEMO_DEADLINE_SECONDS", cls.deadline_seconds),
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(merged),
            max_download_bytes=_int(merged, "KLING_DEMO_MAX_DOWNLOAD_MB", 500) * 1024 * 1024,
            min_free_mb=max(0.0, _float(merged, "KLING_DEMO_MIN_FREE_MB", cls.min_free_mb)),
            concurrency=max(1, _int(merged, "KLING_DEMO_CONCURRENCY", cls.concurrency)),
            max_queue=max(1, _int(merged, "KLING_DEMO_MAX_QUEUE", cls.max_queue)),
            api_concurrency=max(1, _int(merged, "KLING_DEMO_API_CONCURRENCY", cls.api_concurrency)),
            sandbox_inference_seconds=_float(merged, "KLING_DEMO_SANDBOX_SECONDS", cls.sandbox_inference_seconds),
            secret=merged.get("KLING_DEMO_SECRET", "").strip() or None,
            retention_days=_optional_float(merged, "KLING_DEMO_RETENTION_DAYS"),
            retention_gb=_optional_float(merged, "KLING_DEMO_RETENTION_GB"),
            require_user_key=_bool(merged, "KLING_DEMO_REQUIRE_USER_KEY"),
            max_jobs_per_visitor=max(1, _int(merged, "KLING_DEMO_MAX_JOBS_PER_VISITOR", cls.max_jobs_per_visitor)),
            mcp_server=_bool(merged, "KLING_DEMO_MCP"),
        )

    def owner_secret(self) -> str:
        """KLING_DEMO_SECRET, else a secret generated once into the data dir, so owner ids survive restarts."""
        if self.secret:
            return self.secret
        path = self.data_dir / "owner-secret"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fresh = secrets.token_urlsafe(32)
            try:
                with path.open("x") as out:  # first writer wins when several processes start at once
                    out.write(fresh)
                path.chmod(0o600)
            except FileExistsError:
                pass
            return path.read_text().strip()
