"""Labelled image datasets: the embedded Fashion-MNIST default and ImageFolder for users' own data.

Convention: ``LabelledImages.images`` is uint8, shape (N, C, H, W); ``LabelledImages.batch`` turns a
selection into float32 in [-1, 1], the range the VAE and all models use.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from core.config import TRAIN_MINUS_VAL
from core.errors import DatasetNotFoundError, ImageReadError

FASHION_MNIST_ENV = "FASHION_MNIST_DIR"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class LabelledImages:
    """An in-memory labelled image set. images: uint8 (N, C, H, W); labels: int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels shape {self.labels.shape} does not match {len(self.images)} images")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", _fingerprint(self.images, self.labels, self.class_names))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, index: Sequence[int] | slice | np.ndarray) -> torch.Tensor:
        """Images ``index`` as float32 in [-1, 1], shape (B, C, H, W)."""
        return torch.from_numpy(self.images[index]).float().div_(127.5).sub_(1.0)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, index: np.ndarray, name: str | None = None) -> "LabelledImages":
        return LabelledImages(self.images[index], self.labels[index], self.class_names, name or self.name)


def _fingerprint(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(repr((images.shape, tuple(class_names))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} elements (truncated file?)")
    return array.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem, root / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """Where the Fashion-MNIST IDX files are: ``root``, else $FASHION_MNIST_DIR, else the Debian package."""
    if root is not None:
        return Path(root)
    if os.environ.get(FASHION_MNIST_ENV):
        return Path(os.environ[FASHION_MNIST_ENV])
    return FASHION_MNIST_SYSTEM_DIR


def _download_with_torchvision(root: Path) -> bool:
    """Try torchvision's downloader (only works online and with torchvision installed)."""
    try:
        from torchvision.datasets import FashionMNIST  # type: ignore[import-not-found]
    except ImportError:
        return False
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception:  # noqa: BLE001 - any network failure means "not available"
        return False
    return True


VALIDATION_PER_CLASS, VALIDATION_SEED = 500, 0  # TRAIN_MINUS_VAL (core.config): the split without them
SPLITS = ("train", "test", "val", TRAIN_MINUS_VAL)


def holds_out_validation(name: str) -> bool:
    """True for the name of a dataset that has its validation split held out (``hold_out_validation``,
    ``load_fashion_mnist('train-minus-val')``): students trained on it never see a validation image."""
    return name.endswith("-minus-val")


def validation_indices(labels: np.ndarray, per_class: int = VALIDATION_PER_CLASS, seed: int = VALIDATION_SEED) -> np.ndarray:
    """Sorted indices of the validation split of a training split with ``labels``: ``per_class`` images of
    every class, drawn without replacement with ``seed`` (class c from its own stream [seed, c], so a class's
    pick does not depend on the others). DESIGN.md section 4b: choices that look at accuracy read these."""
    labels = np.asarray(labels)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than the {per_class} the validation split "
                             "holds out")
        picks.append(np.random.default_rng([seed, int(c)]).choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


def training_rows(labels: np.ndarray) -> np.ndarray:
    """Sorted indices of the training split minus its validation split (``validation_indices``)."""
    keep = np.ones(len(labels), dtype=bool)
    keep[validation_indices(labels)] = False
    return np.flatnonzero(keep)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None, download: bool = False) -> LabelledImages:
    """Fashion-MNIST ``split``, padded from 28x28 to 32x32 (background 0): 'train' (all 60k, as the shipped
    models were trained), 'test' (10k), 'val' (500 per class of train, ``validation_indices``) or
    'train-minus-val' (the other 55k).

    Files are looked up in ``root``, $FASHION_MNIST_DIR, then /usr/share/datasets/fashion-mnist (Debian
    package ``dataset-fashion-mnist``). With ``download=True`` and torchvision installed and online, the
    files are fetched into ``root`` when missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split in ("val", "train-minus-val"):
        train = load_fashion_mnist("train", root, download)
        rows = validation_indices(train.labels) if split == "val" else training_rows(train.labels)
        return train.subset(rows, f"fashion-mnist-{split}")
    directory = fashion_mnist_dir(root)
    image_stem, label_stem = _FASHION_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    if (image_path is None or label_path is None) and download and _download_with_torchvision(directory):
        image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    if image_path is None or label_path is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST {split} files ({image_stem}[.gz], {label_stem}[.gz]) not found in {directory}. "
            "Get them with `sudo apt-get install dataset-fashion-mnist` (installs into "
            f"{FASHION_MNIST_SYSTEM_DIR}), or point ${FASHION_MNIST_ENV} (or --data-dir) at a folder holding "
            "the four IDX files, or pass download=True with torchvision installed on an online machine."
        )
    images = read_idx(image_path)
    labels = read_idx(label_path).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{image_path}: expected (N, 28, 28) images matching {len(labels)} labels, got {images.shape}")
    padded = np.zeros((len(images), 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return LabelledImages(padded, labels, FASHION_MNIST_CLASSES, f"fashion-mnist-{split}")


# ---------------------------------------------------------------------------------------------
# ImageFolder (one sub-folder per class)
# ---------------------------------------------------------------------------------------------

def list_image_folder(root: str | Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders, or ``classes`` in that order) and (file, label) pairs."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: not a directory; an ImageFolder holds one sub-folder of images per class")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = present
    missing = [c for c in classes if c not in present]
    if missing:
        raise DatasetNotFoundError(f"{root}: class folders {missing} not found (present: {present})")
    if not classes:
        raise DatasetNotFoundError(f"{root}: no class sub-folders found")
    items: list[tuple[Path, int]] = []
    empty = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            empty.append(name)
        items.extend((f, label) for f in files)
    if empty:
        raise DatasetNotFoundError(f"{root}: class folders without images: {empty}")
    return list(classes), items


def load_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """Read one image, resize its short side to ``resolution`` and centre-crop; uint8 (C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            scale = resolution / min(w, h)
            if scale != 1:
                im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                               Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            array = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def load_image_folder(root: str | Path, resolution: int = 32, channels: int = 3,
                      classes: Sequence[str] | None = None) -> LabelledImages:
    """Load an ImageFolder (``root/<class>/<image>``) at ``resolution`` px (resize + centre crop)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    class_names, items = list_image_folder(root, classes)
    images = np.stack([load_image(path, resolution, channels) for path, _ in items])
    labels = np.array([label for _, label in items], dtype=np.int64)
    return LabelledImages(images, labels, tuple(class_names), f"imagefolder-{Path(root).name}-{resolution}")
