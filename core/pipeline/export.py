"""Export a distilled set as an ImageFolder of PNGs + manifest.json + latents.safetensors, as a folder
or as a zip of that folder's contents.

Layout of ``out/``: one folder per class named ``NN-<class name>`` (zero-padded id, so sorting the
folders gives the class order; characters other than letters, digits, '-', '_' and '.' become '_'),
``manifest.json`` (every parameter and a record per image), ``class_index.json`` (every class folder name of
the dataset -> its class id, also for classes with no image in the export: a torchvision-style reader that
numbers folders in sorted order renumbers a partial export, so read labels from here or from the ``NN-``
prefix) and ``latents.safetensors``. The folder (or zip) is
written next to its destination and swapped into place, so no half-written export is ever visible, and
``overwrite`` only ever replaces a previous export of this tool.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save

from core import __version__
from core.data.visualize import to_uint8
from core.errors import OutputError, OutputExistsError
from core.io import (
    atomic_directory,
    check_writable_target,
    new_sibling_file,
    publish,
    remove_stale_siblings,
)
from core.reads import JSON_MAX_BYTES, parse_json, read_json

FORMAT = "distill-studio/imagefolder-v1"
MANIFEST = "manifest.json"
CLASS_INDEX = "class_index.json"
LATENTS = "latents.safetensors"
_CHUNK = 256  # rows checked at a time (no copy of a whole large set)


def class_folder_name(class_id: int, name: str) -> str:
    return f"{class_id:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'class'}"


def _finite_or_none(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def build_manifest(dset, indices: np.ndarray, files: Sequence[str], extra: dict | None = None) -> dict:
    """The manifest of images ``indices`` of ``dset`` (a DistilledSet) stored as ``files``.

    Counts describe what is exported: ``classes`` (the class ids present), ``images_per_class`` and
    ``ipc`` (the common count, None when classes differ); ``distilled_ipc`` and ``config`` describe the
    distillation it came from, and ``selection`` says whether this is all of it."""
    config = dset.config
    images = [{
        "file": files[j], "index": int(i), "class_id": int(dset.labels[i]),
        "class_name": dset.class_names[int(dset.labels[i])], "prototype_id": int(dset.prototype_ids[i]),
        "weight": round(float(dset.weights[i]), 6), "landing_error": _finite_or_none(dset.landing_error[i]),
    } for j, i in enumerate(indices)]
    counts = np.bincount(dset.labels[indices], minlength=len(dset.class_names))
    present = [int(c) for c in np.flatnonzero(counts)]
    per_class = {class_folder_name(c, dset.class_names[c]): int(counts[c]) for c in present}
    return {
        "format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "software": f"distill-studio {__version__}", "method": config.method, "seed": config.seed,
        "ipc": int(counts[present[0]]) if len(set(per_class.values())) == 1 else None,
        "distilled_ipc": config.ipc, "classes": present, "images_per_class": per_class,
        "selection": {"whole_set": len(indices) == len(dset), "of_images": len(dset)},
        "config": config.to_dict(), "class_names": list(dset.class_names),
        "class_folders": {str(c): class_folder_name(c, n) for c, n in enumerate(dset.class_names)},
        "nfe_per_image": dset.nfe, "timings_s": {k: round(v, 4) for k, v in dset.timings.items()},
        "num_images": len(images), "images": images, **(extra or {}),
    }


def is_export(path: str | Path) -> bool:
    """True when ``path`` is what ``--overwrite`` may replace: an empty folder, or a folder or zip that holds
    exactly what this tool writes: its ``manifest.json`` (of this tool's format), ``class_index.json``,
    ``latents.safetensors`` and the image files the manifest lists, nothing else (a file added by hand makes it the user's).
    Symbolic links never are."""
    path = Path(path)
    try:
        if path.is_symlink():
            return False
        if path.is_dir():
            entries = list(path.rglob("*"))
            if not entries:
                return True
            if any(e.is_symlink() for e in entries):
                return False
            manifest = read_json(path / MANIFEST)
            names = {e.relative_to(path).as_posix() for e in entries if e.is_file()}
            folders = {e.relative_to(path).as_posix() for e in entries if e.is_dir()}
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if archive.getinfo(MANIFEST).file_size > JSON_MAX_BYTES:   # never inflated: not ours
                    return False
                manifest = parse_json(archive.read(MANIFEST), f"{path}:{MANIFEST}")
                names = {n for n in archive.namelist() if not n.endswith("/")}
            folders = set()
        else:
            return False
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return False
        listed = {im["file"] for im in manifest.get("images", []) if isinstance(im, dict) and isinstance(im.get("file"), str)}
        return names <= listed | {MANIFEST, CLASS_INDEX, LATENTS} and folders <= {f.split("/")[0] for f in listed}
    except Exception:  # noqa: BLE001 - anything unreadable (corrupt zip, odd JSON, permissions) is not ours
        return False


def _is_export_folder(path: Path) -> bool:
    return path.is_dir() and is_export(path)


def _is_export_zip(path: Path) -> bool:
    return path.is_file() and is_export(path)


def check_export_target(out: str | Path, overwrite: bool = False) -> Path:
    """The absolute export path ``out`` (a folder, or a zip file when it ends in ``.zip``), checked before
    any work: it can be created (``core.io.check_writable_target``), is not a symbolic link, and is new, an
    empty folder, or (with ``overwrite``) a previous export of this tool. Raises OutputError /
    OutputExistsError naming the problem; touches nothing."""
    target = check_writable_target(out, "output")
    as_zip = target.suffix.lower() == ".zip"
    if target.is_symlink():
        raise OutputError(f"output {target} is a symbolic link; give the path it points to, or another path")
    if not target.exists():
        return target
    if as_zip and target.is_dir():
        raise OutputExistsError(f"output {target} is a folder; a .zip output must be a file path")
    if not as_zip and not target.is_dir():
        raise OutputExistsError(f"output {target} is a file, not a folder; choose another path (end it in .zip "
                                "for a zip file)")
    if target.is_dir() and not any(target.iterdir()):
        return target
    if not overwrite:
        raise OutputExistsError(f"{target} exists{'' if as_zip else ' and is not empty'}; choose another path or "
                                "pass --overwrite (which replaces a previous export only)")
    if not is_export(target):
        raise OutputExistsError(f"{target} is not an export of this tool (no {MANIFEST} of format {FORMAT} in it, or "
                                "files in it that the export did not write); --overwrite replaces only previous "
                                "exports, so nothing was touched; choose another path")
    return target


def _indices(dset, selection: Sequence[int] | None) -> np.ndarray:
    indices = np.arange(len(dset)) if selection is None else np.asarray(sorted(set(int(i) for i in selection)))
    if len(indices) == 0:
        raise ValueError("nothing to export: the selection is empty")
    if dset.images is None:
        raise ValueError("this distilled set holds no images (a rank other than 0 of a distributed run)")
    if indices.min() < 0 or indices.max() >= len(dset):
        raise ValueError(f"selection ids must lie in [0, {len(dset)}), got {indices.min()}..{indices.max()}")
    for what, values in (("latents", dset.latents), ("images", dset.images), ("prototypes", dset.prototypes)):
        if values is None or not values.is_floating_point():  # uint8 images: checked as floats when decoded (decode_pixels)
            continue
        finite = np.concatenate([torch.isfinite(values[torch.from_numpy(part)].reshape(len(part), -1)).all(1).numpy()
                                 for part in np.array_split(indices, max(1, len(indices) // _CHUNK))])
        if not bool(finite.all()):
            bad = indices[~finite]
            raise ValueError(f"refusing to export: {len(bad)} of {len(indices)} images have NaN or infinite "
                             f"{what} (ids {bad[:8].tolist()}{' ...' if len(bad) > 8 else ''}); check the models "
                             "(a generator with non-finite weights or a diverging guidance setting)")
    return indices


def _tile(images: torch.Tensor, i: int) -> np.ndarray:
    """Image ``i`` of ``images`` (N, C, H, W), float in [-1, 1] or uint8, as uint8 (H, W, C): one image at a
    time, so that an export holds no copy of the whole set."""
    image = images[i:i + 1]
    return np.ascontiguousarray(image[0].permute(1, 2, 0).numpy()) if image.dtype == torch.uint8 else to_uint8(image)[0]


def _export_entries(dset, indices: np.ndarray, extra: dict | None) -> Iterator[tuple[str, bytes]]:
    """The files of an export as (relative path, bytes): PNGs by class folder, then manifest and latents."""
    files = []
    for i in indices:
        label = int(dset.labels[i])
        name = f"{class_folder_name(label, dset.class_names[label])}/{int(i):05d}-p{int(dset.prototype_ids[i])}.png"
        tile = _tile(dset.images, int(i))
        tile = tile[..., 0] if tile.shape[-1] == 1 else tile
        png = io.BytesIO()
        Image.fromarray(tile).save(png, format="PNG")
        files.append(name)
        yield name, png.getvalue()
    manifest = build_manifest(dset, indices, files, extra)
    yield MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
    yield CLASS_INDEX, (json.dumps({f: int(c) for c, f in manifest["class_folders"].items()}, indent=2) + "\n").encode()
    idx = torch.from_numpy(indices)
    rows = (lambda t: t) if len(indices) == len(dset) else (lambda t: t[idx])  # noqa: E731 - the whole set: no copy
    tensors = {"latents": rows(dset.latents).float().contiguous(), "labels": torch.from_numpy(dset.labels[indices]),
               "weights": torch.from_numpy(dset.weights[indices]).float(),
               "prototype_ids": torch.from_numpy(dset.prototype_ids[indices]).long(), "indices": idx.long()}
    if dset.prototypes is not None:
        tensors["prototypes"] = rows(dset.prototypes).float().contiguous()
    yield LATENTS, save(tensors)


def export_imagefolder(dset, out: str | Path, selection: Sequence[int] | None = None, overwrite: bool = False,
                       extra: dict | None = None) -> Path:
    """Write images ``selection`` (default: all) of ``dset`` to folder ``out``; returns its absolute path.

    ``out`` must be new or an empty folder, or, with ``overwrite``, a previous export (``check_export_target``).
    The export is written beside ``out`` and swapped into place (``core.io.publish``): ``out`` is at every
    instant the whole old export or the whole new one, and the old one is removed last."""
    indices = _indices(dset, selection)
    out = check_export_target(out, overwrite)
    with atomic_directory(out, replaceable=_is_export_folder if overwrite else None) as tmp:
        for name, data in _export_entries(dset, indices, extra):
            path = tmp / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    return out


def _write_zip(dset, indices: np.ndarray, extra: dict | None, target) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        stamp = _dt.datetime.now().timetuple()[:6]
        for name, data in _export_entries(dset, indices, extra):
            entry = zipfile.ZipInfo(name, date_time=stamp)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16  # ordinary file permissions when extracted
            archive.writestr(entry, data)


def export_digest(dset, selection: Sequence[int] | None = None, extra: dict | None = None) -> str:
    """A digest of everything an export of ``selection`` holds (pixels, latents, labels, weights, prototypes, the
    set's config, class names, ``extra``): a cache of exports shared by several users must be keyed by it, never
    by a per-user counter (two users' "run 1" are different sets)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=20)
    digest.update(np.ascontiguousarray(_indices(dset, selection), dtype=np.int64).tobytes())
    for array in (dset.images, dset.latents, dset.prototypes, dset.labels, dset.weights, dset.prototype_ids,
                  dset.landing_error):
        if array is not None:
            array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    described = {"config": dset.config.to_dict(), "classes": list(dset.class_names), "extra": extra}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def export_zip_bytes(dset, selection: Sequence[int] | None = None, extra: dict | None = None) -> bytes:
    """The export of ``selection`` (default: all) as zip bytes (entries ``NN-class/*.png``, manifest, latents)."""
    buffer = io.BytesIO()
    _write_zip(dset, _indices(dset, selection), extra, buffer)
    return buffer.getvalue()


def export_zip(dset, path: str | Path, selection: Sequence[int] | None = None, extra: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write the export as the zip file ``path``; built beside it and moved into place as ``export_imagefolder``
    does (a half-written zip is never visible; ``overwrite`` replaces only a zip this tool exported)."""
    indices = _indices(dset, selection)
    path = check_export_target(path, overwrite)
    remove_stale_siblings(path)
    tmp = new_sibling_file(path)
    try:
        with open(tmp, "wb") as f:
            _write_zip(dset, indices, extra, f)
        publish(tmp, path, replaceable=_is_export_zip if overwrite else None)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def resolve_inside(root: str | Path, name: str, root_name: str | None = None) -> Path:
    """``root/name`` for a user-given relative ``name``; refuses anything that would land outside ``root``
    (absolute paths, '..', symlinks pointing out). ``root_name``: how messages call the root (a served app's
    users must not see server paths; default the root's path)."""
    label = root_name or str(root)
    if not name or not name.strip():
        raise ValueError("give a folder name for the export")
    if Path(name).is_absolute():
        raise ValueError(f"the export folder must be relative to {label}, got the absolute path {name!r}")
    base = Path(root).resolve()
    try:
        target = (base / name).resolve()
    except RuntimeError:   # a symbolic link loop
        raise ValueError(f"the export folder {name!r} runs into a symbolic link loop") from None
    if target == base or base not in target.parents:
        raise ValueError(f"the export folder {name!r} would lie outside {label}; use a plain relative name")
    return target
