"""What a Hugging Face Space relies on: `import app; app.demo` with no side effects, and the README's front matter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.harness import clean_env, free_port, start_app_process

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: records every file opened for writing and every directory made while `app` is
# imported (Python's audit hooks), then reports the TCP ports this process listens on and its threads.
IMPORT_PROBE = textwrap.dedent(r"""
    import json, os, sys, threading

    writes = []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def audit(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & WRITE_FLAGS:
                writes.append(os.path.abspath(os.fsdecode(args[0])))
        elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.copyfile", "shutil.rmtree"):
            writes.append(os.path.abspath(os.fsdecode(args[0])))
        elif event == "sqlite3.connect":
            writes.append(os.path.abspath(os.fsdecode(args[0])))

    sys.addaudithook(audit)
    import app
    import gradio as gr

    def listening_ports():
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports = set()
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with open(table) as rows:
                for row in list(rows)[1:]:
                    fields = row.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, owned by this process
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return sorted(ports)

    backend = app.demo.backend
    print(json.dumps({
        "is_blocks": isinstance(app.demo, gr.Blocks),
        "has_generate": any(fn.api_name == "generate" for fn in app.demo.fns.values()),
        "launched": bool(getattr(app.demo, "server", None)) or bool(getattr(app.demo, "local_url", None)),
        "ports": listening_ports(),
        "sandbox_port": int(backend.base_url.rsplit(":", 1)[1]) if backend.is_sandbox else None,
        "threads": sorted(t.name for t in threading.enumerate()),
        "writes": sorted(set(writes)),
    }))
""")


def import_app(tmp_path: Path, env: dict[str, str]) -> tuple[dict, Path, Path]:
    """`import app` in a subprocess from an empty working directory; returns its report, the data dir and cwd."""
    cwd, home, data, scratch = tmp_path / "cwd", tmp_path / "home", tmp_path / "data", tmp_path / "tmp"
    for folder in (cwd, home, scratch):
        folder.mkdir()
    environment = clean_env(PYTHONDONTWRITEBYTECODE="1", HOME=str(home), KLING_DEMO_DATA_DIR=str(data),
                            GRADIO_SERVER_PORT=str(free_port()), TMPDIR=str(scratch),
                            GRADIO_TEMP_DIR=str(scratch / "gradio"), **env)
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), data, cwd


def test_importing_app_without_a_key_builds_demo_and_starts_only_the_sandbox(tmp_path):
    report, data, cwd = import_app(tmp_path, {})
    assert report["is_blocks"] and report["has_generate"]
    assert not report["launched"], "importing app must not launch the page: Spaces launch `demo` themselves"
    assert report["sandbox_port"] and report["ports"] == [report["sandbox_port"]], report["ports"]
    assert 7860 not in report["ports"]
    assert any(name.startswith("sandbox-") for name in report["threads"]), report["threads"]
    outside = outside_data_dir(report["writes"], tmp_path)
    assert outside == [], f"importing app wrote outside KLING_DEMO_DATA_DIR: {outside}"
    assert list(cwd.iterdir()) == [] and list((tmp_path / "home").iterdir()) == []


def test_importing_app_with_a_key_starts_no_sandbox_and_listens_on_nothing(tmp_path):
    report, data, cwd = import_app(tmp_path, {"WAVESPEED_API_KEY": "server-key",
                                              "WAVESPEED_BASE_URL": "http://127.0.0.1:9"})
    assert report["is_blocks"] and report["has_generate"] and not report["launched"]
    assert report["sandbox_port"] is None and report["ports"] == []
    assert not any(name.startswith("sandbox-") for name in report["threads"]), report["threads"]
    outside = outside_data_dir(report["writes"], tmp_path)
    assert outside == [], f"importing app wrote outside KLING_DEMO_DATA_DIR: {outside}"
    assert list(cwd.iterdir()) == []


def outside_data_dir(writes: list[str], tmp_path: Path) -> list[str]:
    """Writes outside the data dir, leaving out the temp dir (Gradio's cache dir, the sandbox's scratch dir and
    `tempfile`'s probe of it) and /dev/null."""
    allowed = (tmp_path / "data", tmp_path / "tmp")
    return [path for path in writes
            if path != os.devnull and not any(Path(path).is_relative_to(folder) for folder in allowed)]


# --- README front matter: what the Hub reads to build the Space ------------------------------------------------

def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with a YAML front matter block between --- lines"
    return yaml.safe_load(match.group(1))


def pinned_gradio() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(r"\s*gradio(\[[\w,\s]+\])?\s*==\s*([\w.]+)\s*(#.*)?", line)
        if match:
            return match.group(2)
    pytest.fail("requirements.txt does not pin gradio with ==")


def test_readme_front_matter_describes_the_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == pinned_gradio(), "the Space must run the gradio the tests ran"
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert re.fullmatch(r"3\.\d+", str(meta["python_version"])), meta["python_version"]
    assert isinstance(meta["python_version"], str), "unquoted 3.10 would be read as the number 3.1"
    assert 0 < len(meta["short_description"]) <= 60, f"HF allows 60 characters: {len(meta['short_description'])}"
    assert meta["license"], "a license"
    assert meta.get("title")


# --- the README's gradio_client example, run as written against a local app ------------------------------------

README_EXAMPLE = '''\
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")  # or the Space's name, e.g. "you/kling-image-to-video"
job = client.submit(
    image=handle_file("first_frame.png"),
    prompt="A slow dolly-in as the wind moves through her hair",
    negative_prompt="",
    guidance_scale=0.5,
    duration=5,
    end_image=None,
    api_name="/generate",
)
for status, task_id, video in job:  # each update as it happens
    print(status)
status, task_id, video = job.result()
print("task", task_id, "video saved at", video)
'''


def readme_example() -> str:
    """The README's gradio_client example when it has one, else the example above (pasted into the README)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        if "gradio_client" in block and "/generate" in block:
            return block
    return README_EXAMPLE


def test_the_readme_gradio_client_example_prints_each_status_and_the_video(tmp_path, make_image):
    # `python app.py` in a new interpreter, as the README runs it (other tests fork a warm one).
    app = start_app_process(tmp_path / "data", env={"KLING_DEMO_SANDBOX_SECONDS": "2"},
                            log_path=tmp_path / "app.log", cold=True)
    try:
        example = readme_example()
        assert 'Client("http://127.0.0.1:7860/")' in example and '"first_frame.png"' in example
        work = tmp_path / "example"
        work.mkdir()
        make_image(size=(720, 480)).rename(work / "first_frame.png")
        (work / "example.py").write_text(example.replace("http://127.0.0.1:7860/", app.url))
        done = subprocess.run([sys.executable, "example.py"], cwd=work, capture_output=True, text=True, timeout=60)
    finally:
        app.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("**Submitted**") for line in lines), lines
    assert any(line.startswith("**Rendering**") for line in lines), lines
    assert any(line.startswith("**Done**") for line in lines), lines
    assert lines[-1].startswith("task ") and lines[-1].endswith(".mp4"), lines[-1]
