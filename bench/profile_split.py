"""Where an app's CPU goes, from py-spy raw profiles (bench/scale.py --profile DIR): shares and ms per job.

A sample whose stack holds a kling_demo frame is ours, split by its innermost kling_demo module (and the library
it was in, when it was in one: sqlite3, PIL, requests/urllib3, httpx); any other is Gradio's or the server's,
split by the first frame that names a part (upload, queue, pre/postprocess, SSE, HTTP, event loop).
Our wrapper around Gradio's queue join (ui.hold_queue_limit) does not make what Gradio does inside it ours.
Shares are of busy samples (a stack ending in a wait is left out); ms per job = share × the app CPU per job
that scale.py measured (pass it).

Run: python bench/profile_split.py DIR/ours-256.txt --cpu-ms 130 [DIR/floor-256.txt --cpu-ms 40 ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
LIBRARIES = (("sqlite3", "sqlite"), ("PIL", "Pillow"), ("requests", "requests/urllib3"),
             ("urllib3", "requests/urllib3"), ("httpx", "httpx"), ("httpcore", "httpx"), ("json", "json"),
             ("av", "PyAV"))
# The first of these found in a stack (innermost first) names the Gradio/server part it was in.
PARTS = (("processing_utils", "gradio: files (hash, copy to cache)"),
         ("route_utils", "gradio: routes/upload"),
         ("multipart", "gradio: upload parsing"), ("postprocess", "gradio: postprocess"),
         ("preprocess", "gradio: preprocess"), ("queueing", "gradio: queue"), ("data_classes", "gradio: pydantic"),
         ("pydantic", "gradio: pydantic"), ("blocks", "gradio: blocks (config, state)"),
         ("state_holder", "gradio: session state"),
         ("routes", "gradio: routes"), ("sse_starlette", "server: SSE"), ("starlette", "server: starlette"),
         ("fastapi", "server: fastapi"), ("uvicorn", "server: uvicorn/h11"), ("h11", "server: uvicorn/h11"),
         ("anyio", "loop: anyio"), ("asyncio", "loop: asyncio"), ("threading", "threads"))


# Innermost frames that are a thread waiting, not working: py-spy --nonblocking counts some of them as busy.
WAITING = {"Condition.wait", "Event.wait", "EpollSelector.select", "SocketIO.readinto", "_worker", "Queue.get",
           "Lock.acquire", "sleep", "select", "poll"}


def frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) for each frame of one raw stack line, outermost first."""
    out = []
    for part in stack.split(";"):
        match = FRAME.match(part.strip())
        out.append((match["func"], match["file"]) if match else (part.strip(), ""))
    return out


WRAPPERS = {"hold_queue_limit.<locals>.push_in_turn"}  # ours only around Gradio's own work


def category(stack: list[tuple[str, str]]) -> str:
    ours = [i for i, (func, file) in enumerate(stack)
            if (file.startswith("kling_demo/") or "/kling_demo/" in file) and func not in WRAPPERS]
    if ours:
        innermost = ours[-1]
        module = stack[innermost][1].rsplit("/", 1)[-1].removesuffix(".py")
        library = next((name for _, file in stack[innermost + 1:] for prefix, name in LIBRARIES
                        if file.startswith(prefix + "/") or file == prefix + ".py"), "")
        return f"ours: {module}" + (f" ({library})" if library else "")
    for func, file in reversed(stack):
        for key, name in PARTS:
            if key in file or key in func:
                return name
    return "other"


def split(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stack_frames = frames(stack)
            if stack_frames[-1][0] not in WAITING:
                counts[category(stack_frames)] += int(count)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--cpu-ms", type=float, action="append", default=[],
                        help="app CPU per job for each profile, in order (from scale.py's table)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for index, path in enumerate(args.profiles):
        counts = split(path)
        total = sum(counts.values()) or 1
        cpu = args.cpu_ms[index] if index < len(args.cpu_ms) else None
        print(f"\n{path.name}: {total} busy samples" + (f", {cpu:.0f} ms app CPU per job" if cpu else ""))
        ours = sum(n for name, n in counts.items() if name.startswith("ours"))
        print(f"  ours {ours / total:6.1%}" + (f"  {ours / total * cpu:6.1f} ms/job" if cpu else ""))
        for name, n in counts.most_common(args.top):
            print(f"  {name:<48}{n / total:6.1%}" + (f"  {n / total * cpu:6.1f} ms/job" if cpu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
