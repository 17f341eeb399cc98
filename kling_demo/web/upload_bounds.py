"""How much one address may upload into Gradio's file cache in an hour, and how big the cache may grow.

Gradio caps each file (`max_file_size`), not their number: without these bounds one client filled 3.9 GB in
15 s. An upload is admitted by its declared length before a byte is read, so a burst of parallel uploads
cannot slip past a check they all passed at once.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WINDOW_SECONDS = 3600.0
MB = 1024 * 1024
GB = 1024 * MB
_SWEEP_AT = 1000  # addresses remembered before the ones with nothing in the window are forgotten


@dataclass(frozen=True)
class Refusal:
    """Why an upload is refused, as an HTTP answer: status, one plain sentence and, if known, when to retry."""

    status: int
    message: str
    retry_after: int | None = None


class UploadBounds:
    """Bytes each address sent in the last hour, bytes on their way in, and the cache's size on disk."""

    def __init__(self, folder: Path | str, *, per_address_bytes: int, total_bytes: int,
                 window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = Path(folder)
        self.per_address_bytes = per_address_bytes
        self.total_bytes = total_bytes
        self.window = window
        self._clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = {}
        self._arriving = 0  # admitted, not yet finished (partly or not yet on disk)
        self._lock = threading.Lock()

    def admit(self, address: str | None, size: int) -> Refusal | None:
        """Count `size` bytes for `address` (None: a trusted proxy's own request, bounded in total only), or
        say why not. Blocking: it measures the cache on disk."""
        on_disk = cache_bytes(self.folder)
        with self._lock:
            now = self._clock()
            if on_disk + self._arriving + size > self.total_bytes:
                return Refusal(503, f"This app's upload space is full ({self.total_bytes / GB:,.1f} GB); old "
                                    "uploads are deleted every 30 minutes. Try again later.", 1800)
            if address is not None:
                sent = self._recent(address, now)
                used = sum(size for _, size in sent)
                if used + size > self.per_address_bytes:
                    wait = math.ceil(sent[0][0] + self.window - now) if sent else math.ceil(self.window)
                    return Refusal(429, f"Too much uploaded from your address: {used / MB:,.0f} MB in the last "
                                        f"hour, and this app takes at most {self.per_address_bytes / MB:,.0f} MB an "
                                        f"hour from one address. Try again in {max(1, math.ceil(wait / 60))} min.", wait)
                sent.append((now, size))
            self._arriving += size
        return None

    def finished(self, size: int) -> None:
        """An admitted upload ended (its bytes are on disk now, or it failed)."""
        with self._lock:
            self._arriving = max(0, self._arriving - size)

    def _recent(self, address: str, now: float) -> deque[tuple[float, int]]:
        if len(self._sent) > _SWEEP_AT:
            for name in [name for name, sent in self._sent.items() if not sent or sent[-1][0] <= now - self.window]:
                del self._sent[name]
        sent = self._sent.setdefault(address, deque())
        while sent and sent[0][0] <= now - self.window:
            sent.popleft()
        return sent


def cache_bytes(folder: Path) -> int:
    """The size of every file under `folder` (0 if it does not exist yet)."""
    total = 0
    pending = [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total
