"""Streaming quantization: classes too large for memory are quantized from chunks (mini-batch k-means
refined by Lloyd passes), and a latent store is quantized class by class (StreamingLatents)."""
from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np
import torch

from core.data.latent_store import DEFAULT_MAX_BYTES, LatentStore
from core.quantize.ddoq import (
    _CHUNK,
    ClassQuantization,
    QuantizeConfig,
    _check_ipc,
    _check_latents,
    _is_int,
    _quantize_matrix_inner,
    cell_masses,
    class_seed,
    nearest_prototype,
)
from core.quantize.w2 import _as_matrix, _w2_weighted_uniform, squared_distances


class StreamingLatents:
    """The parts of a LatentSet that distillation uses, for a store too large to hold in memory: labels,
    class names, latent shape, fingerprints, and a per-class chunk iterator; never all latents at once.

    ``quantize(classes, config)`` quantizes with ``quantize_store``: a class up to ``max_bytes /
    config.workers`` (float32) is loaded alone and quantized exactly as in memory (``config.workers``
    classes at a time), a larger one is streamed in chunks of ``chunk_size`` rows (``quantize_class_streaming``
    with ``init_size``, ``passes``; identical to in memory when the class has at most its sample's rows). So
    the latents in memory stay near ``max_bytes`` (plus k-means' working copies) whatever the number of
    classes. ``labels``: the store's labels when already read (e.g. by ``core.pipeline.distill.StoreImages``).
    """

    def __init__(self, store: LatentStore, max_bytes: int = DEFAULT_MAX_BYTES, chunk_size: int = 8192,
                 init_size: int | None = None, passes: int = 3, labels: np.ndarray | None = None):
        for name, value, low in (("chunk_size", chunk_size, 1), ("passes", passes, 0), ("max_bytes", max_bytes, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if init_size is not None and (isinstance(init_size, bool) or not isinstance(init_size, (int, np.integer))
                                      or init_size < 1):
            raise ValueError(f"init_size must be None or an integer >= 1, got {init_size!r}")
        self.store = store
        self.labels = store.labels() if labels is None else np.asarray(labels, dtype=np.int64)
        self.max_bytes, self.chunk_size, self.passes = int(max_bytes), int(chunk_size), int(passes)
        self.init_size = None if init_size is None else int(init_size)
        self.class_names = store.class_names
        self.dataset_fingerprint, self.vae_fingerprint, self.path = (store.dataset_fingerprint, store.vae_fingerprint,
                                                                     store.path)

    def __repr__(self) -> str:
        return f"StreamingLatents({self.store!r}, max_bytes={self.max_bytes}, init_size={self.init_size})"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.store.latent_shape

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def iter_class(self, label: int) -> Iterator[torch.Tensor]:
        """Class ``label``'s latents (float32) in store order, ``chunk_size`` rows at a time."""
        return self.store.iter_class(label, self.chunk_size)

    def quantize(self, classes: Sequence[int], config) -> list:
        """One ClassQuantization per class of ``classes`` (see the class docstring)."""
        return quantize_store(self.store, classes, config, passes=self.passes, chunk_size=self.chunk_size,
                              max_class_bytes=self.max_bytes // max(1, config.workers), init_size=self.init_size)

    def record(self) -> dict:
        """The streaming settings, for a manifest."""
        return {"max_bytes": self.max_bytes, "chunk_size": self.chunk_size, "init_size": self.init_size,
                "passes": self.passes}


def quantize_store(store: LatentStore, classes: Sequence[int], config, passes: int = 3, chunk_size: int = 8192,
                   max_class_bytes: int = 1 << 30, **streaming) -> list:
    """Quantize ``classes`` of a store (one ClassQuantization each, in the order given).

    A class up to ``max_class_bytes`` (float32) is loaded and quantized in memory exactly as
    ``quantize_class`` does, ``config.workers`` classes at a time (threads; memory: that many classes); a
    larger one is streamed in chunks of ``chunk_size`` rows (``quantize_class_streaming`` with ``passes``
    mini-batch passes and the ``streaming`` keywords init_size, lloyd_passes). Sizes are checked against
    ``config.ipc`` before any work.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits


    classes = [store._check_label(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat an id, got {classes}")
    too_small = [f"{store.class_names[c]} ({store.counts[c]})" for c in classes if store.counts[c] < config.ipc]
    if too_small:
        raise ValueError(f"ipc={config.ipc} is larger than these classes' sizes: {', '.join(too_small)}")
    small = [c for c in classes if store.nbytes(c) <= max_class_bytes]
    large = [c for c in classes if c not in small]
    where = {c: f"class {c} ({store.class_names[c]!r})" for c in classes}
    results = {}

    def in_memory(c: int):
        x = _as_matrix(store.load_class(c, max_bytes=max_class_bytes))
        _check_latents(x, where[c])
        return _quantize_matrix_inner(x, store.latent_shape, c, config)

    with threadpool_limits(config.threads):  # as core.quantize.ddoq.quantize: one BLAS thread per worker
        if config.workers <= 1 or len(small) <= 1:
            results.update({c: in_memory(c) for c in small})
        else:
            with ThreadPoolExecutor(max_workers=config.workers) as pool:
                results.update(zip(small, pool.map(in_memory, small)))
    for c in large:
        results[c] = quantize_class_streaming(lambda c=c: store.iter_class(c, chunk_size), c, config,
                                                passes=passes, where=where[c], **streaming)
    return [results[c] for c in classes]


def _chunk_matrices(chunks, where: str, shape: list) -> Iterator[np.ndarray]:
    """(n_i, d) float32 matrices of the chunks ``chunks()`` yields; ``shape`` ([] or [latent_shape]) is
    filled from the first chunk and every later chunk must agree."""
    for chunk in chunks():
        chunk_shape = tuple(chunk.shape[1:])
        if not shape:
            shape.append(chunk_shape)
        elif chunk_shape != shape[0]:
            raise ValueError(f"chunks of {where} have different latent shapes {shape[0]} and {chunk_shape}")
        x = _as_matrix(chunk)
        if len(x):
            yield x


def _shuffled_batches(chunks, where: str, batch: int, rng: np.random.Generator, buffer_batches: int = 2):
    """The streamed rows re-cut into batches of ``batch`` rows, shuffled within blocks of
    ``buffer_batches * batch`` rows: the result depends on the row order only, not on chunk sizes."""
    cap = batch * buffer_batches
    buf: list[np.ndarray] = []
    size = 0

    def emit(block: np.ndarray):
        perm = rng.permutation(len(block))
        for s in range(0, len(block), batch):
            yield block[perm[s:s + batch]]

    for x in _chunk_matrices(chunks, where, []):
        buf.append(x)
        size += len(x)
        while size >= cap:
            block = np.concatenate(buf) if len(buf) > 1 else buf[0]
            yield from emit(block[:cap])
            rest = block[cap:]
            buf, size = ([rest], len(rest)) if len(rest) else ([], 0)
    if size:
        yield from emit(np.concatenate(buf) if len(buf) > 1 else buf[0])


def _streaming_distinct_nearest_rows(chunks, where: str, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_distinct_nearest_rows`` over a stream: (row indices int64 (K,), rows float32 (K, d)).

    Keeps each centre's K nearest rows so far (at most K² candidate rows) and solves the assignment on them.
    """
    from scipy.optimize import linear_sum_assignment

    k, d = centres.shape
    best_idx = np.empty((0, k), dtype=np.int64)
    best_d = np.empty((0, k), dtype=np.float64)
    cand_idx = np.empty(0, dtype=np.int64)
    cand_rows = np.empty((0, d), dtype=np.float32)
    start = 0
    for x in _chunk_matrices(chunks, where, []):
        for a in range(0, len(x), _CHUNK):
            part = x[a:a + _CHUNK]
            rows = np.arange(start, start + len(part))
            dist = np.concatenate([best_d, squared_distances(part, centres)])
            idx = np.concatenate([best_idx, np.repeat(rows[:, None], k, axis=1)])
            if len(dist) > k:
                keep = np.argpartition(dist, k - 1, axis=0)[:k]
                dist, idx = np.take_along_axis(dist, keep, 0), np.take_along_axis(idx, keep, 0)
            best_d, best_idx = dist, idx
            pool_idx, pool_rows = np.concatenate([cand_idx, rows]), np.concatenate([cand_rows, part])
            needed = np.isin(pool_idx, best_idx)
            cand_idx, cand_rows = pool_idx[needed], pool_rows[needed]
            start += len(part)
    order = np.argsort(cand_idx)
    cand_idx, cand_rows = cand_idx[order], cand_rows[order]
    rows, cols = linear_sum_assignment(squared_distances(centres, cand_rows))
    chosen = cols[np.argsort(rows)]
    return cand_idx[chosen].astype(np.int64), cand_rows[chosen]


def quantize_class_streaming(chunks, label: int, config: QuantizeConfig, passes: int = 3,
                             init_size: int | None = None, where: str | None = None,
                             lloyd_passes: int = 2) -> ClassQuantization:
    """Quantize one class streamed in chunks, for classes too large to hold in memory.

    ``chunks``: a callable returning a fresh iterable of latent chunks (n_i, *latent_shape) each time it is
    called (the class is read several times), e.g. ``lambda: store.iter_class(c)``. Returns the same
    ClassQuantization as ``quantize_class`` (prototypes ordered by decreasing cell mass, weights, masses,
    assignments in stream order, e_2, W2).

    1. One pass counts the rows, checks them (finite, same shape) and keeps a uniform random sample of
       m = max(init_size, w2_max_points if compute_w2) rows (the rows with the m smallest seeded random keys).
       When the whole class fits in that sample (N <= m) it is quantized in memory exactly as
       ``quantize_class`` does (same result).
    2. ddoq/d4m: k-means++ k-means (n_init, max_iter, tol) on the init_size-row sample initialises a
       scikit-learn ``MiniBatchKMeans`` refined with ``partial_fit`` over ``passes`` passes, in batches of
       ``config.batch_size`` rows shuffled within blocks of two batches (no random reassignment of
       small clusters: the init is already k-means, and a stream ordered by content would pull them in),
       then ``lloyd_passes`` exact Lloyd steps (each pass: assign every row, move each centre to the mean
       of its cell; they never increase e_2). Mini-batches drift on streams ordered by content (e.g.
       files named by scene or by source), so the sample k-means is Lloyd-polished in the same passes
       and whichever of the two has the lower e_2 is kept. random: the rows
       ``permutation(N)[:K]`` of the class's seeded stream (as in memory); medoid: one more pass picks
       distinct nearest real rows.
    3. A final pass assigns every row to its nearest prototype: cell masses (weights for ddoq), e_2.
    4. W2 on the w2_max_points-row sample (exact OT, as ``quantize_class`` does above w2_max_points).

    Memory: the sample (m rows) plus a few batches/chunks. Deterministic for a given seed and row order
    (chunk sizes do not matter). Defaults: init_size = max(20 K, 4096).
    """
    if not callable(chunks):
        raise TypeError("chunks must be a callable returning a fresh iterable of latent chunks each call, "
                        "e.g. lambda: store.iter_class(c)")
    for name, value in (("passes", passes), ("lloyd_passes", lloyd_passes)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if init_size is not None and (not _is_int(init_size) or init_size < 1):
        raise ValueError(f"init_size must be None or an integer >= 1, got {init_size!r}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(config.threads):
        return _quantize_streaming(chunks, int(label), config, int(passes), int(lloyd_passes), init_size,
                                   where or f"class {label}")


def _quantize_streaming(chunks, label: int, config: QuantizeConfig, passes: int, lloyd_passes: int,
                        init_size: int | None, where: str) -> ClassQuantization:
    # Long by design: one algorithm (seeded init, mini-batch passes, Lloyd refinement, final masses) whose
    # steps share the same running centres and counts; split, each piece would need all of that state.
    from scipy import sparse
    from sklearn.cluster import KMeans, MiniBatchKMeans

    t0 = time.perf_counter()
    k = config.ipc
    seed = class_seed(config.seed, label)
    init_rows = max(init_size or max(20 * k, 4096), k)
    w2_rows = config.w2_max_points if config.compute_w2 else 0
    m = max(init_rows, w2_rows)

    # pass 1: count, check, and a uniform sample without replacement (bottom-m of seeded random keys)
    rng = np.random.default_rng([seed, 2])
    keys = np.empty(0)
    idx = np.empty(0, dtype=np.int64)
    rows: np.ndarray | None = None
    shape: list = []
    n = 0
    for x in _chunk_matrices(chunks, where, shape):
        _check_latents(x, where)
        u = rng.random(len(x))
        new_idx = np.arange(n, n + len(x))
        n += len(x)
        if len(keys) >= m:  # only rows whose key beats the current m-th smallest can enter
            sel = u < keys.max()
            u, new_idx, x = u[sel], new_idx[sel], x[sel]
        keys = np.concatenate([keys, u])
        idx = np.concatenate([idx, new_idx])
        rows = x.copy() if rows is None else np.concatenate([rows, x])
        if len(keys) > m:
            keep = np.argpartition(keys, m - 1)[:m]
            keys, idx, rows = keys[keep], idx[keep], rows[keep]
    if n == 0 or rows is None:
        raise ValueError(f"{where} has no latents to quantize")
    _check_ipc(n, k, where)
    shape_t = tuple(shape[0])
    by_key = np.argsort(keys, kind="stable")
    keys, idx, rows = keys[by_key], idx[by_key], rows[by_key]

    def sample(count: int) -> np.ndarray:  # the ``count`` rows of smallest keys, in stream order
        return rows[:count][np.argsort(idx[:count], kind="stable")]

    if n <= m:  # the sample is the whole class: quantize it in memory (identical to quantize_class)
        result = _quantize_matrix_inner(sample(n), shape_t, label, config)
        result.seconds["scan"] = time.perf_counter() - t0
        return result
    t_scan = time.perf_counter()

    source = None
    if config.method == "random":
        source = np.random.default_rng(seed).permutation(n)[:k].astype(np.int64)
        wanted = np.sort(source)
        gathered = np.empty((k, rows.shape[1]), dtype=np.float32)
        start = 0
        for x in _chunk_matrices(chunks, where, []):
            lo, hi = np.searchsorted(wanted, [start, start + len(x)])
            gathered[lo:hi] = x[wanted[lo:hi] - start]
            start += len(x)
        protos = gathered[np.searchsorted(wanted, source)]
    else:
        init = KMeans(k, init="k-means++", n_init=config.n_init, max_iter=config.max_iter, tol=config.tol,
                      algorithm="lloyd", random_state=seed).fit(sample(min(init_rows, n))).cluster_centers_
        model = MiniBatchKMeans(k, init=np.asarray(init, dtype=np.float32), n_init=1, random_state=seed,
                                batch_size=max(config.batch_size, k), compute_labels=False,
                                reassignment_ratio=0.0)  # no random restarts: the init is k-means on a sample,
        # and a stream ordered by content (files by name) would move restarted centres into one cluster
        protos = np.asarray(init, dtype=np.float32)
        for p in range(passes):
            order = np.random.default_rng([seed, 3, p])
            for batch in _shuffled_batches(chunks, where, max(config.batch_size, k), order):
                model.partial_fit(batch)
            protos = np.asarray(model.cluster_centers_, dtype=np.float32)
        # Lloyd polish of the mini-batch result and (when they differ) of the sample k-means it started
        # from, in the same passes; the one with the lower e_2 wins.
        candidates = [protos] + ([np.asarray(init, dtype=np.float32)] if passes else [])
        for _ in range(lloyd_passes):
            sums = [np.zeros(protos.shape, dtype=np.float64) for _ in candidates]
            counts = [np.zeros(k, dtype=np.int64) for _ in candidates]
            errors = [0.0 for _ in candidates]
            for x in _chunk_matrices(chunks, where, []):
                x64 = x.astype(np.float64)
                for j, centres in enumerate(candidates):
                    a, sq = nearest_prototype(x, centres)
                    onehot = sparse.csr_matrix((np.ones(len(a)), (a, np.arange(len(a)))), shape=(k, len(a)))
                    sums[j] += onehot @ x64
                    counts[j] += np.bincount(a, minlength=k)
                    errors[j] += float(sq.sum())
            for j, centres in enumerate(candidates):
                filled = counts[j] > 0  # an empty cell keeps its centre
                candidates[j] = centres.copy()
                candidates[j][filled] = (sums[j][filled] / counts[j][filled, None]).astype(np.float32)
        protos = candidates[int(np.argmin(errors))] if lloyd_passes else protos
        if config.medoid:
            source, protos = _streaming_distinct_nearest_rows(chunks, where, protos)
    t1 = time.perf_counter()

    # final pass: nearest prototype of every row -> cell masses, e_2
    parts, total_sq, seen = [], 0.0, 0
    for x in _chunk_matrices(chunks, where, []):
        a, sq = nearest_prototype(x, protos)
        parts.append(a)
        total_sq += float(sq.sum())
        seen += len(x)
    if seen != n:
        raise ValueError(f"{where}: the stream gave {seen} rows on the final pass but {n} on the first; "
                         "chunks() must yield the same rows every call")
    assign = np.concatenate(parts)
    masses = cell_masses(assign, k)
    if config.method != "random":
        order = np.argsort(-masses, kind="stable")
        protos, masses = protos[order], masses[order]
        assign = np.argsort(order)[assign]
        source = None if source is None else source[order]
    weights = masses.copy() if config.method == "ddoq" else np.full(k, 1.0 / k)
    e2 = float(np.sqrt(total_sq / n))
    t2 = time.perf_counter()

    w2_w = w2_u = None
    points = 0
    if config.compute_w2:
        cost = squared_distances(sample(w2_rows), protos)
        points = len(cost)
        w2_w, w2_u = _w2_weighted_uniform(cost, weights, config.method)
    t3 = time.perf_counter()

    return ClassQuantization(
        label=label, method=config.method,
        prototypes=torch.from_numpy(np.ascontiguousarray(protos, dtype=np.float32)).reshape(k, *shape_t),
        weights=weights, masses=masses, assignments=assign.astype(np.int64), source_indices=source,
        quantization_error=e2, w2_weighted=w2_w, w2_uniform=w2_u, w2_points=points,
        seconds={"scan": t_scan - t0, "fit": t1 - t0, "assign": t2 - t1, "w2": t3 - t2, "total": t3 - t0})
