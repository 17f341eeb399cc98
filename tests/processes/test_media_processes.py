"""The history's preview, made in a fresh interpreter: small, and upright whatever the EXIF says."""

from __future__ import annotations

import pytest
from PIL import Image

from kling_demo.jobs.images import prepare_image
from kling_demo.models import KLING_V2_I2V_MASTER


@pytest.mark.parametrize("orientation, mark_x", [(1, "left"), (6, "right")], ids=["passed-through", "rotated"])
def test_the_history_preview_is_small_and_upright(tmp_path, orientation, mark_x):
    from kling_demo.jobs.images import save_preview

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
