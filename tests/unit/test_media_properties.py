"""Properties of the image check over many sizes and ratios: accepted means uploadable, refused means explained."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kling_demo.errors import InputRejected
from kling_demo.jobs.images import prepare_image, quick_check_image
from kling_demo.models import KLING_V2_I2V_MASTER, ImageLimits

FIRST = KLING_V2_I2V_MASTER.first_frame
END = KLING_V2_I2V_MASTER.end_frame
LIMITS = {"first frame": FIRST, "end frame": END}


def assert_within(path: Path, limits: ImageLimits) -> None:
    """Re-open an output file and check every documented limit."""
    assert path.stat().st_size <= limits.max_bytes
    with Image.open(path) as output:
        output.load()
        assert output.format in limits.formats
        assert min(output.size) >= limits.min_side
        assert limits.aspect_ok(*output.size)


def write_image(directory: Path, size: tuple[int, int], mode: str, image_format: str) -> Path:
    # P images come from RGB so they carry a real palette (Pillow cannot read back a BMP without one).
    picture = Image.new("RGBA", size, (200, 120, 40, 128)) if mode == "RGBA" else Image.new("RGB", size, (200, 120, 40))
    path = directory / f"input.{image_format.lower()}"
    picture.convert(mode).save(path, image_format)
    return path


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(min_value=50, max_value=1100),
    height=st.integers(min_value=50, max_value=1100),
    mode=st.sampled_from(["RGB", "RGBA", "L", "P"]),
    image_format=st.sampled_from(["PNG", "WEBP", "BMP", "GIF", "JPEG"]),
    role=st.sampled_from(list(LIMITS)),
)
def test_every_outcome_is_uploadable_or_explained(
    width: int, height: int, mode: str, image_format: str, role: str
) -> None:
    limits = LIMITS[role]
    if image_format == "JPEG" and mode in ("RGBA", "P"):
        mode = "RGB"
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        source = write_image(directory, (width, height), mode, image_format)
        quick_message = quick_check_image(source, limits, role=role)
        try:
            prepared = prepare_image(source, limits, role=role, work_dir=directory / "out")
        except InputRejected as refusal:
            message = refusal.message
            assert quick_message == message, "the instant check and the full check agree"
            assert f"{width}×{height} px" in message
            if min(width, height) < limits.min_side:
                assert f"{limits.min_side}×{limits.min_side}" in message
            else:
                assert not limits.aspect_ok(width, height)
                assert "2.5" in message
        else:
            assert quick_message is None
            assert min(width, height) >= limits.min_side and limits.aspect_ok(width, height)
            assert (prepared.width, prepared.height) == (width, height)
            assert_within(prepared.path, limits)


@settings(max_examples=25, deadline=None)
@given(
    half_short_side=st.integers(min_value=150, max_value=210),
    wide=st.booleans(),
    max_bytes=st.integers(min_value=60_000, max_value=400_000),
)
def test_downscaling_to_fit_the_byte_limit_keeps_every_other_limit(
    half_short_side: int, wide: bool, max_bytes: int
) -> None:
    """Noise at exactly 2.5:1 must shrink under the byte limit without crossing the aspect bound or 300 px."""
    short_side, long_side = 2 * half_short_side, 5 * half_short_side
    size = (long_side, short_side) if wide else (short_side, long_side)
    limits = ImageLimits(max_bytes=max_bytes, min_aspect=FIRST.min_aspect, max_aspect=FIRST.max_aspect)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "noise.png"
        Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(source)
        try:
            prepared = prepare_image(source, limits, work_dir=Path(scratch))
        except InputRejected as refusal:
            assert "300 px" in refusal.message
        else:
            assert_within(prepared.path, limits)
            assert prepared.changes, "a re-encode is always reported"
