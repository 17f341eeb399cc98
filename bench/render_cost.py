"""Print the CPU and wall seconds the sandbox needs to render a 5 s and a 10 s video.

Run: python bench/render_cost.py [--repeat N] [--size WxH]. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from kling_demo.sandbox.render import X264_PRESET, render_video  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="renders per case; the median is printed")
    parser.add_argument("--size", default="1280x720", help="input image size, WxH")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.lower().split("x"))
    first = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    end = Image.linear_gradient("L").resize((height, height)).convert("RGB")
    render_video(first, Path(tempfile.gettempdir()) / "warm-up.mp4", 5)  # imports, codec init

    print(f"input {width}x{height}, preset {X264_PRESET}, median of {args.repeat}")
    print(f"{'case':<34}{'cpu s':>8}{'wall s':>8}{'MB':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for duration in (5, 10):
            for end_frame, threads in ((None, 1), (end, 1), (end, 0)):
                samples = []
                for attempt in range(args.repeat):
                    path = Path(folder) / f"{duration}-{attempt}.mp4"
                    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
                    render_video(first, path, duration, end_frame, threads=threads)
                    samples.append((cpu_seconds() - cpu_before, time.perf_counter() - wall_before, path.stat().st_size))
                cpu, wall, size = sorted(samples)[len(samples) // 2]
                label = f"{duration} s, {'end frame' if end_frame else 'no end frame'}, x264 {'auto' if threads == 0 else threads} thr"
                print(f"{label:<34}{cpu:>8.2f}{wall:>8.2f}{size / 1e6:>7.2f}")


if __name__ == "__main__":
    main()
