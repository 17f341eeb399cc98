"""Image checks and fix-ups against a model's documented limits, before anything is uploaded or paid for."""

from __future__ import annotations

import io
import logging
import math
import mmap
import re
import shutil
import struct
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputRejected
from ..models import MB, ImageLimits

# ---------------------------------------------------------------------------
# Image checks and fix-ups, applied before anything is uploaded or paid for.

log = logging.getLogger(__name__)

JPEG_QUALITY = 92
FLATTEN_BACKGROUND = (255, 255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_ROTATION_NAMES = {
    2: "mirrored",
    3: "180°",
    4: "flipped vertically",
    5: "mirrored, 90°",
    6: "90°",
    7: "mirrored, 270°",
    8: "270°",
}
# The transposition that makes a picture with each EXIF orientation upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FORMAT_NAMES = {"WEBP": "WebP"}
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png"}
_NAME_SUFFIXES = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",)}
_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
# Multi-picture JPEGs from phone cameras are ordinary JPEG files to every decoder.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombWarning)
# JPEG can be decoded at these fractions of its size for a fraction of the memory (libjpeg's DCT scaling).
_DRAFT_SCALES = (2, 4, 8)
# A progressive JPEG, or one whose first scan leaves a colour channel out, is decoded by first keeping every DCT
# coefficient of the whole picture (2 bytes each) whatever the draft scale: 6 bytes a pixel for RGB without chroma
# subsampling, 8 for CMYK, so 530 / 707 MB at 9400×9400 for a 1 MB file. Such a file may hold as many as a picture
# of `max_pixels` with three full-size channels: 96 MB at 16 megapixels.
_BUFFERED_BYTES_PER_PIXEL = 6
# Decoding and re-encoding is CPU-bound, so more than two at once on a 2-core Space gains nothing, while
# each holds up to ~4 bytes a pixel of `max_pixels` several times over: the slots bound the sum.
_DECODE_SLOTS = threading.BoundedSemaphore(2)


@dataclass(frozen=True)
class PreparedImage:
    """An image file ready to upload: JPEG or PNG within every documented limit."""

    path: Path
    width: int
    height: int
    format: str
    size_bytes: int
    changes: tuple[str, ...] = ()
    # A small upright RGB copy for the history list, made while the pixels were decoded anyway.
    preview: Image.Image | None = field(default=None, compare=False, repr=False)

    @property
    def mime_type(self) -> str:
        return _MIME_TYPES[self.format]


def prepare_image(
    source: str | Path | None,
    limits: ImageLimits,
    *,
    role: str = "first frame",
    work_dir: Path | None = None,
) -> PreparedImage:
    """Check an image against `limits` and fix what can be fixed without changing the picture.

    Valid JPEG/PNG files pass through byte for byte; fixed files go to `work_dir`. Raises InputRejected.
    """
    path = _existing_file(source, role)
    source_bytes = path.stat().st_size
    with _DECODE_SLOTS, _open_image(path, role, limits) as image:
        source_format = _source_format(image)
        scale = _check_size(image, source_format, path, limits, role)
        if scale == 1 and _fits_as_is(image, source_format, source_bytes, limits):
            size = image.size
            # Only the preview needs pixels: a JPEG is decoded at the smallest scale that still makes one
            # (libjpeg reads every byte either way, so a damaged file is still refused).
            image.draft(image.mode, (PREVIEW_SIDE, PREVIEW_SIDE))
            _decode(image, role)
            return replace(_pass_through(path, size, source_format, source_bytes, work_dir, role),
                           preview=_preview(image, _orientation(image)))
        changes = _draft(image, scale, limits, role)
        _decode(image, role)
        frames = getattr(image, "n_frames", 1)
        changes += [f"used the first of {frames} frames"] if frames > 1 else []
        icc_profile = None if image.mode == "CMYK" else image.info.get("icc_profile")
        picture, orientation_changes = _apply_orientation(image)
        if scale > 1:
            picture = _within_aspect(picture, limits)
        picture, mode_changes = _to_upload_mode(picture)
        if picture is not image:
            image.close()  # free the decoded source (4 bytes a pixel) before encoding the converted copy
        encoded = _encode_within_limits(picture, source_format, source_bytes, limits, icc_profile)
    changes += orientation_changes + mode_changes + list(encoded.changes)
    _check_dimensions(encoded.width, encoded.height, limits, role)
    target = _new_file(work_dir, role, encoded.format)
    target.write_bytes(encoded.data)
    log.info("prepared %s %s -> %s: %s", role, path.name, target.name, "; ".join(changes) or "re-saved")
    return PreparedImage(target, encoded.width, encoded.height, encoded.format, len(encoded.data), tuple(changes),
                         preview=_preview(picture, orientation=1))


def quick_check_image(
    source: str | Path | None, limits: ImageLimits, *, role: str, required: bool = True
) -> str | None:
    """Header-only check for the page's instant validator: the refusal message, or None if it looks fine."""
    if not source and not required:
        return None
    try:
        path = _existing_file(source, role)
        with _open_image(path, role, limits) as image:
            _check_size(image, _source_format(image), path, limits, role)
    except InputRejected as refusal:
        return refusal.message
    return None


def check_before_decoding(source: str | Path | None, limits: ImageLimits, *, role: str) -> None:
    """Every check that decodes no pixels: the header, the limits, and that a JPEG or PNG is complete.

    Run it on every frame of a job before decoding any, so a bad end frame costs no first-frame decode.
    Raises InputRejected."""
    path = _existing_file(source, role)
    with _open_image(path, role, limits) as image:
        source_format = _source_format(image)
        _check_size(image, source_format, path, limits, role)
        _check_complete(image, source_format, path, role)


def _existing_file(source: str | Path | None, role: str) -> Path:
    if source is None or not str(source).strip():
        raise InputRejected(f"No image given for the {role} — add a JPEG or PNG image.")
    path = Path(source)
    if not path.is_file():
        raise InputRejected(f"The {role} image file {path.name!r} was not found — upload it again.")
    if path.stat().st_size == 0:
        raise InputRejected(f"The {role} image file is empty (0 bytes) — use a JPEG or PNG image.")
    return path


@contextmanager
def _open_image(path: Path, role: str, limits: ImageLimits) -> Iterator[Image.Image]:
    """Open the image header, refusing non-images and decompression bombs before any pixel is decoded."""
    try:
        image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as bomb:
        # Pillow refuses before we see the size; its message carries the pixel count.
        pixels = re.search(r"\((\d+) pixels\)", str(bomb))
        raise _bomb_refusal(role, _megapixels(int(pixels[1])) if pixels else "too large", limits) from bomb
    except UnidentifiedImageError as error:
        raise InputRejected(
            f"The {role} file is not an image that can be read — use a JPEG or PNG image."
        ) from error
    except _UNREADABLE as error:
        log.info("could not read the %s header: %s", role, error)  # Pillow's words stay in the log
        raise InputRejected(f"The {role} image could not be read — use a JPEG or PNG image.") from error
    with image:
        width, height = image.size
        # Pillow only warns between 1x and 2x its pixel limit; refuse the whole range.
        if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
            raise _bomb_refusal(role, f"{width}×{height} px ({_megapixels(width * height)})", limits)
        yield image


def _bomb_refusal(role: str, measured: str, limits: ImageLimits) -> InputRejected:
    limit = Image.MAX_IMAGE_PIXELS or 0
    return InputRejected(
        f"The {role} image is {measured}; images over {limit / 1e6:.0f} megapixels are refused "
        f"as a possible decompression bomb — use a smaller image (at most {_megapixels(limits.max_pixels)})."
    )


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} megapixels"


def _decode(image: Image.Image, role: str) -> None:
    try:
        image.load()
    except _UNREADABLE as error:
        raise _damaged(role, error) from error


def _damaged(role: str, error: Exception) -> InputRejected:
    log.info("the %s image is damaged: %s", role, error)  # Pillow's words stay in the log
    return InputRejected(f"The {role} image is damaged or incomplete — export it again as JPEG or PNG.")


def _source_format(image: Image.Image) -> str:
    return _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")


def _check_size(image: Image.Image, source_format: str, path: Path, limits: ImageLimits, role: str) -> int:
    """Refuse sizes the model cannot take or we will not decode; return the draft scale (1 = full size)."""
    width, height = _oriented_size(image)
    _check_dimensions(width, height, limits, role)
    scale = _draft_scale(width, height, source_format, limits)
    if scale is None:
        raise _too_many_pixels(width, height, source_format, limits, role)
    if source_format == "JPEG" and _buffered_bytes(image, path) > limits.max_pixels * _BUFFERED_BYTES_PER_PIXEL:
        raise _held_whole(image, limits, role)
    return scale


def _buffered_bytes(image: Image.Image, path: Path) -> int:
    """What libjpeg holds for the whole picture while it decodes this JPEG, draft or not: every DCT coefficient when
    the file is progressive or its first scan leaves a component out (then each later scan adds to them); else 0,
    as it decodes in one pass a few rows at a time."""
    layers = getattr(image, "layer", [])
    if not image.info.get("progressive") and _first_scan_components(path) in (0, len(layers)):
        return 0  # one pass (or no scan at all: the file is refused as incomplete)
    return _coefficient_bytes(*image.size, layers)


def _coefficient_bytes(width: int, height: int, layers: list[tuple[int, int, int, int]]) -> int:
    """libjpeg's whole-picture coefficient buffer: for each component, its 8×8 blocks (rounded up to whole sampling
    units) × 64 coefficients × 2 bytes."""
    factors, most_wide, most_high = _sampling(layers)
    blocks = 0
    for horizontal, vertical in factors:
        wide = -(-width * horizontal // (8 * most_wide))
        high = -(-height * vertical // (8 * most_high))
        blocks += -(-wide // horizontal) * horizontal * -(-high // vertical) * vertical
    return blocks * 64 * 2


def _sampling(layers: list[tuple[int, int, int, int]]) -> tuple[list[tuple[int, int]], int, int]:
    """Each component's (horizontal, vertical) sampling factors and the largest of each. Pillow's `layer` holds
    (id, horizontal, vertical, quantization table) for each component."""
    factors = [(max(1, horizontal), max(1, vertical)) for _, horizontal, vertical, _ in layers] or [(1, 1)]
    return factors, max(h for h, _ in factors), max(v for _, v in factors)


def _held_whole(image: Image.Image, limits: ImageLimits, role: str) -> InputRejected:
    """The refusal of a progressive (or multi-scan) JPEG too big to hold whole: what it is, and what would do."""
    kind = "progressive" if image.info.get("progressive") else "multi-scan"
    layers = getattr(image, "layer", [])
    budget = limits.max_pixels * _BUFFERED_BYTES_PER_PIXEL
    # Bytes a pixel before whole blocks round it up: 2 a coefficient, each component at its share of the pixels.
    factors, most_wide, most_high = _sampling(layers)
    per_pixel = 2 * sum(h * v for h, v in factors) / (most_wide * most_high)
    fit = math.sqrt(budget / (per_pixel * image.width * image.height))
    smaller = [math.floor(side * fit + 1e-6) for side in image.size]
    while _coefficient_bytes(*smaller, layers) > budget:  # whole blocks round up: shave the last pixels
        smaller = [side - 1 for side in smaller]
    width, height = _oriented_size(image)
    if (width, height) != image.size:
        smaller.reverse()
    at_most = f", or at most {smaller[0]}×{smaller[1]} px" if min(smaller) >= limits.min_side else ""
    return InputRejected(
        f"The {role} image is a {kind} JPEG of {width}×{height} px ({_megapixels(width * height)}), too large to "
        f"decode: a {kind} JPEG is held in memory whole, however much it is reduced — save it as a baseline "
        f"(non-progressive) JPEG{at_most}."
    )


def _too_many_pixels(width: int, height: int, source_format: str, limits: ImageLimits, role: str) -> InputRejected:
    fit = math.sqrt(limits.max_pixels / (width * height))
    smaller = [math.floor(side * fit + 1e-6) for side in (width, height)]
    at_most = f" (at most {smaller[0]}×{smaller[1]} px)" if min(smaller) >= limits.min_side else ""
    return InputRejected(
        f"The {role} image is {width}×{height} px ({_megapixels(width * height)}); "
        f"{_FORMAT_NAMES.get(source_format, source_format)} images over {_megapixels(limits.max_pixels)} are "
        f"refused, as the model makes video of at most 1080p — use a smaller image{at_most}."
    )


def _draft_scale(width: int, height: int, source_format: str, limits: ImageLimits) -> int | None:
    """1 when the picture may be decoded in full; else the JPEG scale that brings it within `max_pixels`
    and keeps `min_side`, or None when there is none (the picture is refused)."""
    if width * height <= limits.max_pixels:
        return 1
    if source_format != "JPEG":
        return None
    for scale in _DRAFT_SCALES:
        scaled_width, scaled_height = -(-width // scale), -(-height // scale)  # libjpeg rounds up
        if min(scaled_width, scaled_height) < limits.min_side:
            return None
        if scaled_width * scaled_height <= limits.max_pixels:
            return scale
    return None


def _draft(image: Image.Image, scale: int, limits: ImageLimits, role: str) -> list[str]:
    """Have libjpeg decode at 1/`scale` of the size; the change note for the visitor, or none."""
    if scale == 1:
        return []
    before = _oriented_size(image)
    width, height = image.size
    image.draft(image.mode, (width // scale, height // scale))
    if image.width * image.height > limits.max_pixels:  # a JPEG Pillow cannot draft (never seen; never decoded)
        raise _too_many_pixels(*before, "JPEG", limits, role)
    after = _oriented_size(image)
    return [f"reduced from {before[0]}×{before[1]} to {after[0]}×{after[1]} px (the model makes video of at "
            f"most 1080p; images over {_megapixels(limits.max_pixels)} are reduced)"]


def _within_aspect(picture: Image.Image, limits: ImageLimits) -> Image.Image:
    """Trim the pixel or two by which rounding a drafted size up can cross an aspect bound."""
    size = _scaled_size(*picture.size, 1.0, limits)
    return picture if size == picture.size else picture.crop((0, 0, *size))


def _check_complete(image: Image.Image, source_format: str, path: Path, role: str) -> None:
    """Refuse a truncated JPEG or PNG by reading its structure, not its pixels.

    PNG: every chunk up to IEND with its checksum (Pillow's verify). JPEG: an end-of-image marker after
    the main image's first scan (an EXIF thumbnail before it has its own). Other formats are left to
    the decode; they are converted anyway."""
    try:
        if source_format == "PNG":
            image.verify()
        elif source_format == "JPEG" and not _jpeg_has_end(path):
            raise EOFError("no end-of-image marker after the scan data")
    except _UNREADABLE as error:
        raise _damaged(role, error) from error


def _jpeg_has_end(path: Path) -> bool:
    """Walk the marker segments to the first scan, then look for EOI: no pixel is decoded."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        scan = _first_scan(data)
        # Entropy-coded data follows the scan header, then markers, then EOI.
        return scan is not None and data.find(b"\xff\xd9", scan[0]) != -1


def _first_scan_components(path: Path) -> int:
    """How many colour components the JPEG's first scan codes (0 when it has no scan): no pixel is decoded."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        scan = _first_scan(data)
        return scan[1] if scan is not None else 0


def _first_scan(data: mmap.mmap) -> tuple[int, int] | None:
    """Walk the marker segments to the first start of scan (SOS): where its coded data starts and how many
    components it codes; None when there is none."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        marker = data[position + 1]
        if data[position] != 0xFF or marker in (0x00, 0xFF):  # junk or fill bytes: Pillow skips them too
            position += 1
            continue
        start, position = position, position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:
            return position, data[start + 4] if start + 4 < len(data) else 0
    return None


def _orientation(image: Image.Image) -> int:
    # PNG getexif() decodes the whole file unless the eXIf chunk came before the pixels.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    return orientation if orientation in _ROTATION_NAMES else 1


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as the picture is shown, after its EXIF orientation."""
    width, height = image.size
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def _check_dimensions(width: int, height: int, limits: ImageLimits, role: str) -> None:
    measured = f"The {role} image is {width}×{height} px"
    if min(width, height) < limits.min_side:
        raise InputRejected(
            f"{measured}; the {role} must be at least {limits.min_side}×{limits.min_side} px — use a larger image."
        )
    if not limits.aspect_ok(width, height):
        raise InputRejected(
            f"{measured} (aspect ratio {_ratio_text(width / height)}); the {role} must have an aspect ratio "
            f"{_aspect_range_text(limits)} — crop it closer to square."
        )


def _ratio_text(ratio: float) -> str:
    """Render width/height as '2.5:1' or '1:2.5'."""
    return f"{round(ratio, 2):g}:1" if ratio >= 1 else f"1:{round(1 / ratio, 2):g}"


def _aspect_range_text(limits: ImageLimits) -> str:
    if limits.min_aspect is not None and limits.max_aspect is not None:
        return f"between {_ratio_text(limits.min_aspect)} and {_ratio_text(limits.max_aspect)}"
    if limits.max_aspect is not None:
        return f"of at most {_ratio_text(limits.max_aspect)}"
    return f"of at least {_ratio_text(limits.min_aspect or 0.0)}"


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _fits_as_is(image: Image.Image, source_format: str, source_bytes: int, limits: ImageLimits) -> bool:
    """True when the file can be uploaded unchanged: allowed format, plain colours, upright, small enough."""
    return (
        source_format in limits.formats
        and image.mode in ("L", "RGB")
        and not _has_alpha(image)
        and _orientation(image) == 1
        and source_bytes <= limits.max_bytes
    )


def _pass_through(
    path: Path, size: tuple[int, int], source_format: str, source_bytes: int, work_dir: Path | None, role: str
) -> PreparedImage:
    """Keep the file byte for byte; copy it only when its name would misstate its format."""
    if path.suffix.lower() not in _NAME_SUFFIXES[source_format]:
        target = _new_file(work_dir, role, source_format)
        shutil.copyfile(path, target)
        log.debug("copied %s to %s so its name matches its %s content", path.name, target.name, source_format)
        path = target
    return PreparedImage(path, *size, source_format, source_bytes)


def _apply_orientation(image: Image.Image) -> tuple[Image.Image, list[str]]:
    orientation = _orientation(image)
    if orientation == 1:
        return image, []
    return ImageOps.exif_transpose(image), [f"applied EXIF rotation ({_ROTATION_NAMES[orientation]})"]


def _to_upload_mode(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert to 8-bit grayscale or RGB, flattening transparency onto white."""
    if _has_alpha(image):
        # Each copy of a large picture costs 4 bytes a pixel: make no copy that is not kept.
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        if rgba.getextrema()[3][0] == 255:
            return rgba.convert("RGB"), ["removed an unused alpha channel"]
        flattened = Image.new("RGB", rgba.size, FLATTEN_BACKGROUND[:3])
        flattened.paste(rgba, mask=rgba)
        return flattened, ["flattened transparency onto white"]
    if image.mode in ("L", "RGB"):
        return image, []
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        deep = image if image.mode in ("I", "F") else image.convert("I")
        # Scale a 16-bit range down; a plain convert("L") would clip everything above 255 to white.
        divisor = 256 if deep.getextrema()[1] > 255 else 1
        depth = "32-bit" if image.mode in ("I", "F") else "16-bit"
        return deep.point(lambda value: value / divisor).convert("L"), [f"reduced {depth} grayscale to 8-bit"]
    if image.mode == "1":
        return image.convert("L"), ["converted 1-bit black and white to 8-bit grayscale"]
    if image.mode == "P":
        return image.convert("RGB"), ["expanded the colour palette to RGB"]
    return image.convert("RGB"), [f"converted {image.mode} colours to RGB"]


@dataclass(frozen=True)
class _Encoded:
    data: bytes
    format: str
    width: int
    height: int
    changes: tuple[str, ...]


def _encode_within_limits(
    picture: Image.Image, source_format: str, source_bytes: int, limits: ImageLimits, icc_profile: bytes | None
) -> _Encoded:
    """PNG when lossless fits (never for a JPEG source), else JPEG, downscaled only if still too big."""
    source_name = _FORMAT_NAMES.get(source_format, source_format)
    if source_format != "JPEG" and "PNG" in limits.formats:
        png = _save(picture, "PNG", icc_profile)
        if len(png) <= limits.max_bytes:
            changes = () if source_format == "PNG" else (f"converted {source_name} to PNG",)
            return _Encoded(png, "PNG", picture.width, picture.height, changes)
    original_size = picture.size
    jpeg = _save(picture, "JPEG", icc_profile)
    while len(jpeg) > limits.max_bytes:
        picture = _downscaled(picture, math.sqrt(limits.max_bytes / len(jpeg)) * 0.95, limits)
        jpeg = _save(picture, "JPEG", icc_profile)
    jpeg_name = f"JPEG (quality {JPEG_QUALITY})"
    limit = _megabytes(limits.max_bytes)
    if source_bytes > limits.max_bytes:
        changes = [f"re-encoded {_megabytes(source_bytes)} {source_name} as {jpeg_name} to fit the {limit} limit"]
    elif source_format == "JPEG":
        changes = []
    else:
        changes = [f"converted {source_name} to {jpeg_name} because PNG would exceed the {limit} limit"]
    if picture.size != original_size:
        (old_w, old_h), (new_w, new_h) = original_size, picture.size
        changes.append(f"downscaled from {old_w}×{old_h} to {new_w}×{new_h} px to fit the {limit} limit")
    return _Encoded(jpeg, "JPEG", picture.width, picture.height, tuple(changes))


def _downscaled(picture: Image.Image, scale: float, limits: ImageLimits) -> Image.Image:
    """Shrink by `scale`, keeping the short side at or above the limit; refuse when that is not enough."""
    short_side = min(picture.size)
    if short_side <= limits.min_side:
        raise InputRejected(
            f"The image cannot be made smaller than {_megabytes(limits.max_bytes)} without going below "
            f"{limits.min_side} px — use a simpler or smaller image."
        )
    size = _scaled_size(*picture.size, max(scale, limits.min_side / short_side), limits)
    return picture.resize(size, Image.Resampling.LANCZOS)


def _scaled_size(width: int, height: int, scale: float, limits: ImageLimits) -> tuple[int, int]:
    new_width, new_height = (max(round(side * scale), limits.min_side) for side in (width, height))
    # Rounding can push an image that sits exactly on an aspect bound past it; trim the long side.
    if limits.max_aspect is not None and new_width / new_height > limits.max_aspect:
        new_width = math.floor(new_height * limits.max_aspect)
    if limits.min_aspect is not None and new_width / new_height < limits.min_aspect:
        new_height = math.floor(new_width / limits.min_aspect)
    return new_width, new_height


def _save(picture: Image.Image, image_format: str, icc_profile: bytes | None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    picture.save(buffer, image_format, **options)
    return buffer.getvalue()


def _megabytes(size_bytes: int) -> str:
    """A size in the binary unit it is computed in (MiB, 1,048,576 bytes), labelled so."""
    return f"{size_bytes / MB:.1f} MiB" if size_bytes % MB else f"{size_bytes // MB} MiB"


def _new_file(work_dir: Path | None, role: str, image_format: str) -> Path:
    directory = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="kling-image-"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{role.replace(' ', '-')}-{uuid.uuid4().hex[:12]}{_SUFFIXES[image_format]}"


PREVIEW_SIDE = 320


def _preview(image: Image.Image, orientation: int) -> Image.Image:
    """Shrink first (a cheap box reduce), then turn upright: never transposes the full image."""
    factor = max(1, min(image.size) // (2 * PREVIEW_SIDE))
    small = image.reduce(factor) if factor > 1 else image.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    if orientation != 1:
        small = small.transpose(_ORIENTATION_TRANSPOSE[orientation])
    return small.convert("RGB")


def save_preview(prepared: PreparedImage, dest_dir: Path) -> Path:
    """The prepared image's preview as a JPEG under an unguessable name in `dest_dir`, for the history list."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{uuid.uuid4().hex}.jpg"
    preview = prepared.preview
    if preview is None:
        with Image.open(prepared.path) as picture:
            preview = _preview(picture, _orientation(picture))
    preview.save(target, "JPEG", quality=85)
    return target
