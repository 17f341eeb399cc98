"""Kling 2.0 image-to-video: `python app.py` serves the page; Hugging Face Spaces import `demo`."""

from kling_demo.config import Settings
from kling_demo.logs import configure_logging
from kling_demo.runtime import limit_malloc_arenas, map_large_allocations
from kling_demo.web.page import build_app, launch_options

limit_malloc_arenas()
map_large_allocations()
settings = Settings.from_env()
configure_logging(secrets=(settings.api_key or "", settings.webhook_secret or ""))
demo = build_app(settings)

if __name__ == "__main__":
    demo.launch(**launch_options(settings))
