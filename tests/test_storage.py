"""The data dir's room: refusing before paying, whole videos only, and no half-written leftovers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from kling_demo.client import WaveSpeedClient
from kling_demo.errors import DownloadFailed, StorageUnavailable
from kling_demo.media import probe_video
from kling_demo.storage import NO_ROOM_MESSAGE, check_room, partial_file, remove_orphan_parts
from tests.conftest import fill
from tests.test_client import run_to_completion


def test_a_floor_above_the_free_space_refuses_in_a_plain_sentence(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_room(tmp_path / "videos", free // 2)  # room enough: no complaint, and the folder exists
    assert (tmp_path / "videos").is_dir() and list((tmp_path / "videos").iterdir()) == []
    with pytest.raises(StorageUnavailable) as refused:
        check_room(tmp_path / "videos", free + 2**40)
    assert str(refused.value) == NO_ROOM_MESSAGE
    assert "nothing was submitted and nothing was billed" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)


def test_a_data_dir_that_cannot_be_created_refuses(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageUnavailable, match="storage is full or read-only"):
        check_room(blocker / "videos", 0)


def test_a_partial_file_appears_under_its_name_only_when_complete(tmp_path):
    target = tmp_path / "video.mp4"
    with partial_file(target) as out:
        out.write(b"first half")
        assert not target.exists() and [p.name for p in tmp_path.iterdir()] == [".video.mp4.part"]
    assert target.read_bytes() == b"first half" and [p.name for p in tmp_path.iterdir()] == ["video.mp4"]

    with pytest.raises(RuntimeError):
        with partial_file(tmp_path / "broken.mp4") as out:
            out.write(b"some bytes")
            raise RuntimeError("the connection dropped")
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"], "a failed write leaves nothing behind"


HOLDER = """
import sys, time
from pathlib import Path
from kling_demo.storage import partial_file
with partial_file(Path(sys.argv[1])) as out:
    out.write(b"downloading")
    out.flush()
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_orphaned_parts_are_removed_but_a_live_download_is_kept(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / ".dead1.mp4.part").write_bytes(b"left by a killed process")
    (videos / ".dead2.mp4.part").write_bytes(b"")
    (videos / "whole.mp4").write_bytes(b"a finished video")
    live = subprocess.Popen([sys.executable, "-c", HOLDER, str(videos / "live.mp4")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=str(__import__("tests.processes").processes.ROOT))
    try:
        assert live.stdout.readline().strip() == b"holding"
        assert remove_orphan_parts(videos) == 2
        assert sorted(p.name for p in videos.iterdir()) == [".live.mp4.part", "whole.mp4"]
    finally:
        live.stdin.close()
        assert live.wait(timeout=30) == 0
    assert sorted(p.name for p in videos.iterdir()) == ["live.mp4", "whole.mp4"]
    assert remove_orphan_parts(videos) == 0


def test_a_download_goes_to_a_temporary_name_and_is_renamed_when_complete(sandbox, make_image, tmp_path):
    videos = tmp_path / "videos"
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        video = client.download(prediction.outputs[0], videos, max_bytes=50_000_000)
    assert [p.name for p in videos.iterdir()] == [video.name] and video.suffix == ".mp4"
    assert probe_video(video).duration_seconds == pytest.approx(5.0)


def test_a_full_disk_fails_the_download_in_a_plain_sentence_and_leaves_no_part(sandbox, make_image, tiny_disk):
    (tiny_disk / "videos").mkdir()
    fill(tiny_disk, leave_bytes=8192)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        with pytest.raises(DownloadFailed) as failed:
            client.download(prediction.outputs[0], tiny_disk / "videos", max_bytes=50_000_000)
    message = str(failed.value)
    assert "storage is full" in message and "resume it later by its task id" in message
    assert "Errno" not in message and str(tiny_disk) not in message
    assert list((tiny_disk / "videos").iterdir()) == []
