"""Writing a sharded latent store (core.data.latent_store): an ImageFolder streamed through the VAE one
shard at a time, resumable, refusing a store made from other data or another VAE."""
from __future__ import annotations

import shutil
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from core.data.latent_store import (
    INDEX_NAME,
    STORE_FORMAT,
    STORE_VERSION,
    LatentStore,
    _check_shard,
    _read_shard,
    _shard_meta,
    shard_name,
)
from core.errors import CacheMismatchError
from core.io import save_tensors, write_json
from core.reads import read_json

if TYPE_CHECKING:  # the VAE is only called (encode), so the data layer needs no models
    from core.models.vae import LatentAutoencoder


def _header(dataset, vae: LatentAutoencoder, shard_size: int) -> dict:
    n = len(dataset)
    return {
        "format": STORE_FORMAT, "version": STORE_VERSION,
        "dataset_fingerprint": dataset.fingerprint, "vae_fingerprint": vae.fingerprint,
        "dataset": getattr(dataset, "name", ""), "root": str(getattr(dataset, "root", "")),
        "resolution": int(dataset.image_shape[-1]), "vae": str(vae.source),
        "class_ids": list(getattr(dataset, "class_ids", dataset.class_names)),
        "class_names": list(dataset.class_names),
        "latent_shape": list(vae.latent_shape(int(dataset.image_shape[-1]))), "latent_dtype": "float16",
        "items": n, "shard_size": shard_size, "num_shards": max(1, -(-n // shard_size)),
    }


def _refuse(store_dir: Path, old: dict, new: dict) -> None:
    """CacheMismatchError when the store at ``store_dir`` (index ``old``) was made for another job."""
    fix = ("use another store folder, or replace this one (overwrite=True, --overwrite; deletes its shards)")
    if old.get("format") != STORE_FORMAT or old.get("version") != STORE_VERSION:
        raise CacheMismatchError(f"{store_dir / INDEX_NAME}: not a version-{STORE_VERSION} latent store "
                                 f"(format {old.get('format')!r}, version {old.get('version')!r}); {fix}")
    if old.get("dataset_fingerprint") != new["dataset_fingerprint"]:
        raise CacheMismatchError(
            f"{store_dir}: this latent store was made from another dataset ({old.get('dataset')}, "
            f"{len(old.get('class_ids', []))} classes, {old.get('items')} images at {old.get('resolution')} px, "
            f"fingerprint {str(old.get('dataset_fingerprint'))[:12]}) than the one given ({new['dataset']}, "
            f"{len(new['class_ids'])} classes, {new['items']} images at {new['resolution']} px, fingerprint "
            f"{new['dataset_fingerprint'][:12]}; added, removed or modified files change it); {fix}")
    if old.get("vae_fingerprint") != new["vae_fingerprint"]:
        raise CacheMismatchError(
            f"{store_dir}: this latent store was encoded with another VAE ({old.get('vae')}, fingerprint "
            f"{str(old.get('vae_fingerprint'))[:12]}) than the one given ({new['vae']}, fingerprint "
            f"{new['vae_fingerprint'][:12]}); {fix}")
    for key in ("shard_size", "latent_shape", "items"):
        if old.get(key) != new[key]:
            raise CacheMismatchError(f"{store_dir}: this latent store was written with {key}={old.get(key)}, not "
                                     f"{new[key]}; resume with the same {key}, or {fix}")


def _shard_record(i: int, header: dict, labels: np.ndarray, indices: np.ndarray) -> dict:
    start, stop = i * header["shard_size"], min((i + 1) * header["shard_size"], header["items"])
    values, counts = np.unique(labels, return_counts=True)
    skipped = sorted(set(range(start, stop)) - set(indices.tolist()))
    return {"file": shard_name(i), "start": start, "stop": stop, "count": int(len(labels)),
            "classes": {str(int(v)): int(c) for v, c in zip(values, counts)}, "skipped": skipped}


def _remove_store_files(store_dir: Path) -> None:
    for path in list(store_dir.glob("shard-*.safetensors")) + list(store_dir.glob(".shard-*.tmp")):
        path.unlink()
    (store_dir / INDEX_NAME).unlink(missing_ok=True)


def encode_to_store(folder_dataset, vae: LatentAutoencoder, store_dir: str | Path, shard_size: int = 4096,
                    batch_size: int | str = 64, progress: Callable[[float, str], None] | None = None,
                    overwrite: bool = False, prefetch: int = 2) -> "LatentStore":
    """Encode ``folder_dataset`` (a StreamingImageFolder) with ``vae`` into a sharded store at ``store_dir``.

    Resumable: shards already in place are checked (fingerprints, range) and kept; only missing ones are
    encoded. A complete store for the same dataset and VAE is returned without work. A store of another
    dataset, VAE, shard size or latent shape raises CacheMismatchError (``overwrite=True`` deletes its
    shards and index first). ``progress(fraction, message)`` is called after every batch and after every
    shard ("wrote shard-00000.safetensors ..."); a tqdm bar is shown when it is None. ``batch_size``: images
    per VAE call, or "auto" (``vae.batch_size``: from the resolution and the free memory).
    """
    # Long by design: one streamed, resumable pass (check or resume the index, keep finished shards, encode the
    # missing ones with prefetching, write the index last); the shared state is the shard plan and the counts.
    if batch_size == "auto":
        batch_size = vae.batch_size("auto", int(folder_dataset.image_shape[-1]))
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if len(folder_dataset) == 0:
        raise ValueError(f"{folder_dataset}: no images to encode")
    channels, height, width = folder_dataset.image_shape
    if vae.image_channels != channels:
        raise ValueError(f"VAE {vae.source or ''} takes {vae.image_channels}-channel images but dataset "
                         f"{folder_dataset.name} has {channels} channels")
    if height % vae.downsample or width % vae.downsample:
        raise ValueError(f"resolution {height} must be divisible by the VAE's downsampling factor {vae.downsample}")
    store_dir = Path(store_dir)
    header = _header(folder_dataset, vae, shard_size)
    index_path = store_dir / INDEX_NAME
    if overwrite and store_dir.is_dir():
        _remove_store_files(store_dir)
    if index_path.is_file():
        old = read_json(index_path)
        _refuse(store_dir, old if isinstance(old, dict) else {}, header)
        if old.get("complete") and all((store_dir / r["file"]).is_file() for r in old.get("shards", [])):
            return LatentStore(store_dir)
    elif store_dir.is_dir() and any(store_dir.glob("shard-*.safetensors")):
        raise CacheMismatchError(f"{store_dir}: holds latent shards but no {INDEX_NAME}; use another store folder "
                                 "or delete these shards (overwrite=True, --overwrite)")
    else:
        write_json(index_path, {**header, "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    for stale in store_dir.glob(".shard-*.tmp"):  # left behind by a killed run (never renamed: incomplete)
        stale.unlink(missing_ok=True)

    n, num_shards = header["items"], header["num_shards"]
    bar = None
    if progress is None:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"encoding {header['dataset']} -> {store_dir}", unit="img", mininterval=2)

    def report(done: int, message: str) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()
        else:
            progress(done / n, message)

    records, done, encoded = [], 0, 0
    try:
        for i in range(num_shards):
            path = store_dir / shard_name(i)
            start, stop = i * shard_size, min((i + 1) * shard_size, n)
            if path.is_file():
                _check_shard(path, _shard_meta(path), header, i)
                data = _read_shard(path, labels_only=True)
                records.append(_shard_record(i, header, data.labels, data.indices))
                done = stop
                report(done, f"kept {shard_name(i)} ({i + 1}/{num_shards}, already encoded)")
                continue
            latents, labels, indices = [], [], []
            with closing(folder_dataset.iter_batches(batch_size, start, stop, prefetch=prefetch)) as batches:
                for b, batch in enumerate(batches):
                    if len(batch.indices):
                        latents.append(vae.encode(batch.images, batch_size).half())
                        labels.append(batch.labels)
                        indices.append(batch.indices)
                    done = min(start + (b + 1) * batch_size, stop)
                    report(done, f"encoding {shard_name(i)} ({i + 1}/{num_shards}): {done}/{n} images")
            shape = header["latent_shape"]
            z = torch.cat(latents) if latents else torch.empty(0, *shape, dtype=torch.float16)
            lab = np.concatenate(labels) if labels else np.empty(0, np.int64)
            idx = np.concatenate(indices) if indices else np.empty(0, np.int64)
            save_tensors(path, {"latents": z, "labels": torch.from_numpy(lab), "indices": torch.from_numpy(idx)},
                         metadata={"format": STORE_FORMAT, "dataset_fingerprint": header["dataset_fingerprint"],
                                   "vae_fingerprint": header["vae_fingerprint"], "shard": str(i),
                                   "start": str(start), "stop": str(stop)})
            records.append(_shard_record(i, header, lab, idx))
            encoded += 1
            done = stop
            report(done, f"wrote {shard_name(i)} ({i + 1}/{num_shards}): {done}/{n} images")
    finally:
        if bar is not None:
            bar.close()
    counts = np.zeros(len(header["class_ids"]), dtype=np.int64)
    for record in records:
        for label, count in record["classes"].items():
            counts[int(label)] += count
    skipped = [folder_dataset.files[j] if hasattr(folder_dataset, "files") else j
               for record in records for j in record["skipped"]]
    write_json(index_path, {**header, "complete": True, "shards": records, "counts": counts.tolist(),
                            "num_latents": int(counts.sum()), "skipped_files": skipped,
                            "completed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return LatentStore(store_dir)


def remove_store(store_dir: str | Path) -> None:
    """Delete a store's shards and index (and the folder when nothing else is left in it)."""
    store_dir = Path(store_dir)
    if store_dir.is_dir():
        _remove_store_files(store_dir)
        if not any(store_dir.iterdir()):
            shutil.rmtree(store_dir)
