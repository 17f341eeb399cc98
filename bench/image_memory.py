"""Peak RSS of the app under image bombs and under ordinary big images, all at once.

Starts the sandbox and the app as separate processes (the app reaches the sandbox as it would
the real API, so no render runs inside the app), then for each scenario resets the app's peak
RSS (`/proc/<pid>/clear_refs`), sends the jobs through gradio_client, each as its own visitor,
and prints the app's peak RSS, its RSS once the jobs are over, and how the jobs ended.

The same images then go, four at once, to a second app whose budget is $0: no job may be paid, and none
should cost a decode either.

Run: python bench/image_memory.py [--bombs 3] [--app-script PATH]. Figures only, no asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from tests.harness import start_app_process, start_sandbox_process  # noqa: E402
from tests.service.test_media import truncated, write_flat_png  # noqa: E402

PROMPT = "a slow dolly-in over a lake at dusk"


def memory_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS


def photo_jpeg(path: Path, width: int, height: int) -> Path:
    """A photo-like JPEG (noise over a gradient), so its size on disk is a phone's."""
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    Image.blend(noise, gradient, 0.5).save(path, quality=92)
    return path


def progressive_jpeg(path: Path, width: int, height: int, mode: str, *, photo: bool = False) -> Path:
    """A progressive JPEG without chroma subsampling. Smooth, a 9400×9400 one is ~1.1 MB (RGB) / 1.4 MB (CMYK) on
    disk, as in issue 26; photo-like (noise), it is as heavy to decode as its size allows."""
    ramp = Image.linear_gradient("L").resize((width, height))
    picture = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                  Image.effect_noise((width, height), 40) if photo else
                                  ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    picture.convert(mode).save(path, quality=92 if photo else 30, progressive=True, subsampling=0)
    return path


def run_job(url: str, image: Path, end_image: Path | None) -> str:
    client = Client(url, verbose=False)
    try:
        status, _, _ = client.predict(handle_file(str(image)), PROMPT, "", 0.5, 5,
                                      handle_file(str(end_image)) if end_image else None, api_name="/generate")
        return "video" if "Done" in status else status[:60]
    except Exception as error:  # a refusal is an outcome here, not a failure of the bench
        return f"refused: {' '.join(str(error).split())[:100]}…"
    finally:
        client.close()


def scenario(url: str, pid: int, name: str, jobs: list[tuple[Path, Path | None]]) -> None:
    reset_peak(pid)
    before = memory_mb(pid, "VmRSS")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        outcomes = list(pool.map(lambda job: run_job(url, *job), jobs))
    wall = time.monotonic() - started
    peak = memory_mb(pid, "VmHWM")
    settle_deadline = time.monotonic() + 20
    while memory_mb(pid, "VmRSS") > before + 20 and time.monotonic() < settle_deadline:
        time.sleep(0.25)
    after = memory_mb(pid, "VmRSS")
    kinds = sorted(set(outcomes))
    print(f"| {name} | {before:.0f} MB | {peak:.0f} MB | {after:.0f} MB | {wall:.1f} s | {'; '.join(kinds)} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bombs", type=int, default=3, help="simultaneous 9400×9400 PNG jobs")
    parser.add_argument("--inference-seconds", type=float, default=2.0)
    parser.add_argument("--app-script", type=Path, default=None, help="run another app script (an A/B)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-image-memory-"))
    print(f"making images in {work} …", flush=True)
    bomb = write_flat_png(work / "bomb.png", 9400, 9400)
    big_png = write_flat_png(work / "16mp.png", 4000, 4000, (200, 120, 40, 128))
    photo = photo_jpeg(work / "12mp.jpg", 4000, 3000)
    phone = photo_jpeg(work / "48mp.jpg", 8000, 6000)
    broken_end = truncated(work, "end.png", "PNG")
    rgb_bomb = progressive_jpeg(work / "progressive-rgb.jpg", 9400, 9400, "RGB")
    cmyk_bomb = progressive_jpeg(work / "progressive-cmyk.jpg", 9400, 9400, "CMYK")
    # The largest progressive JPEGs the app decodes (96 MB of coefficients each), photo-like: over 10 MiB, so
    # each is decoded in full and re-encoded, the most a decode of such a file can cost.
    rgb_largest = progressive_jpeg(work / "largest-rgb.jpg", 4000, 4000, "RGB", photo=True)
    cmyk_largest = progressive_jpeg(work / "largest-cmyk.jpg", 3464, 3464, "CMYK", photo=True)
    sizes = {path.name: path.stat().st_size / 1e6 for path in (bomb, big_png, photo, phone, rgb_bomb, cmyk_bomb,
                                                                  rgb_largest, cmyk_largest)}
    print(" · ".join(f"{name} {size:.1f} MB" for name, size in sizes.items()), flush=True)

    sandbox = start_sandbox_process("--inference-seconds", str(args.inference_seconds), "--log-level", "WARNING",
                                    log_path=work / "sandbox.log")
    app = start_app_process(work / "data", log_path=work / "app.log", app_script=args.app_script,
                            env={"WAVESPEED_API_KEY": "bench-key", "WAVESPEED_BASE_URL": sandbox.url,
                                 "KLING_DEMO_MAX_JOBS_PER_VISITOR": "100"})
    broke = start_app_process(work / "broke", log_path=work / "broke.log", app_script=args.app_script,
                              env={"WAVESPEED_API_KEY": "bench-key", "WAVESPEED_BASE_URL": sandbox.url,
                                   "KLING_DEMO_MAX_JOBS_PER_VISITOR": "100", "KLING_DEMO_DAILY_BUDGET_USD": "0"})
    pid = app.process.pid
    try:
        run_job(app.url, photo, None)  # warm-up: the first job loads what every job needs
        print("\n| scenario | RSS before | peak RSS | RSS after | wall | outcomes |\n|---|---|---|---|---|---|")
        scenario(app.url, pid, "one 12 MP JPEG job", [(photo, None)])
        scenario(app.url, pid, "3 × 12 MP JPEG at once", [(photo, None)] * 3)
        scenario(app.url, pid, f"{args.bombs} × 9400×9400 PNG at once", [(bomb, None)] * args.bombs)
        scenario(app.url, pid, "16 MP RGBA PNG + truncated end frame", [(big_png, broken_end)])
        scenario(app.url, pid, "3 × 16 MP RGBA PNG at once", [(big_png, None)] * 3)
        scenario(app.url, pid, "3 × 48 MP JPEG at once", [(phone, None)] * 3)
        scenario(app.url, pid, "3 × 9400×9400 progressive JPEG (RGB) at once", [(rgb_bomb, None)] * 3)
        scenario(app.url, pid, "3 × 9400×9400 progressive JPEG (CMYK) at once", [(cmyk_bomb, None)] * 3)
        scenario(app.url, pid, "3 × 4000×4000 progressive JPEG (RGB) at once", [(rgb_largest, None)] * 3)
        scenario(app.url, pid, "3 × 3464×3464 progressive JPEG (CMYK) at once", [(cmyk_largest, None)] * 3)
        print("\nThe same on an app whose budget is $0 (nothing may be paid):", flush=True)
        print("\n| scenario | RSS before | peak RSS | RSS after | wall | outcomes |\n|---|---|---|---|---|---|")
        run_job(broke.url, photo, None)  # warm-up: refused, as every job here
        scenario(broke.url, broke.process.pid, "4 × 48 MP JPEG at once", [(phone, None)] * 4)
        scenario(broke.url, broke.process.pid, "4 × 9400×9400 progressive JPEG (RGB) at once", [(rgb_bomb, None)] * 4)
    finally:
        broke.stop()
        app.stop()
        sandbox.stop()


if __name__ == "__main__":
    main()
