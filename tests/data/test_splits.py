"""The split convention of an ImageFolder dataset: where train / validation / test are, the validation
hold-out, class-set checks, and what loading will do to mixed images."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.splits import (
    folder_report,
    folder_splits,
    holdout_count,
    holdout_indices,
    load_dataset,
    validation_rows,
)
from core.errors import DatasetNotFoundError


def make_folder(root: Path, per_class: dict[str, int], size: int = 16, mode: str = "L") -> Path:
    rng = np.random.default_rng(len(str(root)))
    for name, n in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i:03d}.png")
    return root


def test_train_and_val_folders_make_val_the_test_split_and_hold_validation_out_of_train(tmp_path):
    make_folder(tmp_path / "train", {"a": 20, "b": 30})
    make_folder(tmp_path / "val", {"a": 3, "b": 3})
    splits = folder_splits(tmp_path)
    assert (splits.train, splits.test, splits.val) == (tmp_path / "train", tmp_path / "val", None)
    train = load_dataset("imagefolder", "train", tmp_path, 16, 1)
    val = load_dataset("imagefolder", "val", tmp_path, 16, 1)
    rest = load_dataset("imagefolder", "train-minus-val", tmp_path, 16, 1)
    test = load_dataset("imagefolder", "test", tmp_path, 16, 1)
    assert np.bincount(val.labels).tolist() == [2, 3] and len(rest) == 50 - 5 and len(test) == 6
    assert rest.name.endswith("-minus-val") and train.class_names == test.class_names == ("a", "b")
    rows = holdout_indices(train.labels)
    assert np.array_equal(val.images, train.images[rows])
    assert np.array_equal(validation_rows("imagefolder", train.labels, tmp_path), rows)
    assert np.array_equal(holdout_indices(train.labels), rows)   # seeded: the same every time


def test_a_test_folder_leaves_val_as_the_validation_split(tmp_path):
    make_folder(tmp_path / "train", {"a": 10, "b": 10})
    make_folder(tmp_path / "val", {"a": 2, "b": 2})
    make_folder(tmp_path / "test", {"a": 4, "b": 4})
    splits = folder_splits(tmp_path)
    assert (splits.test, splits.val) == (tmp_path / "test", tmp_path / "val")
    assert len(load_dataset("imagefolder", "val", tmp_path, 16, 1)) == 4
    assert len(load_dataset("imagefolder", "train-minus-val", tmp_path, 16, 1)) == 20   # nothing to hold out
    assert validation_rows("imagefolder", np.zeros(20, int), tmp_path).size == 0
    other = make_folder(tmp_path / "elsewhere", {"a": 1, "b": 1})
    assert len(load_dataset("imagefolder", "test", tmp_path, 16, 1, test_dir=other)) == 2


def test_holdout_is_a_tenth_of_each_class_within_bounds():
    assert [holdout_count(n) for n in (1, 2, 10, 26, 6000, 60000)] == [0, 1, 1, 3, 500, 500]


def test_split_folders_with_other_classes_or_none_are_refused_before_loading(tmp_path):
    make_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_folder(tmp_path / "val", {"a": 2, "c": 2})
    with pytest.raises(DatasetNotFoundError, match=r"other classes.*missing \['b'\]; not in train: \['c'\]"):
        folder_splits(tmp_path)
    flat = make_folder(tmp_path / "flat", {"a": 4, "b": 4})
    with pytest.raises(DatasetNotFoundError, match="no test split"):
        load_dataset("imagefolder", "test", flat, 16, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        folder_splits(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match="--test-dir"):
        folder_splits(flat, test_dir=tmp_path / "missing")


def test_the_report_says_what_loading_does_to_mixed_sizes_and_modes(tmp_path):
    root = make_folder(tmp_path / "mixed", {"a": 2}, size=16, mode="L")
    make_folder(tmp_path / "mixed", {"b": 1}, size=20, mode="RGB")
    notes = folder_report(root, 16, 1)
    assert len(notes) == 2
    assert "16×16: 2, 20×20: 1" in notes[0] and "centre-cropped to 16×16" in notes[0]
    assert "L: 2, RGB: 1" in notes[1] and "converted to L" in notes[1]
    assert folder_report(make_folder(tmp_path / "clean", {"a": 2}), 16, 1) == []
