"""A finished video says what it is: its file name, and its settings in the MP4's own metadata."""

from __future__ import annotations

import time
from pathlib import Path

import av
import pytest
from PIL import Image

from kling_demo.jobs.record import Records
from kling_demo.jobs.runner import run
from kling_demo.jobs.steps import JobContext, JobRequest, Stage, generate
from kling_demo.models import DEFAULT_MODEL, KeySource
from kling_demo.sandbox.render import render_video
from kling_demo.store import files, videos
from kling_demo.store.journal import Journal
from kling_demo.wavespeed.client import WaveSpeedClient

SECRET_KEY = "ws-canary-key-never-in-a-video"


@pytest.fixture
def downloaded(tmp_path: Path) -> Path:
    """A real MP4 under a random download name, as the client leaves it."""
    folder = tmp_path / "videos"
    folder.mkdir()
    video = folder / "0123456789abcdef0123456789abcdef.mp4"
    first = Image.new("RGB", (480, 270), (200, 40, 40))
    end = Image.new("RGB", (480, 270), (20, 40, 220))
    render_video(first, video, 5, end)
    return video


def record_for(journal: Journal, task_id: str, **params) -> object:
    journal.record_submission(owner="a", task_id=task_id, model="m", api_base="http://x", key_source=KeySource.SERVER,
                              params={"prompt": "A cat walks on the beach at dawn, waves rolling in slowly",
                                      "negative_prompt": "blurry", "guidance_scale": 0.7, "duration": 5,
                                      "end_image": True, **params})
    return journal.get("a", task_id)


def test_the_file_name_says_date_task_and_prompt_words():
    when = time.mktime((2026, 11, 27, 12, 0, 0, 0, 0, -1))
    assert videos.file_name("ab12cd34-ffff-0000", "A cat walks on the beach!", when) == \
        "2026-11-27_ab12cd34_a-cat-walks-on-the-beach.mp4"
    long = videos.file_name("t1", "Ünïcode café " + "word " * 40, when)
    assert long.startswith("2026-11-27_t1_unicode-cafe-word") and len(long) <= 11 + 3 + videos.SLUG_CHARS + 4
    assert videos.file_name("t1", "", when) == "2026-11-27_t1_video.mp4"
    assert videos.file_name("../../etc", "/ \\ :", when) == "2026-11-27_etc_video.mp4"  # nothing path-like


def test_a_labelled_video_carries_its_settings_and_plays_the_same(downloaded, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    record = record_for(journal, "ab12cd34ef")
    frames_before = av.open(str(downloaded)).streams.video[0].frames

    labelled = videos.label(downloaded, "ab12cd34ef", "kwaivgi/kling-v2.0-i2v-master", record)

    assert not downloaded.exists()
    assert labelled.parent.parent == downloaded.parent  # its own folder, unguessable
    assert labelled.name == time.strftime("%Y-%m-%d", time.localtime(record.created_at)) + \
        "_ab12cd34_a-cat-walks-on-the-beach-at-dawn-waves.mp4"
    with av.open(str(labelled)) as container:
        tags = container.metadata
        assert container.streams.video[0].frames == frames_before  # remuxed, nothing dropped or re-encoded
    assert tags["title"].startswith("A cat walks on the beach")
    assert "negative prompt: blurry" in tags["description"] and "5 s" in tags["description"]
    assert videos.read_settings(labelled) == {
        "model": "kwaivgi/kling-v2.0-i2v-master", "task_id": "ab12cd34ef",
        "prompt": "A cat walks on the beach at dawn, waves rolling in slowly", "negative_prompt": "blurry",
        "guidance_scale": 0.7, "duration": 5, "end_frame": True}
    assert not list(labelled.parent.glob(".*"))  # no .part left behind


# Characters no tag may carry: C0 and C1 controls, and the bidi overrides and isolates.
UNSHOWN = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), *map(chr, range(0x202A, 0x202F)),
           *map(chr, range(0x2066, 0x206A))}


def test_no_tag_carries_a_control_or_bidi_character_from_the_prompt(downloaded, tmp_path):
    """A NUL cut the title short, and ESC sequences or bidi overrides in a tag replay in the terminal of whoever
    runs ffprobe on the video: every tag leaves them out (line breaks become spaces), and the JSON still parses."""
    journal = Journal(tmp_path / "journal.sqlite3")
    prompt = ("A cat\x00 walks \x1b[2J\x1b]0;pwned\x07on the \x1b[31mbeach\x1b[0m\r\nat \u202edawn\u202c\x9b1m "
              "\u2067slowly\u2069")
    record = record_for(journal, "t1", prompt=prompt, negative_prompt="blur\x1b[8mry\x00, \u202adark\u202c")

    labelled = videos.label(downloaded, "t1", "kwaivgi/kling-v2.0-i2v-master", record)

    with av.open(str(labelled)) as container:
        tags = dict(container.metadata)
    shown = "A cat walks [2J]0;pwnedon the [31mbeach[0m at dawn1m slowly"
    assert tags["title"] == shown
    assert "negative prompt: blur[8mry, dark" in tags["description"]
    for name in ("title", "description", "comment"):
        assert not UNSHOWN & set(tags[name]), (name, tags[name])
    settings = videos.read_settings(labelled)  # the comment is still JSON, with the same clean text
    assert (settings["prompt"], settings["negative_prompt"]) == (shown, "blur[8mry, dark")


def test_a_file_pyav_cannot_read_is_only_renamed(tmp_path):
    broken = tmp_path / "videos" / "feedface.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"not a video")
    labelled = videos.label(broken, "t9", "m", None)
    assert labelled.read_bytes() == b"not a video" and labelled.name.endswith("_t9_video.mp4")


def test_the_last_frame_is_the_end_of_the_video_and_is_made_once(downloaded):
    frame = videos.last_frame(downloaded)
    with Image.open(frame) as picture:
        red, green, blue = picture.convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert blue > red, "the sandbox video ends on the blue end frame"
    made = frame.stat().st_mtime_ns
    assert videos.last_frame(downloaded) == frame and frame.stat().st_mtime_ns == made


def test_removing_a_video_takes_its_last_frame_and_its_folder(downloaded):
    labelled = videos.label(downloaded, "t1", "m", None)
    videos.last_frame(labelled)
    assert files.remove_files([labelled]) == 2
    assert not labelled.parent.exists() and downloaded.parent.exists()


def test_a_finished_job_leaves_a_named_tagged_video_and_no_key(sandbox, make_image, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    client = WaveSpeedClient(sandbox.base_url, SECRET_KEY)
    ctx = JobContext(client=client, videos_dir=tmp_path / "videos",
                     records=Records(journal, "a", DEFAULT_MODEL.model_id, client.base_url, KeySource.SERVER,
                                     tmp_path / "videos"))
    try:
        updates = list(run(generate(JobRequest(image=make_image(), prompt="Waves roll in", negative_prompt="fog",
                                               guidance_scale=0.3, duration=5), ctx), ctx.stop))
    finally:
        ctx.client.close()
    done = updates[-1]
    assert done.stage is Stage.DONE
    assert done.video_path.name.endswith(f"_{done.task_id[:8]}_waves-roll-in.mp4")
    assert journal.get("a", done.task_id).video_path == str(done.video_path)
    settings = videos.read_settings(done.video_path)
    assert (settings["prompt"], settings["negative_prompt"], settings["guidance_scale"], settings["duration"],
            settings["task_id"]) == ("Waves roll in", "fog", 0.3, 5, done.task_id)
    assert SECRET_KEY.encode() not in done.video_path.read_bytes()


def test_kept_frames_are_the_uploaded_bytes_and_outlive_the_upload(tmp_path: Path, make_image) -> None:
    """The frames kept for "reuse these settings" survive the upload's temp file, and removing them spares it."""
    from kling_demo.jobs import images as media
    upload = Path(make_image(size=(800, 600), format="JPEG"))
    original = upload.read_bytes()
    prepared = media.prepare_image(upload, DEFAULT_MODEL.first_frame, work_dir=tmp_path / "work")
    preview = media.save_preview(prepared, tmp_path / "videos")
    videos.keep_frames(preview, prepared, None)
    first, end = videos.kept_frames(preview)
    assert end is None and first is not None and first.read_bytes() == original
    files.remove_files([preview])
    assert upload.read_bytes() == original, "deleting the history entry leaves the visitor's upload alone"
    prepared2 = media.prepare_image(upload, DEFAULT_MODEL.first_frame, work_dir=tmp_path / "work")
    preview2 = media.save_preview(prepared2, tmp_path / "videos")
    videos.keep_frames(preview2, prepared2, None)
    upload.unlink()  # Gradio clears its upload cache
    assert videos.kept_frames(preview2)[0].read_bytes() == original
