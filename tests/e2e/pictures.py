"""Pictures a visitor might upload, drawn with Pillow: a sunset over a lake, and the same scene at night."""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def _vertical_gradient(size: tuple[int, int], stops: list[tuple[float, tuple[int, int, int]]]) -> Image.Image:
    """A top-to-bottom gradient through `stops` (position 0..1, RGB colour)."""
    width, height = size
    column = Image.new("RGB", (1, height))
    for y in range(height):
        t = y / max(1, height - 1)
        for (p0, c0), (p1, c1) in zip(stops, stops[1:]):
            if p0 <= t <= p1:
                k = (t - p0) / max(1e-9, p1 - p0)
                column.putpixel((0, y), tuple(round(a + (b - a) * k) for a, b in zip(c0, c1)))
                break
    return column.resize((width, height))


def _ridge(width: int, base: float, amplitude: float, seed: int, roughness: int = 7) -> list[tuple[float, float]]:
    """A mountain skyline: a sum of a few sines with random phases, sampled every 8 px."""
    rng = random.Random(seed)
    waves = [(rng.uniform(0.5, 1.0) / (i + 1), rng.uniform(1, 3) * (i + 1), rng.uniform(0, 2 * math.pi))
             for i in range(roughness)]
    points = []
    for x in range(0, width + 8, 8):
        u = x / width
        y = base - amplitude * sum(a * math.sin(2 * math.pi * f * u + p) for a, f, p in waves)
        points.append((x, y))
    return points


def draw_landscape(path: Path, size: tuple[int, int] = (1280, 720), night: bool = False, seed: int = 7) -> Path:
    """Sky, sun (or moon) with a glow, three layers of mountains, and their reflection in a lake."""
    width, height = size
    horizon = int(height * 0.64)
    if night:
        sky_stops = [(0.0, (8, 10, 38)), (0.6, (34, 30, 92)), (1.0, (92, 62, 140))]
        ridge_colours = [(60, 48, 110), (40, 32, 84), (22, 18, 54)]
        orb_colour, glow_colour, orb_xy = (244, 240, 220), (180, 170, 255), (0.72, 0.26)
    else:
        sky_stops = [(0.0, (38, 24, 92)), (0.35, (150, 52, 120)), (0.7, (246, 120, 84)), (1.0, (255, 206, 120))]
        ridge_colours = [(150, 70, 120), (98, 44, 104), (52, 24, 72)]
        orb_colour, glow_colour, orb_xy = (255, 236, 170), (255, 170, 90), (0.62, 0.5)

    scene = _vertical_gradient((width, horizon), sky_stops)
    rng = random.Random(seed)
    draw = ImageDraw.Draw(scene)
    for _ in range(260 if night else 90):  # stars, fewer and fainter by day
        x, y = rng.uniform(0, width), rng.uniform(0, horizon * (0.8 if night else 0.35))
        level = rng.randint(150, 255) if night else rng.randint(120, 200)
        r = rng.choice([0.6, 0.8, 1.2, 1.6])
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(level, level, min(255, level + 20)))

    cx, cy, radius = orb_xy[0] * width, orb_xy[1] * horizon, height * (0.07 if night else 0.11)
    glow = Image.new("RGB", scene.size, (0, 0, 0))
    ImageDraw.Draw(glow).ellipse((cx - radius * 2.6, cy - radius * 2.6, cx + radius * 2.6, cy + radius * 2.6),
                                 fill=glow_colour)
    glow = glow.filter(ImageFilter.GaussianBlur(radius * 1.4))
    scene = Image.blend(scene, Image.composite(glow, scene, glow.convert("L")), 0.55)
    draw = ImageDraw.Draw(scene)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=orb_colour)

    for layer, colour in enumerate(ridge_colours):  # far to near: lighter to darker
        points = _ridge(width, base=horizon - (2 - layer) * height * 0.07, amplitude=height * (0.05 + 0.02 * layer),
                        seed=seed * 10 + layer)
        draw.polygon([(0, horizon), *points, (width, horizon)], fill=colour)

    picture = Image.new("RGB", size)
    picture.paste(scene, (0, 0))
    reflection = scene.transpose(Image.Transpose.FLIP_TOP_BOTTOM).crop((0, 0, width, height - horizon))
    water = Image.new("RGB", reflection.size, (20, 16, 50) if night else (60, 30, 80))
    reflection = Image.blend(reflection.filter(ImageFilter.GaussianBlur(3)), water, 0.35)
    ripples = ImageDraw.Draw(reflection)
    for _ in range(140):  # light on the water, under the sun or moon
        y = rng.uniform(0, reflection.height) ** 1.0
        half = rng.uniform(4, 40) * (1 - y / reflection.height + 0.2)
        x = cx + rng.gauss(0, radius * 0.9)
        ripples.line((x - half, y, x + half, y), fill=orb_colour, width=1)
    picture.paste(reflection, (0, horizon))
    picture.save(path, format="PNG", optimize=True)
    return path


def draw_small_image(path: Path, size: tuple[int, int] = (200, 150)) -> Path:
    """An image below the model's 300 px minimum, which the page must refuse."""
    Image.new("RGB", size, (200, 80, 60)).save(path, format="PNG")
    return path
