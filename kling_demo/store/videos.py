"""A finished video that says what it is: a readable file name and its settings in the MP4's metadata.

A download arrives under a random name; `label()` remuxes it (no re-encoding) with the task's settings as
container metadata and gives it a name like `2026-11-27_ab12cd34_a-cat-walks-on-the-beach.mp4`. The videos
folder is served by path, so each video lives in its own folder with an unguessable name: the file name reads
well when downloaded, and the URL still cannot be guessed. Keys are never written; only settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import unicodedata
import uuid
from pathlib import Path
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

from . import files

if TYPE_CHECKING:
    from ..models import TaskRecord

log = logging.getLogger(__name__)

# Opening a video for its packets or tags only: FFmpeg's stream probe otherwise decodes frames to learn their
# pixel format, 11 ms of CPU for a 5 s 480p video (three quarters of a remux), and nothing here needs it.
CONTAINER_ONLY = {"skip_frame": "all"}


@dataclass(frozen=True)
class VideoInfo:
    """What a viewer would notice about a video file."""

    duration_seconds: float
    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pixel_format: str


def probe_video(path: str | Path) -> VideoInfo:
    """Decode every frame of the video, so the duration reflects what actually plays."""
    import av  # imported here: PyAV costs ~1 s of cold start and only probing needs it

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(24)
        frames = sum(1 for _ in container.decode(stream))
        return VideoInfo(
            duration_seconds=frames / float(rate),
            frames=frames,
            fps=float(rate),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            pixel_format=stream.codec_context.pix_fmt or "",
        )


def video_seconds(path: str | Path) -> float:
    """The video's length from its container, without decoding a frame (cheap enough for any size)."""
    import av

    with av.open(str(path), options=CONTAINER_ONLY) as container:
        if container.duration:
            return container.duration / av.time_base
        stream = container.streams.video[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
    return probe_video(path).duration_seconds

SLUG_CHARS = 40  # prompt words in a file name, at most
SHORT_ID_CHARS = 8
LAST_FRAME_SUFFIX = ".last-frame.png"
FRAME_ROLES = ("first", "end")  # the frames as uploaded, kept beside the history's preview for "reuse settings"
# Metadata keys MP4 players and ffprobe show: the prompt as the title; the settings as JSON in the comment.
TITLE, COMMENT, DESCRIPTION = "title", "comment", "description"
# What a tag must not carry from a prompt: C0 and C1 controls (a NUL cuts the tag short; ESC starts the ANSI
# sequences a terminal replays when someone runs ffprobe) and the bidi overrides and isolates that reorder text.
_LINE_BREAKS = re.compile(r"[\t\n\v\f\r]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def slug(text: str, limit: int = SLUG_CHARS) -> str:
    """Lowercase ASCII words joined by `-`, cut at a word boundary within `limit` characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words, length = [], 0
    for word in re.findall(r"[a-z0-9]+", ascii_text):
        word = word[:limit]
        if length + len(word) + bool(words) > limit:
            break
        words.append(word)
        length += len(word) + (len(words) > 1)
    return "-".join(words)


def file_name(task_id: str, prompt: str, when: float) -> str:
    """`<date>_<first 8 of the task id>_<prompt words>.mp4`, e.g. `2026-11-27_ab12cd34_a-cat-walks.mp4`."""
    short_id = re.sub(r"[^A-Za-z0-9]", "", task_id)[:SHORT_ID_CHARS] or "task"
    words = slug(prompt) or "video"
    return f"{time.strftime('%Y-%m-%d', time.localtime(when))}_{short_id}_{words}.mp4"


def settings_of(task_id: str, model: str, record: TaskRecord | None) -> dict[str, Any]:
    """What the video's metadata records: the request's settings, the model and the task id (never a key)."""
    params = record.params if record is not None else {}
    return {"model": model, "task_id": task_id, "prompt": str(params.get("prompt") or ""),
            "negative_prompt": str(params.get("negative_prompt") or ""),
            "guidance_scale": params.get("guidance_scale"), "duration": params.get("duration"),
            "end_frame": bool(params.get("end_image"))}


def tag_text(text: str) -> str:
    """`text` fit for a video's tag: line breaks and tabs become spaces, other controls and bidi overrides go."""
    return _CONTROLS.sub("", _LINE_BREAKS.sub(" ", text))


def metadata_tags(settings: dict[str, Any]) -> dict[str, str]:
    """The container tags for `settings`: a title, a readable description and the settings as JSON, each without
    control characters (`tag_text`)."""
    settings = {key: tag_text(value) if isinstance(value, str) else value for key, value in settings.items()}
    parts = [f"Kling image-to-video ({settings['model']})", f"task {settings['task_id']}"]
    if settings.get("duration"):
        parts.append(f"{settings['duration']} s")
    if settings.get("guidance_scale") is not None:
        parts.append(f"guidance {settings['guidance_scale']}")
    if settings.get("negative_prompt"):
        parts.append(f"negative prompt: {settings['negative_prompt']}")
    return {TITLE: settings["prompt"] or f"Task {settings['task_id']}", DESCRIPTION: " · ".join(parts),
            COMMENT: json.dumps(settings, ensure_ascii=False)}


def label(video: Path, task_id: str, model: str, record: TaskRecord | None) -> Path:
    """Give a downloaded video its readable name and its settings; returns where it now is.

    The tagged copy is written beside it as a hidden `.part` and renamed when whole. If the file cannot be
    remuxed (not an MP4 PyAV reads), it is only renamed; if it cannot even be moved, it stays where it is."""
    when = record.created_at if record is not None and record.created_at else time.time()
    prompt = record.prompt if record is not None else ""
    folder = video.parent / uuid.uuid4().hex
    target = folder / file_name(task_id, prompt, when)
    try:
        folder.mkdir()
        try:
            remux(video, target, metadata_tags(settings_of(task_id, model, record)))
        except Exception as error:  # PyAV's errors, or a file it cannot read: the video is still good
            log.warning("video of task %s: could not write its settings into it (%s: %s); only renamed",
                        task_id, type(error).__name__, error)
            os.replace(video, target)
        else:
            video.unlink()
    except OSError as error:
        log.warning("video of task %s: kept under its download name (%s)", task_id, type(error).__name__)
        files.remove_empty_folder(folder)
        return video
    return target


def remux(source: Path, target: Path, tags: dict[str, str]) -> None:
    """Copy the video and audio packets of `source` into a new MP4 at `target` with `tags`; atomic."""
    import av

    with av.open(str(source), options=CONTAINER_ONLY) as given, files.partial_file(target) as out:
        with av.open(out, "w", format="mp4") as tagged:
            tagged.metadata.update(tags)
            streams = {stream.index: tagged.add_stream_from_template(stream)
                       for stream in given.streams if stream.type in ("video", "audio")}
            if not streams:
                raise ValueError("no video stream")
            for packet in given.demux(*(given.streams[index] for index in streams)):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = streams[packet.stream.index]
                tagged.mux(packet)


def read_settings(video: Path) -> dict[str, Any]:
    """The settings a labelled video carries ({} if none), as `label` wrote them."""
    import av

    with av.open(str(video), options=CONTAINER_ONLY) as container:
        comment = container.metadata.get(COMMENT, "")
    try:
        settings = json.loads(comment)
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def last_frame(video: Path) -> Path:
    """The video's last frame as a PNG beside it (made once, then reused)."""
    import av

    target = video.with_name(video.stem + LAST_FRAME_SUFFIX)
    if target.exists():
        return target
    picture = None
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        if container.duration and container.duration > 2 * av.time_base:  # decode only the last second or so
            container.seek(container.duration - av.time_base, backward=True)
        for frame in container.decode(stream):
            picture = frame
    if picture is None:
        raise ValueError("the video has no frames")
    with files.partial_file(target) as out:
        picture.to_image().save(out, "PNG")
    return target


class Frame(Protocol):
    """A frame as uploaded: its file and its format ("JPEG", "PNG")."""

    path: Path
    format: str


def keep_frames(preview: Path, first: Frame, end: Frame | None) -> None:
    """Keep the frames exactly as uploaded beside the task's preview, so its settings can be reused in full.

    A hard link where the file system allows it (the bytes are never changed in place), else a copy."""
    for role, frame in zip(FRAME_ROLES, (first, end)):
        if frame is not None:
            _link_or_copy(frame.path, preview.with_name(f"{preview.stem}.{role}.{frame.format.lower()}"))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def kept_frames(preview: str | Path | None) -> tuple[Path | None, Path | None]:
    """The first and end frame `keep_frames` kept beside `preview`, each None where none was kept."""
    if not preview:
        return None, None
    preview = Path(preview)
    found = []
    for role in FRAME_ROLES:
        found.append(next((path for path in (preview.with_name(f"{preview.stem}.{role}.{kind}")
                                             for kind in ("jpeg", "png")) if path.exists()), None))
    return found[0], found[1]
