"""Why the page never calls `gr.Info`: its housekeeping events run outside the queue (`queue=False`, served by
`POST /gradio_api/run/predict`, so a queue full of jobs cannot refuse them), and Gradio 6.31 delivers a
`gr.Info`/`gr.Warning` only to an event that has a queue event id; anywhere else it prints the message to the
server's stdout (Info, Success) or raises a Python warning (Warning). The visitor saw nothing ("I pressed Continue
and thought nothing had happened"). The page answers in what the event outputs instead (the status, the note
above the form, the history's detail) and brings it into view (`window.klingDemo.show`)."""

from __future__ import annotations

import ast
from pathlib import Path

import gradio as gr
from gradio.context import LocalContext

WEB = Path(__file__).resolve().parents[2] / "kling_demo" / "web"
MODALS = {"Info", "Warning", "Success"}


def test_gradio_sends_a_modal_only_to_a_queued_event(capsys):
    assert LocalContext.event_id.get(None) is None  # as in a queue=False event
    gr.Info("said outside the queue")
    assert "said outside the queue" in capsys.readouterr().out, "Gradio changed: a modal may now reach the browser"


def test_the_page_says_nothing_in_a_modal_its_events_would_only_print():
    calls = []
    for path in WEB.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MODALS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "gr"):
                calls.append(f"{path.name}:{node.lineno} gr.{node.func.attr}")
    assert not calls, calls
