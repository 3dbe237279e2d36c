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

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np
import torch

from core.data.latent_cache import LatentSet
from core.errors import CacheMismatchError, CheckpointError
from core.reads import read_json

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
                                  "core.data.store_encoding.encode_to_store (`python -m core encode --store DIR`)")
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
