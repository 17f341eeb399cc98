"""Command line: turn one image into a video from a terminal or a script.

    python -m kling_demo generate IMAGE --prompt TEXT [--negative-prompt TEXT] [--end-image FILE]
                                        [--guidance 0.5] [--duration 5|10] [--out video.mp4]
    python -m kling_demo generate --resume TASK_ID [--out video.mp4]
    python -m kling_demo history [--limit N]
    python -m kling_demo price [--duration 5|10]
    python -m kling_demo balance

Progress goes to stderr, one line per step; stdout receives only the path of the finished
video, so `video=$(python -m kling_demo generate photo.jpg --prompt "waves")` works.
Every task the CLI submits is journalled in the data dir like the page's, so `history` lists it and
`--resume` picks it up in a later run.
The backend is chosen as in the app: WAVESPEED_API_KEY in the environment or `.env` → the
WaveSpeed API; no key → an embedded local sandbox that renders a non-AI video at no cost.

Exit codes:
    0  done: the video's path is on stdout
    2  bad usage or input, refused before anything was submitted or paid for
    3  the key was rejected or its balance cannot pay; nothing was submitted
    4  the task failed on WaveSpeed's side
    5  timed out or stopped (Ctrl-C) while waiting: the task may still finish and be billed;
       resume it with `--resume TASK_ID`
    6  the submission's answer was lost: a task may exist and be billed; check the dashboard
    7  try later: service unavailable, rate limited, a budget reached, download failed, or another error
"""

from __future__ import annotations

import argparse
import logging
import os
import dataclasses
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from . import __version__
from .config import Settings
from .errors import KlingDemoError
from .logs import configure_logging
from .models import DEFAULT_MODEL, JobRequest, JobUpdate, Stage
from .service.backend import Backend, open_backend
from .service.running import Job
from .service.service import Service, read_history
from .service.visitors import Visitor
from .words import Voice, money

log = logging.getLogger(__name__)

PROG = "python -m kling_demo"
# Whose history the command line writes to: one per data dir, the operator's.
CLI_VISITOR_OWNER = "cli:local"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_TASK_FAILED = 4
EXIT_STOPPED = 5
EXIT_OUTCOME_UNKNOWN = 6
EXIT_OTHER = 7
EXIT_UNEXPECTED = 1

EXIT_CODES_HELP = """\
exit codes:
  0  done: the video's path is on stdout
  2  bad usage or input, refused before anything was submitted or paid for
  3  the key was rejected or its balance cannot pay; nothing was submitted
  4  the task failed on WaveSpeed's side
  5  timed out or stopped (Ctrl-C) while waiting: the task may still finish and be
     billed; resume it with --resume TASK_ID
  6  the submission's answer was lost: a task may exist and be billed
  7  try later: service unavailable, rate limited, a budget reached, download failed,
     or another error

With WAVESPEED_API_KEY set (environment or .env) the WaveSpeed API is used and billed;
without it an embedded local sandbox renders a non-AI video at no cost.
"""


class UsageError(Exception):
    """The command line asks for something we refuse before contacting any server."""


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an error raised while running a job: the error tree's own."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_STOPPED
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, KlingDemoError):
        return error.exit_code
    return EXIT_UNEXPECTED


def build_parser() -> argparse.ArgumentParser:
    """The `python -m kling_demo` parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Kling 2.0 image-to-video over the WaveSpeedAI API (or a local no-AI sandbox without a key).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    spec = DEFAULT_MODEL
    generate = commands.add_parser(
        "generate",
        help="turn an image into a video (or resume a submitted task)",
        description="Turn one image into a 5 or 10 second video. Progress goes to stderr; "
                    "the finished video's path is the only thing printed on stdout.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument("image", nargs="?", metavar="IMAGE",
                          help="first frame: a JPEG or PNG, at least 300×300 px (not needed with --resume)")
    generate.add_argument("--prompt", "-p", metavar="TEXT", help="what should happen in the video (required unless --resume)")
    generate.add_argument("--negative-prompt", "-n", metavar="TEXT", default="", help="what the video should avoid")
    generate.add_argument("--end-image", metavar="FILE", help="optional last frame (JPEG or PNG, at least 300×300 px)")
    generate.add_argument("--guidance", "--guidance-scale", dest="guidance", type=float, default=None,
                          metavar="SCALE",
                          help=f"how closely to follow the prompt, {spec.guidance_min:g} to {spec.guidance_max:g} "
                               f"(default {spec.guidance_default:g})")
    generate.add_argument("--duration", "-d", type=int, choices=spec.durations, default=None,
                          help=f"video length in seconds (default {spec.default_duration})")
    generate.add_argument("--resume", metavar="TASK_ID",
                          help="follow a task submitted earlier to its video instead of submitting a new one")
    generate.add_argument("--out", "-o", metavar="PATH",
                          help="move the video here (parent folders are created; an existing folder "
                               "receives TASK_ID.mp4). Default: leave it in the data dir's videos folder")
    generate.add_argument("--base-url", metavar="URL",
                          help="WaveSpeed-compatible server to use instead of WAVESPEED_BASE_URL "
                               "(e.g. a sandbox from `python -m kling_demo.sandbox`)")
    generate.add_argument("--verbose", "-v", action="count", default=0, help="log details on stderr (-vv: debug)")
    generate.set_defaults(handler=run_generate, command_parser=generate)

    history = commands.add_parser(
        "history", help="list the tasks this command line submitted or resumed (newest first)",
        description="List the tasks the command line submitted or resumed with this data dir: "
                    "id, status, when, prompt and video path, one per line, tab-separated.")
    history.add_argument("--limit", type=int, default=20, metavar="N", help="at most N tasks (default 20)")
    history.set_defaults(handler=run_history, command_parser=history)

    price = commands.add_parser(
        "price", help="what one video costs: WaveSpeed's quote (the sandbox: free)",
        description="Print what one video of this length costs, as WaveSpeed quotes it for your key (stdout: "
                    "the amount, e.g. $1.40). Without WAVESPEED_API_KEY the local sandbox bills nothing: stdout "
                    "says 'free (sandbox)', and stderr gives the sandbox's stand-in table price.")
    price.add_argument("--duration", "-d", type=int, choices=spec.durations, default=spec.default_duration,
                       help=f"video length in seconds (default {spec.default_duration})")
    balance = commands.add_parser(
        "balance", help="the WaveSpeed balance of your key",
        description="Print the balance of WAVESPEED_API_KEY's account (stdout: the amount, e.g. $12.40). A key "
                    "WaveSpeed rejects exits with 3. Without a key the local sandbox bills nothing.")
    for command, handler in ((price, run_price), (balance, run_balance)):
        command.add_argument("--base-url", metavar="URL", help="WaveSpeed-compatible server to ask instead of "
                                                               "WAVESPEED_BASE_URL")
        command.set_defaults(handler=handler, command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen sub-command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args.command_parser, args)
    except KeyboardInterrupt:  # outside the job (starting or stopping the sandbox): nothing was submitted
        sys.stderr.write("\nStopped (Ctrl-C).\n")
        return EXIT_STOPPED


# --- generate ---------------------------------------------------------------------------------


def _check_generate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse contradictory or missing options before anything touches the network."""
    if args.resume:
        extra = [flag for flag, value in (("IMAGE", args.image), ("--prompt", args.prompt),
                                          ("--negative-prompt", args.negative_prompt),
                                          ("--end-image", args.end_image), ("--guidance", args.guidance))
                 if value not in (None, "")]
        if extra:
            parser.error(f"--resume follows an existing task; {', '.join(extra)} cannot be changed (drop them)")
        if not args.resume.strip():
            parser.error("--resume needs a task id")
        return
    if not args.image:
        parser.error("give an IMAGE to animate, or --resume TASK_ID")
    if args.prompt is None:
        parser.error("--prompt is required (describe what should happen in the video)")


def run_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`generate`: run (or resume) one job, show progress on stderr, print the video path on stdout."""
    _check_generate_args(parser, args)
    try:
        settings, out = _settings_and_progress(args.verbose)
        _check_local_files(args)
    except UsageError as error:
        return _fail(None, f"error: {error}", EXIT_USAGE)
    service = _open(settings, args.base_url, out)
    if service is None:
        return EXIT_OTHER
    voice = out.voice = dataclasses.replace(service.voice, for_visitors=False)
    visitor = Visitor(CLI_VISITOR_OWNER, operator=True)
    last: JobUpdate | None = None
    job: Job | None = None
    try:
        job = _start(args, service, visitor)
        for update in job:
            last = update
            if update.stage not in (Stage.FAILED, Stage.STOPPED):  # the error's own line says it
                out.show(update)
        if last is None or last.stage is not Stage.DONE or last.video_path is None:
            raise KlingDemoError("The job ended without a video.", task_id=last.task_id if last else None)
        target = _target(args.out, last.task_id, last.video_path)
        final = service.place_video(visitor, last.task_id, last.video_path, target)
        if target is not None and final != target.resolve():
            out.say(f"warning: could not move the video to {target}; it stays where it was downloaded.")
        _emit(str(final))
        return EXIT_OK
    except KeyboardInterrupt:
        out.finish_line()
        out.say("Stopped (Ctrl-C). " + _after_stop(job, service, voice, args))
        return EXIT_STOPPED
    except KlingDemoError as error:
        out.finish_line()
        out.say(f"error: {error}")
        if error.resumable and not service.is_sandbox:
            out.say(_resume_hint(error.task_id, args))
        elif error.resumable:
            out.say("(The local sandbox stops with this command, so this task cannot be resumed; nothing costs "
                    "money there.)")
        return error.exit_code
    except Exception as error:  # a bug, not a job outcome: say so in one line, details with -v
        out.finish_line()
        log.debug("unexpected error", exc_info=True)
        out.say(f"error: unexpected {type(error).__name__}: {error} (run with -vv for details)")
        if last and last.task_id:
            out.say(_resume_hint(last.task_id, args))
        return EXIT_UNEXPECTED
    finally:
        if job is not None:
            job.close()
        service.close()


def _after_stop(job: Job | None, service: Service, voice: Voice, args: argparse.Namespace) -> str:
    """What Ctrl-C did, in the one sentence every front end uses for a stop, with what to do next from here."""
    if job is None:
        return "Nothing was submitted."
    report = job.stop()
    if service.is_sandbox:
        return voice.stopped(report, afterwards="the local sandbox stops with this command, so its task ends here.")
    if report.task_id:
        return voice.stopped(report, afterwards=f"resume it with: {_resume_command(report.task_id, args)}")
    return voice.stopped(report, afterwards=f"check your {voice.service} dashboard before trying again.")


def run_history(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`history`: the command line's tasks in this data dir, one tab-separated line each, newest first."""
    configure_logging("WARNING")
    try:
        settings = Settings.from_env()
    except ValueError as error:
        return _fail(None, f"error: bad setting: {error}", EXIT_USAGE)
    records = read_history(settings, CLI_VISITOR_OWNER, limit=max(1, args.limit))
    if not records:
        sys.stderr.write("No tasks yet: `python -m kling_demo generate IMAGE --prompt …` makes one.\n")
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created_at))
        prompt = " ".join(record.prompt.split()) or "(fetched by task id)"
        _emit("\t".join((record.task_id, record.status.value, when, prompt, record.video_path or "")))
    return EXIT_OK


# --- money ------------------------------------------------------------------------------------


def run_price(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`price`: WaveSpeed's quote for one video of --duration seconds; "free (sandbox)" without a key."""

    def ask(service: Service, out: Progress) -> None:
        quote = service.quote(Visitor(CLI_VISITOR_OWNER, operator=True), args.duration)
        amount = money(quote.price, quote.currency)
        if service.is_sandbox:  # never pretend a charge; the table price is there for trying the flow
            out.say(f"Sandbox mode: nothing is billed. The sandbox's stand-in table quotes {amount} for a "
                    f"{args.duration} s video; set WAVESPEED_API_KEY for WaveSpeed's real price.")
            _emit("free (sandbox)")
            return
        out.say(f"WaveSpeed's quote for one {args.duration} s video of {DEFAULT_MODEL.model_id}:")
        _emit(amount)

    return _ask_account(args, ask)


def run_balance(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`balance`: the account balance of WAVESPEED_API_KEY."""

    def ask(service: Service, out: Progress) -> None:
        if service.is_sandbox:
            out.say("Sandbox mode: nothing is billed, so there is no balance to spend.")
            _emit("unlimited (sandbox)")
            return
        held = service.balance(Visitor(CLI_VISITOR_OWNER, operator=True))
        _emit(money(held.amount, held.currency))

    return _ask_account(args, ask)


def _ask_account(args: argparse.Namespace, ask: Callable[[Service, "Progress"], None]) -> int:
    """Open the backend as `generate` does, run one account question, and turn its errors into exit codes."""
    try:
        settings, out = _settings_and_progress()
    except UsageError as error:
        return _fail(None, f"error: {error}", EXIT_USAGE)
    service = _open(settings, args.base_url, out)
    if service is None:
        return EXIT_OTHER
    try:
        ask(service, out)
        return EXIT_OK
    except KlingDemoError as error:
        out.say(f"error: {error}")
        return error.exit_code
    finally:
        service.close()


def _emit(line: str) -> None:
    """One line of the command's result on stdout (progress and errors go to stderr)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _check_local_files(args: argparse.Namespace) -> None:
    for flag, value in (("IMAGE", args.image), ("--end-image", args.end_image)):
        if value and not Path(value).expanduser().is_file():
            raise UsageError(f"{flag}: no such file: {value}")
    if args.out:
        target = Path(args.out).expanduser()
        folder = target if target.is_dir() else target.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--out: cannot create the folder {folder}: {error.strerror or error}") from error


def _open(settings: Settings, base_url: str | None, out: "Progress") -> Service | None:
    """The service over the server the app would use; --base-url points at a given server instead. None (said on
    stderr) when the local sandbox cannot start."""
    try:
        backend: Backend = open_backend(settings, base_url)
    except (OSError, RuntimeError) as error:
        out.say(f"error: could not start the local sandbox: {error}")
        return None
    if base_url:
        out.say(f"Using {backend.base_url} with your WaveSpeed key." if settings.api_key else
                f"No WAVESPEED_API_KEY: using {backend.base_url} with a placeholder token (only a sandbox accepts it).")
    elif backend.is_sandbox:
        out.say(f"No WAVESPEED_API_KEY: using the local sandbox at {backend.base_url}. "
                "Sandbox mode — no AI: the video is synthesized locally from your image, at no cost.")
    return Service(settings, backend, background=False)


def _start(args: argparse.Namespace, service: Service, visitor: Visitor) -> Job:
    if args.resume:
        return service.resume(args.resume.strip(), visitor, duration=args.duration)
    spec = service.spec
    request = JobRequest(
        image=Path(args.image).expanduser(),
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        guidance_scale=spec.guidance_default if args.guidance is None else args.guidance,
        duration=spec.default_duration if args.duration is None else args.duration,
        end_image=Path(args.end_image).expanduser() if args.end_image else None,
    )
    return service.generate(request, visitor)


def _target(out: str | None, task_id: str | None, video: Path) -> Path | None:
    """Where --out asks the video to go (an existing folder receives TASK_ID.mp4); None to leave it."""
    if not out:
        return None
    target = Path(out).expanduser()
    return target / f"{task_id or video.stem}.mp4" if target.is_dir() else target


def _resume_command(task_id: str, args: argparse.Namespace) -> str:
    parts = [*PROG.split(), "generate", "--resume", task_id]
    if args.out:
        parts += ["--out", args.out]
    return " ".join(shlex.quote(part) for part in parts)


def _resume_hint(task_id: str, args: argparse.Namespace) -> str:
    return f"Task id: {task_id}. Resume with: {_resume_command(task_id, args)}"


def _settings_and_progress(verbose: int = 0) -> tuple[Settings, "Progress"]:
    """Logging at the asked level (-v info, -vv debug), the settings, and progress on stderr that masks the key.

    A bad setting raises UsageError."""
    configure_logging(("WARNING", "INFO", "DEBUG")[min(verbose, 2)])
    try:
        settings = Settings.from_env()
    except ValueError as error:
        raise UsageError(f"bad setting: {error}") from None
    return settings, Progress(sys.stderr, secret=settings.api_key)


def _fail(secret: str | None, message: str, code: int) -> int:
    Progress(sys.stderr, secret=secret).say(message)
    return code


# --- progress display -------------------------------------------------------------------------


class Progress:
    """Writes progress to a stream: simple lines for pipes and logs, one rewriting line on a terminal."""

    def __init__(self, stream: TextIO, *, secret: str | None = None, rewrite: bool | None = None) -> None:
        self.stream = stream
        self.secret = secret
        self.rewrite = _isatty(stream) if rewrite is None else rewrite
        self.voice = Voice(for_visitors=False)  # the service's, once there is one
        self._open_line = False

    def show(self, update: JobUpdate) -> None:
        line = format_update(update, self.voice)
        if self.rewrite:
            width = _columns(self.stream)
            if len(line) >= width and not update.is_final:  # the last line keeps the task id whole
                line = line[: max(10, width - 2)] + "…"
            self._write("\r\x1b[K" + line)
            self._open_line = True
            if update.is_final:
                self.finish_line()
        else:
            self._write(line + "\n")

    def finish_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def say(self, message: str) -> None:
        self.finish_line()
        self._write(message + "\n")

    def _write(self, text: str) -> None:
        if self.secret:
            text = text.replace(self.secret, "***")
        self.stream.write(text)
        self.stream.flush()


def format_update(update: JobUpdate, voice: Voice) -> str:
    """`[  12.3s] processing  task=abc123  WaveSpeed is making your video…` — one line per update."""
    task = f"  task={update.task_id}" if update.task_id else ""
    fixed = f" Fixed: {'; '.join(update.fixes)}." if update.fixes and update.stage is Stage.UPLOADING else ""
    return f"[{update.elapsed:7.1f}s] {update.stage.value:<11}{task}  {voice.status(update)}{fixed}"


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size((100, 20)).columns


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
