"""The split convention of an ImageFolder dataset: training, validation (DESIGN.md 4b) and test images.

A dataset root ``ROOT`` holds one sub-folder of images per class, in ``ROOT/train`` (or in ``ROOT`` itself
when it has no ``train``), and optionally ``ROOT/val`` and ``ROOT/test`` with the same class folders:

- test: ``test_dir`` when given, else ``ROOT/test``, else ``ROOT/val`` (the ImageNet / ImageNette
  convention: their published numbers are on ``val``). None when there is none: nothing can be tested;
- validation (what every choice that looks at accuracy reads): ``ROOT/val`` when it is not the test split,
  else held out of the training images: per class ``holdout_count(n)`` images (10 %, at least 1, at most
  500 as for Fashion-MNIST), drawn with a fixed seed (``holdout_indices``);
- ``train-minus-val``: the training images without the held-out ones (all of them when the validation
  split is its own folder), the images distillation and training draw from.

Split names are those of Fashion-MNIST (``core.data.datasets.SPLITS``): train, train-minus-val, val, test.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.datasets import (
    IMAGE_EXTENSIONS,
    SPLITS,
    VALIDATION_PER_CLASS,
    VALIDATION_SEED,
    LabelledImages,
    list_image_folder,
    load_fashion_mnist,
    load_image_folder,
    validation_indices,
)
from core.errors import DatasetNotFoundError

HOLDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class FolderSplits:
    """Where each split of an ImageFolder dataset is: ``val`` None means held out of ``train``."""

    root: Path
    train: Path
    test: Path | None
    val: Path | None

    def describe(self) -> str:
        test = f"test {self.test}" if self.test is not None else "no test split"
        val = f"validation {self.val}" if self.val is not None else \
            f"validation held out of train ({HOLDOUT_FRACTION:.0%} of each class, at most {VALIDATION_PER_CLASS})"
        return f"train {self.train}, {val}, {test}"


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_splits(root: str | Path, test_dir: str | Path | None = None) -> FolderSplits:
    """The splits of ``root`` (see the module docstring), checked: every split folder must hold the training
    split's class folders, no more and no fewer."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: not a directory; give the dataset root (ROOT/train/<class>/...)")
    train = root / "train" if (root / "train").is_dir() else root
    if test_dir is not None:
        test: Path | None = Path(test_dir)
        if not test.is_dir():
            raise DatasetNotFoundError(f"--test-dir {test}: not a directory")
    else:
        test = next((root / s for s in ("test", "val") if (root / s).is_dir() and train != root), None)
    val = root / "val" if (root / "val").is_dir() and train != root and root / "val" != test else None
    classes = _class_folders(train)
    if not classes:
        raise DatasetNotFoundError(f"{train}: no class sub-folders (an ImageFolder holds one folder of images "
                                   "per class)")
    for name, folder in (("test", test), ("validation", val)):
        if folder is None:
            continue
        other = _class_folders(folder)
        missing, extra = sorted(set(classes) - set(other)), sorted(set(other) - set(classes))
        if missing or extra:
            parts = ([f"missing {missing}"] if missing else []) + ([f"not in train: {extra}"] if extra else [])
            raise DatasetNotFoundError(f"the {name} split {folder} has other classes than {train}: "
                                       f"{'; '.join(parts)}")
    return FolderSplits(root, train, test, val)


def holdout_count(n: int) -> int:
    """Validation images held out of a class of ``n`` training images (10 %, at least 1, at most 500; none
    from a class of a single image)."""
    return 0 if n < 2 else int(min(VALIDATION_PER_CLASS, max(1, round(HOLDOUT_FRACTION * n))))


def require_test_split(splits: FolderSplits) -> Path:
    """The test split's folder; DatasetNotFoundError saying how to add one when there is none."""
    if splits.test is None:
        raise DatasetNotFoundError(f"{splits.root} has no test split: add ROOT/test (or ROOT/val) with the same "
                                   "class folders as ROOT/train, or pass --test-dir")
    return splits.test


def training_images(splits: FolderSplits) -> int:
    """Images of the train-minus-val split of ``splits``, counted from the file names (no image is read)."""
    _, items = list_image_folder(splits.train)
    per_class = Counter(label for _, label in items)
    return sum(n - (holdout_count(n) if splits.val is None else 0) for n in per_class.values())


def holdout_indices(labels: np.ndarray, seed: int = VALIDATION_SEED) -> np.ndarray:
    """Sorted indices of the validation images held out of training ``labels``: ``holdout_count`` per class,
    class c drawn from its own stream [seed, c] (a class's pick does not depend on the others)."""
    labels = np.asarray(labels)
    picks = [np.random.default_rng([seed, int(c)]).choice(np.flatnonzero(labels == c), holdout_count(int((labels == c).sum())),
                                                          replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


def load_folder_split(root: str | Path, split: str, resolution: int = 32, channels: int = 3,
                      test_dir: str | Path | None = None) -> LabelledImages:
    """One split of an ImageFolder dataset at ``resolution`` px with ``channels`` channels."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    splits = folder_splits(root, test_dir)
    tag = f"imagefolder-{splits.root.resolve().name}-{resolution}"
    if split == "test":
        test = load_image_folder(require_test_split(splits), resolution, channels, _class_folders(splits.train))
        return _named(test, f"{tag}-test")
    if split == "val" and splits.val is not None:
        return _named(load_image_folder(splits.val, resolution, channels, _class_folders(splits.train)), f"{tag}-val")
    train = load_image_folder(splits.train, resolution, channels)
    if split == "train":
        return _named(train, f"{tag}-train")
    held_out = holdout_indices(train.labels) if splits.val is None else np.empty(0, np.int64)
    if split == "val":
        return train.subset(held_out, f"{tag}-val")
    keep = np.setdiff1d(np.arange(len(train)), held_out)
    return train.subset(keep, f"{tag}-train-minus-val")


def _named(data: LabelledImages, name: str) -> LabelledImages:
    return LabelledImages(data.images, data.labels, data.class_names, name, data.fingerprint)


def folder_report(folder: str | Path, resolution: int, channels: int) -> list[str]:
    """What loading ``folder`` (one sub-folder per class) at ``resolution`` / ``channels`` will do to its
    images, read from their headers only: one line for mixed or other sizes, one for other colour modes."""
    from PIL import Image

    sizes, modes = Counter(), Counter()
    for path in sorted(Path(folder).glob("*/*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                with Image.open(path) as im:
                    sizes[im.size] += 1
                    modes[im.mode] += 1
            except OSError:
                continue   # an unreadable file is named when the images are loaded
    notes = []
    if set(sizes) - {(resolution, resolution)}:
        listed = ", ".join(f"{w}×{h}: {n}" for (w, h), n in sizes.most_common(4))
        notes.append(f"{folder}: image sizes {listed}{' …' if len(sizes) > 4 else ''}; each is resized (short side "
                     f"to {resolution} px, bicubic) and centre-cropped to {resolution}×{resolution}")
    want = "L" if channels == 1 else "RGB"
    if set(modes) - {want}:
        listed = ", ".join(f"{m}: {n}" for m, n in modes.most_common())
        notes.append(f"{folder}: colour modes {listed}; every image is converted to {want} ({channels} channel"
                     f"{'s' if channels == 3 else ''})")
    return notes


def validation_rows(dataset: str, labels: np.ndarray, root: str | Path | None = None,
                    test_dir: str | Path | None = None) -> np.ndarray:
    """Rows of a training split (``labels``) that are validation images and must be held out of what
    distillation draws from: Fashion-MNIST's 500 per class, an ImageFolder's ``holdout_indices`` (none when
    its validation split is a folder of its own)."""
    if dataset == "fashion-mnist":
        return validation_indices(labels)
    if folder_splits(root, test_dir).val is not None:
        return np.empty(0, np.int64)
    return holdout_indices(labels)


def load_dataset(name: str = "fashion-mnist", split: str = "train", root: str | Path | None = None,
                 resolution: int = 32, channels: int = 3, test_dir: str | Path | None = None) -> LabelledImages:
    """Dispatch: ``fashion-mnist`` (embedded default) or ``imagefolder`` (needs ``root``; its splits follow
    ``core.data.splits``: ROOT/train, ROOT/val, ROOT/test or ``test_dir``)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root)
    if name == "imagefolder":
        if root is None:
            raise ValueError("the imagefolder dataset needs a root folder (--data-dir)")
        return load_folder_split(root, split, resolution, channels, test_dir)
    raise ValueError(f"unknown dataset {name!r}; choose 'fashion-mnist' or 'imagefolder'")
