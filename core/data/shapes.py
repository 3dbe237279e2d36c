"""A drawn ImageFolder dataset of shapes, to try "your own dataset" without downloading one (the machines'
network reaches package registries only) and to test it: ``draw_shapes(root, per_class)`` writes
``root/<shape>/<index>.png``, one RGB image of one shape each, at a random position, size, rotation and
colour on a noisy dark background. The first three shapes (circle, square, triangle) are the CI-sized set."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "bar", "arc")


def _polygon(cx: float, cy: float, r: float, corners: int, turn: float, inner: float | None = None) -> list:
    """Corner points of a regular polygon (a star when ``inner`` gives the inner radius as a fraction)."""
    points = []
    steps = corners * (2 if inner else 1)
    for k in range(steps):
        radius = r * (inner if inner and k % 2 else 1.0)
        angle = turn + 2 * math.pi * k / steps
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_shape(shape: str, size: int, rng: np.random.Generator):
    """One ``size`` x ``size`` RGB PIL image of ``shape`` (one of ``SHAPES``)."""
    from PIL import Image, ImageDraw

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    background = rng.integers(0, 60, 3)
    noise = rng.integers(-12, 13, (size, size, 3))
    im = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8), "RGB")
    r = float(rng.uniform(size / 5, size / 3))
    cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
    turn = float(rng.uniform(0, 2 * math.pi))
    colour = tuple(int(v) for v in rng.integers(120, 256, 3))
    width = max(1, round(r / 3))
    draw = ImageDraw.Draw(im)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "arc":
        start = math.degrees(turn)
        draw.arc(box, start, start + 180, fill=colour, width=width)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * math.sqrt(2), 4, turn), fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r / 2, cy), (cx, cy + r), (cx - r / 2, cy)], fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, turn), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, turn), fill=colour)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, turn, inner=0.45), fill=colour)
    elif shape == "cross":
        for a in (turn, turn + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=width)
    else:   # bar
        dx, dy = r * math.cos(turn), r * math.sin(turn)
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=width)
    return im


def draw_shapes(root: str | Path, per_class: int, size: int = 32, seed: int = 0,
                shapes: tuple[str, ...] = SHAPES) -> None:
    """Write ``per_class`` images of each of ``shapes`` into ``root/<shape>/NNNNN.png`` (seeded: the same
    arguments draw the same images)."""
    if per_class < 1 or size < 8:
        raise ValueError(f"need per_class >= 1 and size >= 8, got {per_class} and {size}")
    rng = np.random.default_rng(seed)
    for shape in shapes:
        folder = Path(root) / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(shape, size, rng).save(folder / f"{i:05d}.png")
