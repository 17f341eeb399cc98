"""The stand-in video: what a viewer would notice about the MP4 the sandbox renders."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageStat

from kling_demo.store.videos import probe_video
from kling_demo.models import KLING_V2_I2V_MASTER
from kling_demo.sandbox.render import FPS, SHORT_SIDE, RenderedVideo, output_size, render_video

RED, BLUE = (220, 20, 20), (20, 20, 220)


def decoded_frames(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def red_clip(tmp_path_factory: pytest.TempPathFactory) -> RenderedVideo:
    """One 5 s render of a plain red 640×480 picture, for the tests that each look at a property of it."""
    return render_video(Image.new("RGB", (640, 480), RED), tmp_path_factory.mktemp("red") / "clip.mp4", 5)


@pytest.fixture(scope="module")
def red_frames(red_clip: RenderedVideo) -> list[Image.Image]:
    return decoded_frames(red_clip.path)


@pytest.mark.parametrize("duration", KLING_V2_I2V_MASTER.durations)
def test_video_has_exactly_24_frames_per_second_of_duration(duration: int, tmp_path: Path) -> None:
    rendered = render_video(Image.new("RGB", (640, 480), RED), tmp_path / "clip.mp4", duration)
    info = probe_video(rendered.path)
    assert info.frames == FPS * duration == rendered.frames
    assert info.fps == 24
    assert (info.codec, info.pixel_format) == ("h264", "yuv420p")
    assert (info.width, info.height) == (640, 480)


@pytest.mark.parametrize("size", [(1000, 400), (400, 1000), (1280, 720), (301, 301)])
def test_aspect_is_kept_with_a_short_side_of_480(size: tuple[int, int], tmp_path: Path) -> None:
    info = probe_video(render_video(Image.new("RGB", size, RED), tmp_path / "clip.mp4", 5).path)
    assert min(info.width, info.height) == SHORT_SIDE
    assert info.width % 2 == 0 and info.height % 2 == 0
    assert info.width / info.height == pytest.approx(size[0] / size[1], rel=0.01)


@settings(max_examples=200, deadline=None)
@given(width=st.integers(300, 6000), height=st.integers(300, 6000))
def test_output_size_is_even_keeps_aspect_and_has_short_side_480(width: int, height: int) -> None:
    out_w, out_h = output_size(width, height)
    assert min(out_w, out_h) == SHORT_SIDE
    assert out_w % 2 == 0 and out_h % 2 == 0
    long_in, long_out = max(width, height) / min(width, height), max(out_w, out_h) / SHORT_SIDE
    assert abs(long_out - long_in) <= 1 / SHORT_SIDE + 1e-9


def test_clip_starts_on_the_first_frame_and_ends_on_the_end_frame(tmp_path: Path) -> None:
    path = render_video(Image.new("RGB", (640, 480), RED), tmp_path / "clip.mp4", 5, Image.new("RGB", (500, 500), BLUE)).path
    frames = decoded_frames(path)
    first_red, _, first_blue = ImageStat.Stat(frames[0]).mean
    last_red, _, last_blue = ImageStat.Stat(frames[-1]).mean
    assert first_red > 150 and first_blue < 80
    assert last_blue > 150 and last_red < 80


def test_without_end_frame_the_clip_stays_on_the_first_image(red_frames: list[Image.Image]) -> None:
    assert ImageStat.Stat(red_frames[-1]).mean[0] > 150


def test_camera_moves(make_image, tmp_path: Path) -> None:
    image_bytes = make_image(size=(800, 600)).read_bytes()
    frames = decoded_frames(render_video(image_bytes, tmp_path / "clip.mp4", 5).path)
    change = ImageStat.Stat(ImageChops.difference(frames[0].convert("L"), frames[-1].convert("L"))).mean[0]
    assert change > 2  # mean grey-level change between first and last frame


def test_sandbox_mark_is_visible_in_a_corner(red_frames: list[Image.Image]) -> None:
    frame = red_frames[0]
    corner = frame.crop((frame.width * 2 // 3, frame.height * 4 // 5, frame.width, frame.height))
    bright_pixels = sum(corner.convert("L").histogram()[200:])
    assert bright_pixels > 100  # white lettering on a red picture (grey level ~80)


def test_browser_friendly_layout_with_index_before_media(red_clip: RenderedVideo) -> None:
    data = red_clip.path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")


def test_same_inputs_give_identical_files(make_image, tmp_path: Path) -> None:
    image_bytes = make_image().read_bytes()
    first = render_video(image_bytes, tmp_path / "a.mp4", 5).path.read_bytes()
    second = render_video(image_bytes, tmp_path / "b.mp4", 5).path.read_bytes()
    assert first == second


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK"])
def test_any_pillow_mode_renders(mode: str, make_image, tmp_path: Path) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image_bytes = make_image(size=(400, 400), mode=mode, format=fmt).read_bytes()
    assert probe_video(render_video(image_bytes, tmp_path / "clip.mp4", 5).path).frames == 120


def test_no_partial_file_is_left_behind(red_clip: RenderedVideo) -> None:
    assert sorted(p.name for p in red_clip.path.parent.iterdir()) == ["clip.mp4"]
