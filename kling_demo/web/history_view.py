"""How a visitor's history looks: a tile per task whose state shows at a glance, and the detail of one task.

The gallery shows a task's first frame, so a failed or running task gets a copy of it with a tinted band that
names its state across its top (made once, kept beside the first frame); its caption starts with the same symbol.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..store import files

from ..store import videos
from ..jobs.steps import format_seconds
from ..store.journal import OUTCOME_UNKNOWN, PREPARED, SUBMITTING, TaskRecord
from ..models import TaskStatus

log = logging.getLogger(__name__)

TILE_SIDE = 320


class TileState(str, enum.Enum):
    """What a tile tells at a glance."""

    DONE = "done"
    RENDERING = "rendering"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the submit answer never arrived: a task may exist (and be billed)


# Text symbols most fonts have (DejaVu, Segoe UI Symbol, Apple Symbols): emoji are tofu without an emoji font.
SYMBOLS = {TileState.DONE: "✓", TileState.RENDERING: "⟳", TileState.FAILED: "✕", TileState.UNKNOWN: "⚠"}
BAND_COLOURS = {TileState.RENDERING: (37, 99, 235), TileState.FAILED: (200, 30, 30),
                TileState.UNKNOWN: (217, 119, 6)}
STATUS_WORDS = {"completed": "Done", "failed": "Failed", "lost": "Lost", "created": "Queued",
                "processing": "Rendering", PREPARED: "Preparing", SUBMITTING: "Submitting",
                OUTCOME_UNKNOWN: "Outcome unknown",
                "cancelled": "Cancelled by WaveSpeed", "timeout": "Timed out at WaveSpeed",
                "deleted": "Deleted at WaveSpeed"}
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")
_INLINE_MARKUP = re.compile(r"([\\`*_\[\]<>&~|])")
_AUTOLINK = re.compile(r"(?i):(?:\\?/){2}|\bwww(?:\\?\.)")  # what GFM turns into a link without any markup


def tile_state(record: TaskRecord) -> TileState:
    if record.status == TaskStatus.COMPLETED:
        return TileState.DONE
    if record.in_flight:
        return TileState.RENDERING
    if record.status == OUTCOME_UNKNOWN:
        return TileState.UNKNOWN
    return TileState.FAILED


def status_words(record: TaskRecord) -> str:
    return STATUS_WORDS.get(record.status, record.status.capitalize() or "Unknown")


def caption(record: TaskRecord) -> str:
    """`✓ Done · <prompt> · 27 Nov 14:03 · 41s`: state first, so it reads at a glance."""
    when = time.strftime("%d %b %H:%M", time.localtime(record.created_at))
    took = f" · {format_seconds(record.inference_ms / 1000)}" if record.inference_ms else ""
    prompt = record.prompt or "(fetched by task id)"
    return f"{SYMBOLS[tile_state(record)]} {status_words(record)} · {prompt[:60]} · {when}{took}"


def items(records: list[TaskRecord], placeholder: Path) -> list[tuple[str, str]]:
    """Gallery entries: the first frame (badged unless done), or for a task fetched by id its video (or the
    placeholder, badged, while it renders or after it failed)."""
    entries = []
    for record in records:
        state = tile_state(record)
        if record.first_frame and Path(record.first_frame).exists():
            picture = str(badged(Path(record.first_frame), state, status_words(record)))
        elif state is TileState.DONE and record.video_path:
            picture = record.video_path
        else:
            picture = str(badged(placeholder, state, status_words(record)))
        entries.append((picture, caption(record)))
    return entries


def placeholder(path: Path, bundled: Path) -> Path:
    """`path`, a plain tile made there once (whole or not at all); `bundled` when the data dir cannot keep it."""
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.partial_file(path) as out:
            Image.new("RGB", (320, 180), (226, 232, 240)).save(out, "PNG")
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
        with files.partial_file(target) as out:
            tile.save(out, "JPEG", quality=85)
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


def end_frame(record: TaskRecord) -> Path | None:
    """The end frame the task was made with, as kept beside its first frame; None if it had none or it is gone."""
    return videos.kept_frames(record.first_frame)[1] if record.params.get("end_image") else None


def detail(record: TaskRecord, cost: str = "", end_frame_shown: bool = False) -> str:
    """The selected task in full: state, settings, render time, cost, task id and what went wrong.
    `end_frame_shown`: the page shows the end frame's picture, so the line points at it."""
    params = record.params
    lines = [f"**{SYMBOLS[tile_state(record)]} {status_words(record)}** · "
             f"{time.strftime('%d %b %Y %H:%M', time.localtime(record.created_at))}{_times(record)}"]
    if params.get("resumed") and not record.prompt:
        lines.append("Fetched by its task id: its settings were made elsewhere and are not known here.")
    else:
        lines.append(f"**Prompt:** {escape(record.prompt) or '—'}")
        lines.append(f"**Negative prompt:** {escape(str(params.get('negative_prompt') or '')) or '—'}")
    settings = []
    if params.get("guidance_scale") is not None:
        settings.append(f"**Guidance:** {escape(str(params['guidance_scale']))}")
    if record.duration:
        settings.append(f"**Duration:** {record.duration} s")
    if "end_image" in params:
        had = "yes, pictured" if end_frame_shown else "yes"
        settings.append(f"**End frame:** {had if params['end_image'] else 'no'}")
    if settings:
        lines.append(" · ".join(settings))
    if cost:
        value = cost.removeprefix("cost ")  # prices.quoted_cost words it for a sentence
        lines.append(f"**Cost:** {value[:1].upper()}{value[1:]}")
    lines.append("**Task id:** never received from WaveSpeed" if record.is_intent else f"**Task id:** `{record.task_id}`")
    if record.error:
        lines.append(escape(record.error))
    if record.is_running:
        lines.append("Still rendering; the video appears here when it finishes.")
    return "\n\n".join(lines)


def escape(text: str) -> str:
    """Visitor text (or the API's) shown literally in Markdown, on one line: no markup, no bare link."""
    return _unlinked(_MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(text.split())))


def literal(sentence: str) -> str:
    """A sentence shown as text inside a line of Markdown, on one line: what could start markup is escaped (HTML,
    emphasis, code, links, bare links), and nothing else, so a status stays readable to API clients."""
    return _unlinked(_INLINE_MARKUP.sub(r"\\\1", " ".join(sentence.split())))


def _unlinked(text: str) -> str:
    """Escaped Markdown with `://` and `www.` broken up, so GFM makes no link of a bare address."""
    return _AUTOLINK.sub(lambda found: ":\\/\\/" if found.group(0).startswith(":") else found.group(0)[:3] + "\\.",
                         text)


def _times(record: TaskRecord) -> str:
    parts = []
    if record.inference_ms:
        parts.append(f"rendered in {record.inference_ms / 1000:.1f} s at WaveSpeed")
    if record.finished_at and record.status == TaskStatus.COMPLETED:
        parts.append(f"ready after {format_seconds(record.finished_at - record.created_at)}")
    return "".join(f" · {part}" for part in parts)
