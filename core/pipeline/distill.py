"""The distiller: config -> quantize -> assign -> sample -> decode -> a distilled set.

Methods (DESIGN.md section 1):
- ``random``: K real images per class (drawn with the seed), uniform weights, no model evaluation.
- ``d4m``: k-means centroids decoded directly by the VAE, uniform weights.
- ``ddoq``: the same centroids decoded *through the flow model* by a warm-started ODE (t_0 =
  ``ddoq_t0``, no guidance); weights = Voronoi cell masses.
- ``fm``: unguided class-conditional flow samples (no prototypes).
- ``pgfm``: flow samples guided toward k-means prototypes (sample i <-> prototype i).
- ``diffusion-d4m`` / ``diffusion-mg``: the diffusion counterpart's prototype warm start / mode guidance.

Per-image weights are normalised to mean 1 within a class (K · cell mass for ddoq), so that uniform
weighting is weight 1 everywhere and they can be used directly as per-sample loss weights.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from core.config import (
    DIFFUSION_METHODS,
    FLOW_METHODS,
    DiffusionSamplerConfig,
    DistillConfig,
    GuidanceConfig,
    RefineConfig,
    SamplerConfig,
)
from core.data.datasets import LabelledImages
from core.data.latent_cache import LatentSet
from core.models.loading import model_present
from core.models.teacher import Teacher
from core.models.vae import LatentAutoencoder, check_batch_option
from core.pipeline.refine import RefineResult, refine_set
from core.quantize.ddoq import (
    ClassQuantization,
    QuantizeConfig,
    allocate_by_weight,
    quantize,
)
from core.quantize.disk_cache import quantize_cached
from core.quantize.streaming import StreamingLatents
from core.transport.ddim import sample_diffusion
from core.transport.sampler import SampleResult, Trajectories, sample

PIXELS = ("float32", "uint8")  # how an executor returns images: float in [-1, 1], or uint8 in [0, 255]


@dataclass
class DistilledSet:
    """images (N, C, H, W): float32 in [-1, 1], or uint8 in [0, 255] from an executor with ``pixels="uint8"``
    (the command line's, to export), None on the ranks other than 0 of a distributed run; per-image arrays of
    length N; prototypes (N, *latent_shape)."""

    images: torch.Tensor | None
    labels: np.ndarray
    weights: np.ndarray
    prototype_ids: np.ndarray          # index of the prototype within its class, -1 if none
    latents: torch.Tensor
    prototypes: torch.Tensor | None
    landing_error: np.ndarray          # RMS latent distance to the prototype, NaN if none
    class_names: tuple[str, ...]
    config: DistillConfig
    nfe: int                           # model evaluations per image
    timings: dict[str, float]
    trajectories: Trajectories | None = None
    quantization: list[ClassQuantization] = field(default_factory=list)
    source_indices: np.ndarray | None = None   # random: indices of the real training images

    def __len__(self) -> int:
        return len(self.labels)


def resolve_classes(classes: str | Sequence[str | int] | None, class_names: Sequence[str]) -> tuple[int, ...]:
    """'all' / None, or a list of class ids or names (case-insensitive) -> sorted unique ids."""
    if classes is None or classes == "all" or (not isinstance(classes, str) and list(classes) == ["all"]):
        return tuple(range(len(class_names)))
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    lookup = {name.lower(): i for i, name in enumerate(class_names)}
    ids, unknown = [], []
    for c in classes:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit()):
            i = int(c)
            (ids if 0 <= i < len(class_names) else unknown).append(i if 0 <= i < len(class_names) else c)
        elif isinstance(c, str) and c.lower() in lookup:
            ids.append(lookup[c.lower()])
        else:
            unknown.append(c)
    if unknown:
        raise ValueError(f"unknown classes {unknown}; valid ids are 0..{len(class_names) - 1} and names are "
                         f"{', '.join(class_names)}")
    if not ids:
        raise ValueError("no classes selected")
    return tuple(sorted(set(ids)))


@dataclass
class DistillEngine:
    """The resources a distillation needs: training data, its latents, the VAE and the generators.

    ``latents``: a LatentSet in memory, or for a latent store too large for memory a
    ``core.quantize.streaming.StreamingLatents`` (labels and shapes only; classes are quantized one at a time)."""

    dataset: LabelledImages
    latents: LatentSet | StreamingLatents
    vae: LatentAutoencoder
    flow: torch.nn.Module | None = None
    diffusion: torch.nn.Module | None = None
    quantize_cache: Path | None = None   # folder of core.quantize.disk_cache entries (None: memory only)
    teacher: Teacher | None = None      # the embedding of a refinement with ``embedding`` teacher
    # Quantizations are deterministic in (method, classes, ipc, medoid, seed): an interactive session that
    # only changes sampler settings reuses them. Entries are never mutated; the lock makes concurrent
    # sessions sharing one engine safe.
    _quantizations: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def check(self, config: DistillConfig) -> tuple[int, ...]:
        """Validate ``config`` against the data and models before any work; returns the class ids."""
        classes = resolve_classes(config.classes, self.latents.class_names)
        counts = np.bincount(self.latents.labels, minlength=self.latents.num_classes)
        too_small = [f"{self.latents.class_names[c]} ({counts[c]})" for c in classes if counts[c] < config.ipc]
        if too_small:
            raise ValueError(f"ipc={config.ipc} is larger than these classes' sizes: {', '.join(too_small)}")
        model = self.flow if config.method in FLOW_METHODS else self.diffusion if config.method in DIFFUSION_METHODS else None
        if config.method in FLOW_METHODS + DIFFUSION_METHODS:
            if model is None:
                raise ValueError(f"method {config.method!r} needs a {'flow' if config.method in FLOW_METHODS else 'diffusion'} model")
            if model.config.num_classes != self.latents.num_classes:
                raise ValueError(f"the model has {model.config.num_classes} classes but the data has {self.latents.num_classes}")
            if tuple(model.config.latent_shape) != self.latents.latent_shape:
                raise ValueError(f"the model works on latents {tuple(model.config.latent_shape)}, the data's are "
                                 f"{self.latents.latent_shape}")
        if config.refine.embedding == "teacher":   # (RefineConfig refuses it without iterations)
            if self.teacher is None:
                raise ValueError("refine embedding 'teacher' needs a teacher (--teacher)")
            if not self.teacher.fits(self.dataset.image_shape, self.latents.num_classes):
                raise ValueError(f"the teacher does not fit this data ({self.latents.num_classes} classes of "
                                 f"{'x'.join(map(str, self.dataset.image_shape))} images)")
        return classes


def _quantize(engine: DistillEngine, classes: tuple[int, ...], config: DistillConfig, method: str,
              keep: int = 16) -> list[ClassQuantization]:
    """Quantize ``classes``; the last ``keep`` results are memoised on the engine, and every class's result
    also on disk when the engine has a ``quantize_cache`` folder."""
    qconfig = QuantizeConfig(method=method, ipc=config.ipc, medoid=config.medoid and method != "random",
                             seed=config.seed, compute_w2=False)
    key = (classes, qconfig)
    with engine._lock:
        if key in engine._quantizations:
            engine._quantizations.move_to_end(key)
            return engine._quantizations[key]
    if isinstance(engine.latents, StreamingLatents):  # class by class from the store
        result = engine.latents.quantize(list(classes), qconfig)
    elif engine.quantize_cache is not None:
        result = quantize_cached(engine.latents, list(classes), qconfig, engine.quantize_cache)
    else:
        result = quantize(engine.latents, list(classes), qconfig)
    with engine._lock:
        engine._quantizations[key] = result
        while len(engine._quantizations) > keep:
            engine._quantizations.popitem(last=False)
    return result


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, C, H, W), with the arithmetic of the export's PNGs
    (``core.data.visualize.to_uint8``)."""
    from core.data.visualize import to_uint8

    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)


def decode_pixels(vae: LatentAutoencoder, latents: torch.Tensor, batch_size: int | str = "auto",
                  precision: str = "float32") -> torch.Tensor:
    """``vae.decode`` as uint8 images (N, C, H, W), converted batch by batch: no float32 copy of the whole set.
    ValueError naming the rows when the decoder gives NaN (a decoder overflowing its precision): converted to
    pixels it would pass for black, so it is refused here, before any export."""
    batch_size = vae.batch_size(batch_size, int(latents.shape[-1]) * vae.downsample)
    parts = []
    for start in range(0, len(latents), batch_size):
        images = vae.decode(latents[start:start + batch_size], batch_size, precision)
        bad = (~torch.isfinite(images.flatten(1))).any(dim=1)
        if bad.any():
            rows = (torch.nonzero(bad).flatten() + start).tolist()
            raise ValueError(f"the VAE decoded non-finite images (rows {rows[:10]}{' …' if len(rows) > 10 else ''}) "
                             f"at precision {precision}; nothing was exported. Use float32 or bfloat16")
        parts.append(to_pixels(images))
    return torch.cat(parts) if parts else torch.empty((0, vae.image_channels, 0, 0), dtype=torch.uint8)


def real_pixels(dataset, rows: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """Real images ``rows`` of ``dataset`` (its ``batch``) as uint8 (N, C, H, W), read ``chunk`` at a time."""
    parts = [to_pixels(dataset.batch(rows[i:i + chunk])) for i in range(0, len(rows), chunk)]
    return torch.cat(parts) if parts else torch.empty((0, *dataset.image_shape), dtype=torch.uint8)


class LocalExecutor:
    """How ``distill`` runs its stages: here, in this process. ``core.pipeline.distributed.ShardedExecutor`` runs the
    same stages sharded across processes and returns the same results.

    ``decode_batch``: latents per VAE call, "auto" (from the resolution and the free memory,
    ``LatentAutoencoder.batch_size``) or an integer >= 1. ``pixels``: the images as "float32" in [-1, 1]
    (default) or "uint8" (a quarter of the memory, converted batch by batch; what an export needs)."""

    def __init__(self, decode_batch: int | str = "auto", pixels: str = "float32"):
        if pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, got {pixels!r}")
        self.decode_batch = check_batch_option(decode_batch)
        self.pixels = pixels
        self.used_decode_batch: int | None = None   # the batch size of the last decode (for logs)

    def quantize(self, engine: DistillEngine, classes: tuple[int, ...], config: DistillConfig,
                 method: str) -> list[ClassQuantization]:
        return _quantize(engine, classes, config, method)

    def sample(self, model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None,
               config: SamplerConfig, record: bool) -> SampleResult:
        return sample(model, labels, prototypes, config, record=record)

    def sample_diffusion(self, model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None,
                         config: DiffusionSamplerConfig) -> SampleResult:
        return sample_diffusion(model, labels, prototypes, config)

    def decode_batch_size(self, vae: LatentAutoencoder, latents: torch.Tensor) -> int:
        """Latents per VAE call for ``latents`` (B, c, h, w): ``decode_batch`` at their image resolution."""
        self.used_decode_batch = vae.batch_size(self.decode_batch, int(latents.shape[-1]) * vae.downsample)
        return self.used_decode_batch

    def decode(self, vae: LatentAutoencoder, latents: torch.Tensor, precision: str = "float32") -> torch.Tensor | None:
        batch = self.decode_batch_size(vae, latents)
        if self.pixels == "uint8":
            return decode_pixels(vae, latents, batch, precision)
        return vae.decode(latents, batch, precision)

    def refine(self, engine: DistillEngine, latents: torch.Tensor, labels: np.ndarray, config: RefineConfig,
               seed: int, progress: Callable[[float, str], None] | None = None) -> RefineResult:
        """Distribution-matching refinement of the sampled set against the engine's real images
        (``core.pipeline.refine.refine_set``); a sharded run refines the whole set on every rank (the same result)."""
        pool = {int(c): np.flatnonzero(engine.dataset.labels == c) for c in np.unique(labels)}

        def real_images(c: int, n: int, rng: np.random.Generator) -> torch.Tensor:
            rows = pool[c]
            return engine.dataset.batch(np.sort(rng.choice(rows, min(n, len(rows)), replace=False)))

        teacher = engine.teacher.net if engine.teacher is not None else None
        return refine_set(latents, labels, engine.vae.decode_with_grad, real_images, config, seed, progress, teacher)

    def own_images(self, images: torch.Tensor) -> torch.Tensor | None:
        """Images in [-1, 1] made in this process (a pixel-space refinement), as ``pixels``."""
        return to_pixels(images) if self.pixels == "uint8" else images

    def real_images(self, dataset, rows: np.ndarray) -> torch.Tensor | None:
        """The real images of ``rows`` of ``dataset`` (method random), as ``pixels``."""
        return real_pixels(dataset, rows) if self.pixels == "uint8" else dataset.batch(rows)


def _require_in_memory(engine: DistillEngine, what: str) -> None:
    if not isinstance(engine.latents, LatentSet):
        raise ValueError(f"{what} needs the latents in memory (not a streamed latent store)")


def cell_targets(engine: DistillEngine, quantization: list[ClassQuantization], prototype_ids: np.ndarray,
                 offset: float, seed: int) -> torch.Tensor:
    """Guidance targets moved from each sample's prototype toward one real latent of its k-means cell:
    p + offset · (z − p), z drawn uniformly from the cell for each sample (class c from stream [seed, c], in
    sample order; an empty cell keeps p). ``prototype_ids``: the samples' prototypes, class by class in the
    quantization's order. Returns (N, *latent_shape)."""
    _require_in_memory(engine, "cell_offset")
    targets = []
    for q, ids in zip(quantization, np.split(prototype_ids, len(quantization))):
        members = engine.latents.latents[torch.from_numpy(engine.latents.labels == q.label)]
        rng = np.random.default_rng([seed, q.label])
        centres = q.prototypes[torch.from_numpy(ids)]
        real = centres.clone()
        for row, j in enumerate(ids):
            cell = np.flatnonzero(q.assignments == j)
            if len(cell):
                real[row] = members[int(rng.choice(cell))]
        targets.append(centres + offset * (real - centres))
    return torch.cat(targets)


def distill(engine: DistillEngine, config: DistillConfig, executor: LocalExecutor | None = None,
            progress: Callable[[float, str], None] | None = None) -> DistilledSet:
    """Run one distillation. All checks happen before any work; every random choice follows config.seed.

    ``executor`` runs the stages (default: in this process; see ``core.pipeline.distributed.distill_distributed``);
    ``progress(fraction, message)`` hears from the one stage that takes minutes, the refinement (``config.refine``).
    """
    # Long by design: the method's stages in order (checks, quantize, sample, decode, weights), as DESIGN.md
    # describes them; each stage is a call into its layer.
    executor = executor or LocalExecutor()
    classes = engine.check(config)
    timings: dict[str, float] = {}
    k = config.ipc
    labels = np.repeat(np.array(classes, dtype=np.int64), k)
    prototype_ids = np.tile(np.arange(k), len(classes))
    weights = np.ones(len(labels))
    quantization: list[ClassQuantization] = []
    prototypes = None
    source = None

    t0 = time.perf_counter()
    if config.method != "fm":
        q_method = {"random": "random", "d4m": "d4m", "diffusion-d4m": "d4m"}.get(config.method, "ddoq")
        few = config.method == "pgfm" and config.prototypes_per_class not in (None, k)
        q_config = replace(config, ipc=config.prototypes_per_class, prototypes_per_class=None) if few else config
        quantization = executor.quantize(engine, classes, q_config, q_method)
        if few:   # IPC samples over K < IPC prototypes, in proportion to the cells' DDOQ masses
            counts = [allocate_by_weight(q.weights, k) for q in quantization]
            prototype_ids = np.concatenate([np.repeat(np.arange(q.ipc), n) for q, n in zip(quantization, counts)])
            prototypes = torch.cat([q.prototypes.repeat_interleave(torch.from_numpy(n), dim=0)
                                    for q, n in zip(quantization, counts)])
        else:
            prototypes = torch.cat([q.prototypes for q in quantization])
        if config.method == "ddoq" or (config.method == "pgfm" and config.pgfm_weights):
            # a cell's mass shared by its samples (one sample per cell unless ``few``), mean 1 per class
            per_sample = [q.weights[ids] * k / np.bincount(ids, minlength=q.ipc)[ids]
                          for q, ids in zip(quantization, np.split(prototype_ids, len(quantization)))]
            weights = np.concatenate(per_sample)
        if config.method == "pgfm" and config.cell_offset > 0:
            prototypes = cell_targets(engine, quantization, prototype_ids, config.cell_offset, config.seed)
    timings["quantize_s"] = time.perf_counter() - t0

    trajectories, nfe = None, 0
    y = torch.from_numpy(labels)
    t0 = time.perf_counter()
    if config.method == "random":  # the prototypes are the chosen real latents; ``source`` their rows
        per_class = [np.flatnonzero(engine.latents.labels == c) for c in classes]
        source = np.concatenate([idx[q.source_indices] for idx, q in zip(per_class, quantization)])
        latents = prototypes.clone()
    elif config.method == "d4m":
        latents = prototypes.clone()
    elif config.method in FLOW_METHODS:
        sampler = replace(config.sampler, seed=config.seed)
        if config.method == "ddoq":
            sampler = replace(sampler, t0=config.ddoq_t0, guidance=GuidanceConfig(strength=0.0))
        elif config.method == "fm":
            sampler = replace(sampler, t0=0.0, guidance=GuidanceConfig(strength=0.0))
        result = executor.sample(engine.flow, y, None if config.method == "fm" else prototypes, sampler,
                                 config.record_trajectories)
        latents, nfe, trajectories = result.latents, result.nfe, result.trajectories
    else:
        mode = "d4m" if config.method == "diffusion-d4m" else "mg"
        result = executor.sample_diffusion(engine.diffusion, y, prototypes,
                                           replace(config.diffusion, mode=mode, seed=config.seed))
        latents, nfe = result.latents, result.nfe
    timings["sample_s"] = time.perf_counter() - t0

    refined = None
    if config.refine.iterations:
        t0 = time.perf_counter()
        refined = executor.refine(engine, latents, labels, config.refine, config.seed, progress)
        latents = refined.latents
        if config.refine.project_t:   # x_t = t·latent + (1 − t)·(the sample's own start noise), then t → 1, unguided
            projector = replace(config.sampler, seed=config.seed, t0=config.refine.project_t,
                                guidance=GuidanceConfig(strength=0.0))
            projected = executor.sample(engine.flow, y, latents, projector, False)
            latents, nfe = projected.latents, nfe + projected.nfe
        timings["refine_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if config.method == "random":
        images = executor.real_images(engine.dataset, source)
    elif refined is not None and config.refine.space == "pixel":
        images = executor.own_images(refined.images)
    else:
        # the decoder runs at the distillation's model precision (the diffusion sampler's for its methods)
        precision = config.diffusion.dtype if config.method in DIFFUSION_METHODS else config.sampler.dtype
        images = executor.decode(engine.vae, latents, precision)
    timings["decode_s"] = time.perf_counter() - t0
    if prototypes is not None and config.method != "random":
        landing = ((latents - prototypes).flatten(1).norm(dim=1) / np.sqrt(latents[0].numel())).numpy()
    else:
        landing = np.full(len(labels), np.nan)
    if config.method == "fm":
        prototype_ids = np.full(len(labels), -1)
    timings["total_s"] = sum(timings.values())
    return DistilledSet(images, labels, weights, prototype_ids, latents, prototypes, landing,
                        tuple(engine.latents.class_names), config, nfe, timings, trajectories, quantization, source)


def hold_out_validation(engine: DistillEngine, held_out: np.ndarray | None = None) -> DistillEngine:
    """``engine`` on its training split minus the validation split (DESIGN.md section 4b): random, DDOQ and
    the prototypes then draw only from images students may see. ``held_out``: the validation rows of the
    engine's dataset (default: Fashion-MNIST's, ``core.data.datasets.validation_indices``; an ImageFolder's
    are ``core.data.splits.holdout_indices``, or none when its validation split is a folder of its own).
    The latents are the cached ones, subset (no re-encoding); the generators are shared."""
    from core.data.datasets import holds_out_validation, validation_indices

    _require_in_memory(engine, "holding out the validation split")
    if holds_out_validation(engine.dataset.name):
        raise ValueError(f"{engine.dataset.name}: the validation split is already held out")
    if not np.array_equal(engine.latents.labels, engine.dataset.labels):
        raise ValueError("the engine's latents are not row-aligned with its dataset; cannot hold out by index")
    if held_out is None:
        held_out = validation_indices(engine.dataset.labels)
    rows = np.setdiff1d(np.arange(len(engine.dataset)), held_out)
    data = engine.dataset.subset(rows, f"{engine.dataset.name}-minus-val")
    latents = engine.latents.subset(rows, data.fingerprint)
    return DistillEngine(data, latents, engine.vae, engine.flow, engine.diffusion, engine.quantize_cache,
                         engine.teacher)


def load_engine(spec=None, dataset: str = "fashion-mnist", data_dir: str | None = None,
                cache_dir: str | None = None, resolution: int = 32, channels: int = 3,
                progress: Callable[[float, str], None] | None = None,
                encode: Callable[..., LatentSet] | None = None, latent_store: str | None = None,
                max_store_bytes: int | None = None, stream: bool | None = False,
                stream_init_size: int | None = None, encode_batch: int | str = "auto") -> DistillEngine:
    """Load the training split, its cached latents, the VAE and whichever generators ``spec`` names.

    A generator that does not exist (or is set to None / "") is left out (methods that need it then raise a
    clear error). The flow is loaded by ``core.models.loading.load_flow_for``: any reference
    ``core.models.loading.load_velocity_model`` takes (the project's folder, a diffusers DiT folder, a SiT
    ``.pt`` / ``.safetensors``), with ``spec.flow_convention`` / ``flow_num_heads`` / ``flow_class_map``.
    ``encode(dataset, vae, cache_dir, batch_size, progress=...)`` replaces ``core.data.latent_cache.encode_dataset``
    (the distributed loader passes one that shards the encoding and lets one process write the cache);
    ``encode_batch``: images per VAE call when encoding, "auto" (``LatentAutoencoder.batch_size``) or an integer.

    ``latent_store``: a folder written by ``core.data.store_encoding.encode_to_store`` (``python -m core encode
    --store``) replaces the dataset and its encoding: its latents are checked against the VAE and held in
    memory (up to ``max_store_bytes`` as float32, default ``core.data.latent_store.DEFAULT_MAX_BYTES``), and the real
    images (needed by ``random`` only) are read on demand from its ImageFolder, ``data_dir`` or else the
    folder the store was encoded from (``StoreImages``). ``dataset`` / ``resolution`` / ``channels`` /
    ``cache_dir`` / ``encode`` are then unused. ``stream``: False refuses a store above ``max_store_bytes``;
    True, or None for a store above it, never loads the whole store: the engine's latents are then a
    ``core.quantize.streaming.StreamingLatents`` (``distill`` works; code reading ``engine.latents.latents``
    does not), quantizing class by class with at most ``max_store_bytes`` of latents in memory, streamed
    classes with a k-means sample of ``stream_init_size`` rows (default max(20 IPC, 4096)).
    """
    from core.config import cache_dir as cache_root  # the argument is named cache_dir
    from core.models.loading import load_diffusion, load_flow_for, load_vae
    from core.models.spec import ModelSpec

    spec = spec or ModelSpec()
    check_batch_option(encode_batch)
    if latent_store is not None:
        vae = load_vae(spec)
        data, latents = _store_data(latent_store, vae, data_dir, max_store_bytes, stream, stream_init_size)
        quantize_cache = None
    else:
        from core.data.latent_cache import encode_dataset
        from core.data.splits import load_dataset

        vae = load_vae(spec)   # first: a resolution it cannot encode is refused before any image is read
        if dataset != "fashion-mnist":
            vae.check_input(resolution, channels)
        data = load_dataset(dataset, "train", data_dir, resolution, channels)
        batch = vae.batch_size(encode_batch, int(data.image_shape[-1]))
        latents = (encode or encode_dataset)(data, vae, cache_dir, batch, progress=progress)
        quantize_cache = cache_root(cache_dir) / "quantizations"
    shape, n = latents.latent_shape, latents.num_classes
    flow = load_flow_for(spec, shape, n) if model_present(spec.flow) else None
    diffusion = (load_diffusion(spec.diffusion, spec.device, shape, n)
                 if spec.diffusion and model_present(spec.diffusion) else None)
    return DistillEngine(data, latents, vae, flow, diffusion, quantize_cache)


def _store_data(store_dir: str, vae: LatentAutoencoder, data_dir: str | None, max_bytes: int | None,
                stream: bool | None = False,
                init_size: int | None = None) -> tuple["StoreImages", LatentSet | StreamingLatents]:
    from core.data.latent_store import DEFAULT_MAX_BYTES, LatentStore

    store = LatentStore(store_dir).check(vae)
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    need = store.nbytes(None)
    if need > max_bytes and stream is False:
        raise ValueError(
            f"{store.path}: the latent store is too large for in-memory distillation ({len(store)} latents, "
            f"{need / 2**30:.2f} GiB as float32, limit {max_bytes / 2**30:.2f} GiB). Distil it class by class "
            f"without loading it: `python -m core distill --latent-store DIR` streams a store above --store-max-gib "
            f"(load_engine(..., stream=True)); or raise the limit if the memory is there, or encode a store of "
            f"fewer classes (encode --classes)")
    images = StoreImages(store, data_dir)
    if stream or need > max_bytes:
        return images, StreamingLatents(store, max_bytes, init_size=init_size, labels=images.labels)
    return images, store.as_latent_set(max_bytes=max_bytes)


class StoreImages:
    """The real images behind the rows of a latent store, read on demand from the ImageFolder it was encoded
    from (the engine's ``dataset`` when distilling from a store; only ``random`` reads pixels).

    ``root``: the ImageFolder (default: the folder recorded in the store). It is opened on first use with the
    store's classes and resolution and must have the store's fingerprint (same files, sizes, mtimes), so that
    row ``i`` of the store is file ``file_indices[i]``; a store encoded with ``max_per_class`` is matched by
    reopening with the largest per-class count."""

    def __init__(self, store, root: str | None = None):
        self.store = store
        self.root = str(root) if root else str(store.index.get("root") or "")
        self.labels = store.labels()
        self.file_indices = store.file_indices()
        self.class_names = tuple(store.class_names)
        self.fingerprint = store.dataset_fingerprint
        self.name = str(store.index.get("dataset") or f"latent-store-{store.path.name}")
        resolution = int(store.index.get("resolution", 0))
        self.image_shape = (3, resolution, resolution)
        self._folder = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def _per_class_items(self) -> list[int]:
        """Images per class of the dataset the store was encoded from (encoded + skipped)."""
        counts = [int(c) for c in self.store.counts]
        folders = {f: i for i, f in enumerate(self.store.class_ids)}
        for rel in self.store.index.get("skipped_files", []):
            label = folders.get(str(rel).split("/", 1)[0])
            if label is not None:
                counts[label] += 1
        return counts

    def folder(self):
        """The StreamingImageFolder of the store's rows (opened and checked once)."""
        if self._folder is not None:
            return self._folder

        from core.data.imagefolder import StreamingImageFolder
        from core.errors import CacheMismatchError, DatasetNotFoundError

        classes, resolution = list(self.store.class_ids), self.image_shape[-1]
        # the root itself, or its train/ or val/ split (as ``open_image_folder`` picks them when encoding)
        roots = [Path(self.root) / sub for sub in ("", "train", "val")] if self.root else []
        root = next((r for r in roots if r.is_dir() and all((r / c).is_dir() for c in classes)), None)
        if root is None:
            raise DatasetNotFoundError(
                f"{self.store.path}: the real images of this latent store are needed (method 'random') but its "
                f"ImageFolder {self.root or '(not recorded)'} is not there or lacks its class folders; pass the "
                f"folder it was encoded from (--data-dir)")
        self.root = str(root)
        tried = []
        for max_per_class in (None, max(self._per_class_items() or [1])):
            folder = StreamingImageFolder(root, classes, resolution, max_per_class=max_per_class)
            if folder.fingerprint == self.fingerprint:
                self._folder = folder
                return folder
            tried.append(f"{len(folder)} images" + (f" (first {max_per_class} per class)" if max_per_class else ""))
        raise CacheMismatchError(
            f"{self.root}: this ImageFolder ({', '.join(tried)}) is not the one the latent store {self.store.path} was "
            f"encoded from ({self.store.index.get('items')} images of {len(classes)} classes at {resolution} px; "
            f"added, removed or modified files change it); pass the original folder (--data-dir) or encode anew")

    def batch(self, index) -> torch.Tensor:
        """Images of store rows ``index`` as float32 in [-1, 1], shape (B, 3, R, R)."""
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        batch = self.folder().load(self.file_indices[rows])
        if len(batch.indices) != len(rows):
            raise ValueError(f"{self.root}: {len(rows) - len(batch.indices)} of the requested images could not be read")
        return batch.images
