"""The page's events, one method each: who is asking is decided once per event (`Service.visitors`), the service
does the work, the views word it. Nothing here raises to the page: Gradio 6.31 runs no `.then()` step after a
handler raises and its error badges cover the outputs, so an ending is the last status instead."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import gradio as gr

from ..config import Settings
from ..errors import InputRejected, KlingDemoError
from ..models import DEFAULT_MODEL, FormFill, JobRequest, Stage, TaskRecord
from ..service.running import Job
from ..service.service import Service
from ..service.visitors import Visitor
from . import tiles, views
from .api import UNEXPECTED, caller_of, plain_errors
from .examples import ASSETS, EXAMPLES

log = logging.getLogger(__name__)
SPEC = DEFAULT_MODEL
SELECTED_OUTPUTS = 9  # what `Handlers.selected` puts out (page.py's `selected_out`)
REJOINED_OUTPUTS = 16  # what `Handlers.show_rejoined` puts out (page.py's `rejoined_out`)
# A refusal that frees within two minutes is looked at again every 5 s (its "in 45 s" stays true), a later one
# every 30 s; either is looked at again the moment it frees.
RECHECK_SOON, RECHECK_LATER = 5.0, 30.0
# What the page's job steps put out: status, task id, video, progress, and the stage (for the browser's title).
JobOutputs = tuple[Any, Any, Any, Any, Any]


class Handlers:
    """One method per event of the page (page.py wires them); the service checks every right again inside."""

    def __init__(self, service: Service, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.voice = service.voice
        self.placeholder = tiles.placeholder(service.videos_dir / "pending.png", ASSETS / "pending.png")

    # -- who is asking ------------------------------------------------------------------------------------------

    def visitor(self, request: gr.Request | None, owner_id: str | None = None, typed_key: str | None = None,
                from_page: bool = False, profile: gr.OAuthProfile | None = None) -> Visitor:
        """Who a job runs for: the page's signed owner id, the key they brought, whom their spend counts against."""
        return self.service.visitors.who(caller_of(request, owner_id, typed_key, from_page, profile))

    def owner(self, request: gr.Request | None, owner_id: str | None) -> Visitor:
        """Whose history an event shows."""
        return self.service.visitors.owner_of(caller_of(request, owner_id))

    def payer(self, request: gr.Request | None, typed_key: str | None, owner_id: str | None = None,
              profile: gr.OAuthProfile | None = None) -> Visitor:
        """Who would pay for the next video, for the money lines (a malformed key counts as none)."""
        return self.service.visitors.payer(caller_of(request, owner_id, typed_key, profile=profile))

    # -- arriving, and the history ------------------------------------------------------------------------------

    @plain_errors()
    def on_load(self, stored_owner: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Give the browser its signed owner id (kept in its localStorage) and show its history; unfinished tasks
        are fetched now. A stored id this server did not sign is replaced by a new one."""
        token = self.service.visitors.issue(stored_owner)
        if stored_owner and token.partition(".")[0] != stored_owner.partition(".")[0]:
            log.info("a browser's stored owner id was not signed by this server; it gets a new one")
        records = self.service.arrive(self.owner(request, token))
        return token, token, *self._tiles(records)  # select_newest follows

    @plain_errors()
    def show_history(self, owner_id: str | None, request: gr.Request) -> tuple[list[tuple[str, str]], list[str]]:
        """Your generations, newest first (also `/history` for programs)."""
        return self._tiles(self.service.tasks(self.owner(request, owner_id)))

    @staticmethod
    def highlight(task_ids: list[str], selected: str) -> Any:
        """The selected task's tile highlighted again after the tiles were redrawn (the gallery keeps the highlighted
        place, so a task added on top would take the highlight from the one the detail shows)."""
        return gr.update(selected_index=_place(task_ids, selected))

    @plain_errors()
    def refresh_changed(self, owner_id: str | None, seen: str, selected: str, shown: str,
                        request: gr.Request) -> tuple[Any, ...]:
        """Redraw the history only when a task was added or changed status (tasks finish in the background) or the
        selection moved since the last look; the selected task's detail, video and buttons too when its status is no
        longer the one the detail shows (`shown`, written with the detail, so a late answer cannot mix two tasks)."""
        records = self.service.tasks(self.owner(request, owner_id))
        signature = "|".join(f"{r.task_id}:{r.status.value}" for r in records) + f"#{selected}"
        unchanged = (gr.skip(),) * SELECTED_OUTPUTS
        if signature == seen:
            return gr.skip(), gr.skip(), seen, *unchanged
        record = next((r for r in records if r.task_id == selected), None) if selected else None
        detail = unchanged
        if selected and (record is None or record.status.value != shown):
            detail = self.selected(record, ask_to_delete=gr.skip())  # an open delete question stays
        return *self._gallery(records, record.task_id if record else ""), signature, *detail

    @plain_errors()
    def select(self, task_ids: list[str], owner_id: str | None, request: gr.Request,
               selection: gr.SelectData) -> tuple[Any, ...]:
        """Show the chosen task (only one's own) and enable the buttons that apply to it."""
        record = None
        if selection.index is not None and 0 <= selection.index < len(task_ids):
            record = self.service.task(self.owner(request, owner_id), task_ids[selection.index])
        return self.selected(record)

    def selected(self, record: TaskRecord | None, ask_to_delete: Any = None) -> tuple[Any, ...]:
        """What the history shows of `record` (None: nothing selected): its video, detail, id and the status the
        detail shows, the buttons that apply to it, the delete question (hidden unless `ask_to_delete` says
        otherwise), its end frame."""
        buttons = self._buttons(record)
        question = gr.update(visible=False) if ask_to_delete is None else ask_to_delete
        if record is None:
            return None, "", "", "", *buttons, question, gr.update(value=None, visible=False)
        video = record.video_path if record.video_path and Path(record.video_path).exists() else None
        end = self.service.end_frame(record)
        text = views.detail(record, self.voice, end_frame_shown=end is not None, charge=self.service.charge(record))
        return (video, text, record.task_id, record.status.value, *buttons, question,
                gr.update(value=str(end) if end else None, visible=end is not None))

    @plain_errors()
    def select_newest(self, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """On arriving: the newest finished video of the history selected (its tile, player, detail and buttons)."""
        records = self.service.tasks(self.owner(request, owner_id))
        return self._select(records, next((r for r in records if _has_video(r)), None))

    @plain_errors()
    def select_finished(self, owner_id: str | None, task_id: str | None, stage: str | None, task_ids: list[str],
                        selected: str, request: gr.Request) -> tuple[Any, ...]:
        """After a job: its video selected in the history when it finished with one; else the selection stays, its
        tile highlighted among the redrawn ones (`task_ids`)."""
        records = self.service.tasks(self.owner(request, owner_id)) if stage == Stage.DONE.value else []
        finished = next((r for r in records if r.task_id == task_id and _has_video(r)), None)
        if finished is None:
            return self.highlight(task_ids, selected), *(gr.skip(),) * SELECTED_OUTPUTS
        return self._select(records, finished)

    def _select(self, records: list[TaskRecord], record: TaskRecord | None) -> tuple[Any, ...]:
        """The gallery's highlighted tile and what the history shows of `record` (None: nothing selected)."""
        place = _place([r.task_id for r in records], record.task_id if record else "")
        return gr.update(selected_index=place), *self.selected(record)

    @plain_errors()
    def reuse(self, selected: str, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return self._form(self.service.reuse(self.owner(request, owner_id), selected))

    @plain_errors()
    def continue_from(self, selected: str, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return self._form(self.service.continue_from(self.owner(request, owner_id), selected))

    @plain_errors()
    def delete(self, selected: str, owner_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Delete the selected task here (after the visitor confirmed), then show the history without it."""
        owner = self.owner(request, owner_id)
        self.service.delete(owner, selected)
        return (None, f"**Deleted.** {self.voice.deleted()}", "", "", *self._buttons(None), gr.update(visible=False),
                gr.update(value=None, visible=False), *self._gallery(self.service.tasks(owner)))

    def _tiles(self, records: list[TaskRecord]) -> tuple[list[tuple[str, str]], list[str]]:
        """The history's tiles and their task ids."""
        return tiles.items(records, self.placeholder, self.voice), [r.task_id for r in records]

    def _gallery(self, records: list[TaskRecord], selected: str = "") -> tuple[Any, list[str]]:
        """The tiles and their ids, with `selected`'s tile highlighted (none: no tile)."""
        items, task_ids = self._tiles(records)
        return gr.update(value=items, selected_index=_place(task_ids, selected)), task_ids

    @staticmethod
    def _buttons(record: TaskRecord | None) -> tuple[Any, Any, Any]:
        """Reuse, Continue and Delete enabled where they apply to `record`."""
        has_video = bool(record and _has_video(record))
        known = bool(record and not record.resumed)
        ended = bool(record and not record.in_flight)
        return gr.update(interactive=known), gr.update(interactive=has_video), gr.update(interactive=ended)

    def _form(self, fill: FormFill) -> tuple[Any, ...]:
        """The form's new values (first frame, prompt, negative prompt, guidance, duration, end frame, Advanced)
        and the note above it saying what was filled."""
        end = str(fill.end_frame) if fill.end_frame else (None if fill.clear_end_frame else gr.skip())
        shown = gr.update(open=True) if fill.negative_prompt or fill.end_frame else gr.skip()  # nothing hidden
        return (str(fill.first_frame) if fill.first_frame else gr.skip(), fill.prompt, fill.negative_prompt,
                fill.guidance_scale, fill.duration, end, shown, views.filled(fill))

    # -- money ----------------------------------------------------------------------------------------------------

    @plain_errors()
    def show_offer(self, duration: int | None, typed: str | None, owner_id: str | None, request: gr.Request,
                   profile: gr.OAuthProfile | None = None) -> tuple[Any, Any, Any, Any]:
        """The next video as the page offers it, following the duration and the key: the price line, Generate (its
        price on it, or disabled with why in its label), the line beside it (the budgets used, or why the next
        video is refused and when that frees), and the timer that looks again as it frees. A job running on this
        owner's page keeps Generate as the job left it."""
        payer = self.payer(request, typed, owner_id, profile)
        price = self.service.price(payer, duration)
        refusal = self.service.refusal(payer, duration)
        note = views.budget_note(self.service.budget(payer), refusal, self.voice)
        button: dict[str, Any] = {"value": views.generate_label(price, refusal, self.voice)}
        if refusal is not None or not self.service.running(payer):
            button["interactive"] = refusal is None
        wait = refusal.wait if refusal is not None else None
        ticker = gr.Timer(recheck_after(wait), active=True) if wait is not None else gr.Timer(active=False)
        return self.voice.price_line(price), gr.update(**button), gr.update(value=note, visible=bool(note)), ticker

    @plain_errors()
    def show_key_status(self, typed: str | None, owner_id: str | None, request: gr.Request) -> str:
        """As soon as a key is entered, after each job and when the page is looked at again: accepted (with its
        balance now) or rejected; the key itself is never shown."""
        check = self.service.check_key(typed, self.payer(request, None, owner_id))
        return views.literal(self.voice.key_status(check, fallback=not self.settings.require_user_key))

    @plain_errors()
    def show_spend(self, owner_id: str | None, request: gr.Request) -> str:
        """What the visitor's tasks cost so far (shown once the page has its owner id)."""
        return self.voice.spend_line(self.service.spend(self.owner(request, owner_id))) if owner_id else ""

    # -- a job on the page ----------------------------------------------------------------------------------------

    @staticmethod
    def busy() -> tuple[Any, ...]:
        """Buttons for a running job, and a clean slate: no old task id, video or progress."""
        return gr.update(interactive=False), gr.update(interactive=True), True, "", None, "", ""

    @staticmethod
    def idle() -> tuple[Any, Any]:
        return gr.update(interactive=True), gr.update(interactive=False)

    async def generate_on_page(self, image: str | None, prompt: str, negative_prompt: str | None, guidance_scale: float,
                       duration: int, end_image: str | None, owner_id: str | None, typed_key: str | None,
                       from_page: bool, token: str, request: gr.Request,
                       profile: gr.OAuthProfile | None = None) -> AsyncIterator[JobOutputs]:
        job_request = JobRequest(image=image, prompt=prompt, negative_prompt=negative_prompt,
                                 guidance_scale=guidance_scale, duration=duration, end_image=end_image)
        start = lambda: self.service.generate(job_request, self.visitor(request, owner_id, typed_key, from_page,  # noqa: E731
                                                                         profile), token=token)
        async for outputs in self._drive(start):
            yield outputs

    async def resume_on_page(self, task_id: str, owner_id: str | None, typed_key: str | None, from_page: bool, token: str,
                     request: gr.Request) -> AsyncIterator[JobOutputs]:
        def start() -> Job:
            return self.service.resume(self.service.check_task_id(task_id),
                                       self.visitor(request, owner_id, typed_key, from_page), token=token)

        async for outputs in self._drive(start):
            yield outputs

    async def adopt_on_page(self, picked: str | None, owner_id: str | None, typed_key: str | None, from_page: bool,
                    token: str, request: gr.Request) -> AsyncIterator[JobOutputs]:
        """Follow the picked task of the visitor's own key into their history, shown like a resume."""
        def start() -> Job:
            who = self.visitor(request, owner_id, typed_key, from_page)
            if who.api_key and not picked:
                raise InputRejected("Pick one of your tasks first (press “Load my tasks” to list them).")
            return self.service.adopt(picked or "", who, token=token)

        async for outputs in self._drive(start):
            yield outputs

    def rejoin(self, owner_id: str | None, request: gr.Request) -> tuple[Any, str]:
        """A page that loads while the visitor has a job in flight (a reload, a second tab, a return): that job's row,
        and a fresh name for it, whose arrival in `rejoined` shows and follows it (`show_rejoined`, `watch_on_page`).
        With none, plain empty values: nothing changes and nothing more runs ("Ready")."""
        if not owner_id:
            return None, ""
        try:
            record = self.service.in_flight(self.owner(request, owner_id))
        except Exception:  # the page stays as it loaded; the history still shows the task
            log.exception("could not look for a running job on a page that loaded")
            return None, ""
        return (record, secrets.token_hex(8)) if record is not None else (None, "")

    def show_rejoined(self, record: TaskRecord | None, owner_id: str | None, token: str,
                      request: gr.Request) -> tuple[Any, ...]:
        """The job `rejoin` found, at once: the buttons of a running job, its status and task id, its name (so Stop
        finds it), and the form it was made from (the page's form is empty: it just loaded)."""
        if record is None:  # `rejoin` found none (it leaves `rejoined` unchanged then: not reached)
            return (gr.skip(),) * REJOINED_OUTPUTS
        try:
            fill: FormFill | None = self.service.reuse(self.owner(request, owner_id), record.task_id)
        except KlingDemoError:  # fetched by its id: its settings are not known here
            fill = None
        return (gr.update(interactive=False), gr.update(interactive=True), views.rejoined(record, self.voice),
                "" if record.is_intent else record.task_id, None, "", "", token, *self._fresh_form(fill))

    def _fresh_form(self, fill: FormFill | None) -> tuple[Any, ...]:
        """`_form` for a form that is still empty. The frame inputs get plain values, never an update: Gradio rebuilds
        a component a step updates, for that page, without `frame_input`'s adjustment (its checks of a dropped file)."""
        if fill is None:
            return None, gr.skip(), gr.skip(), gr.skip(), gr.skip(), None, gr.skip(), ""
        first, prompt, negative, guidance, duration, _, advanced, note = self._form(fill)
        return (str(fill.first_frame) if fill.first_frame else None, prompt, negative, guidance, duration,
                str(fill.end_frame) if fill.end_frame else None, advanced, note)

    async def watch_on_page(self, record: TaskRecord | None, owner_id: str | None, token: str,
                            request: gr.Request) -> AsyncIterator[JobOutputs]:
        """Follow the job `rejoin` found to its ending like a job of this page (its video in the main player)."""
        def start() -> Job:
            job = self.service.watch(self.owner(request, owner_id), token, record=record)
            if job is None:  # cannot be: `record` is the owner's; said rather than raised
                raise InputRejected("There is no job of yours running now.")
            return job

        async for outputs in self._drive(start):
            yield outputs

    def stop(self, token: str, owner_id: str | None, request: gr.Request) -> tuple[Any, Any]:
        """What Stop did, true at this very moment; the job then ends with the same words (its last update)."""
        try:
            report = self.service.stop(self.owner(request, owner_id), token or "")
        except KlingDemoError as error:  # no owner id: the page never loaded fully, so it runs no job
            return f"**Stopped** — {views.literal(self.voice.error_text(error))}", gr.skip()
        if report.ended:
            return gr.skip(), gr.skip()
        return f"**Stopped** — {views.literal(self.voice.stopped(report))}", gr.skip()

    async def _drive(self, start: Callable[[], Job]) -> AsyncIterator[JobOutputs]:
        """Run a job for the page: each update as (status, task id, video, progress, stage). A job that ends
        without a video ends on its last update (the error's sentence); after Stop only the stop's own ending
        is shown, so no late step of the job writes over Stop's words."""
        try:
            job = start()
        except KlingDemoError as error:
            yield (f"**{self.voice.error_heading(error)}** — "
                   f"{views.literal(views.without_paths(self.voice.error_text(error)))}",
                   gr.skip(), None, "", Stage.FAILED.value)
            return
        except Exception:
            yield self._unexpected(), gr.skip(), None, "", Stage.FAILED.value
            return
        task_id = ""
        try:
            async for update in job.updates_async(anyio.to_thread.run_sync):
                task_id = update.task_id or task_id
                if job.stopped and not update.is_final:
                    continue
                yield (views.status_markdown(update, self.voice), task_id, str(update.video_path or "") or None,
                       views.progress_html(update.progress), update.stage.value)
        except KlingDemoError:
            pass  # the job's last update said it
        except Exception:
            yield self._unexpected(), task_id, None, gr.skip(), Stage.FAILED.value
        finally:
            job.close()

    @staticmethod
    def _unexpected() -> str:
        reference = secrets.token_hex(3)
        log.exception("unexpected error, reference %s", reference)
        return f"**Failed** — {UNEXPECTED.format(reference=reference)}"

    # -- your WaveSpeed tasks -------------------------------------------------------------------------------------

    def load_tasks(self, owner_id: str | None, typed_key: str | None, request: gr.Request) -> tuple[Any, str]:
        """The visitor's own key's recent tasks of this model, as picks (a refusal in the visitor's words)."""
        with plain_errors(self.voice):
            tasks = self.service.recent_tasks(self.visitor(request, owner_id, typed_key))
        return gr.update(choices=views.recent_task_choices(tasks, self.voice), value=None), views.recent_tasks_note(tasks)

    # -- examples and instant image checks ------------------------------------------------------------------------

    @staticmethod
    def choose_example(selection: gr.SelectData) -> tuple[Any, ...]:
        """Everything an example fills is shown (Advanced opens when it sets something there)."""
        example = EXAMPLES[selection.index]
        note = f"Example loaded: **{example.title}**."
        if example.extras:
            note += (f" It also sets {' and '.join(example.extras)}, shown under **Advanced** (opened); a first "
                     "frame of your own clears them.")
        return (str(ASSETS / example.image), example.prompt, example.negative,
                str(ASSETS / example.end_image) if example.end_image else None, example.duration,
                gr.update(open=bool(example.extras)), "extras" if example.extras else "example", note)

    def own_first_frame(self, path: str | None, from_example: str) -> tuple[Any, ...]:
        """A first frame of the visitor's own: checked at once; an example's end frame and negative prompt are
        cleared so the video does not end on the example's picture, and the status that described the example
        goes (it no longer describes the form)."""
        problem = self.service.check_frame(path)
        note = f"⚠️ {views.literal(problem)}" if problem else ""
        if from_example == "extras":
            cleared = "Your own first frame: the example's end frame and negative prompt were cleared."
            return "\n\n".join(filter(None, (note, cleared))), "", None, "", views.IDLE_STATUS
        if from_example:
            return note, gr.skip(), gr.skip(), "", views.IDLE_STATUS
        return note, gr.skip(), gr.skip(), "", gr.skip()

    def own_end_frame(self, path: str | None) -> str:
        problem = self.service.check_frame(path, end=True)
        return f"⚠️ {views.literal(problem)}" if problem else ""


def _place(task_ids: list[str], selected: str) -> int | None:
    """Where the `selected` task's tile is among the history's tiles (None: not there, or nothing selected)."""
    return task_ids.index(selected) if selected and selected in task_ids else None


def _has_video(record: TaskRecord) -> bool:
    return bool(record.video_path and Path(record.video_path).exists())


def recheck_after(wait: float) -> float:
    """Seconds until the page looks again at a refusal that frees in `wait` seconds."""
    return max(1.0, min(wait + 0.5, RECHECK_SOON if wait < 120 else RECHECK_LATER))
