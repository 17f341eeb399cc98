"""Sign in with Hugging Face, offline: a signed-in visitor has a budget of their own, known only from the signed
session cookie (`gr.OAuthProfile`), never from an `oauth_token` a client writes into a request body.

The app runs as `python app.py` in a new interpreter (Gradio reads the `OAUTH_*` values when it is imported,
so a fork of the warm one would keep its parent's) with a Space's environment: `SYSTEM=spaces`, `SPACE_ID` and
made-up OAuth values whose provider is never asked. The session cookie is made as Starlette's SessionMiddleware
makes it, with the key Gradio 6.31 derives from the client secret (gradio/oauth.py: sha256(secret + "-v4")).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import itsdangerous
import pytest
import requests

from tests.callers import Caller
from tests.harness import Served, start_app_process, start_sandbox_process

CLIENT_SECRET = f"oauth-secret-{uuid.uuid4().hex}"
OAUTH = {"SYSTEM": "spaces", "SPACE_ID": "me/kling-sign-in", "OAUTH_CLIENT_ID": "kling-test-client",
         "OAUTH_CLIENT_SECRET": CLIENT_SECRET, "OAUTH_SCOPES": "openid profile",
         "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}  # nothing listens there: sign-in itself is never run
VISITOR_BUDGET = "daily budget on this Space's key"


def session_cookie(username: str, client_secret: str = CLIENT_SECRET) -> dict[str, str]:
    """The `session` cookie Gradio's /login/callback leaves after a sign-in as `username`."""
    session = {"oauth_info": {
        "userinfo": {"name": username.title(), "preferred_username": username,
                     "profile": f"https://huggingface.co/{username}", "picture": "https://huggingface.co/a.png"},
        "access_token": f"hf_oauth_{uuid.uuid4().hex}", "token_type": "Bearer", "scope": "openid profile",
        "expires_at": int(time.time()) + 3600}}
    key = hashlib.sha256((client_secret + "-v4").encode()).hexdigest()
    data = base64.b64encode(json.dumps(session).encode("utf-8"))
    return {"session": itsdangerous.TimestampSigner(key).sign(data).decode("utf-8")}


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A sandbox process as WaveSpeed ($1.40 a 5 s video) and the app as a Space with sign-in on."""
    folder = tmp_path_factory.mktemp("space")
    sandbox = start_sandbox_process("--inference-seconds", "1", log_path=folder / "sandbox.log")
    app = start_app_process(folder / "data", log_path=folder / "app.log", cold=True,
                            env={**OAUTH, "WAVESPEED_API_KEY": "server-key", "WAVESPEED_BASE_URL": sandbox.url,
                                 "KLING_DEMO_VISITOR_BUDGET_USD": "1.50"})
    yield app, sandbox
    app.stop()
    sandbox.stop()


def submissions(sandbox: Served) -> int:
    return requests.get(sandbox.url + "/sandbox/stats", timeout=5).json()["submissions"]


def login_button(app: Served) -> list[dict]:
    config = requests.get(app.url + "config", timeout=30).json()
    return [c for c in config["components"] if c.get("props", {}).get("elem_id") == "login"]


def test_a_signed_in_visitor_has_a_budget_of_their_own_and_a_body_token_is_nobody(space, make_image):
    app, sandbox = space
    image, before = make_image(), submissions(sandbox)
    assert "Done" in Caller(app.url).generate(image)  # the address's $1.50: one video
    # A token in the body is not a sign-in: still the address, whose budget is spent.
    forged = Caller(app.url, body={"oauth_token": "hf_forged"}).generate(image)
    assert VISITOR_BUDGET in forged, forged
    # A cookie signed with another secret is no sign-in either.
    assert VISITOR_BUDGET in Caller(app.url, cookies=session_cookie("ada", "not-the-secret")).generate(image)

    ada = Caller(app.url, cookies=session_cookie("ada"))
    assert "Done" in ada.generate(image), "signed in, ada spends her own budget, not her address's"
    again = Caller(app.url, cookies=session_cookie("ada"), body={"oauth_token": "hf_forged"}).generate(image)
    assert VISITOR_BUDGET in again and "$1.40 of your daily budget" in again, again
    assert "Done" in Caller(app.url, cookies=session_cookie("grace")).generate(image)
    assert submissions(sandbox) - before == 3

    budget = ada.component("budget")
    offer = next(d for d in ada.config["dependencies"]
                 if budget in d["outputs"] and any(target[1] == "load" for target in d["targets"]))
    line = dict(zip(offer["outputs"], ada.predict(offer["id"], [5, None, None])["data"]))[budget]
    assert "$1.40 of your daily budget on this Space's key" in line["value"], line


def test_the_login_button_is_there_only_where_the_space_turned_sign_in_on(space, tmp_path):
    app, _ = space
    assert login_button(app), "a Space with hf_oauth shows the button"
    # The OAuth values without a Space (SYSTEM=spaces): Gradio would mock the sign-in with the machine's own HF
    # token, and refuse to start without one. No button, and the app starts.
    elsewhere = start_app_process(tmp_path / "data", log_path=tmp_path / "app.log",
                                  env={key: value for key, value in OAUTH.items() if key != "SYSTEM"})
    try:
        assert login_button(elsewhere) == []
    finally:
        elsewhere.stop()
