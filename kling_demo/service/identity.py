"""Who is spending: the one answer budgets are kept under, whatever route a request came by.

A browser's owner id keeps its history private, but anyone can mint a new one (or a new session), so
money follows something a script cannot mint for free: a Hugging Face login where the Space offers one,
else the client's IP address, and for a visitor who pays with their own key, a keyed hash of that key.

The address follows one rule, uvicorn's: the rightmost `X-Forwarded-For` address that is not a trusted
proxy, the trusted proxies being those `FORWARDED_ALLOW_IPS` names (config.trusted_proxies). uvicorn applies
it before the app sees a request (`request.client.host`); the app only sets what uvicorn trusts. An MCP
agent's calls reach the handlers through Gradio's own client on loopback, so the MCP route stamps its
caller's address into a header signed with the server secret (front_door.py), and only such a stamp names
an address other than the connection's.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from typing import Mapping

from ..config import TrustedProxies, host_of, parse_address

OPERATOR = "operator"  # the command line: the person who owns the server's key, not budgeted
# What Gradio's OAuth needs (gradio/oauth.py reads exactly these); a Space sets them with `hf_oauth: true`.
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
UNKNOWN_ADDRESS = "unknown"
# What the proxy check calls "private": RFC 1918 and IPv6 unique-local (Python's is_private also counts
# documentation and reserved ranges, which the internet can send).
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                                "fc00::/7"))
CALLER_HEADER = "x-kling-demo-caller"  # the MCP caller's address, stamped by the server (front_door.py)
CALLER_STAMP_SECONDS = 3600  # how long a stamp is good for: a queued MCP call starts within this


def oauth_enabled(env: Mapping[str, str] | None = None) -> bool:
    """True on a Space with HF OAuth turned on: only then may `gr.LoginButton` exist.

    Gradio knows a Space by `SYSTEM=spaces` (with `SPACE_ID`); anywhere else it mocks the sign-in with the
    machine's own HF token, which a server does not have."""
    env = os.environ if env is None else env
    return (env.get("SYSTEM") == "spaces" and bool(env.get("SPACE_ID"))
            and all(env.get(name) for name in OAUTH_VARIABLES))


def key_id(secret: str, api_key: str) -> str:
    """Someone known by the key they bring (their budget, an API caller's history): an HMAC of it, so the key
    itself is never kept."""
    digest = hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()
    return f"key:{digest[:32]}"


def visitor_address(headers: Mapping[str, str] | None, peer: str | None, *, secret: str,
                    now: float | None = None) -> str:
    """The caller's address: the one a valid MCP stamp names, else the peer uvicorn resolved (the rightmost
    `X-Forwarded-For` hop that is not a trusted proxy). IPv6 counts by its /64, the block one household or
    machine gets, so rotating within it buys no new budget."""
    stamp = headers.get(CALLER_HEADER) if headers is not None else None
    stamped = stamped_address(stamp, secret, time.time() if now is None else now)
    return normalized_address(stamped or peer or "") or UNKNOWN_ADDRESS


def stamp_caller(address: str, secret: str, now: float) -> str:
    """The header value that vouches for `address` for CALLER_STAMP_SECONDS: only the server can make one, and
    no two are alike (a nonce), so the front door can let each in once."""
    expires, nonce = int(now) + CALLER_STAMP_SECONDS, secrets.token_hex(8)
    return f"{address}|{expires}|{nonce}|{_stamp_mac(secret, address, expires, nonce)}"


def stamped_address(stamp: str | None, secret: str, now: float) -> str | None:
    """The address in a stamp this server made and that has not expired, else None."""
    parts = (stamp or "").split("|")
    if len(parts) != 4:
        return None
    address, expires, nonce, mac = parts
    if not (address and expires.isdigit() and nonce and mac) or int(expires) < now:
        return None
    return address if hmac.compare_digest(mac, _stamp_mac(secret, address, int(expires), nonce)) else None


def _stamp_mac(secret: str, address: str, expires: int, nonce: str) -> str:
    return hmac.new(secret.encode(), f"caller:{address}:{expires}:{nonce}".encode(), hashlib.sha256).hexdigest()


def spender_id(*, ip: str, hf_username: str | None = None, api_key: str | None = None, secret: str = "") -> str:
    """"key:<hmac>" for one's own key, else "hf:<user>" when logged in with Hugging Face, else "ip:<address>"
    (`ip` from `visitor_address`)."""
    if api_key:
        return key_id(secret, api_key)
    if hf_username:
        return f"hf:{hf_username}"
    return f"ip:{ip}"


def normalized_address(raw: str) -> str | None:
    """An IP address in one spelling ("[::1]:80" and "::1" alike), IPv6 as its /64; None if it is none."""
    address = parse_address(raw)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def forwarded_shape(forwarded: str, visitor: str | None, trusted: TrustedProxies) -> str:
    """One log line on what a proxy sends, without any address: how many hops, the kind of each, and which
    one the app took as the visitor (the rightmost that is not a trusted proxy), or that the header was
    ignored because the connection came from no trusted proxy."""
    hops = [hop.strip() for hop in forwarded.split(",")]
    kinds = [_kind(hop, trusted) for hop in hops]
    taken = next((n for n in range(len(hops) - 1, -1, -1) if host_of(hops[n]) == visitor and host_of(hops[n]) not in
                  trusted), None)
    if taken is None and hops and host_of(hops[0]) == visitor:  # uvicorn's answer when every hop is trusted
        taken = 0
    if not trusted:  # nothing is trusted: a hop equal to the connection's address is a coincidence
        taken = None
    shape = f"X-Forwarded-For with {len(hops)} hop{'s' if len(hops) != 1 else ''} [{', '.join(kinds)}]"
    if taken is None:
        return (f"{shape} from a connection that is not a trusted proxy (FORWARDED_ALLOW_IPS): the header is "
                "ignored and the visitor is the connection's own address")
    if host_of(hops[taken]) in trusted:
        return f"{shape}: every hop is a trusted proxy, so the visitor is the first hop ({kinds[taken]})"
    return (f"{shape}: the visitor is hop {taken + 1} of {len(hops)} ({kinds[taken]}), the rightmost that is not "
            "a trusted proxy")


def _kind(hop: str, trusted: TrustedProxies) -> str:
    address = parse_address(hop)
    if address is None:
        return "not an address"
    private = any(address in network for network in PRIVATE_NETWORKS)
    kind = "loopback" if address.is_loopback else "private" if private else "public"
    return f"{kind} (trusted)" if hop and host_of(hop) in trusted else kind
