"""Latent store: encode a dataset once with a VAE and cache latents + labels on disk.

A cache entry is one safetensors file named by a key = hash(dataset fingerprint, VAE fingerprint), with
both fingerprints also stored in its metadata. A changed dataset or VAE gives a new key, so it is
re-encoded; an entry whose metadata disagrees with its name is never reused (error naming the file).
Latents are stored as float16 and returned as float32, shape (N, c, h, w).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from core.config import cache_dir
from core.data.datasets import LabelledImages
from core.errors import CacheMismatchError, CheckpointError
from core.io import save_tensors
from core.reads import load_tensors

if TYPE_CHECKING:  # the VAE is only called (encode), so the data layer needs no models
    from core.models.vae import LatentAutoencoder

@dataclass(frozen=True)
class LatentSet:
    """Encoded dataset. latents: float32 (N, c, h, w); labels: int64 (N,)."""

    latents: torch.Tensor
    labels: np.ndarray
    class_names: tuple[str, ...]
    dataset_fingerprint: str
    vae_fingerprint: str
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def of_class(self, label: int) -> torch.Tensor:
        return self.latents[torch.from_numpy(self.labels == label)]

    def subset(self, rows: np.ndarray, dataset_fingerprint: str) -> "LatentSet":
        """The latents of dataset ``rows`` (e.g. the training split minus validation), not backed by a file."""
        return LatentSet(self.latents[torch.from_numpy(np.asarray(rows))], self.labels[rows], self.class_names,
                         dataset_fingerprint, self.vae_fingerprint)


def cache_key(dataset_fingerprint: str, vae_fingerprint: str) -> str:
    return hashlib.sha256(f"{dataset_fingerprint}:{vae_fingerprint}".encode()).hexdigest()[:20]


def cache_path(dataset: LabelledImages, vae: LatentAutoencoder, root: str | Path | None = None) -> Path:
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name)
    return cache_dir(root) / "latents" / f"{safe_name}-{cache_key(dataset.fingerprint, vae.fingerprint)}.safetensors"


def _read_entry(path: Path, dataset: LabelledImages, vae: LatentAutoencoder) -> LatentSet:
    fix = f"delete {path} and run again to re-encode"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a corrupt entry
        raise CacheMismatchError(f"{path}: corrupt latent cache entry ({exc}); {fix}") from exc
    if meta.get("dataset_fingerprint") != dataset.fingerprint or meta.get("vae_fingerprint") != vae.fingerprint:
        raise CacheMismatchError(f"{path}: cache entry was written for another dataset or VAE than its name says; {fix}")
    try:
        tensors = load_tensors(path, fix)
    except CheckpointError as exc:
        raise CacheMismatchError(str(exc)) from exc
    latents, labels = tensors.get("latents"), tensors.get("labels")
    if latents is None or labels is None or len(latents) != len(dataset) or not np.array_equal(labels.numpy(), dataset.labels):
        raise CacheMismatchError(f"{path}: cache entry does not hold latents for all {len(dataset)} labelled images; {fix}")
    return LatentSet(latents.float(), dataset.labels, dataset.class_names, dataset.fingerprint, vae.fingerprint, path)


def write_entry(path: Path, latents: torch.Tensor, dataset: LabelledImages, vae: LatentAutoencoder) -> Path:
    """Store float16 ``latents`` (N, c, h, w) of ``dataset`` under ``vae`` as the cache entry ``path``."""
    return save_tensors(path, {"latents": latents, "labels": torch.from_numpy(dataset.labels)},
                        metadata={"dataset_fingerprint": dataset.fingerprint, "vae_fingerprint": vae.fingerprint,
                                  "dataset": dataset.name, "vae": str(vae.source)})


def encode_dataset(dataset: LabelledImages, vae: LatentAutoencoder, root: str | Path | None = None,
                   batch_size: int = 256, progress: Callable[[float, str], None] | None = None,
                   use_cache: bool = True) -> LatentSet:
    """Latents of ``dataset`` under ``vae``: read from the cache when present, else encode and store.

    ``progress(fraction, message)`` is called while encoding (a tqdm bar is shown when it is None).
    """
    path = cache_path(dataset, vae, root)
    if use_cache and path.is_file():
        return _read_entry(path, dataset, vae)
    if vae.image_channels != dataset.image_shape[0]:
        raise ValueError(f"VAE {vae.source or ''} takes {vae.image_channels}-channel images but dataset "
                         f"{dataset.name} has {dataset.image_shape[0]} channels")
    chunks = []
    starts = range(0, len(dataset), batch_size)
    bar = None
    if progress is None:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc=f"encoding {dataset.name}", unit="img", mininterval=2)
    for i, start in enumerate(starts):
        chunks.append(vae.encode(dataset.batch(slice(start, start + batch_size)), batch_size).half())
        if bar is not None:
            bar.update(len(chunks[-1]))
        else:
            progress((i + 1) / len(starts), f"encoding {dataset.name}: {min(start + batch_size, len(dataset))}/{len(dataset)}")
    if bar is not None:
        bar.close()
    latents = torch.cat(chunks)
    if use_cache:
        write_entry(path, latents, dataset, vae)
    return LatentSet(latents.float(), dataset.labels, dataset.class_names, dataset.fingerprint, vae.fingerprint,
                     path if use_cache else None)
