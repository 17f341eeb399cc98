"""WaveSpeedClient against the sandbox over real HTTP: the protocol, retries, and never paying twice."""

from __future__ import annotations

import pytest

from kling_demo.client import WaveSpeedClient
from kling_demo.errors import ApiInputRefused, AuthenticationFailed, SubmissionOutcomeUnknown
from kling_demo.media import probe_video
from kling_demo.models import KLING_V2_I2V_MASTER as SPEC


class RecordingSleep:
    """Records the client's waits instead of sleeping them, so a test can tell Retry-After was honoured
    without spending the seconds (the sandbox's seeded faults do not depend on time)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def run_to_completion(client: WaveSpeedClient, image_url: str, duration: int = 5):
    import time

    prediction = client.submit(SPEC, {"image": image_url, "prompt": "a lighthouse at dusk", "duration": duration})
    while not prediction.is_final:
        time.sleep(0.2)
        prediction = client.result(prediction.task_id)
    return prediction


def test_upload_submit_poll_download_gives_a_playable_five_second_video(sandbox, make_image, tmp_path):
    with WaveSpeedClient(sandbox.base_url, "any-key") as client:
        url = client.upload(make_image(size=(800, 600)), "image/png")
        prediction = run_to_completion(client, url)
        assert prediction.status == "completed"
        assert prediction.inference_ms and prediction.inference_ms >= 900
        assert prediction.has_nsfw_contents == (False,)
        video = client.download(prediction.outputs[0], tmp_path / "videos", max_bytes=50_000_000)
    info = probe_video(video)
    assert info.duration_seconds == pytest.approx(5.0)
    assert info.codec == "h264"
    assert sandbox.stats()["submissions"] == 1


def test_a_rejected_key_says_so(make_sandbox, make_image):
    sandbox = make_sandbox(api_key="the-right-key")
    with WaveSpeedClient(sandbox.base_url, "a-wrong-key") as client:
        with pytest.raises(AuthenticationFailed, match="rejected the API key") as caught:
            client.upload(make_image(), "image/png")
    assert "a-wrong-key" not in str(caught.value)
    assert sandbox.stats()["uploads"] == 0


def test_a_netrc_entry_for_the_host_neither_replaces_the_key_nor_reaches_file_urls(make_sandbox, make_image,
                                                                                  tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password their-netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))  # where requests looks for ~/.netrc
    sandbox = make_sandbox(api_key="the-right-key")
    with WaveSpeedClient(sandbox.base_url, "the-right-key") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        sent = client._keyless().get(prediction.outputs[0], timeout=10).request.headers
    assert prediction.status == "completed"
    assert "Authorization" not in sent


def test_input_refused_by_the_api_carries_its_message(sandbox, make_image):
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        url = client.upload(make_image(), "image/png")
        with pytest.raises(ApiInputRefused, match="duration"):
            client.submit(SPEC, {"image": url, "prompt": "x", "duration": 7})
    assert sandbox.stats()["submissions"] == 0


def test_a_lost_submit_answer_is_reported_and_never_resubmitted(make_sandbox, make_image):
    sandbox = make_sandbox(lost_answer_rate=1.0, seed=1)
    with WaveSpeedClient(sandbox.base_url, "k") as client:
        url = client.upload(make_image(), "image/png")
        with pytest.raises(SubmissionOutcomeUnknown, match="not resubmitted"):
            client.submit(SPEC, {"image": url, "prompt": "a lighthouse"})
    assert sandbox.stats()["submissions"] == 1


def test_rate_limits_and_transient_faults_are_ridden_out_honouring_retry_after(make_sandbox, make_image, tmp_path):
    sandbox = make_sandbox(fault_rate=0.4, seed=7)
    sleep = RecordingSleep()
    with WaveSpeedClient(sandbox.base_url, "k", max_attempts=8, backoff_seconds=0.05, sleep=sleep) as client:
        for _ in range(3):
            url = client.upload(make_image(), "image/png")
            prediction = run_to_completion(client, url)
            assert prediction.status == "completed"
            video = client.download(prediction.outputs[0], tmp_path, max_bytes=50_000_000)
            assert probe_video(video).frames == 120
    stats = sandbox.stats()
    assert stats["submissions"] == 3, "a submit that met a 429 must be retried, never duplicated"
    assert stats["faults_injected"] >= 3
    assert stats["faults_by_kind"]["429"] >= 1
    # Every 429 in the sandbox says Retry-After: 1, and the client waited that long.
    assert sum(1 for delay in sleep.delays if delay >= 1.0) >= stats["faults_by_kind"]["429"]


def test_download_refuses_more_than_the_cap(sandbox, make_image, tmp_path):
    from kling_demo.errors import DownloadFailed

    with WaveSpeedClient(sandbox.base_url, "k") as client:
        prediction = run_to_completion(client, client.upload(make_image(), "image/png"))
        with pytest.raises(DownloadFailed, match="cap"):
            client.download(prediction.outputs[0], tmp_path / "videos", max_bytes=10_000)
    assert list((tmp_path / "videos").iterdir()) == [], "a refused download leaves no partial file"


def opened(session, url: str) -> int:
    """How many connections `session` has opened (urllib3 counts them per pool)."""
    pools = session.get_adapter(url).poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())


def test_jobs_of_one_key_share_its_connections_and_files_go_over_a_keyless_one(sandbox, make_image, tmp_path):
    """Two jobs' quote, upload, submit, polls and download open one API connection and one keyless one."""
    from kling_demo.connections import Connections

    connections = Connections()
    first, second = (WaveSpeedClient(sandbox.base_url, "key-a", connections=connections) for _ in range(2))
    for client in (first, second):
        url = client.upload(make_image(size=(800, 600)), "image/png")
        prediction = run_to_completion(client, url)
        client.download(prediction.outputs[0], tmp_path / "videos", max_bytes=50_000_000)
        client.close()  # a job's end leaves the key's connections to the next job
    api, files = first.session, connections.plain()
    assert second.session is api and "key-a" in api.headers["Authorization"]
    assert "Authorization" not in files.headers, "signed upload URLs and the CDN never see the key"
    assert opened(api, sandbox.base_url) == 1 and opened(files, sandbox.base_url) == 1
    other = WaveSpeedClient(sandbox.base_url, "key-b", connections=connections)
    assert other.session is not api and "key-" not in repr(connections) + repr(other)
    connections.close()
