"""Files clients upload: a signed PUT slot from a ticket, or a one-shot multipart upload."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kling_demo.models import MB

MAX_UPLOAD_BYTES = 200 * MB  # the SDK's own cap for a single upload


@dataclass
class Upload:
    """A file slot: created by a ticket (bytes arrive by PUT) or by a binary upload."""

    token: str
    filename: str
    content_type: str
    declared_size: int | None
    path: Path
    stored: bool = False

    def url_path(self) -> str:
        return f"/files/uploads/{self.token}/{self.filename}"


class UploadStore:
    """Upload slots on disk under `folder`, their signatures, and how many were made and filled."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._uploads: dict[str, Upload] = {}
        self._signing_key = secrets.token_bytes(16)
        self.uploads = 0
        self.upload_tickets = 0

    def new(self, filename: str, content_type: str, size: int | None, ticket: bool = False) -> Upload:
        """A fresh slot for `filename`; `ticket` counts it as a signed-URL ticket."""
        token = uuid.uuid4().hex
        folder = self.folder / token
        folder.mkdir(parents=True, exist_ok=True)
        upload = Upload(token, filename, content_type, size, folder / filename)
        with self._lock:
            self._uploads[token] = upload
            self.upload_tickets += ticket
        return upload

    def get(self, token: str) -> Upload | None:
        return self._uploads.get(token)

    def mark_stored(self, upload: Upload) -> None:
        with self._lock:
            upload.stored = True
            self.uploads += 1

    def sign(self, token: str) -> str:
        """The signature a PUT to this slot must carry."""
        return hmac.new(self._signing_key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def signature_ok(self, token: str, signature: str) -> bool:
        return self.get(token) is not None and hmac.compare_digest(signature, self.sign(token))

    def stored_at(self, url: str) -> Upload | None:
        """The stored upload a URL of this sandbox points at, whatever host the client used."""
        match = re.fullmatch(r"/files/uploads/([0-9a-f]{32})/[^/]+", urlsplit(url).path)
        upload = self.get(match.group(1)) if match else None
        return upload if upload is not None and upload.stored else None


def safe_filename(name: str) -> str:
    """A client's file name reduced to something safe to put on disk and in a URL."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name).strip("._")
    return cleaned[:120] or "upload"
