"""Sharding work across processes with torch.distributed, and gathering the results back in order.

Launch with ``torchrun --nproc_per_node N ...`` or ``accelerate launch ...``: they set WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and ``init_from_env`` joins the process group (gloo on CPU, nccl
with CUDA). Without them everything runs as one process (a ``DistContext()`` of world size 1).

Rule: every stage is split into the units that one process already computes independently, and each
rank computes whole units, so that a unit's arithmetic is exactly what one process does:

- encoding: batches of ``batch_size`` images (a convolution's result depends on its batch on CPU);
- quantization: classes (each class has its own seed, ``core.quantize.ddoq.class_seed``);
- sampling: batches of the sampler's ``batch_size`` rows; every rank draws the whole noise tensor from the
  seed and takes its rows (``sample(..., noise=...)``);
- decoding: batches of ``core.pipeline.distill.DECODE_BATCH`` latents;
- evaluation: seeds.

Units go to ranks in contiguous, balanced blocks (``shard_indices``); results are gathered with their
global indices and reassembled in order, and any missing or duplicated index raises. On the same
hardware and thread count the gathered results are bit-identical to one process's for the same seed
(tested on CPU with 2 processes and gloo). Timings differ. Every rank ends with the whole result (like
one process); only the main rank should write outputs. An exception on one rank is raised on every rank
(as ``ShardError`` on the others), so a failure does not leave the others waiting in a collective.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from core.config import DiffusionSamplerConfig, DistillConfig, SamplerConfig
from core.data.datasets import LabelledImages
from core.data.latent_cache import LatentSet, cache_path, encode_dataset, write_entry
from core.models.vae import LatentAutoencoder
from core.pipeline.distill import DECODE_BATCH, DistilledSet, DistillEngine, LocalExecutor, distill
from core.quantize.ddoq import ClassQuantization
from core.transport.sampler import SampleResult, Trajectories, initial_noise

Progress = Callable[[float, str], None]


class ShardError(RuntimeError):
    """Another rank failed; raised on the ranks that did not."""


# -- context ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank in [0, world_size), its device, and the group for object collectives
    (a gloo group when the default backend is nccl, so pickled objects never go through GPU memory)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    group: Any = None
    owns_group: bool = False           # init_from_env created the process group, shutdown destroys it

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {self.rank} of {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier(group=self.group)

    def shutdown(self) -> None:
        """Leave the process group if ``init_from_env`` created it (a no-op otherwise)."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(backend: str | None = None, timeout: timedelta | None = None) -> DistContext:
    """The context of this process from the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

    WORLD_SIZE > 1: joins the process group (``backend``: default nccl when CUDA is available, else gloo),
    or uses the one already initialised (e.g. by accelerate). Otherwise: a single-process context. The
    context's device is cuda:LOCAL_RANK under nccl, else the CPU; ``timeout`` bounds every collective.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    initialised = dist.is_available() and dist.is_initialized()
    if world <= 1 and not initialised:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not initialised:
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        kwargs = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend, init_method="env://", **kwargs)
        owns = True
    backend = str(dist.get_backend())
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    group = dist.new_group(backend="gloo") if backend == "nccl" else None
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, group, owns)


# -- pure helpers ----------------------------------------------------------------------------------------
def shard_indices(n: int, rank: int, world: int) -> range:
    """Indices of ``n`` items that ``rank`` of ``world`` handles: contiguous blocks in rank order, sizes
    differing by at most one (the first n % world ranks get one more); together exactly range(n)."""
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def shard_items(items: Sequence, rank: int, world: int) -> list:
    """The items of ``rank``'s block (see ``shard_indices``)."""
    return [items[i] for i in shard_indices(len(items), rank, world)]


def shard_rows(n: int, batch_size: int, rank: int, world: int) -> range:
    """Rows of ``n`` that ``rank`` handles when the units are whole batches [k·batch_size, (k+1)·batch_size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    units = shard_indices(math.ceil(n / batch_size), rank, world)
    return range(min(units.start * batch_size, n), min(units.stop * batch_size, n))


def check_indices(index: Sequence[int] | np.ndarray, n: int | None = None) -> None:
    """Raise ValueError unless ``index`` holds every integer of [0, n) exactly once (n: default len(index))."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    n = len(index) if n is None else int(n)
    inside = (index >= 0) & (index < n)
    counts = np.bincount(index[inside], minlength=n)
    problems = []
    for what, bad in (("missing", np.flatnonzero(counts == 0)), ("duplicated", np.flatnonzero(counts > 1)),
                      ("out of range", np.unique(index[~inside]))):
        if len(bad):
            problems.append(f"{what} {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}")
    if problems:
        raise ValueError(f"gathered indices must cover 0..{n - 1} exactly once: {'; '.join(problems)}")


def _part_index(index) -> np.ndarray:
    return np.asarray(index, dtype=np.int64).reshape(-1)


def assemble_rows(parts: Sequence[tuple[Sequence[int], torch.Tensor | None]], n: int | None = None,
                  dim: int = 0) -> torch.Tensor:
    """Concatenate the tensors of ``parts`` = [(global indices, rows along ``dim``)] in index order.

    A part without rows may give None. Raises ValueError when the indices miss or repeat one of 0..n-1.
    """
    index = [_part_index(i) for i, _ in parts]
    for i, (_, rows) in zip(index, parts):
        if (rows is None and len(i)) or (rows is not None and rows.shape[dim] != len(i)):
            raise ValueError(f"a part has {len(i)} indices but {None if rows is None else rows.shape[dim]} rows")
    flat = np.concatenate(index) if index else np.empty(0, dtype=np.int64)
    check_indices(flat, n)
    tensors = [rows for _, rows in parts if rows is not None]
    if not tensors:
        raise ValueError("no part holds any rows")
    full = torch.cat(tensors, dim) if len(tensors) > 1 else tensors[0]
    order = np.argsort(flat, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return full
    return full.index_select(dim, torch.from_numpy(order))


def assemble_items(parts: Sequence[tuple[Sequence[int], Sequence]], n: int | None = None) -> list:
    """The items of ``parts`` = [(global indices, items)] as one list in index order (checked like rows)."""
    index = [_part_index(i) for i, _ in parts]
    for i, (_, items) in zip(index, parts):
        if len(items) != len(i):
            raise ValueError(f"a part has {len(i)} indices but {len(items)} items")
    flat = np.concatenate(index) if index else np.empty(0, dtype=np.int64)
    check_indices(flat, n)
    out: list = [None] * len(flat)
    for i, (_, items) in zip(index, parts):
        for j, item in zip(i, items):
            out[j] = item
    return out


# -- collectives -----------------------------------------------------------------------------------------
def gather_objects(ctx: DistContext, obj: Any, dst: int | None = None) -> list | None:
    """Every rank's ``obj`` in rank order, on every rank (``dst`` None) or on rank ``dst`` only (the others
    get None). Tensors should be on the CPU (they are unpickled on the receiving rank)."""
    if not ctx.is_distributed:
        return [obj]
    if dst is None:
        out: list = [None] * ctx.world_size
        dist.all_gather_object(out, obj, group=ctx.group)
        return out
    out = [None] * ctx.world_size if ctx.rank == dst else None
    dist.gather_object(obj, out, dst=dst, group=ctx.group)
    return out


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, group=ctx.group)
    return box[0]


def gather_tensor_rows(ctx: DistContext, local: torch.Tensor | None, index: Sequence[int], n: int | None = None,
                       dim: int = 0, dst: int | None = None) -> torch.Tensor | None:
    """Reassemble rows computed across ranks: ``local`` holds this rank's rows (along ``dim``) whose global
    indices are ``index``. Raises ValueError when an index of 0..n-1 is missing or duplicated."""
    local = None if local is None else local.detach().cpu()
    parts = gather_objects(ctx, (_part_index(index), local), dst)
    return None if parts is None else assemble_rows(parts, n, dim)


def gather_items(ctx: DistContext, local: Sequence, index: Sequence[int], n: int | None = None,
                 dst: int | None = None) -> list | None:
    """``gather_tensor_rows`` for lists of picklable objects."""
    parts = gather_objects(ctx, (_part_index(index), list(local)), dst)
    return None if parts is None else assemble_items(parts, n)


def _run_shard(ctx: DistContext, compute: Callable[[], Any], index: Sequence[int]) -> list[tuple[np.ndarray, Any]]:
    """Run this rank's ``compute()`` and gather [(indices, value)] of every rank on every rank; a failure on
    any rank is raised on every rank (the original exception where it happened, ShardError elsewhere)."""
    try:
        value, error = compute(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
        value, error = None, exc
    message = None if error is None else f"{type(error).__name__}: {error}"
    parts = gather_objects(ctx, (_part_index(index), value, message))
    if error is not None:
        raise error
    failed = [(r, msg) for r, (_, _, msg) in enumerate(parts) if msg is not None]
    if failed:
        raise ShardError("; ".join(f"rank {r} failed: {msg}" for r, msg in failed))
    return [(i, v) for i, v, _ in parts]


# -- encoding --------------------------------------------------------------------------------------------
def encode_dataset_distributed(dataset: LabelledImages, vae: LatentAutoencoder, ctx: DistContext,
                               root: str | Path | None = None, batch_size: int = 256,
                               progress: Progress | None = None, use_cache: bool = True) -> LatentSet:
    """``core.data.latent_cache.encode_dataset`` with the batches split across ranks; the same LatentSet on every rank.

    A cache entry that rank 0 sees is read by all. Otherwise each rank encodes its block of whole batches,
    every rank gathers them (no shared file system needed), rank 0 alone writes the cache entry and the
    others return once it is written. The latents equal one process's ``encode_dataset`` with the same
    ``batch_size`` (stored as float16 and returned as float32 like it).
    """
    path = cache_path(dataset, vae, root)
    if use_cache and broadcast_object(ctx, path.is_file()):
        return encode_dataset(dataset, vae, root, batch_size, progress, use_cache=True)
    if vae.image_channels != dataset.image_shape[0]:
        raise ValueError(f"VAE {vae.source or ''} takes {vae.image_channels}-channel images but dataset "
                         f"{dataset.name} has {dataset.image_shape[0]} channels")
    rows = shard_rows(len(dataset), batch_size, ctx.rank, ctx.world_size)

    def encode_rows() -> torch.Tensor | None:
        chunks, starts = [], range(rows.start, rows.stop, batch_size)
        bar = None
        if progress is None and ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=len(rows), desc=f"encoding {dataset.name} (rank 0 of {ctx.world_size})", unit="img",
                       mininterval=2)
        for i, start in enumerate(starts):
            stop = min(start + batch_size, rows.stop)
            chunks.append(vae.encode(dataset.batch(slice(start, stop)), batch_size).half())
            if bar is not None:
                bar.update(len(chunks[-1]))
            elif progress is not None:
                progress((i + 1) / len(starts), f"encoding {dataset.name}: {stop - rows.start}/{len(rows)} "
                                                f"(rank {ctx.rank} of {ctx.world_size})")
        if bar is not None:
            bar.close()
        return torch.cat(chunks) if chunks else None

    latents = assemble_rows(_run_shard(ctx, encode_rows, rows), len(dataset))
    if not use_cache:
        return LatentSet(latents.float(), dataset.labels, dataset.class_names, dataset.fingerprint, vae.fingerprint)
    error = None
    if ctx.is_main:
        try:
            write_entry(path, latents, dataset, vae)
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then re-raised
            error = exc
    message = broadcast_object(ctx, None if error is None else f"{type(error).__name__}: {error}")  # a barrier
    if error is not None:
        raise error
    if message is not None:
        raise ShardError(f"rank 0 failed to write the latent cache {path}: {message}")
    return LatentSet(latents.float(), dataset.labels, dataset.class_names, dataset.fingerprint, vae.fingerprint, path)


# -- distillation ----------------------------------------------------------------------------------------
def decode_distributed(vae: LatentAutoencoder, latents: torch.Tensor, ctx: DistContext,
                       batch_size: int = DECODE_BATCH, precision: str = "float32") -> torch.Tensor:
    """``vae.decode(latents, batch_size, precision)`` with whole batches split across ranks; all images on
    every rank."""
    rows = shard_rows(len(latents), batch_size, ctx.rank, ctx.world_size)
    parts = _run_shard(ctx, lambda: vae.decode(latents[rows.start:rows.stop], batch_size, precision)
                       if len(rows) else None, rows)
    return assemble_rows(parts, len(latents))


def _gather_samples(ctx: DistContext, compute: Callable[[], SampleResult | None], rows: range, n: int,
                    prototypes: torch.Tensor | None, nfe: int) -> SampleResult:
    """Gather per-rank SampleResults of consecutive row blocks into the whole batch's SampleResult."""
    from core.transport.guidance import rms_distance

    t0 = time.perf_counter()

    def local() -> tuple | None:
        r = compute()
        if r is None:
            return None
        t = r.trajectories
        return r.latents.cpu(), None if t is None else (t.times, t.states, t.endpoints, t.endpoint_distance)

    parts = _run_shard(ctx, local, rows)
    latents = assemble_rows([(i, None if v is None else v[0]) for i, v in parts], n)
    trajectories = None
    records = [(i, v[1]) for i, v in parts if v is not None and v[1] is not None]
    if records:
        times = records[0][1][0]
        trajectories = Trajectories(times, *(assemble_rows([(i, rec[k]) for i, rec in records], n, dim=1)
                                             for k in (1, 2, 3)))
    landing = rms_distance(latents, prototypes.float()) if prototypes is not None else None
    return SampleResult(latents, nfe, time.perf_counter() - t0, landing, trajectories)


class ShardedExecutor(LocalExecutor):
    """The stages of ``core.pipeline.distill.distill`` split across the ranks of ``ctx`` (see the module docstring);
    every rank gets the whole result of each stage."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx

    def quantize(self, engine: DistillEngine, classes: tuple[int, ...], config: DistillConfig,
                 method: str) -> list[ClassQuantization]:
        mine = shard_indices(len(classes), self.ctx.rank, self.ctx.world_size)
        compute = lambda: super(ShardedExecutor, self).quantize(  # noqa: E731
            engine, tuple(classes[i] for i in mine), config, method) if len(mine) else []
        parts = _run_shard(self.ctx, compute, mine)
        return assemble_items(parts, len(classes))

    def sample(self, model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None,
               config: SamplerConfig, record: bool) -> SampleResult:
        from core.transport.sampler import sample

        rows = shard_rows(len(labels), config.batch_size, self.ctx.rank, self.ctx.world_size)
        noise = initial_noise(len(labels), tuple(model.config.latent_shape), config.seed)  # the whole batch's
        part = slice(rows.start, rows.stop)
        compute = lambda: sample(model, labels[part], None if prototypes is None else prototypes[part], config,  # noqa: E731
                                 record=record, noise=noise[part]) if len(rows) else None
        return _gather_samples(self.ctx, compute, rows, len(labels), prototypes, config.nfe)

    def sample_diffusion(self, model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None,
                         config: DiffusionSamplerConfig) -> SampleResult:
        from core.transport.ddim import sample_diffusion

        rows = shard_rows(len(labels), config.batch_size, self.ctx.rank, self.ctx.world_size)
        noise = initial_noise(len(labels), tuple(model.config.latent_shape), config.seed)
        part = slice(rows.start, rows.stop)
        compute = lambda: sample_diffusion(model, labels[part], None if prototypes is None else prototypes[part],  # noqa: E731
                                           config, noise=noise[part]) if len(rows) else None
        return _gather_samples(self.ctx, compute, rows, len(labels), prototypes, config.nfe)

    def decode(self, vae: LatentAutoencoder, latents: torch.Tensor, precision: str = "float32") -> torch.Tensor:
        return decode_distributed(vae, latents, self.ctx, DECODE_BATCH, precision)


def distill_distributed(engine: DistillEngine, config: DistillConfig, ctx: DistContext) -> DistilledSet:
    """``core.pipeline.distill.distill`` with its stages split across ranks; the same DistilledSet on every rank
    (images, labels, latents, prototypes, weights, prototype ids, landing errors, quantizations and
    trajectories equal one process's; timings are this rank's wall times, communication included)."""
    return distill(engine, config, executor=ShardedExecutor(ctx) if ctx.is_distributed else None)


# -- evaluation ------------------------------------------------------------------------------------------


# -- command line ----------------------------------------------------------------------------------------
def load_engine_distributed(ctx: DistContext, spec=None, dataset: str = "fashion-mnist", data_dir: str | None = None,
                            cache_dir: str | None = None, resolution: int = 32, channels: int = 3,
                            progress: Progress | None = None) -> DistillEngine:
    """``core.pipeline.distill.load_engine`` whose encoding is split across ranks (rank 0 writes the cache)."""
    from core.pipeline.distill import load_engine

    def encode(data, vae, root, progress=None):
        return encode_dataset_distributed(data, vae, ctx, root, progress=progress)

    return load_engine(spec, dataset, data_dir, cache_dir, resolution, channels, progress, encode=encode)


def rank_device(ctx: DistContext, device: str) -> str:
    """The device of this rank for a ``--device`` option: cuda / auto become cuda:LOCAL_RANK when
    distributed on GPUs; anything else is kept."""
    if ctx.is_distributed and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return device
