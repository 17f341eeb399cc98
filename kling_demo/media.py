"""Image checks and fix-ups against a model's documented limits, and video probing."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av


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
