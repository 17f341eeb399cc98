"""Settings read once from the environment and an optional `.env` file."""

from __future__ import annotations

import contextlib
import errno
import logging
import ipaddress
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from dotenv import dotenv_values


log = logging.getLogger(__name__)

DEFAULT_MIN_FREE_MB = 200  # below this free space in the data dir, new jobs are refused
DEFAULT_BASE_URL = "https://api.wavespeed.ai"
WEBHOOK_PATH = "/webhooks/wavespeed"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name].strip()).expanduser() if env.get(name, "").strip() else None


def public_url(env: Mapping[str, str]) -> str | None:
    """Where the world reaches this app: KLING_DEMO_PUBLIC_URL, else `https://<SPACE_HOST>` on a Space.

    Plain http is allowed only on loopback (tests, a local sandbox): WaveSpeed delivers to public https."""
    raw = env.get("KLING_DEMO_PUBLIC_URL", "").strip() or (
        f"https://{env['SPACE_HOST'].strip()}" if env.get("SPACE_HOST", "").strip() else "")
    if not raw:
        return None
    parts = urlsplit(raw)
    loopback_http = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    if not parts.hostname or not (parts.scheme == "https" or loopback_http) or parts.query or parts.fragment:
        raise ValueError(f"KLING_DEMO_PUBLIC_URL must be the app's public https:// address, such as "
                         f"https://you-kling.hf.space (http:// only on 127.0.0.1 or localhost); got {raw!r}")
    return raw.rstrip("/")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_float(env, name, default))


NO_LIMIT_WORDS = ("off", "none", "unlimited", "no")
# Spending limits on a server key that is not the sandbox, when the owner sets none (see the README).
DEFAULT_VISITOR_BUDGET_USD = 5.00
DEFAULT_DAILY_BUDGET_USD = 50.00
DEFAULT_SUBMITS_PER_MINUTE = 3


def _limit(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A spending limit: unset → `default`; "off" → no limit (None); a number ≥ 0 is the limit (0: nothing)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in NO_LIMIT_WORDS:
        return None
    value = _float(env, name, 0.0)
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, or 'off', got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


# Where a Spaces proxy reaches the app from: the private ranges (RFC 1918), loopback, IPv6 unique-local and loopback.
SPACE_PROXIES = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8,::1,fc00::/7"


def trusted_proxies(env: Mapping[str, str]) -> str:
    """The proxies whose X-Forwarded-For names the visitor, in uvicorn's `FORWARDED_ALLOW_IPS` form.

    `FORWARDED_ALLOW_IPS` when set (even empty). Otherwise the private ranges on a Space (`SPACE_ID`), or
    wherever `KLING_DEMO_TRUSTED_PROXY=true` (its older spelling); else nothing: the socket peer is the
    visitor and forwarded headers are ignored, whatever uvicorn would trust by default."""
    if "FORWARDED_ALLOW_IPS" in env:
        return TrustedProxies(env["FORWARDED_ALLOW_IPS"]).spec
    on_a_space = bool(env.get("SPACE_ID", "").strip())
    return SPACE_PROXIES if _bool(env, "KLING_DEMO_TRUSTED_PROXY", default=on_a_space) else ""


def _budgets(env: Mapping[str, str], *, server_key: bool) -> dict[str, float | int | None]:
    """The three spending limits; their defaults apply only when a real key pays (not the sandbox)."""
    per_minute = _limit(env, "KLING_DEMO_SUBMITS_PER_MINUTE", DEFAULT_SUBMITS_PER_MINUTE if server_key else None)
    return {
        "visitor_budget_usd": _limit(env, "KLING_DEMO_VISITOR_BUDGET_USD",
                                     DEFAULT_VISITOR_BUDGET_USD if server_key else None),
        "daily_budget_usd": _limit(env, "KLING_DEMO_DAILY_BUDGET_USD", DEFAULT_DAILY_BUDGET_USD if server_key else None),
        "submits_per_minute": None if per_minute is None else int(per_minute),
    }


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment. The key is never printed (repr hides it)."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    deadline_seconds: float = 30 * 60.0
    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    max_download_bytes: int = 500 * 1024 * 1024
    min_free_mb: float = float(DEFAULT_MIN_FREE_MB)  # below this free space in the data dir, new jobs are refused
    concurrency: int = 1024  # a waiting job is a coroutine and a poll schedule entry, not a thread
    api_concurrency: int = 2  # tasks one WaveSpeed key runs at once, at most (its account level; Bronze is 2)
    max_queue: int = 1024
    sandbox_inference_seconds: float = 6.0
    sandbox_render_store: Path | None = None  # finished sandbox renders kept and reused across restarts
    secret: str | None = field(default=None, repr=False)  # signs each browser's owner id
    retention_days: float | None = None
    retention_gb: float | None = None
    require_user_key: bool = False
    max_jobs_per_visitor: int = 2  # while the server's key pays
    mcp_server: bool = False
    # Limits on what the server's key spends (None: no limit). Set from the environment, these default to
    # DEFAULT_* when a WAVESPEED_API_KEY is set and to no limit in sandbox mode (nothing is billed there).
    visitor_budget_usd: float | None = None  # per visitor per rolling 24 h
    daily_budget_usd: float | None = None  # the whole app per rolling 24 h
    submits_per_minute: int | None = None  # per visitor
    # FORWARDED_ALLOW_IPS for uvicorn: the visitor is the rightmost X-Forwarded-For hop not in it ("": the peer)
    trusted_proxies: str = ""
    upload_mb_per_hour: float = 1000.0  # what one address may upload into Gradio's cache per rolling hour
    upload_cache_gb: float = 10.0  # the most Gradio's upload cache may hold; then uploads are refused
    public_url: str | None = None  # where WaveSpeed can reach this app (webhooks); None: polling only
    webhook_secret: str | None = field(default=None, repr=False)  # WaveSpeed's `whsec_…`, verifies webhooks
    show_balance: bool = False  # visitors see the server key's WaveSpeed balance (a visitor's own key: always)
    on_space: bool = False  # runs as a Hugging Face Space (`SPACE_ID` set): its key is "this Space's key"

    @property
    def webhook_url(self) -> str | None:
        """The `?webhook=` address for submissions, when both the public URL and the secret are known."""
        if self.public_url and self.webhook_secret:
            return self.public_url + WEBHOOK_PATH
        return None

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
            deadline_seconds=_float(merged, "KLING_DEMO_DEADLINE_SECONDS", cls.deadline_seconds),
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(merged),
            max_download_bytes=_int(merged, "KLING_DEMO_MAX_DOWNLOAD_MB", 500) * 1024 * 1024,
            min_free_mb=max(0.0, _float(merged, "KLING_DEMO_MIN_FREE_MB", cls.min_free_mb)),
            concurrency=max(1, _int(merged, "KLING_DEMO_CONCURRENCY", cls.concurrency)),
            max_queue=max(1, _int(merged, "KLING_DEMO_MAX_QUEUE", cls.max_queue)),
            api_concurrency=max(1, _int(merged, "KLING_DEMO_API_CONCURRENCY", cls.api_concurrency)),
            sandbox_inference_seconds=_float(merged, "KLING_DEMO_SANDBOX_SECONDS", cls.sandbox_inference_seconds),
            sandbox_render_store=_optional_path(merged, "KLING_DEMO_SANDBOX_RENDERS"),
            secret=merged.get("KLING_DEMO_SECRET", "").strip() or None,
            retention_days=_optional_float(merged, "KLING_DEMO_RETENTION_DAYS"),
            retention_gb=_optional_float(merged, "KLING_DEMO_RETENTION_GB"),
            require_user_key=_bool(merged, "KLING_DEMO_REQUIRE_USER_KEY"),
            max_jobs_per_visitor=max(1, _int(merged, "KLING_DEMO_MAX_JOBS_PER_VISITOR", cls.max_jobs_per_visitor)),
            mcp_server=_bool(merged, "KLING_DEMO_MCP"),
            show_balance=_bool(merged, "KLING_DEMO_SHOW_BALANCE"),
            on_space=bool(merged.get("SPACE_ID", "").strip()),
            public_url=public_url(merged),
            webhook_secret=merged.get("WAVESPEED_WEBHOOK_SECRET", "").strip() or None,
            trusted_proxies=trusted_proxies(merged),
            upload_mb_per_hour=max(0.0, _float(merged, "KLING_DEMO_UPLOAD_MB_PER_HOUR", cls.upload_mb_per_hour)),
            upload_cache_gb=max(0.0, _float(merged, "KLING_DEMO_UPLOAD_CACHE_GB", cls.upload_cache_gb)),
            **_budgets(merged, server_key=bool(merged.get("WAVESPEED_API_KEY", "").strip())),
        )

    def owner_secret(self) -> str:
        """KLING_DEMO_SECRET, else a secret generated once into the data dir, so owner ids survive restarts.

        When none can be stored there (a full or read-only disk) the run signs with a secret of its own, and the log
        says so: the app starts, but owner ids do not outlive the run. An empty or short secret is refused."""
        if self.secret is not None:
            if len(self.secret) < MIN_SECRET_CHARS:
                raise ValueError(f"KLING_DEMO_SECRET has {len(self.secret)} characters; it must have at least "
                                 f"{MIN_SECRET_CHARS} (a long random string, e.g. from `openssl rand -hex 32`).")
            return self.secret
        path = self.data_dir / OWNER_SECRET_FILE
        with _run_secrets_lock:
            if path in _run_secrets:  # this run signs with its own already: tokens it gave out stay valid
                return _run_secrets[path]
        stored = _read_secret(path)
        if stored is None:
            stored = _store_secret(path)
        if stored is None:
            return _run_secret(path)
        if len(stored) < MIN_SECRET_CHARS:
            raise ValueError(
                f"{OWNER_SECRET_FILE} in the data dir (KLING_DEMO_DATA_DIR) holds {len(stored)} characters, fewer "
                f"than the {MIN_SECRET_CHARS} a signing secret needs (an earlier start may have been cut short by a "
                f"full disk): delete it so that a new one is made (every browser then starts with a new, empty "
                f"history), or set KLING_DEMO_SECRET to a random string of {MIN_SECRET_CHARS} or more characters.")
        return stored


OWNER_SECRET_FILE = "owner-secret"
MIN_SECRET_CHARS = 32  # a generated secret has 43; anything shorter is a typo, a cut-off write or guessable
_run_secrets: dict[Path, str] = {}  # per data dir whose secret could not be stored: this process's own
_run_secrets_lock = threading.Lock()


def _read_secret(path: Path) -> str | None:
    """The stored secret, stripped; None when there is none. A file that cannot be read is refused plainly."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as error:
        why = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else "not text"
        raise ValueError(f"{OWNER_SECRET_FILE} in the data dir (KLING_DEMO_DATA_DIR) cannot be read ({why}): make "
                         f"it a readable file, delete it so that a new one is made (every browser then starts with a "
                         f"new, empty history), or set KLING_DEMO_SECRET.") from None


def _store_secret(path: Path) -> str | None:
    """Store a new secret whole (a temporary file, synced, then linked into place: the first writer wins and no
    reader ever sees part of one); returns the stored secret, or None when the data dir cannot keep one."""
    fresh = secrets.token_urlsafe(32)
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{OWNER_SECRET_FILE}-")  # mode 0600
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(fresh)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process stored one first: that one is read below
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            _store_without_links(path, fresh)  # a file system without hard links
        _sync_folder(path.parent)
    except OSError as error:
        _cannot_store(error)
        return None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    return _read_secret(path)


def _store_without_links(path: Path, fresh: str) -> None:
    """The secret written in place, created exclusively; a write that fails removes the file it began."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(fresh)
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """Make the new name survive a power cut (where the platform can sync a folder)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _cannot_store(error: OSError) -> None:
    reason = os.strerror(error.errno) if error.errno else type(error).__name__
    log.warning("owner ids: the data dir cannot keep a signing secret (%s), so this run signs with a secret for this "
                "run only: browsers get a new, empty history after a restart. Free room in the data dir or make it "
                "writable, or set KLING_DEMO_SECRET.", reason)


def _run_secret(path: Path) -> str:
    """This process's secret for a data dir that cannot keep one: the same for every call of the run."""
    with _run_secrets_lock:
        return _run_secrets.setdefault(path, secrets.token_urlsafe(32))


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` counts: addresses and networks, comma separated, as uvicorn's
    `FORWARDED_ALLOW_IPS` names them. Empty trusts nothing. `*` is refused: it lets every client pick its
    address (uvicorn then takes the first hop)."""

    def __init__(self, spec: str) -> None:
        self.spec = ",".join(part.strip() for part in spec.split(",") if part.strip())
        self._networks = []
        for part in filter(None, self.spec.split(",")):
            if part == "*":
                raise ValueError("FORWARDED_ALLOW_IPS=* would let every client choose its own address (and budget); "
                                 "name your proxies' addresses or networks instead")
            try:  # strict, as uvicorn parses it: "10.0.0.1/8" would match nothing there
                self._networks.append(ipaddress.ip_network(part))
            except ValueError:
                raise ValueError(f"FORWARDED_ALLOW_IPS must be IP addresses or networks separated by commas, "
                                 f"got {part!r}") from None

    def __contains__(self, host: object) -> bool:
        """Whether uvicorn trusts `host` (its own test: the address as written, an IPv4-mapped one unmapped not)."""
        address = parse_address(str(host or ""), unmap=False)
        return address is not None and any(address in network for network in self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)


def host_of(hop: str) -> str:
    """The host part of one hop as uvicorn parses it ("[v6]:port", "v4:port" or a bare address)."""
    text = hop.strip()
    if text.startswith("[") and "]" in text:
        return text[1:text.index("]")]
    if text.count(":") == 1:
        return text.split(":")[0]
    return text


def parse_address(raw: str, *, unmap: bool = True) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host_of(raw))
    except ValueError:
        return None
    if unmap and isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address
