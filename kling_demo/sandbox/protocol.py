"""WaveSpeed's wire format: the `{code, message, data}` envelope, the error it carries, timestamps, auth."""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An answer in WaveSpeed's error envelope: the HTTP status repeated in `code`, maybe an `error_code`."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, error_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.error_code = error_code


def envelope(data: Any, status: int = 200, message: str = "success") -> JSONResponse:
    """`data` wrapped the way every WaveSpeed answer is, with `code` equal to the HTTP status."""
    return JSONResponse({"code": status, "message": message, "data": data}, status_code=status)


def error_response(error: ApiError) -> JSONResponse:
    """The envelope for a refused request, with any headers it carries (e.g. Retry-After)."""
    body: dict[str, Any] = {"code": error.status, "message": error.message, "data": None}
    if error.error_code is not None:
        # (?) WaveSpeed's error bodies carry `error_code`; its values are not documented, these are ours.
        body["error_code"] = error.error_code
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def iso(epoch: float) -> str:
    """A timestamp as WaveSpeed writes it: UTC, milliseconds, a trailing Z."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def base_url(request: Request) -> str:
    """The origin the client used, so URLs in answers point back where it can reach them."""
    return str(request.base_url).rstrip("/")


def bearer_token(request: Request, accepted_key: str | None) -> str:
    """The request's API key; 401 when missing, or when `accepted_key` is set and differs."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "Unauthorized: missing API key (Authorization: Bearer <key>)")
    if accepted_key is not None and not hmac.compare_digest(token.encode(), accepted_key.encode()):
        raise ApiError(401, "Unauthorized: invalid API key")
    return token


async def json_body(request: Request) -> Any:
    """The request body parsed as JSON, or a 400."""
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "body: not valid JSON") from None


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object")
    return body
