"""The sandbox as `python -m kling_demo.sandbox`: it serves, honours its flags and stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.harness import ROOT, clean_env, free_port, start_sandbox_process
from tests.service.test_sandbox_account import TIMEOUT, api, balance, quote


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_serves_and_stops_cleanly(stop_signal: int) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kling_demo.sandbox", "--port", str(port), "--inference-seconds", "0.5", "--seed", "1"],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                stats = requests.get(f"http://127.0.0.1:{port}/sandbox/stats", timeout=1).json()
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "CLI never started serving"
                time.sleep(0.1)
        assert stats["submissions"] == 0
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
        assert f"http://127.0.0.1:{port}" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_sets_price_balance_limits_and_webhook_secret(tmp_path) -> None:
    served = start_sandbox_process("--price-per-second", "0.5", "--balance", "3", "--max-concurrent-tasks", "3",
                                   "--videos-per-minute", "5", "--status-fault-rate", "0.25", "--charge-failed-tasks",
                                   "--webhook-secret", "whsec_from-cli", log_path=tmp_path / "sandbox.log")
    try:
        assert quote(served, {"duration": 10}).json()["data"]["price"] == 5.0
        assert balance(served) == 3.0
        config = requests.get(served.url + "/sandbox/stats", timeout=TIMEOUT).json()["config"]
        assert (config["max_concurrent_tasks"], config["videos_per_minute"], config["status_fault_rate"]) == (3, 5, 0.25)
        assert config["charge_failed_tasks"] is True
        assert api(served, "GET", "/api/v3/webhook/secret").json()["data"]["secret"] == "whsec_from-cli"
    finally:
        served.stop()
