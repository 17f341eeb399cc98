"""Command line: serve the sandbox until Ctrl-C or SIGTERM, e.g. `python -m kling_demo.sandbox --port 8765`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from kling_demo.sandbox import SandboxConfig, start_sandbox

log = logging.getLogger("kling_demo.sandbox")


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {text})")
    return value


def _amount(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount (got {text})")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {text})")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI options; shares are fractions of requests (or tasks) between 0 and 1."""
    parser = argparse.ArgumentParser(
        prog="python -m kling_demo.sandbox",
        description="WaveSpeed-compatible sandbox: renders a non-AI MP4 from the image, with optional seeded faults.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; default 8765)")
    parser.add_argument("--inference-seconds", type=float, default=SandboxConfig.inference_seconds)
    parser.add_argument("--fault-rate", type=_share, default=0.0,
                        help="share of polls, uploads, file GETs and account calls that fail")
    parser.add_argument("--lost-answer-rate", type=_share, default=0.0, help="share of submissions whose answer is lost")
    parser.add_argument("--listing-lag", type=float, default=0.0, metavar="SECONDS",
                        help="a new task shows in the predictions listing only after this long (default 0)")
    parser.add_argument("--task-failure-rate", type=_share, default=0.0, help="share of tasks that end 'failed'")
    parser.add_argument("--failure-message", default="", metavar="TEXT",
                        help="the error text of those failed tasks; {api_key} becomes the submitting key (default: "
                             "a plain sandbox sentence)")
    parser.add_argument("--api-key", default=None, help="accept only this bearer token (default: any non-empty one)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible faults and failures")
    parser.add_argument("--price-per-second", type=_amount, default=SandboxConfig.price_per_second, metavar="USD",
                        help="price of one second of video (a stand-in; default %(default)s)")
    parser.add_argument("--balance", type=_amount, default=SandboxConfig.balance, metavar="USD",
                        help="balance each API key starts with (default %(default)s)")
    parser.add_argument("--charge-failed-tasks", action="store_true",
                        help="keep a task that ends without a video charged (default: refunded, an assumption: "
                             "WaveSpeed does not document it; see POST /api/v3/billings/search)")
    parser.add_argument("--max-concurrent-tasks", type=_count, default=0, metavar="N",
                        help="tasks one key runs at once; more wait in 'created' (default 0: unlimited; Bronze is 2)")
    parser.add_argument("--videos-per-minute", type=_count, default=0, metavar="N",
                        help="submissions per key per minute; more get 429 (default 0: unlimited; Bronze is 2)")
    parser.add_argument("--rate-window", type=float, default=SandboxConfig.rate_window_seconds, metavar="SECONDS",
                        help="the window of --videos-per-minute (default 60; shorter for quick tests)")
    parser.add_argument("--hold-renders", action="store_true",
                        help="tasks stay 'processing' until POST /sandbox/release (tests of many waiting tasks)")
    parser.add_argument("--hold-submissions", action="store_true",
                        help="submit requests wait, no task created, until POST /sandbox/release-submissions "
                             "(tests of a Stop while a submission is on its way)")
    parser.add_argument("--status-fault-rate", type=_share, default=0.0,
                        help="share of tasks that end 'cancelled' or 'timeout' (about half each)")
    parser.add_argument("--webhook-secret", default=SandboxConfig.webhook_secret, metavar="whsec_…",
                        help="secret that signs ?webhook= deliveries (default %(default)s)")
    parser.add_argument("--render-store", type=Path, default=None, metavar="DIR",
                        help="keep finished renders in DIR and reuse them in later runs and other sandboxes")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the sandbox, log its URL, and stop cleanly on SIGINT/SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = SandboxConfig(
        inference_seconds=args.inference_seconds,
        fault_rate=args.fault_rate,
        lost_answer_rate=args.lost_answer_rate,
        listing_lag_seconds=args.listing_lag,
        task_failure_rate=args.task_failure_rate,
        failure_message=args.failure_message,
        api_key=args.api_key,
        seed=args.seed,
        price_per_second=args.price_per_second,
        balance=args.balance,
        charge_failed_tasks=args.charge_failed_tasks,
        max_concurrent_tasks=args.max_concurrent_tasks,
        videos_per_minute=args.videos_per_minute,
        rate_window_seconds=args.rate_window,
        hold_renders=args.hold_renders,
        hold_submissions=args.hold_submissions,
        status_fault_rate=args.status_fault_rate,
        webhook_secret=args.webhook_secret,
        render_store=args.render_store,
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        handle = start_sandbox(config, host=args.host, port=args.port)
    except OSError as error:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, error)
        return 2
    print(f"Kling sandbox (no AI) serving at {handle.base_url} — stats at {handle.base_url}/sandbox/stats", flush=True)
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
