"""Sharding work across processes with torch.distributed, and gathering the results back in order.

Launch with ``torchrun --nproc_per_node N ...`` or ``accelerate launch ...``: they set WORLD_SIZE, RANK,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and ``init_from_env`` joins the process group
(gloo for ``--device cpu``, nccl for ``--device cuda``, one GPU per local rank). Without them everything runs
as one process (a ``DistContext()`` of world size 1).

Rule: every stage is split into contiguous, balanced blocks of rows (``shard_rows``), each rank running its
block in the batches one process would run:

- encoding: whole batches of ``batch_size`` images, always (a convolution's result depends on its batch,
  and the latent cache that rank 0 writes must be the same bits whatever the number of processes);
- quantization: classes (each class has its own seed, ``core.quantize.ddoq.class_seed``);
- sampling: rows, in batches of the sampler's ``batch_size``; every rank draws the whole noise tensor from
  the seed and takes its rows (``sample(..., noise=...)``);
- decoding: rows, in batches of the decode batch size; the images are gathered as uint8 to rank 0 alone;
- evaluation: seeds.

Sampling and decoding: with at least one batch per rank the blocks are whole batches of one process (the
last ranks take the extra ones, so blocks differ by at most one batch); with fewer rows every rank takes
an even share, as one smaller batch. Results are gathered with their global indices and reassembled in
order, and any missing or duplicated index raises. On the same hardware and thread count the results are
bit-identical to one process's whenever the ranks ran one process's batches (always for encoding and
quantization; for sampling and decoding when there are at least as many batches as ranks); otherwise they
agree to float rounding (a row computed in another batch). Timings differ. Every rank ends with the whole
result of each stage (like one process) except the decoded images, which only rank 0 holds (it alone
writes outputs). An exception on one rank is raised on every rank (as ``ShardError`` on the others), so a
failure does not leave the others waiting in a collective.
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
from core.pipeline.distill import (
    DistilledSet,
    DistillEngine,
    LocalExecutor,
    decode_pixels,
    distill,
    real_pixels,
    to_pixels,
)
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


def plan_backend(device: str | None, cuda_devices: int, local_rank: int = 0,
                 local_world: int = 1) -> tuple[str, str]:
    """(process-group backend, this rank's device) for a ``--device`` value, before any group is joined.

    ``cpu`` (or ``mps``): gloo on that device. ``cuda``: nccl on cuda:LOCAL_RANK, one GPU per local rank.
    ``cuda:N``: nccl on that GPU, for one process per node only. None / ``auto``: ``cuda`` when
    ``cuda_devices`` > 0, else ``cpu``. Raises ValueError when CUDA is asked for and there is none, or this
    node runs more processes (``local_world``) than it has GPUs (``cuda_devices``)."""
    name = "auto" if device is None else str(device).strip().lower() or "auto"
    if name == "auto":
        name = "cuda" if cuda_devices > 0 else "cpu"
    if not name.startswith("cuda"):
        return "gloo", name
    if cuda_devices < 1:
        raise ValueError(f"--device {name} under torchrun, but CUDA is not available here; use --device cpu "
                         "(gloo) or run on a machine with GPUs")
    if name != "cuda":
        if local_world > 1:
            raise ValueError(f"--device {name} names one GPU, but this node runs {local_world} processes; give "
                             f"--device cuda (each process takes cuda:LOCAL_RANK)")
        return "nccl", name
    if local_world > cuda_devices or local_rank >= cuda_devices:
        raise ValueError(f"{max(local_world, local_rank + 1)} processes on this node but only {cuda_devices} CUDA "
                         f"device(s): each process needs a GPU of its own for --device cuda; use --nproc_per_node "
                         f"{cuda_devices} (or fewer), or --device cpu")
    return "nccl", f"cuda:{local_rank}"


def init_from_env(backend: str | None = None, timeout: timedelta | None = None,
                  device: str | None = None) -> DistContext:
    """The context of this process from the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_*).

    WORLD_SIZE > 1: joins the process group with the backend of the requested ``device`` (``plan_backend``:
    gloo for cpu, nccl for cuda; ``backend`` overrides it), or uses the one already initialised (e.g. by
    accelerate). Otherwise: a single-process context. The context's device is the planned one (cuda:LOCAL_RANK
    for cuda, set as the current CUDA device); ``timeout`` bounds every collective. Everything is checked
    before the group is joined.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    initialised = dist.is_available() and dist.is_initialized()
    if world <= 1 and not initialised:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
    planned, name = plan_backend(device, torch.cuda.device_count() if torch.cuda.is_available() else 0,
                                 local_rank, local_world)
    where = torch.device(name)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    owns = False
    if not initialised:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend or planned, init_method="env://", **kwargs)
        owns = True
    backend = str(dist.get_backend())
    group = dist.new_group(backend="gloo") if backend == "nccl" else None
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, where, backend, group, owns)


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


def shard_rows(n: int, batch_size: int, rank: int, world: int, split_batches: bool = True) -> range:
    """Rows of ``n`` that ``rank`` of ``world`` handles, a contiguous block; together exactly range(n).

    With at least ``world`` batches [k·batch_size, (k+1)·batch_size) (or ``split_batches`` False), the blocks
    are whole batches, the last ranks taking one more where they do not divide evenly: the last rank holds
    the partial batch, so block sizes differ by at most one batch. With fewer rows (and ``split_batches``)
    every rank takes an even share (``shard_indices``, sizes differing by at most one row); without
    ``split_batches`` the first ranks then take one batch each and the others nothing."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    units = math.ceil(n / batch_size)
    if units < world:
        if split_batches:
            return shard_indices(n, rank, world)
        block = shard_indices(units, rank, world)  # one batch each for the first ranks
    else:
        mirror = shard_indices(units, world - 1 - rank, world)  # the extra units go to the last ranks
        block = range(units - mirror.stop, units - mirror.start)
    return range(min(block.start * batch_size, n), min(block.stop * batch_size, n))


def shard_batches(n: int, batch_size: int, rank: int, world: int, split_batches: bool = True) -> list[range]:
    """The batches (row ranges of at most ``batch_size``) in which ``rank`` runs its block ``shard_rows``: one
    process's batches where the block is whole batches."""
    rows = shard_rows(n, batch_size, rank, world, split_batches)
    return [range(s, min(s + batch_size, rows.stop)) for s in range(rows.start, rows.stop, batch_size)]


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


def _run_shard(ctx: DistContext, compute: Callable[[], Any], index: Sequence[int],
               dst: int | None = None) -> list[tuple[np.ndarray, Any]] | None:
    """Run this rank's ``compute()`` and gather [(indices, value)] of every rank on every rank (``dst`` None) or
    on rank ``dst`` alone (the others get None); a failure on any rank is raised on every rank (the original
    exception where it happened, ShardError elsewhere), with ``dst`` before any value is sent."""
    try:
        value, error = compute(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
        value, error = None, exc
    message = None if error is None else f"{type(error).__name__}: {error}"
    if dst is None:
        parts = gather_objects(ctx, (_part_index(index), value, message))
        messages = [m for _, _, m in parts]
    else:
        messages = gather_objects(ctx, message)
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(messages) if msg is not None]
    if failed:
        raise ShardError("; ".join(f"rank {r} failed: {msg}" for r, msg in failed))
    if dst is not None:
        parts = gather_objects(ctx, (_part_index(index), value), dst)
        return None if parts is None else [(i, v) for i, v in parts]
    return [(i, v) for i, v, _ in parts]


def agree_batch_size(ctx: DistContext, batch_size: int) -> int:
    """The smallest of the ranks' ``batch_size`` on every rank (the batches that define the shards must be the
    same everywhere; each rank's "auto" choice depends on its own free memory)."""
    return int(min(gather_objects(ctx, int(batch_size))))


# -- encoding --------------------------------------------------------------------------------------------
def encode_dataset_distributed(dataset: LabelledImages, vae: LatentAutoencoder, ctx: DistContext,
                               root: str | Path | None = None, batch_size: int | str = 256,
                               progress: Progress | None = None, use_cache: bool = True) -> LatentSet:
    """``core.data.latent_cache.encode_dataset`` with the batches split across ranks; the same LatentSet on every rank.

    A cache entry that rank 0 sees is read by all. Otherwise each rank encodes its block of whole batches,
    every rank gathers them (no shared file system needed), rank 0 alone writes the cache entry and the
    others return once it is written. The latents equal one process's ``encode_dataset`` with the same
    ``batch_size`` (stored as float16 and returned as float32 like it). ``batch_size`` "auto": each rank's
    ``vae.batch_size("auto", resolution)``, the smallest on all.
    """
    path = cache_path(dataset, vae, root)
    if vae.image_channels != dataset.image_shape[0]:
        raise ValueError(f"VAE {vae.source or ''} takes {vae.image_channels}-channel images but dataset "
                         f"{dataset.name} has {dataset.image_shape[0]} channels")
    batch_size = agree_batch_size(ctx, vae.batch_size(batch_size, int(dataset.image_shape[-1])))
    if use_cache and broadcast_object(ctx, path.is_file()):
        return encode_dataset(dataset, vae, root, batch_size, progress, use_cache=True)
    rows = shard_rows(len(dataset), batch_size, ctx.rank, ctx.world_size, split_batches=False)

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
def decode_distributed(vae: LatentAutoencoder, latents: torch.Tensor, ctx: DistContext, batch_size: int,
                       precision: str = "float32", dst: int = 0) -> torch.Tensor | None:
    """``decode_pixels(vae, latents, batch_size, precision)`` split across ranks (``shard_batches``): uint8
    images (N, C, H, W) on rank ``dst``, None on the others. ``batch_size`` must be the same on every rank.

    The images travel batch by batch (one round of ``gather_object`` per batch), so rank ``dst`` holds the
    uint8 set plus one round's batches, and the other ranks one batch; nothing is held as float32."""
    n, world = len(latents), ctx.world_size
    mine = shard_batches(n, batch_size, ctx.rank, world)
    rounds = max(len(shard_batches(n, batch_size, r, world)) for r in range(world))
    out, seen = None, []
    for k in range(rounds):
        rows = mine[k] if k < len(mine) else range(0)

        def compute(rows: range = rows) -> torch.Tensor | None:
            return decode_pixels(vae, latents[rows.start:rows.stop], batch_size, precision) if len(rows) else None

        parts = _run_shard(ctx, compute, rows, dst=dst)
        for index, pixels in parts or []:
            if pixels is None:
                continue
            if len(index) != len(pixels):
                raise ValueError(f"a part has {len(index)} indices but {len(pixels)} images")
            if out is None:
                out = torch.empty((n, *pixels.shape[1:]), dtype=torch.uint8)
            out[int(index[0]):int(index[-1]) + 1] = pixels  # a rank's batch is a contiguous row range
            seen.append(index)
    if ctx.rank != dst:
        return None
    check_indices(np.concatenate(seen) if seen else np.empty(0, np.int64), n)
    if out is None:  # no latents
        out = torch.empty((0, vae.image_channels, 0, 0), dtype=torch.uint8)
    return out


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
    every rank gets the whole result of each stage, except the images: uint8 on rank 0, None elsewhere.

    ``decode_batch``: latents per VAE call, "auto" (``LatentAutoencoder.batch_size``; the smallest of the
    ranks' choices) or an integer."""

    def __init__(self, ctx: DistContext, decode_batch: int | str = "auto"):
        super().__init__(decode_batch, pixels="uint8")
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

    def decode(self, vae: LatentAutoencoder, latents: torch.Tensor, precision: str = "float32") -> torch.Tensor | None:
        batch = agree_batch_size(self.ctx, self.decode_batch_size(vae, latents))
        self.used_decode_batch = batch
        return decode_distributed(vae, latents, self.ctx, batch, precision)

    def own_images(self, images: torch.Tensor) -> torch.Tensor | None:
        """Images every rank made alike (a pixel-space refinement), as uint8 on rank 0 alone (None on the others)."""
        return to_pixels(images) if self.ctx.is_main else None

    def real_images(self, dataset, rows: np.ndarray) -> torch.Tensor | None:
        """The real images of ``rows`` (method random) as uint8, read by rank 0 alone (None on the others)."""
        return real_pixels(dataset, rows) if self.ctx.is_main else None


def distill_distributed(engine: DistillEngine, config: DistillConfig, ctx: DistContext,
                        decode_batch: int | str = "auto", executor: LocalExecutor | None = None) -> DistilledSet:
    """``core.pipeline.distill.distill`` with its stages split across ranks (``ShardedExecutor``): labels, latents,
    prototypes, weights, prototype ids, landing errors, quantizations and trajectories on every rank, equal to
    one process's (to float rounding where a rank sampled rows in other batches, see the module docstring);
    the images as uint8 (N, C, H, W) on rank 0 alone (None elsewhere); timings are this rank's wall times,
    communication included. In one process: ``distill`` with float32 images. ``executor``: one made here
    (``ShardedExecutor(ctx, decode_batch)``, or ``LocalExecutor(decode_batch)`` in one process) unless given."""
    if executor is None:
        executor = ShardedExecutor(ctx, decode_batch) if ctx.is_distributed else LocalExecutor(decode_batch)
    return distill(engine, config, executor=executor)


# -- command line ----------------------------------------------------------------------------------------
def load_engine_distributed(ctx: DistContext, spec=None, dataset: str = "fashion-mnist", data_dir: str | None = None,
                            cache_dir: str | None = None, resolution: int = 32, channels: int = 3,
                            progress: Progress | None = None, encode_batch: int | str = "auto") -> DistillEngine:
    """``core.pipeline.distill.load_engine`` whose encoding is split across ranks (rank 0 writes the cache)."""
    from core.pipeline.distill import load_engine

    def encode(data, vae, root, batch_size=256, progress=None):
        return encode_dataset_distributed(data, vae, ctx, root, batch_size, progress=progress)

    return load_engine(spec, dataset, data_dir, cache_dir, resolution, channels, progress, encode=encode,
                       encode_batch=encode_batch)


def rank_device(ctx: DistContext, device: str) -> str:
    """The device of this rank for a ``--device`` option: cuda / auto become the context's device when
    distributed (cuda:LOCAL_RANK, or the CPU for auto without GPUs; see ``plan_backend``); anything else is kept."""
    if ctx.is_distributed and (device == "auto" or (device == "cuda" and ctx.device.type == "cuda")):
        return str(ctx.device)
    return device
