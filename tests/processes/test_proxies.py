"""One rule for a visitor's address, uvicorn's: the rightmost X-Forwarded-For address that is not a trusted
proxy, the trusted proxies named by FORWARDED_ALLOW_IPS (none locally, the private ranges on a Space).

The app runs as a real process on a server key against a sandbox process standing in for WaveSpeed ($1.40 a
5 s video); every paid submission is counted where the money would go, at the sandbox's /sandbox/stats.
A client whose connection leaves from 127.0.0.2 stands in for the Space's proxy.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import requests

from kling_demo.config import SPACE_PROXIES, Settings, trusted_proxies
from kling_demo.service.identity import (CALLER_HEADER, TrustedProxies, forwarded_shape, stamp_caller, stamped_address,
                                 visitor_address)
from tests.callers import Caller
from tests.harness import Served, start_app_process, start_sandbox_process

SERVER_KEY = "server-key"
VISITOR_BUDGET = "your daily budget on this"  # "… Space's key" on a Space, "… app's key" elsewhere
PROXY = "127.0.0.2"


# --- the pieces -----------------------------------------------------------------------------------------------


def test_locally_no_proxy_is_trusted_and_on_a_space_the_private_ranges_are():
    assert trusted_proxies({}) == ""
    assert trusted_proxies({"SPACE_ID": "me/app"}) == SPACE_PROXIES
    assert trusted_proxies({"FORWARDED_ALLOW_IPS": " 10.1.2.3, 192.168.0.0/16 "}) == "10.1.2.3,192.168.0.0/16"
    assert trusted_proxies({"SPACE_ID": "me/app", "FORWARDED_ALLOW_IPS": ""}) == "", "named: even empty wins"
    # The older switch maps onto the rule: true trusts what a Space trusts, false trusts nothing (also on a Space).
    assert trusted_proxies({"KLING_DEMO_TRUSTED_PROXY": "true"}) == SPACE_PROXIES
    assert trusted_proxies({"SPACE_ID": "me/app", "KLING_DEMO_TRUSTED_PROXY": "false"}) == ""
    assert Settings.from_env({"SPACE_ID": "me/app"}, None).trusted_proxies == SPACE_PROXIES
    for bad in ("*", "proxy.example", "10.0.0.0/33", "10.0.0.1/8"):
        with pytest.raises(ValueError, match="FORWARDED_ALLOW_IPS"):
            Settings.from_env({"FORWARDED_ALLOW_IPS": bad}, None)


def test_trusted_proxies_are_addresses_and_networks():
    space = TrustedProxies(SPACE_PROXIES)
    assert all(host in space for host in ("10.16.0.4", "172.31.255.1", "192.168.1.1", "127.0.0.1", "127.0.0.2",
                                          "::1", "fd00::7", "[::1]:443", "10.0.0.1:8080"))
    assert not any(host in space for host in ("203.0.113.7", "172.32.0.1", "2001:db8::1", "", None, "garbage"))
    assert "127.0.0.1" not in TrustedProxies("") and not TrustedProxies("")


def test_a_stamp_names_an_address_only_as_this_server_made_it():
    now = time.time()
    stamp = stamp_caller("198.51.100.7", "secret", now)
    assert stamped_address(stamp, "secret", now) == "198.51.100.7"
    assert visitor_address({CALLER_HEADER: stamp}, "127.0.0.1", secret="secret", now=now) == "198.51.100.7"
    address, expires, nonce, mac = stamp.split("|")
    assert stamp != stamp_caller("198.51.100.7", "secret", now), "no two stamps are alike"
    for forged in (stamp_caller("198.51.100.7", "another secret", now), f"198.51.100.8|{expires}|{nonce}|{mac}",
                   f"{address}|{int(expires) + 1}|{nonce}|{mac}", f"{address}|{expires}|{nonce}0|{mac}",
                   f"{address}|{expires}|{nonce}|{mac}|x", "198.51.100.7", "", None):
        assert stamped_address(forged, "secret", now) is None, forged
        assert visitor_address({CALLER_HEADER: forged or ""}, "127.0.0.1", secret="secret", now=now) == "127.0.0.1"
    assert stamped_address(stamp, "secret", now + 3601) is None, "a stamp expires"


def test_the_proxy_check_names_the_shape_of_the_header_and_no_address():
    trusted = TrustedProxies(SPACE_PROXIES)
    line = forwarded_shape("203.0.113.9, 198.51.100.7, 10.16.0.4", "198.51.100.7", trusted)
    assert "3 hops [public, public, private (trusted)]" in line and "hop 2 of 3 (public)" in line, line
    inside = forwarded_shape("10.1.2.3, 10.16.0.4", "10.1.2.3", trusted)
    assert "every hop is a trusted proxy, so the visitor is the first hop (private (trusted))" in inside, inside
    ignored = forwarded_shape("203.0.113.9", "127.0.0.1", TrustedProxies(""))
    assert "1 hop [public]" in ignored and "ignored" in ignored, ignored
    assert "ignored" in forwarded_shape("127.0.0.1", "127.0.0.1", TrustedProxies(""))
    for text in (line, ignored):
        assert "203.0.113" not in text and "198.51.100" not in text and "10.16" not in text


# --- the running app ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    served = start_sandbox_process("--inference-seconds", "1",
                                   log_path=tmp_path_factory.mktemp("sandbox") / "sandbox.log")
    yield served
    served.stop()


@pytest.fixture
def live_app(tmp_path, sandbox):
    """Factory: the app on SERVER_KEY against the sandbox, with `env` over it; stopped at teardown."""
    started: list[Served] = []

    def start(**env: str) -> Served:
        app = start_app_process(tmp_path / f"data-{len(started)}", log_path=tmp_path / "app.log",
                                env={"WAVESPEED_API_KEY": SERVER_KEY, "WAVESPEED_BASE_URL": sandbox.url, **env})
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def submissions(sandbox: Served) -> int:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"]


def test_locally_forged_forwarded_addresses_and_oauth_tokens_buy_nothing(live_app, sandbox, make_image, tmp_path):
    app = live_app(KLING_DEMO_VISITOR_BUDGET_USD="3.00", KLING_DEMO_MAX_JOBS_PER_VISITOR="10")
    image, before = make_image(), submissions(sandbox)
    forgers = [Caller(app.url, headers={"X-Forwarded-For": f"203.0.113.{n}"},
                      body={"oauth_token": f"hf_forged_{n}"}) for n in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(forgers)) as pool:
        outcomes = list(pool.map(lambda caller: caller.generate(image), forgers))
    paid = submissions(sandbox) - before
    assert paid <= 2, f"$3.00 buys two $1.40 videos for one visitor, and {paid} were submitted: {outcomes}"
    assert sum(VISITOR_BUDGET in text for text in outcomes) >= 4, outcomes
    log = (tmp_path / "app.log").read_text()
    assert "the connection's own (no proxy is trusted" in log
    assert "the header is ignored" in log and "203.0.113" not in log


def test_behind_an_appending_proxy_forged_first_hops_share_the_clients_budget(live_app, sandbox, make_image,
                                                                             tmp_path):
    app = live_app(SPACE_ID="me/kling-test", FORWARDED_ALLOW_IPS=PROXY, KLING_DEMO_VISITOR_BUDGET_USD="1.50")
    image, before = make_image(), submissions(sandbox)

    def via_proxy(client: str, forged: str | None = None) -> str:
        """What the proxy at 127.0.0.2 sends on: what the client wrote, with the client's address appended."""
        chain = f"{forged}, {client}" if forged else client
        return Caller(app.url, source=PROXY, headers={"X-Forwarded-For": chain}).generate(image)

    alice = [via_proxy("198.51.100.7", forged) for forged in (None, "203.0.113.1", "203.0.113.2, 203.0.113.3")]
    assert "Done" in alice[0] and all(VISITOR_BUDGET in text for text in alice[1:]), alice
    bob = via_proxy("198.51.100.8", forged="198.51.100.7")  # posing as alice changes nothing either
    assert "Done" in bob, bob
    assert VISITOR_BUDGET in via_proxy("198.51.100.8", forged="203.0.113.4")
    # IPv6 counts by /64: another address of the same block is the same visitor.
    assert "Done" in via_proxy("2001:db8:7:7::1")
    assert VISITOR_BUDGET in via_proxy("2001:db8:7:7:ffff::2")
    # A connection that is not the proxy names no address: 127.0.0.1 is the visitor, whatever it writes.
    direct = [Caller(app.url, headers={"X-Forwarded-For": address}).generate(image)
              for address in ("198.51.100.20", "198.51.100.21")]
    assert "Done" in direct[0] and VISITOR_BUDGET in direct[1], direct
    assert submissions(sandbox) - before == 4

    log = (tmp_path / "app.log").read_text()
    assert f"the rightmost X-Forwarded-For hop that is not a trusted proxy ({PROXY})" in log
    assert "X-Forwarded-For with 1 hop [public]: the visitor is hop 1 of 1 (public)" in log, log[-3000:]
    assert "198.51.100" not in log and "203.0.113" not in log and "2001:db8" not in log
