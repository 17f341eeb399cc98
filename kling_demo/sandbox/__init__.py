"""A local, WaveSpeed-compatible API server that renders real (non-AI) MP4s, for demos and tests."""

from __future__ import annotations

from kling_demo.sandbox.app import create_app
from kling_demo.sandbox.config import SandboxConfig
from kling_demo.sandbox.server import SandboxHandle, start_sandbox

__all__ = ["SandboxConfig", "SandboxHandle", "create_app", "start_sandbox"]
