"""The shipped examples: each picture passes the model's checks, is small, and has its licence written down."""

from __future__ import annotations

from kling_demo.jobs import images as media
from kling_demo.models import DEFAULT_MODEL
from kling_demo.web.examples import ASSETS, EXAMPLES


def test_every_example_passes_the_checks_is_small_and_is_licensed() -> None:
    licences = (ASSETS / "LICENSES.md").read_text()
    assert 4 <= len(EXAMPLES) <= 6
    assert any(example.end_image for example in EXAMPLES), "one example shows an end-frame transition"
    for example in EXAMPLES:
        for name, limits, role in ((example.image, DEFAULT_MODEL.first_frame, "first frame"),
                                   (example.end_image, DEFAULT_MODEL.end_frame, "end frame")):
            if name is None:
                continue
            picture = ASSETS / name
            assert media.quick_check_image(picture, limits, role=role) is None, name
            assert picture.stat().st_size < 150 * 1024, name
            assert f"`{name}`" in licences, f"{name} has no line in assets/LICENSES.md"
        assert example.duration in DEFAULT_MODEL.durations
