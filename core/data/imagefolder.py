"""Streaming ImageFolder for real-scale data: ImageNet subsets (ImageNette, ImageWoof, ImageNet-100) and
ImageNet-1K, read lazily in batches so that memory does not grow with the dataset.

Layout: ``root/<class folder>/<image>.{jpg,jpeg,png,webp,bmp}``; a class folder is named by its WordNet id
(``n01440764``, as in ImageNet) or by a class name (``tench``). Classes are selected by a list of WordNet
ids and/or names, or by a class-list file: a shipped one by name (``imagenette``, ``imagewoof``, see
``core/data/classlists/``) or any text file with one class a line, ``<wnid or folder> [human name]`` (``#``
comments allowed; ImageNet's ``LOC_synset_mapping.txt`` works as is, its first comma-separated name is
shown). Names match folders case-insensitively with ``_``/``-``/spaces treated alike.

Images: RGB, shorter side resized to ``resolution`` (bicubic, antialiased) and centre-cropped, float32 in
[-1, 1], shape (N, 3, R, R) (the same pixels as ``core.data.datasets.load_image_folder``). File order: classes in
the selection order, files sorted by name within a class; item ``i`` has label ``labels[i]``.

The fingerprint (cache key of everything encoded from the dataset) hashes the preprocessing, resolution,
classes, and every file's relative path, size and modification time (not the pixels: hashing ImageNet's
140 GB would take longer than encoding it). Moving the dataset keeps it; touching a file changes it.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from core.data.datasets import LabelledImages, load_image
from core.errors import DatasetNotFoundError, ImageReadError

CLASSLIST_DIR = Path(__file__).resolve().parent / "classlists"
STREAM_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PREPROCESS = "rgb/shorter-side-bicubic/centre-crop/v1"  # part of the fingerprint: change it when pixels change
DEFAULT_RESOLUTION = 256
_WNID = re.compile(r"^n\d{8}$")


# ---------------------------------------------------------------------------------------------
# Class lists and class selection
# ---------------------------------------------------------------------------------------------

class ClassEntry(NamedTuple):
    """One line of a class list: ``key`` (WordNet id or folder name) and human ``names`` (may be empty)."""

    key: str
    names: tuple[str, ...]


def builtin_class_lists() -> dict[str, Path]:
    """The shipped class lists by name, e.g. {"imagenette": .../core/data/classlists/imagenette.txt}."""
    return {p.stem: p for p in sorted(CLASSLIST_DIR.glob("*.txt"))}


def is_class_list(spec: str) -> bool:
    """True when ``spec`` names a shipped class list or an existing file."""
    return spec in builtin_class_lists() or Path(spec).is_file()


def read_class_list(name_or_path: str | Path) -> list[ClassEntry]:
    """Entries of a shipped class list (``imagenette``, ``imagewoof``) or of a class-list file."""
    lists = builtin_class_lists()
    path = lists.get(str(name_or_path), Path(name_or_path))
    if not path.is_file():
        raise DatasetNotFoundError(f"{name_or_path}: no such class list; shipped ones: {', '.join(lists)}, or give "
                                   "the path of a text file with one '<wnid or folder> [name]' a line")
    entries: list[ClassEntry] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *rest = line.split(None, 1)
        if _WNID.match(head):
            names = tuple(n.strip() for n in (rest[0] if rest else "").split(",") if n.strip())
            entries.append(ClassEntry(head, names))
        else:  # a folder / class name on its own
            entries.append(ClassEntry(line, ()))
    if not entries:
        raise DatasetNotFoundError(f"{path}: class list holds no classes")
    keys = [e.key for e in entries]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise DatasetNotFoundError(f"{path}: class list repeats {repeated}")
    return entries


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _known_names() -> dict[str, tuple[str, ...]]:
    """WordNet id -> human names, from the shipped class lists."""
    known: dict[str, tuple[str, ...]] = {}
    for path in builtin_class_lists().values():
        for entry in read_class_list(path):
            if entry.names:
                known.setdefault(entry.key, entry.names)
    return known


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: not a directory; an ImageFolder holds one sub-folder of images per class")
    present = sorted(p.name for p in os.scandir(root) if p.is_dir() and not p.name.startswith("."))
    if not present:
        raise DatasetNotFoundError(f"{root}: no class sub-folders found")
    return present


def _requested_entries(classes: str | Sequence[str] | None, present: list[str]) -> list[ClassEntry] | None:
    """The selection as class-list entries (None: all folders). A string may be a class list, a
    comma-separated list, or one class; each item of a sequence may be a class or a class list."""
    if classes is None or (isinstance(classes, str) and classes.strip().lower() == "all"):
        return None
    if isinstance(classes, (str, Path)):
        classes = [str(classes)] if str(classes) in present or is_class_list(str(classes)) else \
            [c for c in str(classes).split(",") if c.strip()]
    entries: list[ClassEntry] = []
    for item in classes:
        item = str(item).strip()
        if item in present or not is_class_list(item):
            entries.append(ClassEntry(item, ()))
        else:
            entries.extend(read_class_list(item))
    if not entries:
        raise DatasetNotFoundError("no classes selected")
    return entries


def resolve_classes(root: str | Path, classes: str | Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(class folders, display names) of the selection, in selection order (all folders sorted when None).

    An item matches a folder by its exact name, by its name up to case and ``_``/``-``/spaces, by one of
    its human names, or through the WordNet id <-> name pairs of the class lists. Unknown classes raise
    DatasetNotFoundError listing close matches.
    """
    # Long by design: the matching rules (exact, normalised, human names, WordNet pairs, class-list files) and
    # their one combined error message belong together.
    root = Path(root)
    present = _class_folders(root)
    entries = _requested_entries(classes, present)
    shipped = _known_names()
    known = dict(shipped)
    by_norm = {_norm(f): f for f in present}
    if entries is None:
        entries = [ClassEntry(f, ()) for f in present]
    for entry in entries:  # names from the request teach the mapping too (e.g. LOC_synset_mapping.txt)
        if entry.names and _WNID.match(entry.key):
            known[entry.key] = entry.names
    name_to_wnids: dict[str, list[str]] = {}
    for wnid, names in known.items():
        for n in names:
            if wnid not in name_to_wnids.setdefault(_norm(n), []):
                name_to_wnids[_norm(n)].append(wnid)

    folders: list[str] = []
    display: list[str] = []
    unknown: list[str] = []
    ambiguous: list[str] = []
    for entry in entries:
        names = entry.names or known.get(entry.key, ())
        candidates = [entry.key, *names, *shipped.get(entry.key, ())]
        if entry.key in present:
            folder = entry.key
        else:
            folder = next((by_norm[_norm(c)] for c in candidates if _norm(c) in by_norm), None)
            wnids = [w for w in name_to_wnids.get(_norm(entry.key), []) if w in present]
            if folder is None and len(wnids) > 1:  # ImageNet has a few (crane: bird and machine)
                ambiguous.append(f"{entry.key!r} is {' or '.join(wnids)}")
                continue
            if folder is None and wnids:
                folder = wnids[0]  # a human name given, WordNet-id folders on disk
                names = names or known.get(folder, ())
        if folder is None:
            unknown.append(entry.key)
            continue
        if not names:
            names = known.get(folder, ())
        folders.append(folder)
        display.append(names[0] if names else folder)
    if unknown:
        vocabulary = present + [n for f in present for n in known.get(f, ())]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, vocabulary, n=3, cutoff=0.6)
            if not close:
                close = difflib.get_close_matches(_norm(name), [_norm(v) for v in vocabulary], n=3, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (close: {', '.join(close)})" if close else ""))
        shown = ", ".join(present[:12]) + (f", … ({len(present)} in all)" if len(present) > 12 else "")
        raise DatasetNotFoundError(f"{root}: unknown classes {'; '.join(hints)}. Class folders there: {shown}")
    if ambiguous:
        raise DatasetNotFoundError(f"{root}: ambiguous class names: {'; '.join(ambiguous)}; give the WordNet id")
    seen: dict[str, int] = {}
    for f in folders:
        seen[f] = seen.get(f, 0) + 1
    repeated = sorted(f for f, count in seen.items() if count > 1)
    if repeated:
        raise DatasetNotFoundError(f"{root}: the selection names class folders {repeated} more than once")
    shown_names: dict[str, int] = {}
    for name in display:
        shown_names[name] = shown_names.get(name, 0) + 1
    display = [f"{name} ({folder})" if shown_names[name] > 1 else name for name, folder in zip(display, folders)]
    return folders, display


# ---------------------------------------------------------------------------------------------
# The streaming dataset
# ---------------------------------------------------------------------------------------------

class ImageBatch(NamedTuple):
    """images: float32 (B, 3, R, R) in [-1, 1]; labels: int64 (B,); indices: int64 (B,) file indices."""

    images: torch.Tensor
    labels: np.ndarray
    indices: np.ndarray


class StreamingImageFolder:
    """An ImageFolder listed eagerly (paths, sizes, mtimes) and read lazily in batches.

    Memory is the file list (tens of bytes a file) plus the batches in flight; pixels are never all held.
    ``skip_bad``: an unreadable image is skipped with a warning (its index is missing from the batch and
    recorded in ``skipped``) instead of raising ImageReadError naming it. ``max_per_class``: keep the first
    files (by name) of each class. ``workers``: threads decoding images (PIL releases the GIL).
    """

    def __init__(self, root: str | Path, classes: str | Sequence[str] | None = None,
                 resolution: int = DEFAULT_RESOLUTION, skip_bad: bool = False, max_per_class: int | None = None,
                 workers: int | None = None, extensions: Sequence[str] = STREAM_EXTENSIONS):
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
        if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
            raise ValueError(f"max_per_class must be None or an integer >= 1, got {max_per_class!r}")
        self.root = Path(root)
        self.resolution = resolution
        self.skip_bad = skip_bad
        self.workers = int(workers or min(8, os.cpu_count() or 1))
        self.skipped: list[int] = []
        self.class_ids, names = resolve_classes(self.root, classes)
        self.class_names = tuple(names)
        extensions = tuple(e.lower() for e in extensions)
        files: list[str] = []
        labels: list[np.ndarray] = []
        stats: list[tuple[int, int]] = []
        empty = []
        for label, folder in enumerate(self.class_ids):
            entries = sorted((e for e in os.scandir(self.root / folder)
                              if e.name.lower().endswith(extensions) and not e.name.startswith(".") and e.is_file()),
                             key=lambda e: e.name)
            if max_per_class is not None:
                entries = entries[:max_per_class]
            if not entries:
                empty.append(folder)
            for e in entries:
                st = e.stat()
                files.append(f"{folder}/{e.name}")
                stats.append((st.st_size, st.st_mtime_ns))
            labels.append(np.full(len(entries), label, dtype=np.int64))
        if empty:
            raise DatasetNotFoundError(f"{self.root}: class folders without images ({'/'.join(extensions)}): {empty}")
        self.files = files
        self.labels = np.concatenate(labels)
        stat_array = np.array(stats, dtype=np.int64).reshape(-1, 2)
        self.sizes, self.mtimes_ns = stat_array[:, 0].copy(), stat_array[:, 1].copy()
        self.fingerprint = self._fingerprint()
        self.name = f"imagefolder-{self.root.name}-{resolution}"

    def _fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps({"preprocess": PREPROCESS, "resolution": self.resolution,
                                       "classes": [self.class_ids, list(self.class_names)]}).encode())
        for rel, size, mtime in zip(self.files, self.sizes.tolist(), self.mtimes_ns.tolist()):
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"StreamingImageFolder({str(self.root)!r}, {len(self.class_ids)} classes, {len(self)} images, "
                f"{self.resolution}px)")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (3, R, R); ImageReadError naming the file when it cannot be read."""
        return load_image(self.path(index), self.resolution, 3)

    def _read_or_error(self, index: int) -> np.ndarray | ImageReadError:
        try:
            return self.read(index)
        except ImageReadError as exc:
            return exc

    def _collect(self, indices: np.ndarray, results: list, check_only: bool = False) -> ImageBatch | None:
        keep, arrays = [], []
        for i, result in zip(indices.tolist(), results):
            if isinstance(result, Future):
                result = result.result()
            if check_only and not isinstance(result, ImageReadError):
                continue
            if isinstance(result, ImageReadError):
                if not self.skip_bad:
                    raise ImageReadError(f"{result}; replace or delete the file (the dataset then changes and is "
                                         "encoded anew), or skip unreadable images (skip_bad=True, --skip-bad)"
                                         ) from result
                warnings.warn(f"skipped {result}", stacklevel=3)
                self.skipped.append(i)
                continue
            keep.append(i)
            arrays.append(result)
        if check_only:
            return None
        keep_idx = np.asarray(keep, dtype=np.int64)
        r = self.resolution
        images = (torch.from_numpy(np.stack(arrays)).float().div_(127.5).sub_(1.0) if arrays
                  else torch.empty(0, 3, r, r))
        return ImageBatch(images, self.labels[keep_idx], keep_idx)

    def load(self, indices: Sequence[int] | np.ndarray) -> ImageBatch:
        """The images ``indices`` (decoded by ``workers`` threads)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)})")
        if self.workers <= 1 or len(indices) <= 1:
            return self._collect(indices, [self._read_or_error(int(i)) for i in indices])
        with ThreadPoolExecutor(self.workers) as pool:
            return self._collect(indices, list(pool.map(self._read_or_error, indices.tolist())))

    def iter_batches(self, batch_size: int = 64, start: int = 0, stop: int | None = None,
                     prefetch: int = 2) -> Iterator[ImageBatch]:
        """Batches of items [start, stop) in order; the next ``prefetch`` batches decode meanwhile."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        stop = len(self) if stop is None else min(stop, len(self))
        starts = iter(range(start, stop, batch_size))
        if self.workers <= 1:
            for s in starts:
                idx = np.arange(s, min(s + batch_size, stop))
                yield self._collect(idx, [self._read_or_error(int(i)) for i in idx])
            return
        pool = ThreadPoolExecutor(self.workers)
        pending: deque = deque()

        def submit(s: int) -> None:
            idx = np.arange(s, min(s + batch_size, stop))
            pending.append((idx, [pool.submit(self._read_or_error, int(i)) for i in idx]))

        try:
            for s in starts:
                submit(s)
                if len(pending) > prefetch:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def to_labelled_images(self, max_images: int = 50_000) -> LabelledImages:
        """The whole (small) dataset in memory as LabelledImages uint8, for the in-memory engine."""
        if len(self) > max_images:
            raise ValueError(f"{self.root}: {len(self)} images is more than max_images={max_images} to hold in "
                             "memory; stream it (iter_batches, encode_to_store) or select fewer classes")
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            results = list(pool.map(self._read_or_error, range(len(self))))
        keep = [i for i, r in enumerate(results) if not isinstance(r, ImageReadError)]
        self._collect(np.arange(len(self)), [r if isinstance(r, ImageReadError) else None for r in results],
                      check_only=True)  # raises, or warns and records the skipped files
        images = np.stack([results[i] for i in keep]) if keep else np.zeros((0, *self.image_shape), np.uint8)
        return LabelledImages(images, self.labels[keep], self.class_names, self.name, self.fingerprint)


def open_image_folder(root: str | Path, classes: str | Sequence[str] | None = None,
                      resolution: int = DEFAULT_RESOLUTION, split: str | None = None, **kwargs) -> StreamingImageFolder:
    """StreamingImageFolder of ``root/split`` when that folder exists (e.g. ImageNette's ``train``), else ``root``."""
    root = Path(root)
    if split and (root / split).is_dir():
        root = root / split
    return StreamingImageFolder(root, classes, resolution, **kwargs)
