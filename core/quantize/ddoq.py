"""Per-class quantization of latents: DDOQ, D4M and random-real prototypes (DESIGN.md sections 1, 3, 4).

Conventions
- Latents of one class: (N, *latent_shape), flattened to (N, d) for clustering; prototypes come back as
  float32 (K, *latent_shape) with K = IPC.
- ``ddoq``: k-means (k-means++ init) centroids, weights = Voronoi cell masses (fraction of the class's
  latents whose nearest prototype is k). ``d4m``: the same centroids, uniform weights 1/K. ``random``: K
  distinct real latents (a seeded permutation's first K, so a smaller IPC is a prefix of a larger one),
  uniform weights. ``medoid``: each k-means centroid is replaced by a distinct real latent, the assignment
  of centroids to real latents that minimises the total squared distance (the nearest one when those
  are distinct).
- k-means prototypes are ordered by decreasing cell mass (ties: lower k-means index first); ddoq and
  d4m with the same seed give the same prototypes in the same order.
- Assignments always refer to the final prototypes; e_2 = sqrt(mean_i min_k ||z_i - c_k||²).
- W2: exact optimal transport (POT ``ot.emd2``) with squared-Euclidean cost between the real latents
  (uniform mass) and sum_k w_k δ(c_k); W2 = sqrt(cost). With Voronoi masses W2 = e_2 exactly.
- Every random choice derives from (config.seed, class label), so a class gets the same result whether
  quantized alone or with others, and classes get different random streams.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.quantize.w2 import _as_matrix, _w2_weighted_uniform, squared_distances

_CHUNK = 65_536  # rows per chunk when computing distances to prototypes

METHODS = ("ddoq", "d4m", "random")
BACKENDS = ("auto", "sklearn", "minibatch")


@dataclass(frozen=True)
class QuantizeConfig:
    """Knobs of per-class quantization.

    method: "ddoq" | "d4m" | "random"; ipc: prototypes per class (K >= 1); medoid: replace centroids by
    real latents (ddoq/d4m only); backend: "auto" (scikit-learn KMeans up to ``minibatch_above`` latents
    per class, MiniBatchKMeans above), "sklearn" or "minibatch"; compute_w2: exact OT distances;
    w2_max_points: at most this many real latents (a seeded subsample above it) enter the OT problem.
    n_init / max_iter / tol go to k-means; batch_size to MiniBatchKMeans. workers: classes quantized at once
    (threads; the result does not depend on it). threads: BLAS/OpenMP threads
    while quantizing (None: the libraries' default, all cores); 1 is the robust default because OpenMP
    k-means slows down many-fold when its threads compete with other busy processes (e.g. training).
    """

    method: str = "ddoq"
    ipc: int = 10
    medoid: bool = False
    seed: int = 0
    backend: str = "auto"
    compute_w2: bool = True
    w2_max_points: int = 10_000
    n_init: int = 1
    max_iter: int = 100
    tol: float = 1e-4
    minibatch_above: int = 50_000
    batch_size: int = 4096
    threads: int | None = 1
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # classes quantized in parallel

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("ipc", "n_init", "max_iter", "w2_max_points", "minibatch_above", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.workers) or self.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.tol, (int, float)) and np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if self.medoid and self.method == "random":
            raise ValueError("medoid=True is only valid for method 'ddoq' or 'd4m'; method 'random' already "
                             "picks real latents")


@dataclass(frozen=True, eq=False)
class ClassQuantization:
    """Quantization of one class.

    prototypes: float32 (K, *latent_shape); weights: float64 (K,), sum 1 (Voronoi masses for ddoq,
    1/K otherwise); masses: float64 (K,) Voronoi cell masses of the final prototypes, whatever the
    method; assignments: int64 (N,) nearest prototype of each real latent; source_indices: int64 (K,)
    rows of the class's latents used as prototypes (random, medoid), else None. quantization_error is
    e_2; w2_weighted / w2_uniform are None when W2 was not computed; w2_points: real latents in the OT
    problem. seconds: wall times of the steps ("fit", "assign", "w2", "total").
    """

    label: int
    method: str
    prototypes: torch.Tensor
    weights: np.ndarray
    masses: np.ndarray
    assignments: np.ndarray
    source_indices: np.ndarray | None
    quantization_error: float
    w2_weighted: float | None
    w2_uniform: float | None
    w2_points: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ipc(self) -> int:
        return len(self.prototypes)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def class_seed(seed: int, label: int) -> int:
    """A 31-bit seed derived from (seed, label), for the random choices of one class."""
    return int(np.random.SeedSequence([int(seed), int(label)]).generate_state(1)[0] >> 1)


def nearest_prototype(x: np.ndarray, prototypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest prototype of each row: (assignments int64 (n,), squared distance float64 (n,)). Chunked."""
    x, c = _as_matrix(x), _as_matrix(prototypes, "prototypes")
    assign = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), _CHUNK):
        d = squared_distances(x[start:start + _CHUNK], c)
        a = d.argmin(1)
        assign[start:start + _CHUNK] = a
        dist[start:start + _CHUNK] = d[np.arange(len(a)), a]
    return assign, dist


def cell_masses(assignments: np.ndarray, k: int) -> np.ndarray:
    """float64 (k,) fraction of points assigned to each prototype (sums to 1)."""
    counts = np.bincount(np.asarray(assignments, dtype=np.int64), minlength=k).astype(np.float64)
    return counts / counts.sum()


def _distinct_nearest_rows(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """int64 (K,) distinct rows of x, one per centre, minimising the total squared distance.

    Only each centre's K nearest rows can be in an optimal choice (one of them is always free), so the
    assignment problem is solved on that candidate set: memory O(K²), one chunked pass over x.
    """
    from scipy.optimize import linear_sum_assignment

    k = len(centres)
    best_idx = np.empty((0, k), dtype=np.int64)
    best_d = np.empty((0, k), dtype=np.float64)
    for start in range(0, len(x), _CHUNK):
        chunk = squared_distances(x[start:start + _CHUNK], centres)
        rows = np.repeat(np.arange(start, start + len(chunk))[:, None], k, axis=1)
        d, idx = np.concatenate([best_d, chunk]), np.concatenate([best_idx, rows])
        if len(d) > k:
            keep = np.argpartition(d, k - 1, axis=0)[:k]
            d, idx = np.take_along_axis(d, keep, 0), np.take_along_axis(idx, keep, 0)
        best_d, best_idx = d, idx
    candidates = np.unique(best_idx)
    rows, cols = linear_sum_assignment(squared_distances(centres, x[candidates]))
    return candidates[cols[np.argsort(rows)]].astype(np.int64)


def _kmeans(x: np.ndarray, k: int, config: QuantizeConfig, seed: int) -> np.ndarray:
    """float32 (k, d) k-means centroids with the configured backend."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    backend = config.backend
    if backend == "auto":
        backend = "minibatch" if len(x) > config.minibatch_above else "sklearn"
    if backend == "sklearn":
        model = KMeans(k, init="k-means++", n_init=config.n_init, max_iter=config.max_iter, tol=config.tol,
                       algorithm="lloyd", random_state=seed)  # copy_x=True: never touch x
    else:
        model = MiniBatchKMeans(k, init="k-means++", n_init=config.n_init, max_iter=config.max_iter,
                                tol=config.tol, batch_size=max(config.batch_size, k),
                                random_state=seed, compute_labels=False)
    model.fit(x)
    return np.asarray(model.cluster_centers_, dtype=np.float32)


def _check_latents(x: np.ndarray, where: str) -> None:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(1).sum())
        raise ValueError(f"latents of {where} contain non-finite values (NaN or inf) in {bad} of {len(x)} rows; "
                         f"re-encode the dataset or drop those rows")


def _check_ipc(n: int, ipc: int, where: str) -> None:
    if ipc > n:
        raise ValueError(f"ipc={ipc} is larger than {where}, which has {n} latents; choose ipc in [1, {n}]")


def quantize_class(latents: torch.Tensor | np.ndarray, label: int, config: QuantizeConfig) -> ClassQuantization:
    """Quantize one class's latents (N, *latent_shape) into config.ipc prototypes (see module docstring)."""
    x = _as_matrix(latents)
    shape = tuple(latents.shape[1:])
    _check_ipc(len(x), config.ipc, f"class {label}")
    _check_latents(x, f"class {label}")
    return _quantize_matrix(x, shape, int(label), config)


def _quantize_matrix(x: np.ndarray, shape: tuple[int, ...], label: int, config: QuantizeConfig) -> ClassQuantization:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(config.threads):
        return _quantize_matrix_inner(x, shape, label, config)


def _quantize_matrix_inner(x: np.ndarray, shape: tuple[int, ...], label: int,
                           config: QuantizeConfig) -> ClassQuantization:
    t0 = time.perf_counter()
    n, k = len(x), config.ipc
    seed = class_seed(config.seed, label)
    source = None
    if config.method == "random":
        source = np.random.default_rng(seed).permutation(n)[:k].astype(np.int64)
        protos = x[source]
    else:
        protos = _kmeans(x, k, config, seed)
        if config.medoid:
            source = _distinct_nearest_rows(x, protos)
            protos = x[source]
    t1 = time.perf_counter()

    exact = config.compute_w2 and n <= config.w2_max_points
    if exact:  # one cost matrix serves assignments, e_2 and both OT problems
        cost = squared_distances(x, protos)
        assign = cost.argmin(1)
        sq = cost[np.arange(n), assign]
    else:
        assign, sq = nearest_prototype(x, protos)
    masses = cell_masses(assign, k)
    if config.method != "random":  # order k-means prototypes by decreasing mass
        order = np.argsort(-masses, kind="stable")
        protos, masses = protos[order], masses[order]
        assign = np.argsort(order)[assign]
        source = None if source is None else source[order]
        if exact:
            cost = cost[:, order]
    weights = masses.copy() if config.method == "ddoq" else np.full(k, 1.0 / k)
    e2 = float(np.sqrt(sq.mean()))
    t2 = time.perf_counter()

    w2_w = w2_u = None
    points = 0
    if config.compute_w2:
        if not exact:
            pick = np.random.default_rng([seed, 1]).choice(n, config.w2_max_points, replace=False)
            cost = squared_distances(x[np.sort(pick)], protos)
        points = len(cost)
        w2_w, w2_u = _w2_weighted_uniform(cost, weights, config.method)
    t3 = time.perf_counter()

    return ClassQuantization(
        label=label, method=config.method,
        prototypes=torch.from_numpy(np.ascontiguousarray(protos, dtype=np.float32)).reshape(k, *shape),
        weights=weights, masses=masses, assignments=assign.astype(np.int64), source_indices=source,
        quantization_error=e2, w2_weighted=w2_w, w2_uniform=w2_u, w2_points=points,
        seconds={"fit": t1 - t0, "assign": t2 - t1, "w2": t3 - t2, "total": t3 - t0})


def quantize(latent_set, classes: list[int], config: QuantizeConfig) -> list[ClassQuantization]:
    """Quantize the given classes of a LatentSet; one ClassQuantization per class, in the order given.

    Everything (class ids, ipc against each class's size, finiteness) is validated before any clustering
    starts; one class's latents are in memory as an array at a time.
    """
    if isinstance(classes, (int, np.integer)):
        raise ValueError(f"classes must be a list of class ids, got the single id {classes!r}")
    classes = list(classes)
    num = latent_set.num_classes
    bad = [c for c in classes if not _is_int(c) or not 0 <= c < num]
    if bad:
        raise ValueError(f"classes must be ids in [0, {num}) (this latent set has {num} classes), got {bad}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat an id, got {classes}")
    labels = np.asarray(latent_set.labels)
    sizes = np.bincount(labels, minlength=num)
    finite = np.isfinite(_as_matrix(latent_set.latents)).all(1)
    bad_rows = np.bincount(labels[~finite], minlength=num)
    for c in classes:
        where = f"class {int(c)} ({latent_set.class_names[c]!r})"
        _check_ipc(int(sizes[c]), config.ipc, where)
        if bad_rows[c]:
            raise ValueError(f"latents of {where} contain non-finite values (NaN or inf) in {bad_rows[c]} of "
                             f"{sizes[c]} rows; re-encode the dataset or drop those rows")
    shape = tuple(latent_set.latent_shape)

    def one(c: int) -> ClassQuantization:
        return _quantize_matrix_inner(_as_matrix(latent_set.of_class(int(c))), shape, int(c), config)

    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(config.threads):
        if config.workers <= 1 or len(classes) == 1:
            return [one(c) for c in classes]
        # Classes are independent and scikit-learn's k-means and POT release the GIL, so one thread per
        # core, each with one BLAS/OpenMP thread, keeps both cores busy (k-means alone uses them poorly).
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            return list(pool.map(one, classes))


def allocate_by_weight(weights: np.ndarray, n: int) -> np.ndarray:
    """int64 (K,) counts summing to n, proportional to weights by the largest-remainder rule.

    Each prototype gets floor(n w_k / sum w); the remaining samples go one each to the largest fractional
    parts (ties: lower index first). Used when there are fewer prototypes than IPC (DESIGN.md section 3).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be a non-empty 1-D array of finite non-negative numbers with a positive sum")
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    rest = n - int(counts.sum())
    order = np.argsort(-(quota - counts), kind="stable")
    if rest > 0:
        counts[order[:rest]] += 1
    elif rest < 0:  # floating-point round-up of a quota; take back from the smallest remainders
        counts[order[::-1][counts[order[::-1]] > 0][:-rest]] -= 1
    return counts


# ---------------------------------------------------------------------------------------------
# Streaming quantization of one class too large for memory (chunks read from a LatentStore)
# ---------------------------------------------------------------------------------------------
