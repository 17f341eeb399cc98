"""One client floods /generate for a while: how many submissions were paid, how many refused, spend vs budget.

Starts the sandbox and `python app.py` as separate processes (the app on a server key, reaching the sandbox
as it would the real API, with the budgets it would have there: the defaults unless flags say otherwise),
then `--workers` threads from one address call the REST API (`/gradio_api/call/generate`) back to back for
`--seconds`. Paid submissions are counted at the sandbox (`/sandbox/stats`), the price at its
`/api/v3/model/price`, and the app's peak RSS from `/proc/<pid>/status` (VmHWM).

Run: python bench/flood.py [--seconds 60] [--workers 8] [--visitor-budget USD] [--daily-budget USD]
                           [--per-minute N] [--inference-seconds 2] [--forge-forwarded]. Figures only, no asserts.
`--forge-forwarded` has every call name another address in X-Forwarded-For and carry an `oauth_token`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from PIL import Image  # noqa: E402

from kling_demo.models import DEFAULT_MODEL  # noqa: E402
from tests.harness import start_app_process, start_sandbox_process  # noqa: E402


def memory_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def one_call(url: str, file_data: dict, n: int, forge: bool = False) -> str:
    """One /generate call to its end: "paid" (a video came back), "refused: <which limit>", or "other: …"."""
    forged = {"X-Forwarded-For": f"203.0.113.{n % 250 + 1}"} if forge else {}
    call = requests.post(url + "gradio_api/call/generate", timeout=30, headers=forged,
                         json={"data": [file_data, f"flood {n}", "", 0.5, 5, None],
                               **({"oauth_token": f"hf_forged_{n}"} if forge else {})})
    if call.status_code != 200:
        return f"other: HTTP {call.status_code}"
    text = requests.get(f"{url}gradio_api/call/generate/{call.json()['event_id']}", timeout=300).text
    if "event: complete" in text:
        return "paid"
    for marker, kind in (("a minute)", "per-minute cap"), ("its daily budget", "app budget"),
                         ("daily budget of this", "app budget"), ("your daily budget", "visitor budget"),
                         ("at once", "jobs at once")):
        if marker in text:
            return f"refused: {kind}"
    return "other: " + text.strip().splitlines()[-1][:120]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to flood (default 60)")
    parser.add_argument("--workers", type=int, default=8, help="calls in flight at once from the one client")
    parser.add_argument("--visitor-budget", default="", help="KLING_DEMO_VISITOR_BUDGET_USD (default: the app's)")
    parser.add_argument("--daily-budget", default="", help="KLING_DEMO_DAILY_BUDGET_USD (default: the app's)")
    parser.add_argument("--per-minute", default="", help="KLING_DEMO_SUBMITS_PER_MINUTE (default: the app's)")
    parser.add_argument("--inference-seconds", type=float, default=2.0)
    parser.add_argument("--forge-forwarded", action="store_true",
                        help="each call names another address in X-Forwarded-For and carries an oauth_token")
    args = parser.parse_args()

    env = {"WAVESPEED_API_KEY": "server-key", "KLING_DEMO_LOG_LEVEL": "WARNING",
           # the defaults of a real key (tests/harness.py switches budgets off for unrelated tests)
           "KLING_DEMO_VISITOR_BUDGET_USD": args.visitor_budget, "KLING_DEMO_DAILY_BUDGET_USD": args.daily_budget,
           "KLING_DEMO_SUBMITS_PER_MINUTE": args.per_minute}
    with tempfile.TemporaryDirectory(prefix="kling-flood-") as scratch:
        work = Path(scratch)
        sandbox = start_sandbox_process("--inference-seconds", str(args.inference_seconds))
        app = None
        try:
            app = start_app_process(work / "data", env={**env, "WAVESPEED_BASE_URL": sandbox.url},
                                    log_path=work / "app.log")
            from kling_demo.config import Settings
            settings = Settings.from_env({k: v for k, v in env.items()}, None)
            quote = requests.post(sandbox.url + "/api/v3/model/price", timeout=10,
                                  headers={"Authorization": "Bearer server-key"},
                                  json={"model_id": DEFAULT_MODEL.model_id, "inputs": {"duration": 5}}).json()
            price = float(quote["data"]["price"])
            image = work / "frame.png"
            Image.linear_gradient("L").resize((640, 480)).convert("RGB").save(image)
            with image.open("rb") as picture:
                uploaded = requests.post(app.url + "gradio_api/upload", timeout=30,
                                         files={"files": (image.name, picture, "image/png")}).json()
            file_data = {"path": uploaded[0], "meta": {"_type": "gradio.FileData"}}

            outcomes: Counter[str] = Counter()
            lock, counter = threading.Lock(), iter(range(10**9))
            deadline = time.monotonic() + args.seconds

            def worker() -> None:
                while time.monotonic() < deadline:
                    try:
                        result = one_call(app.url, file_data, next(counter), args.forge_forwarded)
                    except requests.RequestException as error:
                        result = f"other: {type(error).__name__}"
                    with lock:
                        outcomes[result] += 1

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                for _ in range(args.workers):
                    pool.submit(worker)
            wall = time.monotonic() - started
            stats = requests.get(sandbox.url + "/sandbox/stats", timeout=10).json()
            peak = memory_mb(app.process.pid, "VmHWM")
        finally:
            if app is not None:
                app.stop()
            sandbox.stop()

    paid = stats["submissions"]
    refused = sum(count for kind, count in outcomes.items() if kind.startswith("refused"))

    def limit(value: float | int | None, unit: str = "$") -> str:
        return "off" if value is None else (f"${value:.2f}" if unit == "$" else f"{value}")

    forged = ", each forging X-Forwarded-For and oauth_token" if args.forge_forwarded else ""
    print(f"flood: {args.seconds:.0f} s asked, {wall:.1f} s run, {args.workers} calls at once from one address{forged}")
    print(f"budgets: visitor {limit(settings.visitor_budget_usd)} / 24 h, app {limit(settings.daily_budget_usd)} "
          f"/ 24 h, {limit(settings.submits_per_minute, '')} submits a minute; price ${price:.2f} per 5 s video")
    print(f"requests: {sum(outcomes.values())} in all; refused {refused}; outcomes {dict(outcomes)}")
    print(f"paid submissions at the sandbox: {paid}; uploads {stats['uploads']}")
    budget = min(v for v in (settings.visitor_budget_usd, settings.daily_budget_usd, float("inf")) if v is not None)
    print(f"spend: ${paid * price:.2f} of a ${budget:.2f} budget" if budget != float("inf") else
          f"spend: ${paid * price:.2f} (no money budget)")
    print(f"app peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()
