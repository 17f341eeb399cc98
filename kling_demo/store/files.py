"""The data dir's room: refuse a paid job the app could not record, and tidy half-written downloads.

Checked before anything is uploaded, so a full or read-only disk costs the visitor nothing.
Partial downloads hold an advisory lock while they are written; a `.part` file nobody holds
is an orphan of a killed process and is removed at start-up.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..config import DEFAULT_MIN_FREE_MB
from ..errors import StorageUnavailable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: orphans are recognised by age instead
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

NO_ROOM_MESSAGE = ("The app cannot save your video right now (its storage is full or read-only), so nothing was "
                   "submitted and nothing was billed. Try again later.")
DEFAULT_MIN_FREE_BYTES = DEFAULT_MIN_FREE_MB * 2**20
PART_SUFFIX = ".part"
ORPHAN_AGE_SECONDS = 15 * 60.0  # only where locks are unavailable: an older part is nobody's


def check_room(folder: Path, min_free_bytes: int) -> None:
    """Raise `StorageUnavailable` unless `folder` can be written and keeps `min_free_bytes` free."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < min_free_bytes:
            log.warning("storage: %.0f MB free in the data dir, below the %.0f MB floor (KLING_DEMO_MIN_FREE_MB); "
                        "refusing new jobs", free / 2**20, min_free_bytes / 2**20)
            raise StorageUnavailable(NO_ROOM_MESSAGE)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as error:
        log.warning("storage: the data dir cannot be written (%s); refusing new jobs",
                    errno.errorcode.get(error.errno or 0, type(error).__name__))
        raise StorageUnavailable(NO_ROOM_MESSAGE) from error


def make_folder(folder: Path) -> bool:
    """Create `folder` if needed; False (logged) when the disk is full or read-only: the app starts without it, and
    `check_room` refuses each job until it can be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.error("storage: the data dir cannot be created (%s); the app starts, with an empty history, and refuses "
                  "new jobs until it can be written", errno.errorcode.get(error.errno or 0, type(error).__name__))
        return False
    return True


@contextmanager
def partial_file(target: Path) -> Iterator[BinaryIO]:
    """Write to a hidden, locked `.part` beside `target`; rename it to `target` only when the block succeeds."""
    part = target.with_name(f".{target.name}{PART_SUFFIX}")
    try:
        with part.open("xb") as out:
            if fcntl is not None:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)
            yield out
            out.flush()
            os.fsync(out.fileno())  # the renamed file is whole even after a power cut
            os.replace(part, target)  # still locked: a cleanup never sees a finished part
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def remove_orphan_parts(folder: Path) -> int:
    """Delete `.part` files no live download holds (left by a killed process); returns how many."""
    removed = 0
    for part in [*folder.glob(f".*{PART_SUFFIX}"), *folder.glob(f"*/.*{PART_SUFFIX}")]:  # videos have folders
        try:
            removed += _remove_if_orphan(part)
        except OSError as error:
            log.debug("storage: could not remove %s: %s", part.name, error)
    if removed:
        log.info("storage: removed %d unfinished download(s) left by an earlier run", removed)
    return removed


def _remove_if_orphan(part: Path) -> bool:
    if fcntl is None:  # pragma: no cover
        if time.time() - part.stat().st_mtime <= ORPHAN_AGE_SECONDS:
            return False
        part.unlink()
        return True
    with part.open("rb") as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a download in progress, in this process or another
        part.unlink()  # while locked, so no writer can have taken it over
        return True


_OWN_FOLDER = re.compile(r"[0-9a-f]{32}")  # the folder `videos.label` makes for one video


def companions(path: Path) -> list[Path]:
    """Files made from `path` and kept beside it (its last frame, its history tiles)."""
    return [other for other in path.parent.glob(f"{glob_escape(path.stem)}.*") if other != path]


def remove_files(paths: Iterable[Path]) -> int:
    """Delete `paths` and what was made from them; a video's own folder goes too once empty. Returns how many."""
    removed = 0
    for path in paths:
        for file in [path, *companions(path)]:
            try:
                file.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("could not delete %s (%s)", file.name, type(error).__name__)
        tidy(path)
    return removed


def tidy(video: Path) -> None:
    """Remove the folder `label` made for `video` once it is empty (the video was moved or deleted)."""
    if _OWN_FOLDER.fullmatch(video.parent.name):
        remove_empty_folder(video.parent)


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or gone): kept

