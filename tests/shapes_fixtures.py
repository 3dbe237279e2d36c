"""A procedurally drawn ImageFolder (shapes per class, not Fashion-MNIST) and the model folder `prepare`
makes of it, CI-sized: shared by the CLI and app tests of "your own dataset"."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.data.shapes import SHAPES
from core.data.shapes import draw_shapes as draw_three

QUICK_PREPARE = ["--resolution", "16", "--channels", "3", "--vae-epochs", "1", "--teacher-epochs", "2",
                 "--flow-steps", "30", "--model", "mlp-s", "--batch-size", "32", "--eval-per-class", "2",
                 "--threads", "1"]


def draw_shapes(root: Path, per_class: int, seed: int = 0) -> None:
    """``per_class`` 16-px images of each of three shapes (circle, square, triangle) into ``root``."""
    draw_three(root, per_class, size=16, seed=seed, shapes=SHAPES[:3])


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
