"""The page's words and HTML, made from the service's data: a job's status and progress, the history's captions and
detail, the notes the form's actions leave. Pure functions; the voice (`kling_demo.words`) says the sentences."""

from __future__ import annotations

import enum
import html
import math
import re
import time

from ..models import (BudgetRefusal, BudgetView, Charge, Estimate, EstimateSource, FormFill, JobUpdate, Limit,
                      ListedTask, PriceView, ProgressView, Stage, TaskRecord, TaskStatus)
from ..words import Voice, duration, money, plural

IDLE_STATUS = "Ready. Add a first frame and a prompt (or pick an example), then press **Generate**."
# A character counter under a text box, run in the browser only (page.js); it appears from 80 % of the cap.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")
_INLINE_MARKUP = re.compile(r"([\\`*_\[\]<>&~|])")
_AUTOLINK = re.compile(r"(?i):(?:\\?/){2}|\bwww(?:\\?\.)")  # what GFM turns into a link without any markup
# An absolute path, not part of a URL: `/data/kling_demo/videos/x.mp4` → `x.mp4`.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/:]+/)+")


# --- text shown as text ---------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Visitor text (or the API's) shown literally in Markdown, on one line: no markup, no bare link."""
    return _unlinked(_MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(text.split())))


def literal(sentence: str) -> str:
    """A sentence shown as text inside a line of Markdown, on one line: what could start markup is escaped (HTML,
    emphasis, code, links, bare links), and nothing else, so a status stays readable to API clients."""
    return _unlinked(_INLINE_MARKUP.sub(r"\\\1", " ".join(sentence.split())))


def without_paths(message: str) -> str:
    """A message with every absolute server path cut down to its file name."""
    return _ABSOLUTE_PATH.sub("", message)


def _unlinked(text: str) -> str:
    """Escaped Markdown with `://` and `www.` broken up, so GFM makes no link of a bare address."""
    return _AUTOLINK.sub(lambda found: ":\\/\\/" if found.group(0).startswith(":") else found.group(0)[:3] + "\\.",
                         text)


# --- a job ----------------------------------------------------------------------------------------------------


def status_markdown(update: JobUpdate, voice: Voice) -> str:
    """The heading and sentence of an update; what was fixed in the input stays visible until the end."""
    sentence = without_paths(voice.status(update))
    text = f"**{voice.heading(update)}** — {literal(sentence)}"
    if update.fixes and update.stage is not Stage.FAILED:
        text += "\n\n*Fixed before upload:* " + "; ".join(literal(fix) for fix in update.fixes) + "."
    return text


def rejoined(record: TaskRecord, voice: Voice) -> str:
    """The status of a job a page picks up as it loads, until the job's own first update (a moment later)."""
    return f"**{voice.task_status(record.status)}** — Your job is still running; following it here…"


def progress_html(view: ProgressView | None) -> str:
    """The progress display: ticked steps, a bar, and elapsed / expected remaining in plain words."""
    if view is None:
        return ""
    steps = "".join(
        f'<li class="{"current" if current else "passed" if passed else "todo"}">'
        f'{"✓ " if passed else ""}{html.escape(step.value)}</li>' for step, passed, current in view.steps)
    percent = round(view.fraction * 100)
    state = ("failed" if view.stage in (Stage.FAILED, Stage.STOPPED) else "late" if view.late
             else "done" if view.ended else "running")
    return (f'<div class="kd-progress {state}"><ol class="kd-steps">{steps}</ol>'
            f'<div class="kd-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}">'
            f'<div class="kd-fill" style="width: {percent}%"></div></div>'
            f'<p class="kd-times">{html.escape(progress_words(view))}</p></div>')


def progress_words(view: ProgressView) -> str:
    """Elapsed, expected remaining, place in line, and "longer than usual" when it is; never "0s to go"."""
    if view.stage is Stage.DONE:
        return f"Done in {duration(view.elapsed)}."
    if view.stage is Stage.FAILED:
        return f"Ended without a video after {duration(view.elapsed)}."
    if view.stage is Stage.STOPPED:
        return f"Stopped after {duration(view.elapsed)}."
    parts = [f"{duration(view.elapsed)} elapsed"]
    if view.place is not None:
        parts.append("you are next in this app's line" if view.place <= 1 else
                     f"number {view.place} in this app's line")
    estimate = view.estimate
    if view.late and estimate is not None:
        parts.append(f"{_late(view, estimate)}; it is still being followed")
    elif view.remaining is not None and estimate is not None:
        where = ("from this app's recent renders" if estimate.source is EstimateSource.HISTORY
                 else "a first guess until this app has timed a render of its own")
        # Rounded up: a render a moment from its estimate has "about 1s to go", never 0 (it is late after).
        parts.append(f"about {duration(math.ceil(view.remaining))} to go ({where})")
    elif estimate is None:
        parts.append("no estimate yet: this app has not timed a render of this length")
    return " · ".join(parts) + "."


def _late(view: ProgressView, estimate: Estimate) -> str:
    """A render past its estimate: how long renders like it took here (the honest range, from this app's own), or
    what was expected when this app has timed none."""
    fastest, slowest = estimate.fastest, estimate.slowest
    if estimate.source is not EstimateSource.HISTORY or fastest is None or slowest is None:
        return (f"taking longer than usual (renders like this usually take about {duration(estimate.seconds)}; "
                "this app has not timed one yet)")
    took = (f"about {duration(slowest)}" if duration(fastest) == duration(slowest)
            else f"{duration(fastest)}–{duration(slowest)}")
    if view.rendering_for is not None and view.rendering_for > slowest:
        return f"taking longer than any recent render here ({took})"
    return f"taking longer than usual: renders like this took {took} here"


# --- the history ----------------------------------------------------------------------------------------------


class TileState(str, enum.Enum):
    """What a history tile tells at a glance."""

    DONE = "done"
    RENDERING = "rendering"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the submit answer never arrived: a task may exist (and be billed)


# Text symbols most fonts have (DejaVu, Segoe UI Symbol, Apple Symbols): emoji are tofu without an emoji font.
SYMBOLS = {TileState.DONE: "✓", TileState.RENDERING: "⟳", TileState.FAILED: "✕", TileState.UNKNOWN: "⚠"}


def tile_state(record: TaskRecord) -> TileState:
    if record.status is TaskStatus.COMPLETED:
        return TileState.DONE
    if record.in_flight:
        return TileState.RENDERING
    if record.status is TaskStatus.UNKNOWN:
        return TileState.UNKNOWN
    return TileState.FAILED


def caption(record: TaskRecord, voice: Voice) -> str:
    """`✓ Done · <prompt> · 27 Nov 14:03 · 41s`: state first, so it reads at a glance."""
    when = time.strftime("%d %b %H:%M", time.localtime(record.created_at))
    took = f" · {duration(record.inference_ms / 1000)}" if record.inference_ms else ""
    prompt = record.prompt or "(fetched by task id)"
    return f"{SYMBOLS[tile_state(record)]} {voice.task_status(record.status)} · {prompt[:60]} · {when}{took}"


def detail(record: TaskRecord, voice: Voice, *, end_frame_shown: bool = False, charge: Charge | None = None) -> str:
    """The selected task in full: state, settings, render time, cost, task id and what went wrong.
    `end_frame_shown`: the page shows the end frame's picture, so the line points at it; `charge`: what WaveSpeed's
    billing says it cost, where it could be read."""
    params = record.params
    lines = [f"**{SYMBOLS[tile_state(record)]} {voice.task_status(record.status)}** · "
             f"{time.strftime('%d %b %Y %H:%M', time.localtime(record.created_at))}{_times(record, voice)}"]
    if record.resumed:
        lines.append("Fetched by its task id: its settings were made elsewhere and are not known here.")
    else:
        lines.append(f"**Prompt:** {escape(record.prompt) or '—'}")
        lines.append(f"**Negative prompt:** {escape(str(params.get('negative_prompt') or '')) or '—'}")
    settings = []
    if params.get("guidance_scale") is not None:
        settings.append(f"**Guidance:** {escape(str(params['guidance_scale']))}")
    if record.duration:
        settings.append(f"**Duration:** {record.duration} s")
    if "end_image" in params:
        had = "yes, pictured" if end_frame_shown else "yes"
        settings.append(f"**End frame:** {had if params['end_image'] else 'no'}")
    if settings:
        lines.append(" · ".join(settings))
    cost = _cost(record, voice, charge)
    if cost:
        lines.append(f"**Cost:** {cost}")
    lines.append(f"**Task id:** never received from {voice.service}" if record.is_intent
                 else f"**Task id:** `{record.task_id}`")
    if record.error:
        lines.append(escape(record.error))
    if record.is_running:
        lines.append("Still rendering; the video appears here when it finishes.")
    return "\n\n".join(lines)


def _cost(record: TaskRecord, voice: Voice, charge: Charge | None) -> str:
    """The task's cost as the done status and "Spent so far" state it: what WaveSpeed charged where its billing
    could be read (a refunded failure at $0), else the quote at submission, labelled."""
    if voice.sandbox:
        return "Free (sandbox)"
    if charge is not None:
        return voice.cost(record.quote, charged=charge.amount, settled=charge.settled).removeprefix("cost ")
    if record.quote is None:
        return ""
    text = voice.cost(record.quote).removeprefix("cost ")
    if record.is_intent:
        return f"{text}; charged only if the submission created a task, so not counted in “Spent so far”"
    if record.status is TaskStatus.COMPLETED or record.in_flight:
        return text
    return f"{text}; whether a task that ended without a video is charged is {voice.service}'s to say"


def _times(record: TaskRecord, voice: Voice) -> str:
    parts = []
    if record.inference_ms:
        parts.append(f"rendered in {record.inference_ms / 1000:.1f} s at {voice.service}")
    if record.finished_at and record.status is TaskStatus.COMPLETED:
        parts.append(f"ready after {duration(record.finished_at - record.created_at)}")
    return "".join(f" · {part}" for part in parts)


def recent_task_choices(tasks: list[ListedTask], voice: Voice) -> list[tuple[str, str]]:
    """(label, task id) picks for "Your WaveSpeed tasks": status, when, the prompt if the API echoes it, the id,
    and whether it is in the history already."""
    choices = []
    for task in tasks:
        when = (time.strftime("%d %b %H:%M", time.localtime(task.created_epoch)) if task.created_epoch is not None
                else "time unknown")
        about = f" · “{task.prompt[:50]}{'…' if len(task.prompt) > 50 else ''}”" if task.prompt else ""
        kept = " · in your history" if task.in_history else ""
        choices.append((f"{voice.task_status(task.status)} · {when}{about} · task {task.task_id}{kept}",
                        task.task_id))
    return choices


def recent_tasks_note(tasks: list[ListedTask]) -> str:
    if not tasks:
        return "Your key has no tasks of this model in the last 24 hours."
    return f"{plural(len(tasks), 'recent task')} of your key; pick one, then press **Bring into my history**."


# --- money ----------------------------------------------------------------------------------------------------


def generate_label(view: PriceView | None, refusal: BudgetRefusal | None, voice: Voice) -> str:
    """Generate's label: why it is not offered, else its price where WaveSpeed quoted one ("Generate · $1.40")."""
    if refusal is not None:
        if refusal.limit is Limit.RATE:
            return f"Wait: {plural(int(refusal.cap), 'video')} a minute at most" if refusal.cap else "Switched off"
        whose = "your" if refusal.limit is Limit.VISITOR else "this Space's" if voice.on_space else "this app's"
        return f"Over {whose} daily budget"
    if view is not None and view.quote is not None:
        return f"Generate · {money(view.quote.price, view.quote.currency)}"
    return "Generate"


def budget_note(view: BudgetView | None, refusal: BudgetRefusal | None, voice: Voice) -> str:
    """The line beside Generate: why the next video is not offered and when that frees, else the visitor's use of
    the budgets ("" where none applies)."""
    if refusal is not None:
        return f"**Not offered now.** {literal(voice.refused(refusal))}"
    return literal(voice.budget_line(view))


# --- the form -------------------------------------------------------------------------------------------------


def filled(fill: FormFill) -> str:
    """What a history action put into the form, and what it could not."""
    if fill.from_last_frame:
        return ("The last frame of this video is the new first frame; the prompt and settings are kept and the end "
                "frame is cleared.")
    note = "The settings of this task are in the form."
    if fill.missing:
        one = len(fill.missing) == 1
        note += (f" Its {' and '.join(fill.missing)} {'was' if one else 'were'} not kept here: add "
                 f"{'it' if one else 'them'} again.")
    return note


def delete_question(voice: Voice) -> str:
    if voice.sandbox:
        return ("**Delete this task from your history?** Its entry, video and frames are deleted, with no undo. "
                "(Sandbox mode: it cost nothing.)")
    return ("**Delete this task from your history?** Its entry, video and frames on this server are deleted, with no "
            "undo. At WaveSpeed nothing changes: the task and its video stay until WaveSpeed's retention ends, and "
            "its charge stands.")


def backend_banner(voice: Voice, *, base_url: str, model_id: str, require_user_key: bool) -> str:
    if voice.sandbox:
        how = ("For Kling 2.0, the app's owner sets an API key and restarts it." if voice.for_visitors else
               "For Kling 2.0, set `WAVESPEED_API_KEY` (environment or `.env`) and restart.")
        return ("**Sandbox mode — no AI.** Videos are made locally (a slow camera move over your image, marked "
                f"*SANDBOX*) and cost nothing. {how}")
    who = ("Bring your own WaveSpeed key below: this app does not pay for generations." if require_user_key else
           f"Generations are paid with {voice.servers_key}, or with your own if you enter one below.")
    return f"**Live: WaveSpeedAI** (`{base_url}`), model `{model_id}`. {who}"
