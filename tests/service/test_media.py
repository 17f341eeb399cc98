"""Image checks and fix-ups: a corpus of awkward files, each fixed within the API's limits or refused plainly."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from kling_demo.errors import InputRejected
from kling_demo.jobs.images import (
    PreparedImage,
    check_before_decoding,
    prepare_image,
    quick_check_image,
)
from kling_demo.jobs.inputs import check_duration, check_guidance, check_prompt
from kling_demo.models import KLING_V2_I2V_MASTER, MB, ImageLimits

SPEC = KLING_V2_I2V_MASTER
FIRST = SPEC.first_frame
END = SPEC.end_frame
EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------
# Corpus builders: each writes one file into a directory and returns its path.


def gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A smooth picture (compresses well, decodes to known colours)."""
    width, height = size
    horizontal = Image.linear_gradient("L").resize((width, height))
    vertical = horizontal.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    picture = Image.merge("RGB", (horizontal, vertical, Image.new("L", size, 90)))
    return picture.convert(mode)


def save(image: Image.Image, directory: Path, name: str, **options: object) -> Path:
    path = directory / name
    image.save(path, **options)
    return path


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def write_bilevel_png(path: Path, width: int, height: int) -> Path:
    """A real, all-black 1-bit PNG streamed row by row, so huge dimensions cost a few kB on disk."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def write_flat_png(path: Path, width: int, height: int, rgba: tuple[int, int, int, int] = (200, 120, 40, 255)) -> Path:
    """A real one-colour RGBA PNG streamed row by row: a 9400×9400 one is ~350 kB on disk, 353 MB decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(6)
    row = b"\x00" + bytes(rgba) * width
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def write_flat_jpeg(path: Path, width: int, height: int, components: int = 3, *, scans: str = "one") -> Path:
    """A real mid-grey JPEG written bit by bit, so huge dimensions cost ~1 MB on disk and nothing to make.

    `scans`: "one" (baseline, every component in one scan: decoded a few rows at a time), "progressive" (a DC
    scan, then an AC scan per component) or "separate" (baseline, one scan per component). libjpeg holds every
    DCT coefficient of the last two whole while it decodes them, whatever the draft scale. Every coefficient is 0:
    one Huffman code of one bit ("0") per table means "difference 0" (DC) or "end of block" (AC)."""

    def segment(marker: int, data: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, 2 + len(data)) + data

    def coded(bits: int) -> bytes:  # `bits` zero bits, padded with ones to a whole byte
        return b"\x00" * (bits // 8) + (bytes([(1 << (8 - bits % 8)) - 1]) if bits % 8 else b"")

    def scan(ids: list[int], first: int, last: int, bits: int) -> bytes:
        header = bytes([len(ids)]) + b"".join(bytes([i, 0x00]) for i in ids) + bytes([first, last, 0])
        return segment(0xDA, header) + coded(bits)

    ids = list(range(1, components + 1))
    blocks = -(-width // 8) * -(-height // 8)
    one_code = bytes([1] + [0] * 15 + [0])  # one code of length 1, for symbol 0
    frame = struct.pack(">BHHB", 8, height, width, components) + b"".join(bytes([i, 0x11, 0]) for i in ids)
    start_of_frame = 0xC2 if scans == "progressive" else 0xC0
    data = [b"\xff\xd8", segment(0xDB, b"\x00" + b"\x01" * 64), segment(start_of_frame, frame),
            segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)]
    if scans == "one":
        data.append(scan(ids, 0, 63, blocks * components * 2))
    elif scans == "separate":
        data += [scan([i], 0, 63, blocks * 2) for i in ids]
    else:
        data += [scan(ids, 0, 0, blocks * components)] + [scan([i], 1, 63, blocks) for i in ids]
    path.write_bytes(b"".join(data) + b"\xff\xd9")
    return path


def exif_rotated_jpeg(directory: Path, size: tuple[int, int], name: str = "rotated.jpg") -> Path:
    """A JPEG stored `size` with a red top-left marker and EXIF orientation 6 (shown rotated 90° clockwise)."""
    picture = gradient(size)
    picture.paste((255, 0, 0), (0, 0, 60, 60))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return save(picture, directory, name, exif=exif.tobytes(), quality=95)


def transparent_rgba(size: tuple[int, int]) -> Image.Image:
    picture = gradient(size, "RGBA")
    picture.paste((0, 0, 0, 0), (0, 0, 50, 50))
    return picture


def animated_gif(directory: Path) -> Path:
    frames = [Image.new("RGB", (320, 320), colour) for colour in ((0, 0, 255), (0, 255, 0), (255, 0, 0))]
    path = directory / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def palette_with_transparency(directory: Path) -> Path:
    picture = gradient((400, 300)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    picture.paste(0, (0, 0, 40, 40))
    return save(picture, directory, "palette-transparent.png", transparency=0)


def sixteen_bit_png(directory: Path) -> Path:
    picture = Image.new("I;16", (320, 320), 32768)
    return save(picture, directory, "sixteen-bit.png")


def truncated(directory: Path, name: str, image_format: str) -> Path:
    buffer = io.BytesIO()
    gradient((640, 480)).save(buffer, image_format)
    data = buffer.getvalue()
    path = directory / name
    path.write_bytes(data[: len(data) // 2])
    return path


def noise_png(directory: Path) -> Path:
    """About 17 MB of incompressible RGB noise: too big as PNG, needs JPEG and a downscale."""
    picture = Image.frombytes("RGB", (2600, 2300), os.urandom(2600 * 2300 * 3))
    return save(picture, directory, "noise.png", compress_level=1)


# name -> (builder, role, change fragments expected, output format)
Builder = Callable[[Path], Path]
ACCEPTED: dict[str, tuple[Builder, str, tuple[str, ...], str]] = {
    "exactly 300x300 png": (lambda d: save(gradient((300, 300)), d, "square.png"), "first frame", (), "PNG"),
    "plain jpeg": (lambda d: save(gradient((640, 480)), d, "photo.jpg", quality=90), "first frame", (), "JPEG"),
    "grayscale jpeg": (lambda d: save(gradient((640, 480), "L"), d, "grey.jpeg"), "first frame", (), "JPEG"),
    "wide 2.5:1": (lambda d: save(gradient((750, 300)), d, "wide.png"), "first frame", (), "PNG"),
    "tall 1:2.5": (lambda d: save(gradient((300, 750)), d, "tall.png"), "first frame", (), "PNG"),
    "end frame 1000x300": (lambda d: save(gradient((1000, 300)), d, "end.png"), "end frame", (), "PNG"),
    "webp": (lambda d: save(gradient((500, 400)), d, "pasted.webp"), "first frame", ("converted WebP to PNG",), "PNG"),
    "animated gif": (animated_gif, "first frame", ("first of 3 frames", "converted GIF to PNG"), "PNG"),
    "bmp": (lambda d: save(gradient((400, 400)), d, "image.bmp"), "first frame", ("converted BMP to PNG",), "PNG"),
    "tiff": (lambda d: save(gradient((400, 400)), d, "image.tiff"), "first frame", ("converted TIFF to PNG",), "PNG"),
    "rgba transparency": (
        lambda d: save(transparent_rgba((400, 400)), d, "cutout.png"),
        "first frame",
        ("flattened transparency onto white",),
        "PNG",
    ),
    "opaque rgba": (
        lambda d: save(gradient((400, 400), "RGBA"), d, "opaque.png"),
        "first frame",
        ("removed an unused alpha channel",),
        "PNG",
    ),
    "grey with alpha (LA)": (
        lambda d: save(transparent_rgba((400, 400)).convert("LA"), d, "la.png"),
        "first frame",
        ("flattened transparency onto white",),
        "PNG",
    ),
    "palette with transparency": (
        palette_with_transparency,
        "first frame",
        ("flattened transparency onto white",),
        "PNG",
    ),
    "palette png": (
        lambda d: save(gradient((400, 300)).convert("P"), d, "palette.png"),
        "first frame",
        ("palette",),
        "PNG",
    ),
    "cmyk jpeg": (
        lambda d: save(gradient((400, 400), "CMYK"), d, "print.jpg"),
        "first frame",
        ("CMYK",),
        "JPEG",
    ),
    "16-bit png": (sixteen_bit_png, "first frame", ("16-bit",), "PNG"),
    "exif-rotated jpeg": (
        lambda d: exif_rotated_jpeg(d, (400, 300)),
        "first frame",
        ("applied EXIF rotation (90°)",),
        "JPEG",
    ),
    "png named .jpg": (lambda d: save(gradient((400, 400)), d, "misnamed.jpg", format="PNG"), "first frame", (), "PNG"),
    "1-bit png": (
        lambda d: save(gradient((400, 400)).convert("1"), d, "bilevel.png"),
        "first frame",
        ("1-bit",),
        "PNG",
    ),
    "progressive jpeg": (
        lambda d: save(gradient((640, 480)), d, "progressive.jpg", progressive=True), "first frame", (), "JPEG"),
    "baseline jpeg of 9400x9400 (decoded at 1/4)": (
        lambda d: write_flat_jpeg(d / "huge-baseline.jpg", 9400, 9400),
        "first frame",
        ("reduced from 9400×9400 to 2350×2350 px",),
        "JPEG",
    ),
}

# name -> (builder, role, fragments the message must contain)
REFUSED: dict[str, tuple[Builder, str, tuple[str, ...]]] = {
    "tiny 100x100": (lambda d: save(gradient((100, 100)), d, "tiny.png"), "first frame", ("100×100", "300×300")),
    "200x150 end frame": (
        lambda d: save(gradient((200, 150)), d, "small.jpg"),
        "end frame",
        ("200×150", "300×300", "end frame", "larger"),
    ),
    "299 px short side": (lambda d: save(gradient((600, 299)), d, "short.png"), "first frame", ("600×299", "300")),
    "wide 3.33:1": (
        lambda d: save(gradient((1000, 300)), d, "wide.png"),
        "first frame",
        ("1000×300", "3.33:1", "1:2.5", "2.5:1", "crop"),
    ),
    "tall 1:2.67": (
        lambda d: save(gradient((300, 800)), d, "tall.png"),
        "first frame",
        ("300×800", "1:2.67", "2.5:1"),
    ),
    "exif turns 1000x300 into 300x1000": (
        lambda d: exif_rotated_jpeg(d, (1000, 300)),
        "first frame",
        ("300×1000", "1:3.33"),
    ),
    "truncated jpeg": (lambda d: truncated(d, "cut.jpg", "JPEG"), "first frame", ("damaged or incomplete",)),
    "truncated png": (lambda d: truncated(d, "cut.png", "PNG"), "first frame", ("damaged or incomplete",)),
    "random bytes": (
        lambda d: write(d, "noise.jpg", os.urandom(4096)),
        "first frame",
        ("not an image",),
    ),
    "zero-byte file": (lambda d: write(d, "empty.png", b""), "first frame", ("empty",)),
    "text renamed .png": (
        lambda d: write(d, "notes.png", b"not a picture\n"),
        "first frame",
        ("not an image",),
    ),
    "bomb 30000x30000": (
        lambda d: write_bilevel_png(d / "bomb.png", 30000, 30000),
        "first frame",
        ("decompression bomb", "900 megapixels", "89 megapixels"),
    ),
    "bomb in pillow's warn-only range": (
        lambda d: write_bilevel_png(d / "big.png", 10000, 10000),
        "end frame",
        ("decompression bomb", "10000×10000", "89 megapixels"),
    ),
    "missing file": (lambda d: d / "gone.png", "first frame", ("not found",)),
    "png over the 16 megapixel decode limit": (
        lambda d: write_flat_png(d / "huge.png", 5000, 4000),
        "first frame",
        ("5000×4000 px (20 megapixels)", "PNG images over 16 megapixels are refused", "at most 4472×3577 px"),
    ),
    "progressive jpeg of 9400x9400": (
        lambda d: write_flat_jpeg(d / "progressive.jpg", 9400, 9400, scans="progressive"),
        "first frame",
        ("The first frame image is a progressive JPEG of 9400×9400 px (88 megapixels), too large to decode: a "
         "progressive JPEG is held in memory whole, however much it is reduced — save it as a baseline "
         "(non-progressive) JPEG, or at most 4000×4000 px.",),
    ),
    "progressive cmyk jpeg of 9400x9400": (
        lambda d: write_flat_jpeg(d / "progressive-cmyk.jpg", 9400, 9400, 4, scans="progressive"),
        "end frame",
        ("a progressive JPEG of 9400×9400 px (88 megapixels)", "or at most 3464×3464 px."),
    ),
    "multi-scan baseline jpeg of 9400x9400": (
        lambda d: write_flat_jpeg(d / "multi-scan.jpg", 9400, 9400, scans="separate"),
        "first frame",
        ("a multi-scan JPEG of 9400×9400 px (88 megapixels)", "save it as a baseline (non-progressive) JPEG"),
    ),
    "end frame jpeg too thin to decode at a smaller scale": (
        lambda d: save(Image.new("RGB", (60000, 300), (90, 90, 90)), d, "strip.jpg"),
        "end frame",
        ("60000×300 px (18 megapixels)", "JPEG images over 16 megapixels are refused"),
    ),
}


def limits_for(role: str) -> ImageLimits:
    return FIRST if role == "first frame" else END


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_uploadable(prepared: PreparedImage, limits: ImageLimits) -> None:
    """Re-open the output and check it against every documented limit."""
    assert prepared.path.stat().st_size == prepared.size_bytes <= limits.max_bytes
    assert prepared.path.suffix in {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}[prepared.format]
    assert prepared.mime_type == {"JPEG": "image/jpeg", "PNG": "image/png"}[prepared.format]
    with Image.open(prepared.path) as reopened:
        reopened.load()
        assert {"MPO": "JPEG"}.get(reopened.format, reopened.format) == prepared.format in limits.formats
        assert reopened.size == (prepared.width, prepared.height)
        assert reopened.mode in ("L", "RGB")
        assert "transparency" not in reopened.info
        assert reopened.getexif().get(EXIF_ORIENTATION, 1) == 1
    assert min(prepared.width, prepared.height) >= limits.min_side
    assert limits.aspect_ok(prepared.width, prepared.height)


# ---------------------------------------------------------------------------
# The corpus


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted_files_come_out_within_every_limit(case: str, tmp_path: Path) -> None:
    build, role, expected_changes, expected_format = ACCEPTED[case]
    (tmp_path / "in").mkdir()
    source = build(tmp_path / "in")
    before = digest(source)

    prepared = prepare_image(source, limits_for(role), role=role, work_dir=tmp_path / "out")

    assert_uploadable(prepared, limits_for(role))
    assert prepared.format == expected_format
    assert digest(source) == before, "the source file must never be modified"
    for fragment in expected_changes:
        assert any(fragment in change for change in prepared.changes), (fragment, prepared.changes)
    if not expected_changes:
        assert prepared.changes == ()
        assert digest(prepared.path) == before, "a valid JPEG/PNG passes through byte for byte"


def test_valid_file_with_right_name_is_not_copied(tmp_path: Path) -> None:
    source = save(gradient((640, 480)), tmp_path, "photo.jpg")
    prepared = prepare_image(source, FIRST, work_dir=tmp_path / "out")
    assert prepared.path == source
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", REFUSED)
def test_refused_files_name_the_broken_limit(case: str, tmp_path: Path) -> None:
    build, role, fragments = REFUSED[case]
    source = build(tmp_path)
    with pytest.raises(InputRejected) as refusal:
        prepare_image(source, limits_for(role), role=role, work_dir=tmp_path / "out")
    for fragment in fragments:
        assert fragment in refusal.value.message, (fragment, refusal.value.message)
    assert role in refusal.value.message
    assert not (tmp_path / "out").exists(), "nothing is written for a refused file"


@pytest.mark.parametrize("source", [None, "", "   "])
def test_no_image_given_is_refused(source: str | None) -> None:
    with pytest.raises(InputRejected, match="No image given for the first frame"):
        prepare_image(source, FIRST)


def test_exif_rotation_turns_the_picture_upright(tmp_path: Path) -> None:
    prepared = prepare_image(exif_rotated_jpeg(tmp_path, (400, 300)), FIRST, work_dir=tmp_path)
    assert (prepared.width, prepared.height) == (300, 400)
    with Image.open(prepared.path) as upright:
        red, green, blue = upright.convert("RGB").getpixel((upright.width - 10, 10))
    assert red > 200 and green < 60 and blue < 60, "the stored top-left marker is shown top-right"


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    prepared = prepare_image(save(transparent_rgba((400, 400)), tmp_path, "cutout.png"), FIRST, work_dir=tmp_path)
    with Image.open(prepared.path) as flattened:
        assert flattened.convert("RGB").getpixel((10, 10)) == (255, 255, 255)


def test_gif_uses_its_first_frame(tmp_path: Path) -> None:
    prepared = prepare_image(animated_gif(tmp_path), FIRST, work_dir=tmp_path)
    with Image.open(prepared.path) as first:
        assert first.convert("RGB").getpixel((5, 5)) == (0, 0, 255)


def test_sixteen_bit_grey_keeps_its_brightness(tmp_path: Path) -> None:
    prepared = prepare_image(sixteen_bit_png(tmp_path), FIRST, work_dir=tmp_path)
    with Image.open(prepared.path) as eight_bit:
        assert eight_bit.mode == "L"
        assert eight_bit.getpixel((5, 5)) == 128


def test_17_mb_noise_png_is_reencoded_under_10_mb(tmp_path: Path) -> None:
    source = noise_png(tmp_path)
    assert source.stat().st_size > 17 * MB
    prepared = prepare_image(source, FIRST, work_dir=tmp_path / "out")
    assert_uploadable(prepared, FIRST)
    assert prepared.format == "JPEG"
    megabytes = f"{source.stat().st_size / MB:.1f} MiB"
    assert f"re-encoded {megabytes} PNG as JPEG (quality 92) to fit the 10 MiB limit" in prepared.changes
    assert abs(prepared.width / prepared.height - 2600 / 2300) < 0.01


def test_oversized_file_at_the_aspect_bound_stays_within_it(tmp_path: Path) -> None:
    """Downscaling an image exactly at 2.5:1 must not round it past the bound."""
    source = save(Image.frombytes("RGB", (1505, 602), os.urandom(1505 * 602 * 3)), tmp_path, "wide-noise.png")
    tight = ImageLimits(min_aspect=1 / 2.5, max_aspect=2.5, max_bytes=MB // 2)
    prepared = prepare_image(source, tight, work_dir=tmp_path / "out")
    assert_uploadable(prepared, tight)
    assert any("downscaled from 1505×602" in change for change in prepared.changes)


def test_too_big_even_at_the_minimum_size_is_refused(tmp_path: Path) -> None:
    source = save(Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)), tmp_path, "noise.png")
    with pytest.raises(InputRejected, match="300 px"):
        prepare_image(source, ImageLimits(max_bytes=20_000), work_dir=tmp_path)


def test_default_work_dir_is_a_temporary_directory(tmp_path: Path) -> None:
    prepared = prepare_image(save(gradient((400, 400)), tmp_path, "a.webp"), FIRST)
    try:
        assert prepared.path.parent != tmp_path and prepared.path.is_file()
    finally:
        prepared.path.unlink()
        prepared.path.parent.rmdir()


# ---------------------------------------------------------------------------
# The instant check: same messages, header only


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", [name for name in REFUSED if not name.startswith("truncated")])
def test_quick_check_gives_the_same_refusal(case: str, tmp_path: Path) -> None:
    build, role, fragments = REFUSED[case]
    message = quick_check_image(build(tmp_path), limits_for(role), role=role)
    assert message is not None
    for fragment in fragments:
        assert fragment in message


def test_quick_check_reads_only_the_header(tmp_path: Path) -> None:
    """A truncated file with a good header passes the instant check; the full check catches it later."""
    assert quick_check_image(truncated(tmp_path, "cut.png", "PNG"), FIRST, role="first frame") is None


@pytest.mark.parametrize("case", ACCEPTED)
def test_quick_check_accepts_what_prepare_accepts(case: str, tmp_path: Path) -> None:
    build, role, _, _ = ACCEPTED[case]
    assert quick_check_image(build(tmp_path), limits_for(role), role=role) is None


def test_quick_check_on_missing_image() -> None:
    assert "No image given" in (quick_check_image(None, FIRST, role="first frame") or "")
    assert quick_check_image(None, END, role="end frame", required=False) is None


# ---------------------------------------------------------------------------
# Prompt, guidance and duration: API callers can send anything


def test_prompt_is_trimmed() -> None:
    assert check_prompt("  a cat walks  \n", SPEC) == "a cat walks"


@pytest.mark.parametrize("prompt", ["", "   \n\t", None])
def test_empty_prompt_is_refused(prompt: str | None) -> None:
    with pytest.raises(InputRejected, match="prompt is empty"):
        check_prompt(prompt, SPEC)


@pytest.mark.parametrize("prompt", ["", None, "  "])
def test_negative_prompt_may_be_empty(prompt: str | None) -> None:
    assert check_prompt(prompt, SPEC, field="negative_prompt", required=False) == ""


@pytest.mark.parametrize("field, cap", [("prompt", 2000), ("negative_prompt", 2500)])
def test_long_prompt_states_the_cap_and_the_length(field: str, cap: int) -> None:
    """The model's schema caps the two fields differently; each is held to its own cap."""
    assert SPEC.max_chars(field) == cap
    assert len(check_prompt("x" * cap, SPEC, field=field)) == cap
    with pytest.raises(InputRejected) as refusal:
        check_prompt("x" * (cap + 1), SPEC, field=field, required=False)
    message = refusal.value.message
    assert str(cap) in message and str(cap + 1) in message
    assert field.replace("_", " ") in message


@pytest.mark.parametrize("prompt", [42, ["a cat"], {"text": "a cat"}, b"a cat"])
def test_prompt_that_is_not_text_is_refused(prompt: object) -> None:
    with pytest.raises(InputRejected, match="must be text"):
        check_prompt(prompt, SPEC)


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (1, 1.0), (0.5, 0.5), ("0.25", 0.25), (" 1 ", 1.0)])
def test_guidance_accepts_numbers_in_range(value: object, expected: float) -> None:
    assert check_guidance(value, SPEC) == expected


@pytest.mark.parametrize(
    "value", [-0.01, 1.01, 5, "abc", "", None, True, float("nan"), float("inf"), "nan", [0.5], {"v": 1}]
)
def test_guidance_refuses_anything_else(value: object) -> None:
    with pytest.raises(InputRejected, match="Guidance scale must be a number from 0 to 1"):
        check_guidance(value, SPEC)


@pytest.mark.parametrize(("value", "expected"), [(5, 5), ("5", 5), (5.0, 5), (10, 10), ("10", 10), (" 10.0 ", 10)])
def test_duration_accepts_documented_values(value: object, expected: int) -> None:
    result = check_duration(value, SPEC)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value", [7, 0, -5, 5.5, "abc", "", None, True, float("nan"), "5s", [5], 1e309])
def test_duration_refuses_anything_else(value: object) -> None:
    with pytest.raises(InputRejected, match="Duration must be 5 or 10 seconds"):
        check_duration(value, SPEC)



# ---------------------------------------------------------------------------
# Memory: what a picture costs is bounded by its declared size, checked before any pixel is decoded

ROOT = Path(__file__).resolve().parents[2]
# Measured in a fresh interpreter: how far the peak RSS rises above where it stood once the modules were loaded.
MEASURE = """
import json, sys
sys.path.insert(0, {root!r})
{setup}
def kilobytes(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = kilobytes("VmRSS")
outcome = None
{statement}
print(json.dumps({{"grew_mb": (kilobytes("VmHWM") - before) / 1024, "outcome": outcome}}))
"""


def peak_growth(setup: str, statement: str) -> tuple[float, object]:
    """Run `statement` (which may set `outcome`) in a child process; its peak RSS growth in MB and `outcome`."""
    script = MEASURE.format(root=str(ROOT), setup=setup, statement=statement)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["grew_mb"], result["outcome"]


PREPARE = """
from pathlib import Path
from kling_demo.errors import InputRejected
from kling_demo.jobs.images import prepare_image
from kling_demo.models import KLING_V2_I2V_MASTER as SPEC
"""


def test_a_png_bomb_just_under_pillows_limit_is_refused_before_any_pixel_is_decoded(tmp_path: Path) -> None:
    """9400×9400 RGBA is under Pillow's 89 MP bomb limit; decoded, it is 353 MB. It must cost next to nothing."""
    bomb = write_flat_png(tmp_path / "bomb.png", 9400, 9400)
    assert bomb.stat().st_size < 1_000_000
    grew_mb, message = peak_growth(PREPARE, f"""
try:
    prepare_image({str(bomb)!r}, SPEC.first_frame, work_dir=Path({str(tmp_path / "out")!r}))
except InputRejected as refusal:
    outcome = refusal.message
""")
    assert message == (
        "The first frame image is 9400×9400 px (88 megapixels); PNG images over 16 megapixels are refused, as the "
        "model makes video of at most 1080p — use a smaller image (at most 4000×4000 px).")
    assert grew_mb < 30, f"refusing the bomb raised the peak RSS by {grew_mb:.0f} MB"
    assert quick_check_image(bomb, FIRST, role="first frame") == message
    with pytest.raises(InputRejected) as refusal:
        check_before_decoding(bomb, FIRST, role="first frame")
    assert refusal.value.message == message


def test_the_decode_limit_is_the_models_limits_data(tmp_path: Path) -> None:
    """Exactly 16 MP passes the header check; one row more is refused; a spec can set its own limit."""
    assert FIRST.max_pixels == END.max_pixels == 16_000_000
    assert quick_check_image(write_flat_png(tmp_path / "at.png", 4000, 4000), FIRST, role="first frame") is None
    over = write_flat_png(tmp_path / "over.png", 4000, 4001)
    assert "16 megapixels are refused" in (quick_check_image(over, FIRST, role="first frame") or "")
    assert quick_check_image(over, ImageLimits(max_pixels=20_000_000), role="first frame") is None


@pytest.mark.parametrize("orientation, shown, reduced",
                         [(1, "8000×6000", "4000×3000"), (6, "6000×8000", "3000×4000")])
def test_a_big_jpeg_is_decoded_at_a_fraction_of_its_size(tmp_path: Path, orientation: int, shown: str,
                                                          reduced: str) -> None:
    """An 8000×6000 phone photo (48 MP, 192 MB decoded in full) is decoded at half size by libjpeg itself."""
    picture = Image.new("RGB", (8000, 6000), (30, 90, 160))
    picture.paste((255, 0, 0), (0, 0, 800, 600))  # a red mark in the stored top-left corner
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    source = save(picture, tmp_path, "phone.jpg", quality=90, exif=exif.tobytes())
    del picture
    assert quick_check_image(source, FIRST, role="first frame") is None
    grew_mb, outcome = peak_growth(PREPARE, f"""
prepared = prepare_image({str(source)!r}, SPEC.first_frame, work_dir=Path({str(tmp_path / "out")!r}))
outcome = [str(prepared.path), prepared.width, prepared.height, prepared.format, list(prepared.changes)]
""")
    path, width, height, image_format, changes = outcome  # type: ignore[misc]
    assert f"{width}×{height}" == reduced and image_format == "JPEG"
    assert changes[0] == (f"reduced from {shown} to {reduced} px (the model makes video of at most 1080p; "
                          "images over 16 megapixels are reduced)")
    assert_uploadable(PreparedImage(Path(path), width, height, image_format, Path(path).stat().st_size), FIRST)
    with Image.open(path) as upright:
        marked = (10, 10) if orientation == 1 else (upright.width - 10, 10)
        red, green, _ = upright.convert("RGB").getpixel(marked)
    assert red > 200 and green < 60, "the stored top-left mark is where the orientation puts it"
    assert grew_mb < 100, f"a drafted decode costs ~50 MB, not {grew_mb:.0f} MB (192 MB in full)"


def test_the_hand_written_jpegs_are_real_pictures(tmp_path: Path) -> None:
    """The flat JPEGs of the memory tests decode to mid-grey with Pillow, as any viewer would show them."""
    for components, mode in ((1, "L"), (3, "RGB"), (4, "CMYK")):
        for scans in ("one", "progressive", "separate"):
            with Image.open(write_flat_jpeg(tmp_path / f"{scans}.jpg", 645, 483, components, scans=scans)) as image:
                assert (image.mode, image.size, bool(image.info.get("progressive"))) == (
                    mode, (645, 483), scans == "progressive")
                image.load()
                assert all(127 <= low <= high <= 128 for low, high in
                           (image.getextrema() if components > 1 else [image.getextrema()]))


@pytest.mark.parametrize("components, largest", [(3, 4000), (4, 3464)])
def test_the_largest_progressive_jpeg_the_refusal_offers_is_accepted(tmp_path: Path, components: int,
                                                                       largest: int) -> None:
    """16 MP of three full channels (96 MB of coefficients) fit; the size the refusal offers does; 8 px more not."""
    bomb = write_flat_jpeg(tmp_path / "bomb.jpg", 9400, 9400, components, scans="progressive")
    assert f"or at most {largest}×{largest} px." in (quick_check_image(bomb, FIRST, role="first frame") or "")
    offered = write_flat_jpeg(tmp_path / "offered.jpg", largest, largest, components, scans="progressive")
    assert quick_check_image(offered, FIRST, role="first frame") is None
    check_before_decoding(offered, FIRST, role="first frame")
    over = write_flat_jpeg(tmp_path / "over.jpg", largest + 8, largest + 8, components, scans="progressive")
    assert "too large to decode" in (quick_check_image(over, FIRST, role="first frame") or "")


def test_chroma_subsampling_counts_in_what_a_progressive_jpeg_holds(tmp_path: Path) -> None:
    """Pillow's own progressive JPEGs, against a 1 MP decode limit (6 MB of coefficients): 4:4:4 holds 6 bytes a
    pixel, so 1100×1100 is refused; 4:2:0 holds 3, so 1600×1200 passes and is decoded at half size."""
    small = ImageLimits(max_pixels=1_000_000)
    full = save(gradient((1100, 1100)), tmp_path, "full.jpg", progressive=True, subsampling="4:4:4")
    with pytest.raises(InputRejected, match=r"a progressive JPEG of 1100×1100 px .* at most 1000×1000 px\."):
        prepare_image(full, small, work_dir=tmp_path / "out")
    halved = save(gradient((1600, 1200)), tmp_path, "halved.jpg", progressive=True, subsampling="4:2:0")
    prepared = prepare_image(halved, small, work_dir=tmp_path / "out")
    assert (prepared.width, prepared.height) == (800, 600)


def test_a_photo_that_passes_through_is_decoded_only_as_far_as_its_preview_needs(tmp_path: Path) -> None:
    """A 12 MP phone JPEG is uploaded as it is: decoding it in full (48 MB) would only feed a 320 px preview."""
    photo = Image.effect_noise((4000, 3000), 40).convert("RGB")
    source = save(photo, tmp_path, "photo.jpg", quality=90)
    cut = write(tmp_path, "cut.jpg", source.read_bytes()[:-5000])
    del photo
    grew_mb, outcome = peak_growth(PREPARE, f"""
prepared = prepare_image({str(source)!r}, SPEC.first_frame)
outcome = [str(prepared.path), prepared.width, prepared.height, list(prepared.changes), list(prepared.preview.size)]
""")
    assert outcome == [str(source), 4000, 3000, [], [320, 240]]
    assert grew_mb < 24, f"the pass-through decode raised the peak RSS by {grew_mb:.0f} MB (48 MB in full)"
    with pytest.raises(InputRejected, match="damaged or incomplete"):
        prepare_image(cut, FIRST)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_a_truncated_file_is_refused_by_its_structure_without_pillows_words(tmp_path: Path, image_format: str) -> None:
    source = truncated(tmp_path, f"cut.{image_format.lower()}", image_format)
    assert quick_check_image(source, END, role="end frame") is None, "the header alone looks fine"
    with pytest.raises(InputRejected) as refusal:
        check_before_decoding(source, END, role="end frame")
    assert refusal.value.message == "The end frame image is damaged or incomplete — export it again as JPEG or PNG."


def test_a_jpeg_cut_just_before_its_end_marker_is_refused(tmp_path: Path) -> None:
    """Pillow fails on such a file too. A thumbnail stored in an APP segment before the picture ends with an
    end marker of its own, which must not make the cut file look complete."""
    thumbnail = io.BytesIO()
    gradient((160, 120)).save(thumbnail, "JPEG")
    picture = io.BytesIO()
    gradient((640, 480)).save(picture, "JPEG")
    app15 = b"\xff\xef" + struct.pack(">H", 2 + len(thumbnail.getvalue())) + thumbnail.getvalue()
    data = picture.getvalue()[:2] + app15 + picture.getvalue()[2:]
    whole = write(tmp_path, "whole.jpg", data)
    check_before_decoding(whole, FIRST, role="first frame")
    cut = write(tmp_path, "cut.jpg", data[:-2])
    with pytest.raises(InputRejected, match="damaged or incomplete"):
        check_before_decoding(cut, FIRST, role="first frame")
    with Image.open(cut) as broken, pytest.raises(OSError):
        broken.load()


@pytest.mark.parametrize("case", ACCEPTED)
def test_the_structure_check_accepts_what_prepare_accepts(case: str, tmp_path: Path) -> None:
    build, role, _, _ = ACCEPTED[case]
    check_before_decoding(build(tmp_path), limits_for(role), role=role)


JOB = """
from kling_demo.wavespeed.client import WaveSpeedClient
from kling_demo.jobs.runner import run
from kling_demo.jobs.steps import JobContext, JobRequest, generate
from pathlib import Path
"""


def test_a_truncated_end_frame_is_refused_before_the_first_frame_is_decoded(tmp_path: Path, sandbox) -> None:
    """The first frame decodes to 64 MB; the job must refuse the broken end frame without spending it."""
    first = write_flat_png(tmp_path / "first.png", 4000, 4000, (200, 120, 40, 128))
    end = truncated(tmp_path, "end.png", "PNG")
    grew_mb, updates = peak_growth(JOB, f"""
ctx = JobContext(client=WaveSpeedClient({sandbox.base_url!r}, "k"), videos_dir=Path({str(tmp_path / "videos")!r}))
updates = []
try:
    for update in run(generate(JobRequest(image={str(first)!r}, prompt="dusk", end_image={str(end)!r}), ctx),
                      ctx.stop):
        updates.append(update.stage.value)
except Exception as error:
    updates.append(type(error).__name__ + ": " + str(error))
outcome = updates
""")
    assert updates[-1] == ("InputRejected: The end frame image is damaged or incomplete — export it again as JPEG "
                           "or PNG.")
    assert updates[:-1] == ["preparing"], "refused while the inputs were checked"
    assert grew_mb < 32, f"the first frame was decoded: the peak RSS rose by {grew_mb:.0f} MB"
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0


@pytest.mark.parametrize("components", [3, 4])
def test_a_progressive_jpeg_bomb_is_refused_before_anything_is_uploaded(tmp_path: Path, sandbox,
                                                                       components: int) -> None:
    """A 1 MB progressive JPEG of 9400×9400 would hold 530 MB (RGB) or 707 MB (CMYK) while it decodes, even at 1/8:
    the job refuses it from its header, saying what would do, and nothing reaches the API."""
    from kling_demo.jobs.runner import run
    from kling_demo.jobs.steps import JobContext, JobRequest, generate
    from kling_demo.wavespeed.client import WaveSpeedClient

    bomb = write_flat_jpeg(tmp_path / "bomb.jpg", 9400, 9400, components, scans="progressive")
    assert bomb.stat().st_size < 1_500_000
    ctx = JobContext(client=WaveSpeedClient(sandbox.base_url, "k"), videos_dir=tmp_path / "videos")
    with pytest.raises(InputRejected) as refusal:
        for _ in run(generate(JobRequest(image=str(bomb), prompt="dusk"), ctx), ctx.stop):
            pass
    largest = {3: "4000×4000", 4: "3464×3464"}[components]
    assert refusal.value.message == (
        "The first frame image is a progressive JPEG of 9400×9400 px (88 megapixels), too large to decode: a "
        "progressive JPEG is held in memory whole, however much it is reduced — save it as a baseline "
        f"(non-progressive) JPEG, or at most {largest} px.")
    assert sandbox.stats()["uploads"] == 0 and sandbox.stats()["submissions"] == 0
