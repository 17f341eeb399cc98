"""Checks a submission against the model's documented limits; a refusal names the field and the limit."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from kling_demo.models import MB, ImageLimits, ModelSpec
from kling_demo.sandbox.protocol import ApiError
from kling_demo.sandbox.uploads import UploadStore


# The model's own schema on WaveSpeed caps these fields. They are the server's rule, kept here
# rather than read from the app's ModelSpec, so the sandbox refuses what the real API refuses.
SCHEMA_TEXT_CAPS = {"prompt": 2000, "negative_prompt": 2500}


@dataclass(frozen=True)
class Submission:
    """A validated request body."""

    first_frame: bytes
    end_frame: bytes | None
    duration: int
    sync: bool
    inputs: dict[str, Any]  # the body as sent, minus inline image data: what the task shows as its input


def validate_submission(body: dict[str, Any], spec: ModelSpec, uploads: UploadStore) -> Submission:
    """Check every field against `spec`; raise ApiError(400) naming the first bad field."""
    _check_prompts(body)
    _check_guidance(body.get("guidance_scale", spec.guidance_default), spec)
    duration = checked_duration(body.get("duration", spec.default_duration), spec)
    first_frame = _decode_image_field("image", body.get("image"), uploads)
    _check_image("image", first_frame, spec.first_frame)
    end_frame = None
    if body.get("end_image") not in (None, ""):
        end_frame = _decode_image_field("end_image", body["end_image"], uploads)
        _check_image("end_image", end_frame, spec.end_frame)
    return Submission(first_frame, end_frame, duration, bool(body.get("enable_sync_mode")), public_inputs(body))


IMAGE_FIELDS = ("image", "end_image")


def public_inputs(body: dict[str, Any]) -> dict[str, Any]:
    """The submitted fields to echo back: image URLs stay, inline images (data URIs, base64) are left out."""
    return {
        name: value
        for name, value in body.items()
        if name not in IMAGE_FIELDS or (isinstance(value, str) and value.strip().startswith(("http://", "https://")))
    }


def _check_prompts(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "prompt: is required and must be a non-empty string")
    negative_prompt = body.get("negative_prompt")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ApiError(400, "negative_prompt: must be a string")
    for name, cap in SCHEMA_TEXT_CAPS.items():
        text = body.get(name)
        if isinstance(text, str) and len(text) > cap:
            raise ApiError(
                400,
                f"{name}: must be at most {cap} characters (got {len(text)})",
                error_code="invalid_parameter",
            )


def _check_guidance(guidance: Any, spec: ModelSpec) -> None:
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not spec.guidance_min <= guidance <= spec.guidance_max
    ):
        raise ApiError(
            400,
            f"guidance_scale: must be a number between {spec.guidance_min:.2f} and {spec.guidance_max:.2f} "
            f"(got {guidance!r})",
        )


def checked_duration(duration: Any, spec: ModelSpec) -> int:
    """`duration` as whole seconds the model offers, or a 400 naming the choices."""
    if isinstance(duration, float) and duration.is_integer():
        duration = int(duration)
    if isinstance(duration, bool) or not isinstance(duration, int) or duration not in spec.durations:
        allowed = " or ".join(str(seconds) for seconds in spec.durations)
        raise ApiError(400, f"duration: must be {allowed} seconds (got {duration!r})")
    return duration


def _decode_image_field(name: str, value: Any, uploads: UploadStore) -> bytes:
    """The bytes behind an image field: a data URI, bare base64, or a file uploaded to this sandbox."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name}: is required (a data URI, base64 string or URL of a file uploaded to this sandbox)")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        return _uploaded_bytes(name, text, uploads)
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if ";base64" not in header or not payload:
            raise ApiError(400, f"{name}: data URI must be base64-encoded (data:image/png;base64,...)")
        text = payload
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{name}: not a URL, data URI or valid base64 string") from None


def _uploaded_bytes(name: str, url: str, uploads: UploadStore) -> bytes:
    upload = uploads.stored_at(url)
    if upload is None:
        raise ApiError(
            400,
            f"{name}: URL {url} was not served by this sandbox; the sandbox fetches no outside URLs, "
            "so upload the file first (POST /api/v3/media/uploads) or send a data URI",
        )
    return upload.path.read_bytes()


def _check_image(name: str, image_bytes: bytes, limits: ImageLimits) -> None:
    """Refuse an image that breaks the model's documented limits, naming the field and the limit."""
    if len(image_bytes) > limits.max_bytes:
        raise ApiError(
            400,
            f"{name}: file size {len(image_bytes) / MB:.1f} MB exceeds the maximum {limits.max_bytes / MB:g} MB",
        )
    try:
        with Image.open(io.BytesIO(image_bytes)) as picture:
            image_format = picture.format or "unknown"
            width, height = picture.size
            if image_format in limits.formats:
                picture.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(400, f"{name}: cannot be decoded as an image ({_formats_text(limits)} expected)") from None
    if image_format not in limits.formats:
        raise ApiError(400, f"{name}: format {image_format} is not supported ({_formats_text(limits)} only)")
    if width < limits.min_side or height < limits.min_side:
        raise ApiError(
            400,
            f"{name}: resolution {width}x{height} is below the minimum {limits.min_side}x{limits.min_side} px",
        )
    if not limits.aspect_ok(width, height):
        low = _aspect_text(limits.min_aspect) if limits.min_aspect is not None else "any"
        high = _aspect_text(limits.max_aspect) if limits.max_aspect is not None else "any"
        raise ApiError(
            400,
            f"{name}: aspect ratio {_aspect_text(width / height)} ({width}x{height}) is outside "
            f"the allowed range {low} to {high}",
        )


def _aspect_text(ratio: float) -> str:
    return f"{round(ratio, 2):g}:1" if ratio >= 1 else f"1:{round(1 / ratio, 2):g}"


def _formats_text(limits: ImageLimits) -> str:
    return " or ".join(limits.formats)
