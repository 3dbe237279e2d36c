"""Export a distilled set as an ImageFolder of PNGs + manifest.json + latents.safetensors, as a folder
or as a zip of that folder's contents.

Layout of ``out/``: one folder per class named ``NN-<class name>`` (zero-padded id, so sorting the
folders gives the class order; characters other than letters, digits, '-', '_' and '.' become '_'),
``manifest.json`` (every parameter and a record per image) and ``latents.safetensors``. The folder is
written next to its destination and renamed into place, so no half-written export is ever visible.
"""
from __future__ import annotations

import datetime as _dt
import io
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from core import __version__
from core.io import atomic_directory, atomic_write, write_json
from core.visualize import to_uint8

MANIFEST = "manifest.json"
LATENTS = "latents.safetensors"


def class_folder_name(class_id: int, name: str) -> str:
    return f"{class_id:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'class'}"


def _finite_or_none(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def build_manifest(dset, indices: np.ndarray, files: Sequence[str], extra: dict | None = None) -> dict:
    """The manifest of images ``indices`` of ``dset`` (a DistilledSet) stored as ``files``."""
    config = dset.config
    images = [{
        "file": files[j], "index": int(i), "class_id": int(dset.labels[i]),
        "class_name": dset.class_names[int(dset.labels[i])], "prototype_id": int(dset.prototype_ids[i]),
        "weight": round(float(dset.weights[i]), 6), "landing_error": _finite_or_none(dset.landing_error[i]),
    } for j, i in enumerate(indices)]
    return {
        "format": "distill-studio/imagefolder-v1", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "software": f"distill-studio {__version__}", "method": config.method, "ipc": config.ipc, "seed": config.seed,
        "config": config.to_dict(), "class_names": list(dset.class_names),
        "class_folders": {str(c): class_folder_name(c, n) for c, n in enumerate(dset.class_names)},
        "nfe_per_image": dset.nfe, "timings_s": {k: round(v, 4) for k, v in dset.timings.items()},
        "num_images": len(images), "images": images, **(extra or {}),
    }


def export_imagefolder(dset, out: str | Path, selection: Sequence[int] | None = None, overwrite: bool = False,
                       extra: dict | None = None) -> Path:
    """Write images ``selection`` (default: all) of ``dset`` to folder ``out``; returns ``out``."""
    out = Path(out)
    indices = np.arange(len(dset)) if selection is None else np.asarray(sorted(set(int(i) for i in selection)))
    if len(indices) == 0:
        raise ValueError("nothing to export: the selection is empty")
    if indices.min() < 0 or indices.max() >= len(dset):
        raise ValueError(f"selection ids must lie in [0, {len(dset)}), got {indices.min()}..{indices.max()}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another folder or pass overwrite")
    with atomic_directory(out) as tmp:
        pixels = to_uint8(dset.images[torch.from_numpy(indices)])
        files = []
        for j, i in enumerate(indices):
            label = int(dset.labels[i])
            folder = tmp / class_folder_name(label, dset.class_names[label])
            folder.mkdir(exist_ok=True)
            name = f"{int(i):05d}-p{int(dset.prototype_ids[i])}.png"
            tile = pixels[j][..., 0] if pixels.shape[-1] == 1 else pixels[j]
            Image.fromarray(tile).save(folder / name)
            files.append(f"{folder.name}/{name}")
        write_json(tmp / MANIFEST, build_manifest(dset, indices, files, extra))
        idx = torch.from_numpy(indices)
        tensors = {"latents": dset.latents[idx].float().contiguous(), "labels": torch.from_numpy(dset.labels[indices]),
                   "weights": torch.from_numpy(dset.weights[indices]).float(),
                   "prototype_ids": torch.from_numpy(dset.prototype_ids[indices]).long(),
                   "indices": idx.long()}
        if dset.prototypes is not None:
            tensors["prototypes"] = dset.prototypes[idx].float().contiguous()
        save_file(tensors, str(tmp / LATENTS))
    return out


def _zip_folder(folder: Path, target) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())


def export_zip_bytes(dset, selection: Sequence[int] | None = None, extra: dict | None = None) -> bytes:
    """The export of ``selection`` (default: all) as zip bytes (entries ``NN-class/*.png``, manifest, latents)."""
    with tempfile.TemporaryDirectory(prefix="distill-export-") as tmp:
        folder = export_imagefolder(dset, Path(tmp) / "set", selection, extra=extra)
        buffer = io.BytesIO()
        _zip_folder(folder, buffer)
    return buffer.getvalue()


def export_zip(dset, path: str | Path, selection: Sequence[int] | None = None, extra: dict | None = None) -> Path:
    """Write the export as the zip file ``path``, atomically (a half-written zip is never visible)."""
    data = export_zip_bytes(dset, selection, extra)
    return atomic_write(path, lambda p: p.write_bytes(data))


def resolve_inside(root: str | Path, name: str) -> Path:
    """``root/name`` for a user-given relative ``name``; refuses anything that would land outside ``root``
    (absolute paths, '..', symlinks pointing out)."""
    if not name or not name.strip():
        raise ValueError("give a folder name for the export")
    if Path(name).is_absolute():
        raise ValueError(f"the export folder must be relative to {root}, got the absolute path {name!r}")
    base = Path(root).resolve()
    target = (base / name).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"the export folder {name!r} would lie outside {base}; use a plain relative name")
    return target
