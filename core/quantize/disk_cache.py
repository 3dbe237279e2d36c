"""Disk cache of per-class quantizations, so that a new process (the app's first page, a benchmark run)
does not redo k-means that an earlier one did.

A quantization is deterministic in (the class's latents, label, QuantizeConfig): an entry is one safetensors
file per class named by a hash of the dataset and VAE fingerprints of the latents, the label and every
config field that changes the result (``threads`` and ``workers`` do not). Arrays are stored as tensors,
scalars in the metadata. An entry that cannot be read, or whose metadata disagrees with its key, is
recomputed and written again (atomically); nothing else in the folder is touched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import torch

from core.quantize.ddoq import ClassQuantization, QuantizeConfig, quantize

FORMAT = 1  # bump when ClassQuantization or the k-means procedure changes what an entry would hold
_NOT_IN_KEY = ("threads", "workers")


def entry_key(dataset_fingerprint: str, vae_fingerprint: str, label: int, config: QuantizeConfig) -> str:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_KEY}
    text = json.dumps({"format": FORMAT, "dataset": dataset_fingerprint, "vae": vae_fingerprint,
                       "label": int(label), "config": fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write(path: Path, key: str, q: ClassQuantization) -> None:
    from core.io import save_tensors

    tensors = {"prototypes": q.prototypes, "weights": torch.from_numpy(q.weights),
               "masses": torch.from_numpy(q.masses), "assignments": torch.from_numpy(q.assignments)}
    if q.source_indices is not None:
        tensors["source_indices"] = torch.from_numpy(q.source_indices)
    scalars = {"key": key, "label": q.label, "method": q.method, "quantization_error": q.quantization_error,
               "w2_weighted": q.w2_weighted, "w2_uniform": q.w2_uniform, "w2_points": q.w2_points,
               "seconds": q.seconds}
    save_tensors(path, tensors, metadata={"quantization": json.dumps(scalars)})


def _read(path: Path, key: str) -> ClassQuantization | None:
    """The entry at ``path``, or None when it is missing, unreadable or not the entry of ``key``."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            scalars = json.loads((f.metadata() or {})["quantization"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if scalars.get("key") != key:
            return None
        source = tensors.get("source_indices")
        return ClassQuantization(
            label=int(scalars["label"]), method=scalars["method"], prototypes=tensors["prototypes"],
            weights=tensors["weights"].numpy(), masses=tensors["masses"].numpy(),
            assignments=tensors["assignments"].numpy(), source_indices=None if source is None else source.numpy(),
            quantization_error=float(scalars["quantization_error"]), w2_weighted=scalars["w2_weighted"],
            w2_uniform=scalars["w2_uniform"], w2_points=int(scalars["w2_points"]), seconds=scalars["seconds"])
    except Exception as exc:  # noqa: BLE001 - a damaged entry of this cache is recomputed, never trusted
        warnings.warn(f"{path}: unreadable quantization cache entry ({exc}); recomputing it", stacklevel=3)
        return None


def quantize_cached(latent_set, classes: list[int], config: QuantizeConfig, folder: str | Path) -> list[ClassQuantization]:
    """``core.quantize.ddoq.quantize(latent_set, classes, config)``, reading each class's result from
    ``folder`` when an earlier call stored it and storing the ones it computes (the missing classes are
    quantized together, in parallel as ``quantize`` does). ``latent_set``: a LatentSet (its dataset and VAE
    fingerprints identify the latents)."""
    folder = Path(folder)
    keys = {c: entry_key(latent_set.dataset_fingerprint, latent_set.vae_fingerprint, c, config) for c in classes}
    found = {c: _read(folder / f"{keys[c]}.safetensors", keys[c]) for c in classes}
    missing = [c for c in classes if found[c] is None]
    if missing:
        for q in quantize(latent_set, missing, config):
            found[q.label] = q
            try:
                _write(folder / f"{keys[q.label]}.safetensors", keys[q.label], q)
            except OSError as exc:   # a cache that cannot be written costs the next process time, not this result
                warnings.warn(f"quantization not cached in {folder}: {exc}", stacklevel=2)
    return [found[c] for c in classes]
