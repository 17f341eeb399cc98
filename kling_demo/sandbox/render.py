"""Render a stand-in clip from still images: H.264/yuv420p MP4 (+faststart), 24 fps, a slow zoom
over the first frame, cross-faded into the end frame; short side 480 px, aspect kept, even sides.

The output is deterministic for the same inputs, so callers may cache it by content hash.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

log = logging.getLogger(__name__)

FPS = 24
SHORT_SIDE = 480
MAX_ZOOM = 1.12  # how far the camera pushes in over the whole clip
PAN_FRACTION = 0.03  # drift of the view centre, as a share of the frame size
FADE_START, FADE_END = 0.62, 0.88  # share of the clip over which the end frame fades in
WATERMARK_TEXT = "SANDBOX · not AI"
X264_PRESET = "veryfast"
X264_CRF = "23"


class RenderCancelled(Exception):
    """The render was asked to stop before it finished; nothing was written."""


@dataclass(frozen=True)
class RenderedVideo:
    """What was written: where, how large, how many frames."""

    path: Path
    width: int
    height: int
    frames: int


def output_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """Video size for an input size: aspect kept, short side `short_side`, both sides even."""

    def even(value: float) -> int:
        return max(2, int(round(value / 2.0)) * 2)

    if width <= height:
        return even(short_side), even(short_side * height / width)
    return even(short_side * width / height), even(short_side)


def _as_rgb(image: bytes | Image.Image) -> Image.Image:
    picture = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in ("RGBA", "LA", "P"):
        picture = picture.convert("RGBA")
        backdrop = Image.new("RGBA", picture.size, (0, 0, 0, 255))
        picture = Image.alpha_composite(backdrop, picture)
    return picture.convert("RGB")


def _watermark(frame_width: int) -> Image.Image:
    """A semi-opaque label, sized to the frame, that says this is not AI output."""
    font_size = max(14, frame_width // 32)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(WATERMARK_TEXT)
    pad = font_size // 3
    label = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 150))
    ImageDraw.Draw(label).text((pad - left, pad - top), WATERMARK_TEXT, font=font, fill=(255, 255, 255, 235))
    return label


def _ease(t: float) -> float:
    """Smoothstep: starts and ends gently."""
    t = min(1.0, max(0.0, t))
    return t * t * (3.0 - 2.0 * t)


def render_video(
    first_frame: bytes | Image.Image,
    output_path: str | Path,
    duration_seconds: int,
    end_frame: bytes | Image.Image | None = None,
    *,
    threads: int = 1,
    cancel: threading.Event | None = None,
) -> RenderedVideo:
    """Write `duration_seconds` × 24 frames to `output_path` atomically; `threads` 0 = x264 auto.
    Setting `cancel` stops the render between frames with RenderCancelled."""
    import av  # imported here: PyAV costs ~1 s of the app's cold start, and only renders need it

    output_path = Path(output_path)
    first = _as_rgb(first_frame)
    width, height = output_size(*first.size)
    frame_count = int(duration_seconds) * FPS

    # Resize once to a slightly larger canvas; each frame is then one crop+resize of it.
    canvas_w, canvas_h = int(round(width * MAX_ZOOM)), int(round(height * MAX_ZOOM))
    canvas = ImageOps.fit(first, (canvas_w, canvas_h), Image.Resampling.BICUBIC)
    end = (
        ImageOps.fit(_as_rgb(end_frame), (width, height), Image.Resampling.BICUBIC)
        if end_frame is not None
        else None
    )
    label = _watermark(width)
    margin = max(6, width // 80)
    label_at = (width - label.width - margin, height - label.height - margin)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial_name = tempfile.mkstemp(suffix=".mp4", prefix=".render-", dir=output_path.parent)
    os.close(fd)
    try:
        with av.open(partial_name, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = Fraction(1, FPS)
            stream.options = {"preset": X264_PRESET, "crf": X264_CRF}
            stream.codec_context.thread_count = threads
            for index in range(frame_count):
                if cancel is not None and cancel.is_set():
                    raise RenderCancelled(f"render of {output_path.name} cancelled")
                t = index / max(1, frame_count - 1)
                frame = _camera_frame(canvas, width, height, _ease(t))
                if end is not None:
                    alpha = _ease((t - FADE_START) / (FADE_END - FADE_START))
                    if alpha >= 1.0:
                        frame = end.copy()
                    elif alpha > 0.0:
                        frame = Image.blend(frame, end, alpha)
                frame.paste(label, label_at, label)
                video_frame = av.VideoFrame.from_image(frame)
                video_frame.pts = index
                video_frame.time_base = Fraction(1, FPS)
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode(None))
        os.replace(partial_name, output_path)
    except BaseException:
        Path(partial_name).unlink(missing_ok=True)
        raise
    log.debug("rendered %s: %dx%d, %d frames", output_path, width, height, frame_count)
    return RenderedVideo(path=output_path, width=width, height=height, frames=frame_count)


def _camera_frame(canvas: Image.Image, width: int, height: int, progress: float) -> Image.Image:
    """One frame of a slow push-in with a slight drift, cut from the oversized canvas."""
    zoom = 1.0 + (MAX_ZOOM - 1.0) * progress  # 1.0: whole canvas in view; MAX_ZOOM: 1:1 pixels
    view_w, view_h = canvas.width / zoom, canvas.height / zoom
    centre_x = canvas.width / 2 + PAN_FRACTION * width * progress
    centre_y = canvas.height / 2 - PAN_FRACTION * height * progress
    left = min(max(0.0, centre_x - view_w / 2), canvas.width - view_w)
    top = min(max(0.0, centre_y - view_h / 2), canvas.height - view_h)
    box = (left, top, left + view_w, top + view_h)
    return canvas.resize((width, height), Image.Resampling.BILINEAR, box=box)
