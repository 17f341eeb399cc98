"""Every sentence about a job, a stop and money, made from facts, in the voice the service chose once for its backend.

A job update and a stop report are data (`kling_demo.models`); the page, the API and the command line all word
them here. `Voice` holds the facts that change the words: whether the backend is the free embedded sandbox (no
WaveSpeed, nothing billed), whether the app runs as a Space (whose key pays for visitors), and whether the reader
is a visitor (no HTTP codes, variable or header names, "inference") or a developer's program.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from .errors import (AuthenticationFailed, BudgetExceeded, CheckTheKey, FixTheInput, KlingDemoError, NotFound,
                     NothingSubmitted, RateLimited, ServiceUnavailable, SubmissionOutcomeUnknown, TaskEnded, TaskKept,
                     TryLater)
from .models import (BudgetRefusal, BudgetView, JobUpdate, KeyCheck, KeyState, Limit, Payer, PriceView, Quote, Spend,
                     Stage, StopReport, Submission, TaskStatus)

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
            return (f"{self.service_first} is not answering{self._how(update.outage)}; still waiting for task "
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
        if isinstance(update.error, BudgetExceeded) and update.error.refusal is not None:
            return self.refused(update.error.refusal, ended=True)
        return self.error_text(update.error) if isinstance(update.error, KlingDemoError) else str(update.error or "")

    def line(self, update: JobUpdate) -> str:
        """Heading and sentence on one line, for an API caller's status or a log."""
        return f"{self.heading(update)} — {self.status(update)}"

    def _waiting(self, update: JobUpdate) -> str:
        if update.place is not None:
            ahead = update.place - 1
            nothing = f"othing has been uploaded{self.billed(' or billed')} yet."
            limit = (f"This key runs {plural(update.slot_limit, 'task')} at once; n{nothing}" if update.slot_limit
                     else f"N{nothing}")  # a sentence of its own without the limit, begun with a capital
            who = "You are next" if ahead == 0 else f"{plural(ahead, 'job')} {'is' if ahead == 1 else 'are'} ahead of you"
            return f"{who} in line for a free slot at {self.service}. {limit}"
        if update.rate_limited:
            why = (f"{self.service_first} asked this key to slow down" if self.for_visitors
                   else f"{self.service_first} is rate limiting this key (HTTP 429)")
        else:
            why = f"{self.service_first} could not be reached{self._how(update.outage or 'no connection')}"
        return f"{why}; trying again in {_whole(update.retry_in)} s. Nothing was submitted yet."

    def _how(self, outage: str) -> str:
        """How the service failed ("connection refused", "HTTP 503 Service Unavailable"), for a program; a visitor
        reads only that it is not answering."""
        return "" if self.for_visitors else f" ({outage})"

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
        charge = update.charge
        cost = self.cost(update.price, charged=charge.amount if charge else None, settled=not charge or charge.settled)
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

    def error_text(self, error: KlingDemoError) -> str:
        """The sentence of an error as this reader reads it: a program gets the error's own precise words; a visitor
        the same, except where those speak of HTTP codes and API paths (the key refused, the rate limit, a task
        the service does not know, a service out of reach), which are said in plain words here."""
        if not self.for_visitors:
            return str(error)
        task = f" (task id: {error.task_id})" if error.task_id else ""
        if isinstance(error, AuthenticationFailed):
            return (f"{self.service_first} rejected the key this needed (yours if you entered one, otherwise "
                    f"{self.servers_key}). Check your key, or enter your own.{task}")
        if isinstance(error, RateLimited):
            return f"{self.service_first} asked this key to slow down; nothing was submitted. Try again in a minute."
        if isinstance(error, NotFound):
            return (f"{self.service_first} does not know this task: check the id (a task is found only with the key "
                    f"that made it).{task}")
        if isinstance(error, ServiceUnavailable) and not isinstance(error, NothingSubmitted):
            if error.task_id:
                return (f"{self.service_first} did not answer about this task; it is not lost: resume it later by "
                        f"its id.{task}")
            return f"{self.service_first} is unreachable or busy right now. Try again in a minute."
        return str(error)

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

    def cost(self, quote: Quote | None, *, charged: float | None = None, settled: bool = True) -> str:
        """A task's cost, the one way every front end states it: what WaveSpeed's itemised billing charged (all of
        it refunded, or not settled yet), else its quote at submission, labelled as such; "" where nothing is known
        (or nothing is ever billed)."""
        if self.sandbox:
            return ""
        if charged is not None:
            amount = money(charged, quote.currency if quote else "USD")
            if charged < 0.005:
                return f"cost {amount} (refunded)"
            return f"cost {amount} ({'charged' if settled else 'charged so far; not settled yet'})"
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
                    f"checked; enter it again in {check.retry_in} s.")
        if check.state is KeyState.REFUSED:
            return f"WaveSpeed rejected this key. Check it{f', or clear the box to use {self.servers_key}' if fallback else ''}."
        if check.state is KeyState.UNCHECKED or check.balance is None:
            return "This key could not be checked right now (WaveSpeed did not answer); it is used when you generate."
        return f"Key accepted · balance {money(check.balance.amount, check.balance.currency)}"

    def spend_line(self, spends: Sequence[Spend]) -> str:
        """The visitor's spend so far: what their tasks were charged (a refunded one at $0), and which figures are
        quotes at submission because the charge cannot be read here."""
        if self.sandbox:
            return "Sandbox mode: nothing you make here costs money."
        if not spends:
            return "Spent so far: nothing yet."
        return "Spent so far: " + "; ".join(self._spent(spend) for spend in spends) + "."

    def _spent(self, spend: Spend) -> str:
        total = f"{money(spend.total, spend.currency)} on {plural(spend.tasks, 'task')}"
        refunded = f" ({spend.refunded_tasks} refunded)" if spend.refunded_tasks else ""
        unknown = "its charge is" if spend.quoted_tasks == 1 else "their charges are"
        if not spend.quoted_tasks:
            return f"{total}, as {self.service} charged {'it' if spend.tasks == 1 else 'them'}{refunded}"
        if not spend.charged_tasks:
            return (f"{total}, as {self.service} quoted {'it' if spend.tasks == 1 else 'them'} at submission "
                    f"({unknown} not known here)")
        return (f"{total}: {money(spend.charged, spend.currency)} charged by {self.service} for "
                f"{spend.charged_tasks}{refunded} and {money(spend.quoted, spend.currency)} quoted at submission for "
                f"{spend.quoted_tasks} ({unknown} not known here)")

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

    def refused(self, refusal: BudgetRefusal, *, ended: bool = False) -> str:
        """Why the next video on the server's key is not offered (or, `ended`, why a job was refused), when it frees,
        and what lifts the limit; the page says it before the click, the API caller gets it as the job's error."""
        own = f"Your own {'' if self.sandbox else 'WaveSpeed '}key lifts this limit: "
        own += ("enter it under “Your WaveSpeed key”." if self.for_visitors
                else "send it in the X-WaveSpeed-Key header.")
        return f"{self._why(refusal)} {own}{' Nothing was submitted.' if ended else ''}"

    def _why(self, refusal: BudgetRefusal) -> str:
        key, cap, mine = self.servers_key, refusal.cap, refusal.limit is Limit.VISITOR
        if refusal.limit is Limit.RATE:
            if not cap:
                return f"New videos on {key} are switched off."
            return (f"You have started {plural(refusal.submitted, 'video')} in the last minute, the most one visitor "
                    f"may on {key} ({int(cap)} a minute).{_frees(refusal, 'Try again')}")
        whole = "this Space" if self.on_space else "this app"
        budget = f"your daily budget on {key}" if mine else f"the daily budget of {whole}"
        video = f"a {refusal.duration} s video" if refusal.duration else "a video"
        if refusal.price is not None and refusal.price > cap + 0.005:
            shorter = " A shorter video costs less." if refusal.shorter else ""
            return (f"{video.capitalize()} costs {money(refusal.price)}, more than {budget} ({money(cap)} per 24 "
                    f"hours).{shorter}")
        who = "You have" if mine else f"T{whole[1:]} has"
        costs = f", and {video} costs {money(refusal.price)}" if refusal.price is not None else ""
        return (f"{who} used {money(refusal.used)} of {budget if mine else 'its daily budget'} ({money(cap)} per 24 "
                f"hours){costs}.{_frees(refusal, 'It frees up')}")


def _whole(seconds: float | None) -> int:
    return max(1, math.ceil(seconds or 0))


def _frees(refusal: BudgetRefusal, lead: str) -> str:
    """" It frees up at 14:32 UTC (in 3 h 12 min).", " Try again in 45 s.", or nothing when it does not free."""
    if refusal.frees_at is None or refusal.wait is None:
        return ""
    if refusal.wait < 60:
        return f" {lead} in {_span(refusal.wait)}."
    return f" {lead} at {time.strftime('%H:%M UTC', time.gmtime(refusal.frees_at))} (in {_span(refusal.wait)})."


def _span(seconds: float) -> str:
    """A wait as a person reads it: "45 s", "12 min", "3 h 05 min"."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
