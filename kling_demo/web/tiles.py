"""The history's pictures: a task's first frame, or a faded copy with a band naming its state across the top (made
once, kept beside the frame), and a plain tile for tasks that have no picture yet."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..models import TaskRecord
from ..words import Voice
from .views import TileState, caption, tile_state

log = logging.getLogger(__name__)

TILE_SIDE = 320
BAND_COLOURS = {TileState.RENDERING: (37, 99, 235), TileState.FAILED: (200, 30, 30),
                TileState.UNKNOWN: (217, 119, 6)}


def items(records: list[TaskRecord], placeholder: Path, voice: Voice) -> list[tuple[str, str]]:
    """Gallery entries: the first frame (badged unless done), or for a task fetched by id its video (or the
    placeholder, badged, while it renders or after it failed), each with its caption."""
    entries = []
    for record in records:
        state, words = tile_state(record), voice.task_status(record.status)
        if record.first_frame and Path(record.first_frame).exists():
            picture = str(badged(Path(record.first_frame), state, words))
        elif state is TileState.DONE and record.video_path:
            picture = record.video_path
        else:
            picture = str(badged(placeholder, state, words))
        entries.append((picture, caption(record, voice)))
    return entries


def placeholder(path: Path, bundled: Path) -> Path:
    """`path`, a plain tile made there once (whole or not at all); `bundled` when the data dir cannot keep it."""
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(path, lambda out: Image.new("RGB", (320, 180), (226, 232, 240)).save(out, "PNG"))
    except OSError as error:
        log.warning("history: the data dir cannot keep the placeholder tile (%s); using the bundled one",
                    type(error).__name__)
        return bundled
    return path


def badged(picture: Path, state: TileState, words: str) -> Path:
    """`picture` for a done task; otherwise a small copy with a band naming the state (cached beside it)."""
    if state is TileState.DONE:
        return picture
    target = picture.with_name(f"{picture.stem}.{state.value}.jpg")
    if target.exists():
        return target
    try:
        with Image.open(picture) as source:
            tile = ImageOps.exif_transpose(source).convert("RGB")
        tile.thumbnail((TILE_SIDE, TILE_SIDE))
        tile = _draw_band(tile, state, words)
        _write_whole(target, lambda out: tile.save(out, "JPEG", quality=85))
    except OSError as error:  # a tile is a nicety: the plain picture still shows
        log.info("history: could not make the %s tile of %s (%s)", state.value, picture.name, type(error).__name__)
        return picture
    return target


def _draw_band(tile: Image.Image, state: TileState, words: str) -> Image.Image:
    """Fade the picture (grey for ended ones) and lay a coloured band with the state's word along its top (the
    gallery's caption covers the foot)."""
    base = ImageOps.grayscale(tile).convert("RGB") if state is not TileState.RENDERING else tile
    faded = Image.blend(base, Image.new("RGB", tile.size, (255, 255, 255)), 0.45)
    band_height = max(18, tile.height // 5)
    draw = ImageDraw.Draw(faded)
    draw.rectangle((0, 0, tile.width, band_height), fill=BAND_COLOURS[state])
    font = ImageFont.load_default(size=int(band_height * 0.6))
    label = {TileState.RENDERING: "Rendering…", TileState.UNKNOWN: "Outcome unknown"}.get(state, words)
    draw.text((8, band_height / 2), label, fill=(255, 255, 255), font=font, anchor="lm")
    return faded



def _write_whole(target: Path, write: Callable[[object], None]) -> None:
    """Write `target` through a hidden temporary file beside it, so it appears whole or not at all."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
