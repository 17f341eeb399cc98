"""Who is spending: the one answer budgets are kept under, whatever route a request came by.

A browser's owner id keeps its history private, but anyone can mint a new one (or a new session), so
money follows something a script cannot mint for free: a Hugging Face login where the Space offers one,
else the client's IP address, and for a visitor who pays with their own key, a keyed hash of that key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from typing import Mapping

OPERATOR = "operator"  # the command line: the person who owns the server's key, not budgeted
# What Gradio's OAuth needs (gradio/oauth.py reads exactly these); a Space sets them with `hf_oauth: true`.
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")
UNKNOWN_ADDRESS = "unknown"


def oauth_enabled(env: Mapping[str, str] | None = None) -> bool:
    """True on a Space with HF OAuth turned on: only then may `gr.LoginButton` exist (it cannot start offline)."""
    env = os.environ if env is None else env
    return bool(env.get("SPACE_ID")) and all(env.get(name) for name in OAUTH_VARIABLES)


def key_id(secret: str, api_key: str) -> str:
    """Someone known by the key they bring (their budget, an API caller's history): an HMAC of it, so the key
    itself is never kept."""
    digest = hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()
    return f"key:{digest[:32]}"


def client_address(headers: Mapping[str, str] | None, peer: str | None, *, trust_forwarded: bool) -> str:
    """The visitor's IP: the first `X-Forwarded-For` hop behind a trusted proxy (a Space), else the socket peer.

    An IPv6 address counts by its /64, the block one household or machine gets, so rotating within it
    does not buy a new budget. Anything that is not an address falls back to the peer."""
    if trust_forwarded and headers is not None:
        forwarded = headers.get("x-forwarded-for") or headers.get("X-Forwarded-For") or ""
        first = forwarded.split(",")[0].strip()
        if normalized := _normalized(first):
            return normalized
    return _normalized(peer or "") or UNKNOWN_ADDRESS


def spender_id(*, ip: str, hf_username: str | None = None, api_key: str | None = None, secret: str = "") -> str:
    """"key:<hmac>" for one's own key, else "hf:<user>" when logged in with Hugging Face, else "ip:<address>"
    (`ip` from `client_address`)."""
    if api_key:
        return key_id(secret, api_key)
    if hf_username:
        return f"hf:{hf_username}"
    return f"ip:{ip}"


def _normalized(raw: str) -> str | None:
    """An IP address in one spelling ("[::1]:80" and "::1" alike), IPv6 as its /64; None if it is none."""
    text = raw.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
