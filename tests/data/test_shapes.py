"""The drawn shapes dataset: seeded, every shape class distinct, and its script never overwrites a split."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import load_image_folder
from core.data.shapes import SHAPES, draw_shape, draw_shapes

REPO = Path(__file__).resolve().parents[2]


def test_the_same_seed_draws_the_same_images_and_another_seed_others(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        draw_shapes(tmp_path / name, 2, size=24, seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * len(SHAPES)
    read = lambda root: [np.asarray(Image.open(root / f)) for f in files]  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(read(tmp_path / "a"), read(tmp_path / "b")))
    assert not any(np.array_equal(x, y) for x, y in zip(read(tmp_path / "a"), read(tmp_path / "c")))
    data = load_image_folder(tmp_path / "a", 24, 3)
    assert data.class_names == tuple(sorted(SHAPES)) and data.images.shape == (2 * len(SHAPES), 3, 24, 24)


def test_each_shape_covers_a_different_part_of_the_image():
    masks = []
    for shape in SHAPES:   # the same rng state: the same background, position, size and colour
        image = np.asarray(draw_shape(shape, 32, np.random.default_rng(3))).astype(int)
        masks.append((image.max(axis=2) >= 120))
    assert all(m.any() for m in masks)
    assert len({m.tobytes() for m in masks}) == len(SHAPES)
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        draw_shape("blob", 32, np.random.default_rng(0))


def test_the_script_writes_three_splits_and_refuses_a_root_that_has_one(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "draw_shapes.py"), str(tmp_path / "shapes"), "--train", "3",
               "--val", "1", "--test", "2", "--size", "16", "--classes", "2"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts = {split: len(list((tmp_path / "shapes" / split).rglob("*.png"))) for split in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 4}
    before = sorted((tmp_path / "shapes").rglob("*"))
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "already has train, val, test/" in again.stderr
    assert sorted((tmp_path / "shapes").rglob("*")) == before
