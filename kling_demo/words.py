"""Every sentence about a job, a stop and money, made from facts, in the voice the service chose once for its backend.

A job update and a stop report are data (`kling_demo.models`); the page, the API and the command line all word
them here. `Voice` holds the facts that change the words: whether the backend is the free embedded sandbox (no
WaveSpeed, nothing billed), whether the app runs as a Space (whose key pays for visitors), and whether the reader
is a visitor (no HTTP codes, variable or header names, "inference") or a developer's program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import (CheckTheKey, FixTheInput, KlingDemoError, SubmissionOutcomeUnknown, TaskEnded, TaskKept,
                     TryLater)
from .models import (BudgetView, JobUpdate, KeyCheck, KeyState, Payer, PriceView, Quote, Stage, StopReport, Submission,
                     TaskStatus)

HEADINGS = {
    Stage.PREPARING: "Checking", Stage.WAITING: "Waiting", Stage.UPLOADING: "Uploading",
    Stage.SEARCHING: "Looking for the task", Stage.SUBMITTED: "Submitted", Stage.QUEUED: "Queued",
    Stage.PROCESSING: "Rendering", Stage.DOWNLOADING: "Downloading", Stage.DONE: "Done", Stage.FAILED: "Failed",
    Stage.STOPPED: "Stopped",
    Stage.SUBMITTING: "Submitting",  # a page watching another's submission, not yet answered
}


def duration(seconds: float) -> str:
    """`42s`, `2m 05s`: a span as a status line shows it."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def money(amount: float, currency: str = "USD") -> str:
    """An amount as a person reads it, two decimals, in the API's currency: "$1.40", "1.40 EUR"."""
    return f"${amount:,.2f}" if currency.upper() == "USD" else f"{amount:,.2f} {currency.upper()}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Voice:
    """How this app speaks: of WaveSpeed and billing, or of the free sandbox; of a Space's key or an app's."""

    sandbox: bool = False
    on_space: bool = False
    for_visitors: bool = True

    # -- names --------------------------------------------------------------------------------------------------

    @property
    def service(self) -> str:
        """The backend's name inside a sentence."""
        return "the sandbox" if self.sandbox else "WaveSpeed"

    @property
    def service_first(self) -> str:
        """The backend's name at the start of a sentence."""
        return "The sandbox" if self.sandbox else "WaveSpeed"

    @property
    def servers_key(self) -> str:
        """The key that pays when a visitor brings none."""
        return "this Space's key" if self.on_space else "this app's key"

    def billed(self, text: str) -> str:
        """A tail about billing (" and be billed"), or nothing where nothing is ever billed."""
        return "" if self.sandbox else text

    # -- a job update -------------------------------------------------------------------------------------------

    def heading(self, update: JobUpdate) -> str:
        if update.stage is Stage.FAILED and isinstance(update.error, KlingDemoError):
            return self.error_heading(update.error)
        return HEADINGS[update.stage]

    def status(self, update: JobUpdate) -> str:
        """The sentence under the heading: what is happening now; never the heading again."""
        stage = update.stage
        if stage is Stage.PREPARING:
            return "Looking over your image and settings before anything is sent…"
        if stage is Stage.WAITING:
            return self._waiting(update)
        if stage is Stage.UPLOADING:
            what = "both frames" if update.frames == 2 else "the first frame"
            price = f" Price: {money(update.price.price, update.price.currency)}." if update.price else ""
            return f"Sending {what} ({update.upload_mb:.1f} MB)…{price}"
        if stage is Stage.SEARCHING:
            if update.retry_in:
                return (f"The task is not listed yet; looking again in {_whole(update.retry_in)} s. Nothing is "
                        "submitted again.")
            return (f"{self.service_first}'s answer to the submission was lost. Looking for the task among this "
                    "key's recent tasks; nothing is submitted again.")
        if stage is Stage.SUBMITTING:
            return (f"The submission is on its way to {self.service}: a task may exist{self.billed(' and be billed')}. "
                    f"Its task id shows here as soon as {self.service} answers.")
        if update.outage and update.task_id:
            return (f"{self.service_first} is not answering ({update.outage}); still waiting for task "
                    f"{update.task_id}, retrying in {_whole(update.retry_in)} s. Nothing needs to be submitted "
                    "again.")
        if stage is Stage.SUBMITTED:
            return f"Task {update.task_id} was accepted; waiting for {self.service} to start it…{self._usual(update)}"
        if stage is Stage.QUEUED:
            return (f"Waiting for a free slot of the account at {self.service}{self._behind(update)}… "
                    f"{duration(update.running_for or 0)} so far.{self._usual(update)}")
        if stage is Stage.PROCESSING:
            return (f"{self.service_first} is making your video… {duration(update.running_for or 0)} so far."
                    f"{self._usual(update)}")
        if stage is Stage.DOWNLOADING:
            return f"Finished at {self.service}; fetching the video…"
        if stage is Stage.DONE:
            return self._done(update)
        if stage is Stage.STOPPED:
            return self.stopped(StopReport(update.submission, update.task_id))
        return str(update.error or "")

    def line(self, update: JobUpdate) -> str:
        """Heading and sentence on one line, for an API caller's status or a log."""
        return f"{self.heading(update)} — {self.status(update)}"

    def _waiting(self, update: JobUpdate) -> str:
        if update.place is not None:
            ahead = update.place - 1
            limit = f"This key runs {plural(update.slot_limit, 'task')} at once; " if update.slot_limit else ""
            who = "You are next" if ahead == 0 else f"{plural(ahead, 'job')} {'is' if ahead == 1 else 'are'} ahead of you"
            return (f"{who} in line for a free slot at {self.service}. {limit}nothing has been uploaded"
                    f"{self.billed(' or billed')} yet.")
        if update.rate_limited:
            why = (f"{self.service_first} asked this key to slow down" if self.for_visitors
                   else f"{self.service_first} is rate limiting this key (HTTP 429)")
        else:
            why = f"{self.service_first} could not be reached ({update.outage or 'no connection'})"
        return f"{why}; trying again in {_whole(update.retry_in)} s. Nothing was submitted yet."

    def _behind(self, update: JobUpdate) -> str:
        """A queue note only when this app knows other tasks of the key are running ahead of this one."""
        if not update.queued_behind:
            return ""
        verb = "is" if update.queued_behind == 1 else "are"
        return f" ({plural(update.queued_behind, 'other task')} of this key {verb} running)"

    def _usual(self, update: JobUpdate) -> str:
        return f" Renders like this usually take about {duration(update.expected)}." if update.expected else ""

    def _done(self, update: JobUpdate) -> str:
        if update.already_done:
            return f"Task {update.task_id} is already in your history."
        parts = [f"Your video is ready after {duration(update.elapsed)}"]
        if update.inference_ms:
            seconds = update.inference_ms / 1000
            parts.append(f"rendered in {seconds:.1f} s" if self.for_visitors else f"inference {seconds:.1f} s")
        cost = self.cost(update.price, charged=update.charge.amount if update.charge else None)
        if cost:
            parts.append(cost)
        parts.append(f"task {update.task_id}")
        text = " · ".join(parts) + "."
        if update.nsfw:
            text += f" {self.service_first} flagged this video as possibly not safe for work."
        return text

    # -- a stop -------------------------------------------------------------------------------------------------

    def stopped(self, report: StopReport, *, afterwards: str = "") -> str:
        """What Stop did, true for where the job was at that moment: the one sentence page, API and CLI show
        (under the heading "Stopped").

        `afterwards` replaces what becomes of a task that may exist ("it will appear in your history"), for a
        front end where nothing follows it on (the command line)."""
        if report.ended:
            return "The job had already ended, so there was nothing to stop."
        if report.submission is Submission.NONE:
            return f"Nothing was submitted{self.billed(', so nothing was billed')}."
        if report.submission is Submission.MAY_EXIST:
            later = afterwards or "if it does, it will appear in your history."
            return (f"The submission was already on its way to {self.service}: a task may exist"
                    f"{self.billed(' and be billed')}; {later}")
        later = afterwards or "if it does, its video will appear in your history."
        return (f"Task {report.task_id} was already submitted and may still finish{self.billed(' and be billed')}; "
                f"{later}")

    def error_heading(self, error: KlingDemoError) -> str:
        """A failed job's heading: what the reader can do next, from the error tree."""
        if isinstance(error, TaskEnded):
            return "Failed"
        if isinstance(error, SubmissionOutcomeUnknown):
            return "Outcome unknown"
        if isinstance(error, TaskKept):
            return f"Still at {self.service}" if error.task_id else "Not followed"
        if isinstance(error, FixTheInput):
            return "Check the input"
        if isinstance(error, CheckTheKey):
            return "Check the key"
        if isinstance(error, TryLater):
            return "Try again later"
        return "Failed"

    # -- a task's status in the history ----------------------------------------------------------------------

    def task_status(self, status: TaskStatus) -> str:
        """A task's status as its history tile and detail name it."""
        return {
            TaskStatus.COMPLETED: "Done", TaskStatus.FAILED: "Failed", TaskStatus.LOST: "Lost",
            TaskStatus.CREATED: "Queued", TaskStatus.PROCESSING: "Rendering", TaskStatus.PREPARED: "Preparing",
            TaskStatus.SUBMITTING: "Submitting", TaskStatus.UNKNOWN: "Outcome unknown",
            TaskStatus.CANCELLED: f"Cancelled by {self.service}", TaskStatus.TIMEOUT: f"Timed out at {self.service}",
            TaskStatus.DELETED: f"Deleted at {self.service}", TaskStatus.UNSENT: "Not sent",
        }[status]

    def deleted(self) -> str:
        """What deleting a task from the history did, and did not do."""
        if self.sandbox:
            return "Deleted from your history here, with its video and frames. This was the sandbox: nothing was billed."
        return ("Deleted from your history here, with its video and frames. At WaveSpeed the task and its video "
                "remain until WaveSpeed's retention ends (about 7 days), and its charge stands.")

    # -- money --------------------------------------------------------------------------------------------------

    def cost(self, quote: Quote | None, *, charged: float | None = None) -> str:
        """A task's cost: what WaveSpeed's itemised billing charged, else its quote at submission, labelled as
        such; "" where nothing is known (or nothing is ever billed)."""
        if self.sandbox:
            return ""
        currency = quote.currency if quote else "USD"
        if charged is not None:
            return f"cost {money(charged, currency)} (charged)"
        if quote is None:
            return ""
        return f"cost {money(quote.price, quote.currency)} (quoted at submission)"


    def price_line(self, view: PriceView | None) -> str:
        """The line beside Generate: WaveSpeed's quote for what is about to be submitted, never a made-up one."""
        if self.sandbox:
            return "Free (sandbox): nothing here costs money."
        if view is None:
            return ""  # the duration's own check says what to change
        if view.key_refused:
            return "Price unavailable: WaveSpeed rejected the key."
        if view.quote is None:
            return "Price unavailable right now (WaveSpeed did not answer the quote)."
        payer = {Payer.OWN_KEY: "your WaveSpeed key", Payer.SERVER_KEY: f"{self.servers_key} at WaveSpeed",
                 Payer.OWN_KEY_NEEDED: "your own WaveSpeed key (enter it below)"}[view.payer]
        line = f"Price: {money(view.quote.price, view.quote.currency)} for this {view.duration} s video, billed to {payer}."
        if view.balance is not None:
            line += f" Its balance: {money(view.balance.amount, view.balance.currency)}."
        return line

    def key_status(self, check: KeyCheck | None, *, fallback: bool = True) -> str:
        """What the page says as soon as a visitor enters their own key (never the key itself). `fallback`: the
        app's own key pays when the visitor's is cleared."""
        if check is None:
            return ""
        if check.state is KeyState.NOT_USED:
            return "Sandbox mode: keys are not checked here (nothing costs money)."
        if check.state is KeyState.MALFORMED:
            return check.problem
        if check.state is KeyState.THROTTLED:
            return (f"Too many keys were checked from this browser or address in the last minute. This key was not "
                    f"checked; enter it again in {check.retry_in} s, or just generate: it is used when you do.")
        if check.state is KeyState.REFUSED:
            return f"WaveSpeed rejected this key. Check it{f', or clear the box to use {self.servers_key}' if fallback else ''}."
        if check.state is KeyState.UNCHECKED or check.balance is None:
            return "This key could not be checked right now (WaveSpeed did not answer); it is used when you generate."
        return f"Key accepted · balance {money(check.balance.amount, check.balance.currency)}"

    def spend_line(self, totals: dict[str, tuple[float, int]]) -> str:
        """The visitor's spend so far: what their completed videos were quoted."""
        if self.sandbox:
            return "Sandbox mode: nothing you make here costs money."
        if not totals:
            return "Spent so far: nothing yet."
        parts = [f"{money(total, currency)} on {plural(count, 'video')}" for currency, (total, count) in sorted(totals.items())]
        return "Spent so far: " + "; ".join(parts) + " (WaveSpeed's quotes at submission)."

    def budget_line(self, view: BudgetView | None) -> str:
        """How much of the server key's budget the visitor used; "" where none applies to them."""
        if view is None or (view.limit is None and view.app_limit is None):
            return ""
        where = "this Space's key" if self.on_space else "this app's key"
        parts = []
        if view.limit is not None:
            parts.append(f"Last 24 h on {where}: {money(view.spent)} of {money(view.limit)} used")
        if view.app_limit is not None:
            left = max(0.0, view.app_limit - view.app_spent)
            if view.limit is None or left < view.limit - view.spent:
                holder = "The whole Space" if self.on_space else "The whole app"
                parts.append(f"{holder if not parts else holder.lower()} has {money(left)} of {money(view.app_limit)} left")
        return " · ".join(parts) + " · your own key lifts this"


def _whole(seconds: float | None) -> int:
    return max(1, math.ceil(seconds or 0))
