"""Sharded on-disk latent store for datasets too large to encode in one go (ImageNet-1K at 256 px with the
Stable Diffusion VAE: 1.28 M latents of 4x32x32, 10.5 GB in float16).

Layout of a store folder::

    index.json                 format, dataset + VAE fingerprints, latent shape, classes, shard plan;
                               "complete": true once every shard is written (counts per class, shard list)
    shard-00000.safetensors    latents float16 (n, c, h, w), labels int64 (n,), indices int64 (n,) = the
    shard-00001.safetensors    dataset's file indices; metadata repeats the fingerprints and [start, stop)
    ...

Shard ``i`` holds the dataset's items ``[i * shard_size, (i + 1) * shard_size)`` (fewer when unreadable
images were skipped), so a class's latents lie in a few consecutive shards (the dataset is ordered by
class). Each shard is written to a temporary file and renamed into place: a shard file is complete by
construction, and an interrupted ``encode_to_store`` resumes by encoding only the missing shards. A store
made from another dataset or VAE is refused (CacheMismatchError), never mixed.

Memory while encoding: one shard's latents plus the image batches in flight; while reading: one chunk.
"""
from __future__ import annotations

import shutil
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np
import torch

from core.data.latent_cache import LatentSet
from core.errors import CacheMismatchError, CheckpointError
from core.io import read_json, save_tensors, write_json

if TYPE_CHECKING:  # the VAE is only called (encode), so the data layer needs no models
    from core.models.vae import LatentAutoencoder

STORE_FORMAT = "distill-studio/latent-store"
STORE_VERSION = 1
INDEX_NAME = "index.json"
DEFAULT_MAX_BYTES = 4 << 30  # float32 bytes above which a class / a store is not loaded into memory


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


class ShardData(NamedTuple):
    """latents (n, c, h, w) (float16 as stored unless a dtype was asked for), labels int64 (n,), indices int64 (n,)."""

    latents: torch.Tensor
    labels: np.ndarray
    indices: np.ndarray


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


def _shard_meta(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a corrupt shard
        raise CacheMismatchError(f"{path}: corrupt latent shard ({exc}); delete it and run the encode again "
                                 "(only this shard is re-encoded)") from exc


def _check_shard(path: Path, meta: dict, header: dict, i: int) -> None:
    start, stop = i * header["shard_size"], min((i + 1) * header["shard_size"], header["items"])
    expected = {"dataset_fingerprint": header["dataset_fingerprint"], "vae_fingerprint": header["vae_fingerprint"],
                "shard": str(i), "start": str(start), "stop": str(stop)}
    wrong = [k for k, v in expected.items() if meta.get(k) != v]
    if wrong:
        raise CacheMismatchError(f"{path}: shard does not belong to this store ({', '.join(wrong)} differ from "
                                 f"{path.parent / INDEX_NAME}); delete it and run the encode again")


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
                    batch_size: int = 64, progress: Callable[[float, str], None] | None = None,
                    overwrite: bool = False, prefetch: int = 2) -> "LatentStore":
    """Encode ``folder_dataset`` (a StreamingImageFolder) with ``vae`` into a sharded store at ``store_dir``.

    Resumable: shards already in place are checked (fingerprints, range) and kept; only missing ones are
    encoded. A complete store for the same dataset and VAE is returned without work. A store of another
    dataset, VAE, shard size or latent shape raises CacheMismatchError (``overwrite=True`` deletes its
    shards and index first). ``progress(fraction, message)`` is called after every batch and after every
    shard ("wrote shard-00000.safetensors ..."); a tqdm bar is shown when it is None.
    """
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


def _check_index(index: dict, index_path: Path) -> None:
    """The shard list of a complete index is consistent: shard i is the plain file ``shard_name(i)`` inside
    the store, with its row range, a count and per-class counts that add up to the index's totals."""
    def bad(message: str) -> CacheMismatchError:
        return CacheMismatchError(f"{index_path}: {message}; the index was edited or damaged: re-create the store "
                                  "(encode --store DIR --overwrite)")

    def is_count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in ("items", "shard_size", "num_shards", "num_latents"):
        if not is_count(index.get(key)):
            raise bad(f"{key!r} must be an integer >= 0, found {index.get(key)!r}")
    shards, classes = index.get("shards"), index.get("class_ids")
    if not isinstance(shards, list) or len(shards) != index["num_shards"]:
        raise bad(f"'shards' must list {index['num_shards']} shards")
    if not isinstance(classes, list) or not isinstance(index.get("counts"), list) or len(index["counts"]) != len(classes):
        raise bad("'counts' must give one count per class of 'class_ids'")
    totals = np.zeros(len(classes), dtype=np.int64)
    for i, record in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(record, dict) or record.get("file") != shard_name(i):
            found = record.get("file") if isinstance(record, dict) else record
            raise bad(f"{where}.file must be {shard_name(i)!r}, a file inside the store, found {found!r}")
        start, stop = i * index["shard_size"], min((i + 1) * index["shard_size"], index["items"])
        if record.get("start") != start or record.get("stop") != stop:
            raise bad(f"{where} must cover rows [{start}, {stop}), found [{record.get('start')}, {record.get('stop')})")
        per_class = record.get("classes")
        if (not is_count(record.get("count")) or not isinstance(per_class, dict)
                or not all(k.isdigit() and int(k) < len(classes) and is_count(v) for k, v in per_class.items())
                or sum(per_class.values()) != record["count"] or record["count"] > stop - start):
            raise bad(f"{where}: 'count' and per-class 'classes' counts disagree or are not counts")
        for k, v in per_class.items():
            totals[int(k)] += v
    if totals.tolist() != index["counts"] or int(totals.sum()) != index["num_latents"]:
        raise bad(f"the shards' class counts {totals.tolist()} do not add up to 'counts' {index['counts']}")


def _read_shard(path: Path, labels_only: bool = False, rows: slice | None = None) -> ShardData:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            labels = f.get_tensor("labels").numpy()
            indices = f.get_tensor("indices").numpy()
            if labels_only:
                latents = torch.empty(0)
            elif rows is None:
                latents = f.get_tensor("latents")
            else:
                latents = f.get_slice("latents")[rows]
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise CheckpointError(f"{path}: not a readable latent shard ({exc}); delete it and run the encode "
                              "again (only this shard is re-encoded)") from exc
    if rows is not None:
        labels, indices = labels[rows], indices[rows]
    return ShardData(latents, labels, indices)


class LatentStore:
    """Reader of a complete latent store written by ``encode_to_store``."""

    def __init__(self, store_dir: str | Path):
        self.path = Path(store_dir)
        index_path = self.path / INDEX_NAME
        if not index_path.is_file():
            raise CheckpointError(f"{self.path}: no latent store here ({INDEX_NAME} missing); create one with "
                                  "core.data.latent_store.encode_to_store (`python -m core encode --store DIR`)")
        index = read_json(index_path)
        if not isinstance(index, dict) or index.get("format") != STORE_FORMAT or index.get("version") != STORE_VERSION:
            raise CheckpointError(f"{index_path}: not a version-{STORE_VERSION} latent store index")
        if not index.get("complete"):
            raise CheckpointError(f"{self.path}: latent store is incomplete (interrupted encode?); run the same "
                                  "encode again to finish it (completed shards are kept)")
        _check_index(index, index_path)
        self.index = index
        self.counts = np.asarray(index["counts"], dtype=np.int64)
        self._verified: set[str] = set()  # shards whose header and class counts were checked against the index

    def __repr__(self) -> str:
        return f"LatentStore({str(self.path)!r}, {len(self)} latents {self.latent_shape}, {self.num_classes} classes)"

    def __len__(self) -> int:
        return int(self.index["num_latents"])

    @property
    def dataset_fingerprint(self) -> str:
        return self.index["dataset_fingerprint"]

    @property
    def vae_fingerprint(self) -> str:
        return self.index["vae_fingerprint"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index["latent_shape"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.index["class_names"])

    @property
    def class_ids(self) -> tuple[str, ...]:
        return tuple(self.index["class_ids"])

    @property
    def num_classes(self) -> int:
        return len(self.index["class_ids"])

    @property
    def shards(self) -> list[dict]:
        return self.index["shards"]

    def check(self, vae: LatentAutoencoder | None = None, dataset=None) -> "LatentStore":
        """Raise CacheMismatchError unless the store was made with ``vae`` and from ``dataset`` (when given)."""
        if vae is not None and vae.fingerprint != self.vae_fingerprint:
            raise CacheMismatchError(f"{self.path}: latent store was encoded with another VAE "
                                     f"({self.index.get('vae')}) than {vae.source or 'the one given'}; "
                                     "encode into another store folder")
        if dataset is not None and dataset.fingerprint != self.dataset_fingerprint:
            raise CacheMismatchError(f"{self.path}: latent store was made from another dataset than "
                                     f"{getattr(dataset, 'name', 'the one given')}; encode into another store folder")
        return self

    def _shard(self, record: dict, labels_only: bool = False, rows: slice | None = None) -> ShardData:
        path = self.path / record["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: latent shard missing from a complete store; run the encode again "
                                  "to re-create it")
        if record["file"] not in self._verified:
            self._verify_shard(path, record)
            self._verified.add(record["file"])
        return _read_shard(path, labels_only, rows)

    def _verify_shard(self, path: Path, record: dict) -> None:
        """The shard's own header (number, row range, fingerprints) and its class counts match the index."""
        i = int(record["file"][len("shard-"):-len(".safetensors")])
        _check_shard(path, _shard_meta(path), self.index, i)
        labels = _read_shard(path, labels_only=True).labels
        values, counts = np.unique(labels, return_counts=True)
        found = {str(int(v)): int(c) for v, c in zip(values, counts)}
        recorded = {k: v for k, v in record["classes"].items() if v}
        if len(labels) != record["count"] or found != recorded:
            raise CacheMismatchError(f"{path}: holds {len(labels)} latents with class counts {found}, but "
                                     f"{INDEX_NAME} records {record['count']} with {recorded} for it (a shard "
                                     "replaced or changed?); delete it and run the encode again")

    def _cast(self, latents: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        return latents if dtype is None else latents.to(dtype)

    def iter_shards(self, dtype: torch.dtype | None = torch.float32) -> Iterator[ShardData]:
        """Every shard in order (latents cast to ``dtype``; None keeps float16)."""
        for record in self.shards:
            data = self._shard(record)
            yield ShardData(self._cast(data.latents, dtype), data.labels, data.indices)

    def labels(self) -> np.ndarray:
        """int64 (N,) labels of all latents in store order (reads no latents)."""
        parts = [self._shard(r, labels_only=True).labels for r in self.shards]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def file_indices(self) -> np.ndarray:
        """int64 (N,) dataset file index of every latent in store order."""
        parts = [self._shard(r, labels_only=True).indices for r in self.shards]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def _check_label(self, label: int) -> int:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise ValueError(f"class must be an id in [0, {self.num_classes}), got {label!r}")
        return int(label)

    def iter_class(self, label: int, chunk_size: int = 8192,
                   dtype: torch.dtype | None = torch.float32) -> Iterator[torch.Tensor]:
        """Latents of class ``label`` in store order, in chunks of at most ``chunk_size`` rows.

        Only shards holding the class are opened; within a shard the class's rows are read as slices, so
        memory stays at one chunk.
        """
        label = self._check_label(label)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for record in self.shards:
            if not record["classes"].get(str(label)):
                continue
            labels = self._shard(record, labels_only=True).labels
            rows = np.flatnonzero(labels == label)
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # contiguous: slice reads
                for a in range(int(rows[0]), int(rows[-1]) + 1, chunk_size):
                    b = min(a + chunk_size, int(rows[-1]) + 1)
                    yield self._cast(self._shard(record, rows=slice(a, b)).latents, dtype)
            else:
                latents = self._shard(record).latents[torch.from_numpy(rows)]
                for a in range(0, len(latents), chunk_size):
                    yield self._cast(latents[a:a + chunk_size], dtype)

    def nbytes(self, label: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of class ``label``'s latents (all latents when None) as ``dtype``."""
        rows = len(self) if label is None else int(self.counts[self._check_label(label)])
        return rows * int(np.prod(self.latent_shape)) * torch.empty(0, dtype=dtype).element_size()

    def load_class(self, label: int, max_bytes: int = DEFAULT_MAX_BYTES,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All latents of class ``label`` (n, c, h, w); ValueError when larger than ``max_bytes``."""
        need = self.nbytes(label, dtype)
        if need > max_bytes:
            raise ValueError(f"class {label} ({self.class_names[label]!r}) has {self.counts[label]} latents, "
                             f"{need / 2**30:.2f} GiB as {dtype}: more than max_bytes={max_bytes}; stream it "
                             "with iter_class (or quantize_store / quantize_class_streaming)")
        parts = list(self.iter_class(label, chunk_size=1 << 30, dtype=dtype))
        return torch.cat(parts) if parts else torch.empty(0, *self.latent_shape, dtype=dtype)

    def as_latent_set(self, max_bytes: int = DEFAULT_MAX_BYTES) -> LatentSet:
        """The whole store in memory as a LatentSet (float32), for stores up to ``max_bytes``."""
        need = self.nbytes(None)
        if need > max_bytes:
            raise ValueError(f"{self.path}: {len(self)} latents are {need / 2**30:.2f} GiB as float32, more than "
                             f"max_bytes={max_bytes}; read it by class (iter_class, load_class) or by shard")
        latents, labels = [], []
        for data in self.iter_shards(dtype=torch.float32):
            latents.append(data.latents)
            labels.append(data.labels)
        z = torch.cat(latents) if latents else torch.empty(0, *self.latent_shape)
        return LatentSet(z, np.concatenate(labels).astype(np.int64), self.class_names, self.dataset_fingerprint,
                         self.vae_fingerprint, self.path)


def remove_store(store_dir: str | Path) -> None:
    """Delete a store's shards and index (and the folder when nothing else is left in it)."""
    store_dir = Path(store_dir)
    if store_dir.is_dir():
        _remove_store_files(store_dir)
        if not any(store_dir.iterdir()):
            shutil.rmtree(store_dir)
