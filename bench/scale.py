"""Many jobs at once on one small machine: this app against a plain Gradio app calling the official SDK.

Starts one sandbox (renders of --inference-seconds, identical inputs so it renders once) and, side by side,
this app and the peer (bench/peer_app.py: a gr.Interface handler calling `wavespeed.run()`, as typical Spaces
do) at Gradio's default concurrency and unlimited. At each level it sends N jobs at once through real HTTP:
raw Gradio protocol (POST /gradio_api/upload, POST /gradio_api/queue/join, the SSE stream at
/gradio_api/queue/data) from one asyncio loop with httpx and no connection cap, so the client holds no thread
per job and does not limit the level (gradio_client runs each job in a thread of a bounded pool).

The floor (bench/floor_app.py, `--apps …,floor`) is a plain gr.Blocks shaped like this app's /generate whose
handler only sleeps for the render and yields the same number of updates: what any Gradio app pays per job.
It talks to no sandbox; its "task created" is when its handler starts and its "completed" when its sleep
ends, written by the app to a file this script reads (`floor-stock`: the same with Gradio's idle-queue timings).

Reports wall vs one job, first→last task created at the sandbox, completion→video p50/p95 (the client's
receipt of the final output minus the sandbox's completion time), CPU per job of the app, of the sandbox and
of this client process (and their sum against the machine's budget per job: CPUs × wall / jobs), peak RSS,
peak threads, open files, result polls per job, errors.

Run: python bench/scale.py [--levels 1,64,256,1024] [--inference-seconds 30]
                           [--apps ours,floor,peer,peer-unlimited]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.concurrency import make_jpeg, pct, prewarm_render  # noqa: E402
from tests.harness import Served, start_app_process, start_sandbox_process  # noqa: E402  (the one harness)
from tests.queue_client import QueueClient, http_client  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the app process, seen from /proc ---------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def proc_status(pid: int) -> tuple[float, int]:
    """(RSS MB, threads) of `pid`."""
    rss, threads = 0.0, 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Sampler:
    """Peak RSS, threads and open files of one process, sampled every `every` seconds from a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.rss = self.threads = self.files = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            rss, threads = proc_status(self.pid)
        except OSError:
            return
        self.rss, self.threads = max(self.rss, rss), max(self.threads, threads)
        self.files = max(self.files, open_files(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> "Sampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@contextlib.contextmanager
def profiled(pid: int, folder: Path, name: str) -> Iterator[None]:
    """py-spy samples `pid` (busy threads only, 100 Hz) into folder/name.txt while the block runs; read the
    file with bench/profile_split.py. It costs the box some CPU: leave it off for the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-o", str(folder / f"{name}.txt"), "-f", "raw",
                            "--nolineno", "--nonblocking", "-r", "100"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


# --- one level ---------------------------------------------------------------------------------------


@dataclass
class Level:
    app: str
    jobs: int
    wall: float = 0.0
    created_spread: float = float("nan")  # first → last task created at the sandbox
    first_created: float = float("nan")  # start of the level → first task created
    latencies: list[float] = field(default_factory=list)
    cpu_per_job_ms: float = 0.0
    sandbox_cpu_ms: float = 0.0  # per job, the sandbox process
    client_cpu_ms: float = 0.0  # per job, this process (the client)
    rss_mb: float = 0.0
    threads: int = 0
    files: int = 0
    polls_per_job: float = 0.0
    errors: int = 0


class GradioApp(QueueClient):
    """One served app under test, with its process."""

    def __init__(self, name: str, served: Served, http: httpx.AsyncClient, tasks_file: Path | None = None) -> None:
        super().__init__(served.url, http)
        self.name, self.served, self.tasks_file = name, served, tasks_file

    async def tasks(self, sandbox: str) -> dict[str, dict]:
        """Every task so far by id, with its created/completed epochs: the sandbox's, or the floor's own file."""
        if self.tasks_file is None:
            return {row["id"]: row for row in (await self.http.get(sandbox + "/sandbox/tasks")).json()}
        rows = [json.loads(line) for line in self.tasks_file.read_text().splitlines() if line.strip()] \
            if self.tasks_file.exists() else []
        return {row["id"]: {"id": row["id"], "created_at_epoch": row["created"],
                            "completed_at_epoch": row["completed"]} for row in rows}

    async def job(self, image: Path, duration: int) -> tuple[str, float]:
        outputs, received = await self.generate(image, duration)
        return task_id_of(outputs), received


def task_id_of(outputs: list) -> str:
    """Our app and the floor return (status, task id, video); the peer returns (task id, video)."""
    return str(outputs[1] if len(outputs) == 3 else outputs[0])


async def run_level(app: GradioApp, sandbox: str, sandbox_pid: int, image: Path, jobs: int, duration: int,
                    timeout: float, profile_dir: Path | None = None) -> Level:
    result = Level(app.name, jobs)
    before = (await app.http.get(sandbox + "/sandbox/stats")).json()
    known = set(await app.tasks(sandbox))
    pid = app.served.process.pid
    pids = (pid, sandbox_pid, os.getpid())
    cpu_before = [proc_cpu_seconds(p) for p in pids]
    with Sampler(pid) as sampler, profiled(pid, profile_dir, f"{app.name}-{jobs}") if profile_dir and jobs > 1 \
            else contextlib.nullcontext():
        started = time.time()
        outcomes = await asyncio.gather(*(asyncio.wait_for(app.job(image, duration), timeout) for _ in range(jobs)),
                                        return_exceptions=True)
    cpu, sandbox_cpu, client_cpu = (proc_cpu_seconds(p) - before_p for p, before_p in zip(pids, cpu_before))
    after = (await app.http.get(sandbox + "/sandbox/stats")).json()
    tasks = {task_id: row for task_id, row in (await app.tasks(sandbox)).items() if task_id not in known}
    receipts = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors += 1
            print(f"    {app.name}: {type(outcome).__name__}: {str(outcome)[:200]}", file=sys.stderr)
            continue
        task_id, received = outcome
        row = tasks.get(task_id)
        if row is None or row.get("completed_at_epoch") is None:
            result.errors += 1
            continue
        receipts.append(received)
        result.latencies.append(received - row["completed_at_epoch"])
    created = [row["created_at_epoch"] for row in tasks.values()]
    result.wall = (max(receipts) - started) if receipts else float("nan")
    result.created_spread = (max(created) - min(created)) if created else float("nan")
    result.first_created = (min(created) - started) if created else float("nan")
    result.cpu_per_job_ms = cpu / jobs * 1000
    result.sandbox_cpu_ms, result.client_cpu_ms = sandbox_cpu / jobs * 1000, client_cpu / jobs * 1000
    result.rss_mb, result.threads, result.files = sampler.rss, int(sampler.threads), int(sampler.files)
    result.polls_per_job = (after["result_polls"] - before["result_polls"]) / jobs
    return result


# --- processes ---------------------------------------------------------------------------------------


FLOOR_APPS = ("floor", "floor-stock")


def tasks_file(work: Path, name: str) -> Path | None:
    """Where a floor app writes its tasks' times (it has no sandbox); None for the apps that use the sandbox."""
    return work / f"{name}-tasks.jsonl" if name in FLOOR_APPS else None


def start_apps(names: list[str], sandbox: str, work: Path, jobs: int, ours_env: dict[str, str],
               render_seconds: float) -> dict[str, Served]:
    """Each app in its own process, pointed at the sandbox by the server's key and base URL."""
    common = {"WAVESPEED_API_KEY": "bench", "WAVESPEED_BASE_URL": sandbox}
    floor = {"FLOOR_RENDER_SECONDS": str(render_seconds), "FLOOR_MAX_THREADS": str(max(40, jobs + 64))}
    envs = {
        "ours": {"KLING_DEMO_MAX_JOBS_PER_VISITOR": str(jobs + 1), "KLING_DEMO_API_CONCURRENCY": str(jobs + 1),
                 **ours_env},
        "floor": {**floor, "FLOOR_TASKS": str(tasks_file(work, "floor"))},
        "floor-stock": {**floor, "FLOOR_TASKS": str(tasks_file(work, "floor-stock")), "FLOOR_QUEUE": "stock"},
        "peer": {},
        "peer-unlimited": {"PEER_CONCURRENCY": "unlimited"},
    }
    scripts = {"ours": None, "floor": ROOT / "bench" / "floor_app.py", "floor-stock": ROOT / "bench" / "floor_app.py"}
    served = {}
    for name in names:
        env = {**common, **envs[name], "GRADIO_TEMP_DIR": str(work / f"{name}-gradio-tmp")}
        served[name] = start_app_process(work / f"{name}-data", env=env, log_path=work / f"{name}.log",
                                         app_script=scripts.get(name, ROOT / "bench" / "peer_app.py"))
    return served


async def drive(args: argparse.Namespace, served: dict[str, Served], sandbox: Served, image: Path,
                work: Path) -> list[Level]:
    results: list[Level] = []
    async with http_client() as http:
        apps = [GradioApp(name, app, http, tasks_file(work, name)) for name, app in served.items()]
        for app in apps:
            await app.load()
            await app.job(image, args.duration)  # warm-up: fills our render-time history, as on a live server
        for jobs in args.levels:
            for app in apps:
                if jobs > args.peer_max and app.name == "peer":
                    continue  # Gradio's default concurrency runs one job at a time: a level of hours
                level = await run_level(app, sandbox.url, sandbox.process.pid, image, jobs, args.duration,
                                        args.timeout, args.profile)
                results.append(level)
                print(f"  {app.name:<15}{jobs:>5} jobs: wall {level.wall:7.1f} s, "
                      f"first task {level.first_created:4.1f} s, spread {level.created_spread:6.1f} s, "
                      f"p50 {pct(level.latencies, 0.5):.2f} s, p95 {pct(level.latencies, 0.95):.2f} s, "
                      f"CPU {level.cpu_per_job_ms:.0f} ms/job (sandbox {level.sandbox_cpu_ms:.0f}, client "
                      f"{level.client_cpu_ms:.0f}, of {budget_ms(level):.0f}), RSS {level.rss_mb:.0f} MB, "
                      f"threads {level.threads}, files {level.files}, polls {level.polls_per_job:.1f}/job, "
                      f"errors {level.errors}, load {os.getloadavg()[0]:.1f}", flush=True)
    return results


def budget_ms(level: Level) -> float:
    """The whole machine's CPU per job during the level: every CPU for the wall time, shared by the jobs."""
    return (os.cpu_count() or 1) * level.wall / level.jobs * 1000


def table(results: list[Level]) -> str:
    base = {r.app: r.wall for r in results if r.jobs == 1}
    lines = ["| app | jobs | wall (× one job) | start→first / first→last task created "
             "| completion→video p50 / p95 | app CPU per job | sandbox / client CPU per job "
             "| all three (of the machine's) | peak RSS | peak threads | open files | polls per job | errors |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        times = f"{r.wall / base[r.app]:.2f}×" if base.get(r.app) else "—"
        total = r.cpu_per_job_ms + r.sandbox_cpu_ms + r.client_cpu_ms
        lines.append(f"| {r.app} | {r.jobs} | {r.wall:.1f} s ({times}) | "
                     f"{r.first_created:.1f} s / {r.created_spread:.1f} s | "
                     f"{pct(r.latencies, 0.5):.2f} s / {pct(r.latencies, 0.95):.2f} s | {r.cpu_per_job_ms:.0f} ms | "
                     f"{r.sandbox_cpu_ms:.0f} / {r.client_cpu_ms:.0f} ms | {total:.0f} ms ({budget_ms(r):.0f} ms) | "
                     f"{r.rss_mb:.0f} MB | {r.threads} | {r.files} | {r.polls_per_job:.1f} | {r.errors} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,64,256,1024", help="jobs at once per level; 1 is the baseline")
    parser.add_argument("--inference-seconds", type=float, default=30.0, help="sandbox render time per task")
    parser.add_argument("--duration", type=int, default=5, help="video length asked for")
    parser.add_argument("--apps", default="ours,peer,peer-unlimited",
                        help="which apps to run, side by side: ours, floor, floor-stock, peer, peer-unlimited")
    parser.add_argument("--peer-max", type=int, default=1,
                        help="largest level for the peer at Gradio's default concurrency (it runs jobs one by one)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per job, seconds")
    parser.add_argument("--image-size", default="1280x720", help="job image, WxH")
    parser.add_argument("--app-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for this app (repeatable), e.g. KLING_DEMO_CONCURRENCY=512")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy each app at each level above 1 into DIR (bench/profile_split.py reads them)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (the processes' logs)")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.levels[0] != 1:
        args.levels.insert(0, 1)
    names = [n.strip() for n in args.apps.split(",") if n.strip()]
    command = ("python bench/scale.py " + shlex.join(sys.argv[1:])).rstrip()

    work = Path(tempfile.mkdtemp(prefix="kling-scale-"))
    width, height = (int(s) for s in args.image_size.lower().split("x"))
    image = make_jpeg(work / "frame.jpg", width, height, noise=24)
    processes: list[Served] = []
    try:
        sandbox = start_sandbox_process("--inference-seconds", str(args.inference_seconds), "--log-level", "WARNING",
                                        "--balance", "1000000",  # the default balance runs out near 700 jobs
                                        log_path=work / "sandbox.log")
        processes.append(sandbox)
        served = start_apps(names, sandbox.url, work, max(args.levels),
                            dict(item.split("=", 1) for item in args.app_env), args.inference_seconds)
        processes.extend(served.values())
        print(f"sandbox {sandbox.url} (renders {args.inference_seconds:g} s); apps "
              + ", ".join(f"{n} {s.url}" for n, s in served.items()) + f"; work dir {work}", flush=True)
        prewarm_render(sandbox.url, image, args.duration)
        results = asyncio.run(drive(args, served, sandbox, image, work))
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGINT)
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"Scale benchmark — sandbox renders {args.inference_seconds:g} s, {os.cpu_count()} CPUs, client: raw "
          "Gradio queue protocol over httpx (asyncio, no connection cap)")
    print()
    print(table(results))
    print()
    print(f"Produced by: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
