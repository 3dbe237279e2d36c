"""A procedurally drawn ImageFolder (shapes per class, not Fashion-MNIST) and the model folder `prepare`
makes of it, CI-sized: shared by the CLI and app tests of "your own dataset"."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
QUICK_PREPARE = ["--resolution", "16", "--channels", "3", "--vae-epochs", "1", "--teacher-epochs", "2",
                 "--flow-steps", "30", "--model", "mlp-s", "--batch-size", "32", "--eval-per-class", "2",
                 "--threads", "1"]


def draw_shapes(root: Path, per_class: int, size: int = 16, seed: int = 0) -> None:
    """``per_class`` RGB images of each shape at random positions, sizes and colours on a dark background."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            box = (cx - r, cy - r, cx + r, cy + r)
            draw = ImageDraw.Draw(im)
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            im.save(root / shape / f"{i:03d}.png")


@pytest.fixture(scope="session")
def shapes_models(tmp_path_factory) -> SimpleNamespace:
    """``root`` (train/ 60, val/ 10 and test/ 12 images per shape, 16 px RGB) and ``models`` (the folder
    ``prepare`` wrote for it, with its own cache and registry)."""
    import os

    from core.cli.main import main

    base = tmp_path_factory.mktemp("shapes")
    root, models, cache = base / "data", base / "models" / "shapes", base / "cache"
    for split, n, seed in (("train", 60, 0), ("val", 10, 1), ("test", 12, 2)):
        draw_shapes(root / split, n, seed=seed)
    own = {"DISTILL_CACHE": str(cache), "DISTILL_REGISTRY": str(base / "registry.sqlite")}
    before = {k: os.environ.get(k) for k in own}
    os.environ.update(own)
    try:
        assert main(["prepare", str(root), "--out", str(models), "--no-diffusion", *QUICK_PREPARE]) == 0
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return SimpleNamespace(root=root, models=models)
