"""How the app behaves with many simultaneous jobs: wall time, completion→video latency, polls, RSS.

Starts the sandbox and the app as separate processes on free loopback ports (the app points at the
sandbox through WAVESPEED_API_KEY / WAVESPEED_BASE_URL), drives `/generate` through gradio_client
at several concurrency levels, and prints the figures against the issue's targets, then the same
as a markdown table. Also measures cold start, a run with KLING_DEMO_CONCURRENCY=1 for contrast,
and the pre-submit cost of a 12-MP JPEG (ticket upload vs an inline data URI).

Run: python bench/concurrency.py [--inference-seconds 8] [--levels 1,4,16,32]. Figures only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Served, start_app_process, start_sandbox_process  # noqa: E402  (the one harness)

TARGETS = {
    "wall16": 1.1,  # 16 simultaneous jobs ≤ 1.1× the wall time of one
    "median_latency": 0.5,  # completion → video at the client, seconds
    "polls_per_second": 1.0,  # per job
    "cold_start": 3.0,  # seconds from process start to HTTP 200 on /
    "rss16_mb": 300.0,  # app RSS with 16 jobs in flight
}
PROMPT = "a slow dolly-in over a paper boat"


# --- processes ---------------------------------------------------------------------------------


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def start_sandbox(inference_seconds: float, log_path: Path) -> tuple[subprocess.Popen, str]:
    served = start_sandbox_process("--inference-seconds", str(inference_seconds), "--log-level", "WARNING",
                                   log_path=log_path)
    return served.process, served.url


def start_app(sandbox_url: str, work: Path, name: str, concurrency: int | None,
              extra_env: dict[str, str] | None = None, script: Path = ROOT / "app.py") -> Served:
    """`python app.py` in its own process; `cold_start` = Popen → first answer on `/`."""
    env = {"WAVESPEED_API_KEY": "bench", "WAVESPEED_BASE_URL": sandbox_url,
           "GRADIO_TEMP_DIR": str(work / f"{name}-gradio-tmp")}
    if concurrency is not None:
        env["KLING_DEMO_CONCURRENCY"] = str(concurrency)
    env.update(extra_env or {})
    return start_app_process(work / f"{name}-data", env=env, log_path=work / f"{name}.log", app_script=script)


def stop(process: subprocess.Popen) -> None:
    Served(process, "").stop(signal.SIGINT)


# --- memory ------------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and all its descendants, MB (VmRSS from /proc; psutil is not needed)."""
    return sum(_rss_kb(p) for p in [pid, *_descendants(pid)]) / 1024


class RssSampler:
    """Samples the app's tree RSS every `every` seconds while active; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mb(self.pid))


# --- images ------------------------------------------------------------------------------------


def make_jpeg(path: Path, width: int, height: int, noise: int, quality: int = 92) -> Path:
    """A gradient with some noise, so the JPEG has a realistic size (a flat image compresses to nothing)."""
    from PIL import Image, ImageChops

    gradient = Image.linear_gradient("L").resize((width, height))
    picture = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_180),
                                  Image.radial_gradient("L").resize((width, height))))
    if noise:
        grain = Image.effect_noise((width, height), noise).convert("RGB")
        picture = ImageChops.blend(picture, grain, 0.25)
    picture.save(path, "JPEG", quality=quality)
    return path


def prewarm_render(sandbox_url: str, image: Path, duration: int = 5) -> float:
    """Render the job image once, straight at the sandbox, and wait for it.

    The sandbox shares one render among identical inputs, so every benchmark task then completes at
    exactly --inference-seconds. Without this, the app's warm-up task would finish when the first
    (slower) render does, and the app's inference history (which times its polls) would start skewed.
    """
    from kling_demo.wavespeed.client import WaveSpeedClient
    from kling_demo.models import DEFAULT_MODEL as spec

    started = time.monotonic()
    with WaveSpeedClient(sandbox_url, "bench") as client:
        url = client.upload(image, "image/jpeg")
        task_id = client.submit(spec, {"image": url, "prompt": PROMPT, "duration": duration}).task_id
        while not client.result(task_id).is_final:
            time.sleep(0.2)
    return time.monotonic() - started


# --- one concurrency level ---------------------------------------------------------------------


@dataclass
class LevelResult:
    label: str
    jobs: int
    wall: float
    latencies: list[float]
    polls_per_job: float
    polls_per_second_mean: float
    polls_per_second_max: float
    peak_rss_mb: float
    failures: int = 0
    client_totals: list[float] = field(default_factory=list)
    last_created: float = float("nan")  # first submit → the last task created at the sandbox


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


def run_level(app: Served, sandbox_url: str, image: Path, jobs: int, client_mode: str, label: str,
              duration: int = 5, timeout: float = 600) -> LevelResult:
    """Submit `jobs` jobs at once; receipt = when each job's future completes (video downloaded)."""
    from gradio_client import Client, handle_file

    if client_mode == "shared":
        clients = [Client(app.url, verbose=False)] * jobs
    else:
        clients = [Client(app.url, verbose=False) for _ in range(jobs)]
    before = get_json(sandbox_url + "/sandbox/stats")
    receipts: dict[int, float] = {}
    submitted: dict[int, float] = {}

    def receipt_recorder(index: int):
        return lambda _future: receipts.setdefault(index, time.time())

    with RssSampler(app.process.pid) as rss:
        started = time.time()
        handles = []
        for index, client in enumerate(clients):
            submitted[index] = time.time()
            job = client.submit(handle_file(str(image)), PROMPT, "", 0.5, duration, None, api_name="/generate")
            job.add_done_callback(receipt_recorder(index))
            handles.append(job)
        outputs: dict[int, tuple] = {}
        failures = 0
        for index, job in enumerate(handles):
            try:
                outputs[index] = job.result(timeout=timeout)
            except Exception as error:  # noqa: BLE001 - a failed job is counted and reported, not fatal
                failures += 1
                print(f"  job {index} failed: {type(error).__name__}: {str(error)[:200]}", file=sys.stderr)
        finished = max(receipts.values(), default=time.time())
    after = get_json(sandbox_url + "/sandbox/stats")
    tasks = {row["id"]: row for row in get_json(sandbox_url + "/sandbox/tasks")}
    for client in {id(c): c for c in clients}.values():
        client.close()

    latencies, rates, totals, created = [], [], [], []
    for index, (_status, task_id, _video) in outputs.items():
        row = tasks.get(task_id)
        if row is None or row["completed_at_epoch"] is None:
            failures += 1
            continue
        latencies.append(receipts[index] - row["completed_at_epoch"])
        rates.append(row["result_polls"] / max(1e-6, receipts[index] - row["created_at_epoch"]))
        totals.append(receipts[index] - submitted[index])
        created.append(row["created_at_epoch"] - started)
    polls = after["result_polls"] - before["result_polls"]
    return LevelResult(
        label=label, jobs=jobs, wall=finished - started, latencies=latencies,
        polls_per_job=polls / jobs, polls_per_second_mean=statistics.fmean(rates) if rates else float("nan"),
        polls_per_second_max=max(rates, default=float("nan")), peak_rss_mb=rss.peak, failures=failures,
        client_totals=totals, last_created=max(created, default=float("nan")),
    )


# --- pre-submit cost of a large image --------------------------------------------------------------


@dataclass
class PreSubmit:
    source_mb: float
    prepared_mb: float
    changes: tuple[str, ...]
    prepare_s: float
    upload_s: float
    submit_url_s: float
    url_body_bytes: int
    data_uri_build_s: float
    data_uri_bytes: int
    submit_inline_s: float
    inline_body_bytes: int
    via_app_s: float | None


def measure_presubmit(sandbox_url: str, big: Path, work: Path, repeat: int) -> PreSubmit:
    """media.prepare_image + WaveSpeedClient.upload (ticket flow) vs building an inline data URI."""
    from kling_demo.jobs import images as media
    from kling_demo.wavespeed.client import WaveSpeedClient
    from kling_demo.models import DEFAULT_MODEL as spec

    client = WaveSpeedClient(sandbox_url, "bench")
    prepare_times, upload_times, url_submits, build_times, inline_submits = [], [], [], [], []
    body = {"prompt": PROMPT, "guidance_scale": 0.5, "duration": 5}
    for attempt in range(repeat):
        folder = work / f"prep-{attempt}"
        folder.mkdir()
        t0 = time.perf_counter()
        prepared = media.prepare_image(big, spec.first_frame, role="first frame", work_dir=folder)
        t1 = time.perf_counter()
        url = client.upload(prepared.path, prepared.mime_type)
        t2 = time.perf_counter()
        client.submit(spec, {**body, "image": url})
        t3 = time.perf_counter()
        prepare_times.append(t1 - t0)
        upload_times.append(t2 - t1)
        url_submits.append(t3 - t2)

        t0 = time.perf_counter()
        data_uri = f"data:{prepared.mime_type};base64," + base64.b64encode(prepared.path.read_bytes()).decode("ascii")
        t1 = time.perf_counter()
        client.submit(spec, {**body, "image": data_uri})
        t2 = time.perf_counter()
        build_times.append(t1 - t0)
        inline_submits.append(t2 - t1)
    client.close()
    return PreSubmit(
        source_mb=big.stat().st_size / 1e6, prepared_mb=prepared.size_bytes / 1e6, changes=prepared.changes,
        prepare_s=statistics.median(prepare_times), upload_s=statistics.median(upload_times),
        submit_url_s=statistics.median(url_submits), url_body_bytes=len(json.dumps({**body, "image": url})),
        data_uri_build_s=statistics.median(build_times), data_uri_bytes=len(data_uri),
        submit_inline_s=statistics.median(inline_submits),
        inline_body_bytes=len(json.dumps({**body, "image": data_uri})), via_app_s=None,
    )


def measure_via_app(app: Served, sandbox_url: str, big: Path) -> float:
    """Client submit → task created at the sandbox, for the big image through the whole app."""
    from gradio_client import Client, handle_file

    known = {row["id"] for row in get_json(sandbox_url + "/sandbox/tasks")}
    client = Client(app.url, verbose=False)
    started = time.time()
    job = client.submit(handle_file(str(big)), PROMPT, "", 0.5, 5, None, api_name="/generate")
    created = None
    deadline = time.monotonic() + 120
    while created is None and time.monotonic() < deadline:
        new = [row for row in get_json(sandbox_url + "/sandbox/tasks") if row["id"] not in known]
        if new:
            created = new[0]["created_at_epoch"]
        else:
            time.sleep(0.02)
    job.result(timeout=300)
    client.close()
    return (created - started) if created else float("nan")


# --- report ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inference-seconds", type=float, default=8.0, help="sandbox render time per task")
    parser.add_argument("--levels", default="1,4,16,32", help="simultaneous jobs per level (first one is the baseline)")
    parser.add_argument("--client-mode", choices=("shared", "per-job"), default="shared",
                        help="one gradio_client Client for all jobs, or one Client per job")
    parser.add_argument("--compare-clients", action="store_true",
                        help="also run the largest level ≤ 16 with the other client mode")
    parser.add_argument("--serial-jobs", type=int, default=4, help="jobs for the KLING_DEMO_CONCURRENCY=1 run (0: skip)")
    parser.add_argument("--image-size", default="1280x720", help="job image, WxH")
    parser.add_argument("--big-size", default="4000x3000", help="the large JPEG for the pre-submit figures (WxH)")
    parser.add_argument("--presubmit-repeat", type=int, default=3)
    parser.add_argument("--app-script", type=Path, default=ROOT / "app.py",
                        help="script to run as the app (default app.py; another path A/B-tests a change)")
    parser.add_argument("--app-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the app processes (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs of both processes)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    command = ("python bench/concurrency.py " + shlex.join(sys.argv[1:])).rstrip()

    work = Path(tempfile.mkdtemp(prefix="kling-bench-"))
    width, height = (int(s) for s in args.image_size.lower().split("x"))
    image = make_jpeg(work / "frame.jpg", width, height, noise=24)
    big_w, big_h = (int(s) for s in args.big_size.lower().split("x"))
    big = make_jpeg(work / "big-12mp.jpg", big_w, big_h, noise=48)

    processes: list[subprocess.Popen] = []
    results: list[LevelResult] = []
    try:
        sandbox, sandbox_url = start_sandbox(args.inference_seconds, work / "sandbox.log")
        processes.append(sandbox)
        # One gradio_client session is one visitor; lift the per-visitor cap so all jobs run at once.
        extra_env = {"KLING_DEMO_MAX_JOBS_PER_VISITOR": str(max(levels + [args.serial_jobs]) + 1)}
        extra_env.update(item.split("=", 1) for item in args.app_env)
        app = start_app(sandbox_url, work, "app", concurrency=None, extra_env=extra_env, script=args.app_script)
        processes.append(app.process)
        idle_rss = tree_rss_mb(app.process.pid)
        print(f"sandbox {sandbox_url} (inference {args.inference_seconds:g} s); app {app.url} "
              f"cold start {app.cold_start:.2f} s, idle RSS {idle_rss:.0f} MB; work dir {work}", flush=True)

        prewarm_render(sandbox_url, image)
        warm = run_level(app, sandbox_url, image, 1, args.client_mode, "warm-up")
        print(f"warm-up job: {warm.wall:.2f} s (fills the app's inference history, as on a live server)", flush=True)
        for jobs in levels:
            result = run_level(app, sandbox_url, image, jobs, args.client_mode, f"{jobs} ({args.client_mode})")
            results.append(result)
            print(f"  {jobs:>3} jobs: wall {result.wall:.2f} s, median latency {statistics.median(result.latencies):.3f} s, "
                  f"peak RSS {result.peak_rss_mb:.0f} MB, failures {result.failures}", flush=True)
        if args.compare_clients:
            other = "per-job" if args.client_mode == "shared" else "shared"
            jobs = max([n for n in levels if n <= 16], default=levels[0])
            result = run_level(app, sandbox_url, image, jobs, other, f"{jobs} ({other})")
            results.append(result)
            print(f"  {jobs:>3} jobs ({other}): wall {result.wall:.2f} s", flush=True)

        serial = None
        serial_cold = None
        if args.serial_jobs > 0:
            serial_app = start_app(sandbox_url, work, "serial", concurrency=1, extra_env=extra_env,
                                   script=args.app_script)
            processes.append(serial_app.process)
            serial_cold = serial_app.cold_start
            run_level(serial_app, sandbox_url, image, 1, args.client_mode, "serial warm-up")
            serial = run_level(serial_app, sandbox_url, image, args.serial_jobs, args.client_mode,
                               f"{args.serial_jobs} (KLING_DEMO_CONCURRENCY=1)")
            stop(serial_app.process)
            print(f"  {args.serial_jobs:>3} jobs at concurrency 1: wall {serial.wall:.2f} s", flush=True)

        pre = measure_presubmit(sandbox_url, big, work, args.presubmit_repeat)
        pre.via_app_s = measure_via_app(app, sandbox_url, big)
    finally:
        for process in reversed(processes):
            stop(process)
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)

    base = results[0].wall
    print()
    print(f"Concurrency benchmark — sandbox inference {args.inference_seconds:g} s, 5 s video, "
          f"job image {args.image_size}, client mode {args.client_mode}, {os.cpu_count()} CPUs")
    header = (f"{'jobs':<28}{'wall s':>8}{'× one':>7}{'lat p50':>9}{'lat p95':>9}{'polls/job':>10}"
              f"{'polls/s':>9}{'max/s':>7}{'RSS MB':>8}{'submit':>8}{'fail':>5}")
    print(header)
    print("-" * len(header))
    rows = results + ([serial] if serial else [])
    for r in rows:
        print(f"{r.label:<28}{r.wall:>8.2f}{r.wall / base:>7.2f}{statistics.median(r.latencies):>9.3f}"
              f"{pct(r.latencies, 0.95):>9.3f}{r.polls_per_job:>10.1f}{r.polls_per_second_mean:>9.2f}"
              f"{r.polls_per_second_max:>7.2f}{r.peak_rss_mb:>8.0f}{r.last_created:>8.2f}{r.failures:>5}")
    print(f"(latency = client receipt of the final output, video downloaded − sandbox completed_at_epoch; "
          f"polls/s = a task's result polls / (receipt − created); submit = first submit → last task created; RSS = app + children peak, idle {idle_rss:.0f} MB)")

    main_rows = results[:len(levels)]  # without the other-client-mode row
    at16 = next((r for r in main_rows if r.jobs == 16), None)
    all_lat = [x for r in main_rows for x in r.latencies]
    worst_rate = max((r.polls_per_second_max for r in main_rows), default=float("nan"))
    checks = [
        ("16 jobs wall ≤ 1.1× one", f"{at16.wall / base:.2f}×" if at16 else "n/a",
         verdict(at16 is not None and at16.wall / base <= TARGETS["wall16"])),
        ("median completion→video ≤ 0.5 s", f"{statistics.median(all_lat):.3f} s (all levels" + (f"; 16 jobs {statistics.median(at16.latencies):.3f} s)" if at16 else ")"),
         verdict(statistics.median(all_lat) <= TARGETS["median_latency"])),
        ("≤ 1 poll/s per job", f"max {worst_rate:.2f}/s", verdict(worst_rate <= TARGETS["polls_per_second"])),
        ("cold start ≤ 3 s", f"{app.cold_start:.2f} s" + (f" (2nd app {serial_cold:.2f} s)" if serial_cold else ""),
         verdict(app.cold_start <= TARGETS["cold_start"])),
        ("RSS ≤ 300 MB, 16 in flight", f"{at16.peak_rss_mb:.0f} MB" if at16 else "n/a",
         verdict(at16 is not None and at16.peak_rss_mb <= TARGETS["rss16_mb"])),
    ]
    if serial:
        checks.append((f"contrast: {serial.jobs} jobs, concurrency 1", f"{serial.wall / base:.2f}× one", "—"))
    print()
    print(f"{'target':<34}{'measured':<44}verdict")
    for name, measured, ok in checks:
        print(f"{name:<34}{measured:<44}{ok}")

    print()
    print(f"Pre-submit, {args.big_size} JPEG of {pre.source_mb:.2f} MB (median of {args.presubmit_repeat}; "
          f"prepared {pre.prepared_mb:.2f} MB{', ' + '; '.join(pre.changes) if pre.changes else ', passed through'}):")
    ticket = pre.prepare_s + pre.upload_s + pre.submit_url_s
    inline = pre.prepare_s + pre.data_uri_build_s + pre.submit_inline_s
    print(f"  ticket upload: prepare {pre.prepare_s:.3f} s + upload {pre.upload_s:.3f} s + submit {pre.submit_url_s:.3f} s"
          f" = {ticket:.3f} s; submit body {pre.url_body_bytes} B, PUT {pre.prepared_mb * 1e6:.0f} B")
    print(f"  inline data URI: prepare {pre.prepare_s:.3f} s + build {pre.data_uri_build_s:.3f} s + submit "
          f"{pre.submit_inline_s:.3f} s = {inline:.3f} s; data URI {pre.data_uri_bytes} B, submit body {pre.inline_body_bytes} B")
    print(f"  through the app (gradio upload + prepare + upload + submit): client submit → task created "
          f"{pre.via_app_s:.3f} s")

    print()
    print("Markdown (for the README):")
    print()
    print("| jobs at once | wall (× one job) | completion→video p50 / p95 | result polls per job (per s) | app peak RSS |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.label} | {r.wall:.1f} s ({r.wall / base:.2f}×) | {statistics.median(r.latencies):.2f} s / "
              f"{pct(r.latencies, 0.95):.2f} s | {r.polls_per_job:.1f} ({r.polls_per_second_mean:.2f}/s) | "
              f"{r.peak_rss_mb:.0f} MB |")
    print()
    print("| target | measured | |")
    print("|---|---|---|")
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {ok} |")
    print(f"| pre-submit 12 MP: ticket upload vs data URI | {ticket:.2f} s vs {inline:.2f} s "
          f"({pre.prepared_mb:.1f} MB PUT vs {pre.inline_body_bytes / 1e6:.1f} MB JSON) | — |")
    print()
    print(f"Produced by: `{command}` (sandbox inference {args.inference_seconds:g} s, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
