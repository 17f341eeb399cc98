"""The warm-start harness: a forked server reads every setting Gradio took from the environment at import, as
`python app.py` would, and the harness starts servers cold on a Gradio it was not checked against."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests import harness, import_time_settings, warm_start
from tests.import_time_settings import Default, Pinned, Rerun
from tests.harness import start_app_process

ROOT = Path(__file__).resolve().parents[2]

# The tests of the scan and of a fork run on any Gradio (they are how a new one is checked); this one needs the
# harness to fork apps, which it does only on the pinned Gradio.
needs_warm_starts = pytest.mark.skipif(warm_start.gradio_mismatch() is not None,
                                       reason=f"warm starts are off: {warm_start.gradio_mismatch()}")


def settings() -> list[import_time_settings.Step]:
    return warm_start.gradio_settings()


# --- the scan finds what Gradio reads at import -------------------------------------------------------------

def test_the_scan_finds_gradios_import_time_settings_and_pins_only_what_a_fork_cannot_redo():
    rerun = {(step.module, name) for step in settings() if isinstance(step, Rerun) for name in step.names}
    assert {("gradio.oauth", "OAUTH_CLIENT_ID"), ("gradio.oauth", "OAUTH_CLIENT_SECRET"),
            ("gradio.oauth", "OAUTH_SCOPES"), ("gradio.oauth", "OPENID_PROVIDER_URL"),
            ("gradio.http_server", "INITIAL_PORT_VALUE"), ("gradio.node_server", "LOCALHOST_NAME"),
            ("gradio.route_utils", "DEFAULT_TEMP_DIR"),
            ("gradio.routes", "DEFAULT_TEMP_DIR"),  # `from gradio.route_utils import DEFAULT_TEMP_DIR`
            ("gradio.queueing", "PROFILING_ENABLED")} <= rerun
    defaults = {(step.module, step.function, step.parameter) for step in settings() if isinstance(step, Default)}
    assert defaults == {("gradio_client.client", "Client.__init__", "download_files")}
    # A new Pinned step is a read a fork cannot redo: decide whether tests need it to vary, then list it here.
    pinned = {(step.module, step.variables) for step in settings() if isinstance(step, Pinned)}
    assert pinned == {("gradio.profiling", ("GRADIO_PROFILING",)),  # `if not PROFILING_ENABLED: def trace_phase…`
                      ("gradio_client.templates.discord_chat", ("DISCORD_TOKEN",))}  # a template, never imported


FAKE_SETTINGS = """
import os
PORT = int(os.getenv("FAKE_PORT", "7860"))
NAME = os.environ.get("FAKE_NAME") or "nobody"
URL = f"http://{NAME}:{PORT}"
ON = "FAKE_ON" in os.environ
HOST = os.getenv("FAKE_HOST", "here")
HOST = "fixed"
def later():
    return os.environ["FAKE_LATER"]
"""
FAKE_USER = """
import os
from .settings import URL as BASE, later
class Client:
    def __init__(self, url=BASE, *, retries=int(os.getenv("FAKE_RETRIES", "1"))):
        pass
"""


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable package `fakegradio` in `tmp_path` (write its modules); forgotten again at teardown."""
    (tmp_path / "fakegradio").mkdir()
    (tmp_path / "fakegradio" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "fakegradio"
    for name in [m for m in sys.modules if m == "fakegradio" or m.startswith("fakegradio.")]:
        del sys.modules[name]


def fake_values() -> dict[str, object]:
    settings, user = sys.modules["fakegradio.settings"], sys.modules["fakegradio.user"]
    return {"PORT": settings.PORT, "NAME": settings.NAME, "URL": settings.URL, "ON": settings.ON,
            "HOST": settings.HOST, "BASE": user.BASE, "defaults": (user.Client.__init__.__defaults__,
                                                                   user.Client.__init__.__kwdefaults__)}


def test_a_reread_gives_what_a_fresh_import_gives_for_reads_copies_derived_values_and_defaults(fake_package,
                                                                                                monkeypatch):
    (fake_package / "settings.py").write_text(FAKE_SETTINGS)
    (fake_package / "user.py").write_text(FAKE_USER)
    steps = import_time_settings.scan(("fakegradio",), [str(fake_package.parent)])
    assert [type(step).__name__ for step in steps] == ["Rerun"] * 7 + ["Default"] * 2
    before = {"FAKE_PORT": "7000", "FAKE_NAME": "warm", "FAKE_RETRIES": "2"}
    after = {"FAKE_PORT": "8000", "FAKE_NAME": "forked", "FAKE_ON": "", "FAKE_HOST": "there", "FAKE_RETRIES": "5"}
    for name in ("FAKE_PORT", "FAKE_NAME", "FAKE_ON", "FAKE_HOST", "FAKE_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in before.items():
        monkeypatch.setenv(name, value)
    import fakegradio.user  # noqa: F401  (as the warm interpreter does)
    inherited = dict(os.environ)
    for name, value in after.items():
        monkeypatch.setenv(name, value)

    import_time_settings.reread(steps, inherited)  # as a fork does
    reread = fake_values()
    for name in [m for m in sys.modules if m.startswith("fakegradio.")]:
        del sys.modules[name]
    import fakegradio.user  # noqa: F401,F811  (as `python app.py` does)
    assert reread == fake_values()
    assert reread["URL"] == "http://forked:8000" and reread["ON"] is True and reread["HOST"] == "fixed"


def test_an_import_time_dependency_a_fork_cannot_redo_needs_a_cold_start_when_its_variable_changed(fake_package,
                                                                                                   monkeypatch):
    (fake_package / "settings.py").write_text(FAKE_SETTINGS + "if PORT == 7860:\n    later = None\n")
    steps = import_time_settings.scan(("fakegradio",), [str(fake_package.parent)])
    assert [(type(s).__name__, s.first, s.variables) for s in steps if isinstance(s, Pinned)] == \
        [("Pinned", 11, ("FAKE_PORT",))]
    monkeypatch.delenv("FAKE_PORT", raising=False)
    import fakegradio.settings  # noqa: F401
    import_time_settings.reread(steps, dict(os.environ))  # the same value: nothing to redo
    monkeypatch.setenv("FAKE_PORT", "8000")
    with pytest.raises(import_time_settings.ColdStartNeeded,
                       match="fakegradio.settings \\(line 11\\) depends on FAKE_PORT"):
        import_time_settings.reread(steps, {k: v for k, v in os.environ.items() if k != "FAKE_PORT"})


def test_a_read_a_fork_cannot_redo_safely_stops_the_scan(fake_package):
    (fake_package / "settings.py").write_text("import os\nSNAPSHOT = dict(os.environ)\n")
    with pytest.raises(import_time_settings.UnsupportedRead, match="fakegradio.settings line 2"):
        import_time_settings.scan(("fakegradio",), [str(fake_package.parent)])
    (fake_package / "settings.py").write_text("import os\nPORT = os.getenv('FAKE_PORT')\ndef PORT(): pass\n")
    with pytest.raises(import_time_settings.UnsupportedRead, match="line 3 rebinds PORT"):
        import_time_settings.scan(("fakegradio",), [str(fake_package.parent)])


RECORD_IMPORT_TIME_READS = r'''
import json, os, sys
reads = set()
read = os._Environ.__getitem__  # os.getenv, os.environ.get, [] and `in` all come here

def recording(self, key):
    frame = sys._getframe(1)
    while frame.f_code.co_filename.startswith("<frozen") or frame.f_code.co_filename == os.__file__:
        frame = frame.f_back
    reads.add((frame.f_globals.get("__name__", ""), frame.f_lineno, key))
    return read(self, key)

os._Environ.__getitem__ = recording
for module in sys.argv[1:]:
    __import__(module)
os._Environ.__getitem__ = read
print(json.dumps(sorted(reads)))
'''


@pytest.mark.slow  # imports Gradio in a new interpreter
def test_every_environment_read_while_gradio_is_imported_is_covered_by_a_step():
    # The scan sees reads written in import-time code; this also sees a read made through a function that
    # import-time code calls (`SPACE = get_space()`), which the scan would miss.
    done = subprocess.run([sys.executable, "-c", RECORD_IMPORT_TIME_READS, *warm_start.PRELOAD], cwd=ROOT,
                          env=harness.clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    covered = {(step.module, line) for step in settings() for line in range(step.first, step.last + 1)}
    gradios = [(module, line, key) for module, line, key in json.loads(done.stdout)
               if module.split(".")[0] in import_time_settings.PACKAGES]
    assert gradios, "the recorder saw no read by Gradio at all: it is not recording"
    missed = [f"{module} line {line} reads {key}" for module, line, key in gradios if (module, line) not in covered]
    assert not missed, "Gradio reads these at import and no step redoes them in a fork:\n" + "\n".join(missed)


# --- a fork reads them as a cold start does -----------------------------------------------------------------

DUMP_SETTINGS = r'''
import importlib, json, sys
for module in sys.argv[2:]:
    importlib.import_module(module)
values = {}
for module, name in json.loads(sys.argv[1]):
    if module in sys.modules:
        target = sys.modules[module]
        for part in name.split("."):
            target = getattr(target, part)
        values[f"{module}.{name}"] = repr(target)
print(json.dumps(values, sort_keys=True))
'''


@pytest.mark.slow  # a cold interpreter and a fork import Gradio
def test_a_fork_sees_every_import_time_setting_as_a_cold_start_with_its_environment_does(tmp_path):
    steps = settings()
    # Every variable a fork re-reads (a pinned one must stay the warm interpreter's), set to a number: numbers
    # parse as any of Gradio's settings (ints, flags, names, paths, comma lists).
    pinned = {v for step in steps if isinstance(step, Pinned) for v in step.variables}
    variables = sorted({v for step in steps for v in step.variables} - pinned)
    environment = harness.clean_env(**{name: str(7001 + i) for i, name in enumerate(variables)})
    names = [(s.module, n) for s in steps if isinstance(s, Rerun) for n in s.names]
    names += [(s.module, f"{s.function}.__defaults__") for s in steps if isinstance(s, Default)]
    script = tmp_path / "dump.py"
    script.write_text(DUMP_SETTINGS)
    arguments = [str(script), json.dumps(names), *warm_start.PRELOAD]

    cold = subprocess.run([sys.executable, *arguments], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert cold.returncode == 0, cold.stderr[-3000:]
    fork = warm_start.start([sys.executable, *arguments], env=environment, cwd=tmp_path,
                            log_path=tmp_path / "fork.log")
    assert fork.wait(timeout=60) == 0, (tmp_path / "fork.log").read_text()[-3000:]

    expected = json.loads(cold.stdout)
    log = (tmp_path / "fork.log").read_text()
    assert "new interpreter" not in log  # a fork, not a cold start
    seen = json.loads(log.splitlines()[-1])  # the log may hold warnings too
    assert expected["gradio.oauth.OAUTH_CLIENT_ID"] == repr(environment["OAUTH_CLIENT_ID"])  # not vacuous
    assert {name: seen.get(name) for name in expected if seen.get(name) != expected[name]} == {}


@pytest.mark.slow  # a fork that becomes a new interpreter
def test_a_fork_whose_pinned_setting_differs_becomes_a_new_interpreter(tmp_path):
    pinned = next(step for step in settings() if isinstance(step, Pinned) and step.module == "gradio.profiling")
    script = tmp_path / "fresh.py"
    script.write_text("import sys\nprint('gradio imported:', 'gradio' in sys.modules)\n")
    environment = harness.clean_env(**{variable: "1" for variable in pinned.variables})  # GRADIO_PROFILING=1
    fork = warm_start.start([sys.executable, str(script)], env=environment, cwd=tmp_path,
                            log_path=tmp_path / "fork.log")
    assert fork.wait(timeout=60) == 0, (tmp_path / "fork.log").read_text()[-3000:]
    log = (tmp_path / "fork.log").read_text()
    assert "GRADIO_PROFILING differs from the warm interpreter's; starting as a new interpreter" in log
    assert log.splitlines()[-1] == "gradio imported: False"  # not the warm interpreter, which has imported it


# --- OAuth in a forked app ----------------------------------------------------------------------------------

class _Discovery(BaseHTTPRequestHandler):
    """Hugging Face's sign-in server, as far as a login redirect needs it: its OpenID discovery document."""

    def do_GET(self) -> None:  # noqa: N802
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        body = json.dumps({"issuer": base, "authorization_endpoint": f"{base}/oauth/authorize",
                           "token_endpoint": f"{base}/oauth/token", "userinfo_endpoint": f"{base}/oauth/userinfo",
                           "jwks_uri": f"{base}/oauth/jwks"}).encode()
        found = self.path == "/.well-known/openid-configuration"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body if found else b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sign_in_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@needs_warm_starts
def test_a_forked_app_signs_visitors_in_with_its_own_oauth_settings(tmp_path, sign_in_server):
    pytest.importorskip("authlib", reason="Hugging Face sign-in needs gradio[oauth] (authlib); not installed")
    itsdangerous = pytest.importorskip("itsdangerous", reason="gradio[oauth] (itsdangerous) is not installed")
    oauth = {"SYSTEM": "spaces", "SPACE_ID": "someone/kling-demo", "OAUTH_CLIENT_ID": "fork-client-id",
             "OAUTH_CLIENT_SECRET": "fork-client-secret", "OAUTH_SCOPES": "openid profile",
             "OPENID_PROVIDER_URL": sign_in_server}
    app = start_app_process(tmp_path / "data", env=oauth, log_path=tmp_path / "app.log")
    try:
        assert isinstance(app.process, warm_start.WarmProcess)  # a fork of the interpreter that imported Gradio
        config = requests.get(app.url + "config", timeout=10).json()
        assert any(c.get("props", {}).get("elem_id") == "login" for c in config["components"]), "no login button"
        login = requests.get(app.url + "login/huggingface", allow_redirects=False, timeout=10)
    finally:
        app.stop()
    assert login.status_code in (302, 307), login.text[:500]
    target = urllib.parse.urlsplit(login.headers["location"])
    query = urllib.parse.parse_qs(target.query)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{sign_in_server}/oauth/authorize"
    assert query["client_id"] == ["fork-client-id"] and query["scope"] == ["openid profile"]
    # The session cookie holding the login state is signed with a key made from the client secret.
    signer = itsdangerous.TimestampSigner(hashlib.sha256(b"fork-client-secret-v4").hexdigest())
    session = json.loads(base64.b64decode(signer.unsign(login.cookies["session"])))
    assert f"_state_huggingface_{query['state'][0]}" in session


# --- another Gradio -----------------------------------------------------------------------------------------

def test_another_gradio_than_the_pinned_one_is_named_with_both_versions(tmp_path):
    installed = importlib.metadata.version("gradio")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"requests>=2\ngradio[oauth]=={installed}\n")
    assert warm_start.gradio_mismatch(requirements) is None
    requirements.write_text("gradio==1.0.0\n")
    assert warm_start.gradio_mismatch(requirements) == f"gradio {installed} is installed but requirements.txt pins 1.0.0"


@pytest.mark.slow  # two sandboxes in new interpreters
def test_on_another_gradio_servers_start_cold_with_one_warning(monkeypatch):
    monkeypatch.setattr(warm_start, "gradio_mismatch", lambda: "gradio 9.9.9 is installed but requirements.txt pins 6.31.0")
    monkeypatch.setattr(harness, "warm_starts", True)
    warm_start.usable.cache_clear()
    try:
        with pytest.warns(UserWarning, match="Warm starts are off.*gradio 9.9.9 is installed") as caught:
            first = harness.start_sandbox_process()
            second = harness.start_sandbox_process()
        first.stop()
        second.stop()
    finally:
        warm_start.usable.cache_clear()
    assert isinstance(first.process, subprocess.Popen) and isinstance(second.process, subprocess.Popen)
    assert len([w for w in caught if "Warm starts are off" in str(w.message)]) == 1
