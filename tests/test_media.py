"""Image checks and fix-ups: a corpus of awkward files, each fixed within the API's limits or refused plainly."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from kling_demo.errors import InputRejected
from kling_demo.media import (
    PreparedImage,
    check_duration,
    check_guidance,
    check_prompt,
    prepare_image,
    quick_check_image,
)
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
    with pytest.raises(InputRejected, match="no image given for the first frame"):
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
    megabytes = f"{source.stat().st_size / MB:.1f} MB"
    assert f"re-encoded {megabytes} PNG as JPEG (quality 92) to fit the 10 MB limit" in prepared.changes
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
    assert "no image given" in (quick_check_image(None, FIRST, role="first frame") or "")
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


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_long_prompt_states_the_cap_and_the_length(field: str) -> None:
    assert len(check_prompt("x" * SPEC.prompt_max_chars, SPEC, field=field)) == SPEC.prompt_max_chars
    with pytest.raises(InputRejected) as refusal:
        check_prompt("x" * (SPEC.prompt_max_chars + 1), SPEC, field=field, required=False)
    message = refusal.value.message
    assert str(SPEC.prompt_max_chars) in message and str(SPEC.prompt_max_chars + 1) in message
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
    with pytest.raises(InputRejected, match="guidance scale must be a number from 0 to 1"):
        check_guidance(value, SPEC)


@pytest.mark.parametrize(("value", "expected"), [(5, 5), ("5", 5), (5.0, 5), (10, 10), ("10", 10), (" 10.0 ", 10)])
def test_duration_accepts_documented_values(value: object, expected: int) -> None:
    result = check_duration(value, SPEC)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value", [7, 0, -5, 5.5, "abc", "", None, True, float("nan"), "5s", [5], 1e309])
def test_duration_refuses_anything_else(value: object) -> None:
    with pytest.raises(InputRejected, match="duration must be 5 or 10 seconds"):
        check_duration(value, SPEC)


@pytest.mark.parametrize("orientation, mark_x", [(1, "left"), (6, "right")], ids=["passed-through", "rotated"])
def test_the_history_preview_is_small_and_upright(tmp_path, orientation, mark_x):
    from kling_demo.media import save_preview

    picture = Image.new("RGB", (800, 600), (10, 100, 200))
    picture.paste((255, 0, 0), (0, 0, 80, 60))  # a red mark in the stored top-left corner
    exif = picture.getexif()
    exif[0x0112] = orientation  # 6: shown rotated 90° clockwise, so the mark ends up top-right
    source = tmp_path / "photo.jpg"
    picture.save(source, exif=exif)
    prepared = prepare_image(source, KLING_V2_I2V_MASTER.first_frame, work_dir=tmp_path)
    assert bool(prepared.changes) is (orientation != 1)
    with Image.open(save_preview(prepared, tmp_path / "previews")) as preview:
        assert preview.size == ((320, 240) if orientation == 1 else (240, 320))
        x = 4 if mark_x == "left" else preview.width - 4
        red, green, _ = preview.convert("RGB").getpixel((x, 4))
        assert red > 200 and green < 60
