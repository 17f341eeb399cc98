"""Completion→video latency and result polls per job: webhooks on vs polling only.

Starts one sandbox process (signing webhooks with a test secret) and, in turn, two app processes against it:
one with KLING_DEMO_PUBLIC_URL + WAVESPEED_WEBHOOK_SECRET (webhooks on), one without (polling only). Each
runs the same jobs one after another through gradio_client. Latency is when the client has the final output
(video downloaded) minus the sandbox's `completed_at_epoch` for the task. Every sandbox render takes exactly
`--inference-seconds`, the best case for polling (after one job the app plans a poll just after the expected
end); real render times vary, and then polling's latency grows while the webhook's does not.

Run: python bench/webhook_latency.py [--inference-seconds 8] [--jobs 4]. Figures only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import free_port, start_app_process, start_sandbox_process  # noqa: E402

SECRET = "whsec_bench"
PROMPT = "a paper boat drifting across a pond"


def run(app_url: str, sandbox_url: str, image: Path, jobs: int) -> tuple[list[float], float]:
    """Run `jobs` jobs one at a time; returns each job's completion→video latency and result polls per job."""
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    before = requests.get(sandbox_url + "/sandbox/stats", timeout=10).json()["result_polls"]
    receipts: dict[str, float] = {}
    for _ in range(jobs):
        _status, task_id, _video = client.predict(handle_file(str(image)), PROMPT, "", 0.5, 5, None,
                                                  api_name="/generate")
        receipts[task_id] = time.time()
    after = requests.get(sandbox_url + "/sandbox/stats", timeout=10).json()["result_polls"]
    tasks = {row["id"]: row for row in requests.get(sandbox_url + "/sandbox/tasks", timeout=10).json()}
    client.close()
    latencies = [receipts[task_id] - tasks[task_id]["completed_at_epoch"] for task_id in receipts]
    return latencies, (after - before) / jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inference-seconds", type=float, default=8.0)
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="kling-bench-webhooks-") as scratch:
        work = Path(scratch)
        image = work / "frame.png"
        Image.linear_gradient("L").resize((800, 600)).convert("RGB").save(image)
        rows = []
        for label, pushed in (("webhooks", True), ("polling", False)):
            seconds = args.inference_seconds  # a fresh sandbox per mode, so each starts with no history
            sandbox = start_sandbox_process("--inference-seconds", f"{seconds:.2f}", "--webhook-secret", SECRET,
                                            log_path=work / f"sandbox-{label}.log")
            port = free_port()
            env = {"WAVESPEED_API_KEY": "bench-key", "WAVESPEED_BASE_URL": sandbox.url}
            if pushed:
                env |= {"KLING_DEMO_PUBLIC_URL": f"http://127.0.0.1:{port}", "WAVESPEED_WEBHOOK_SECRET": SECRET}
            app = start_app_process(work / f"data-{label}", port=port, env=env, log_path=work / f"app-{label}.log")
            try:
                latencies, polls = run(app.url, sandbox.url, image, args.jobs)
            finally:
                app.stop()
                sandbox.stop()
            rows.append((label, seconds, latencies, polls))

    print("| mode | render | completion→video median / max | result polls per job |")
    print("|---|---|---|---|")
    for label, seconds, latencies, polls in rows:
        print(f"| {label} | {seconds:.1f} s | {statistics.median(latencies):.2f} s / {max(latencies):.2f} s "
              f"| {polls:.1f} |")
    print(f"({args.jobs} jobs one after another per mode; latency = client has the video − sandbox completed_at)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
