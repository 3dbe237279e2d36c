"""2-D projections (PCA or UMAP) of latents for the app's scatter plots; no Streamlit here.

A projection is fitted on a seeded per-class subsample of the real latents (the *reference*) and then
places any new latents (prototypes, synthetic samples, trajectories) with ``Projection.transform``.
Latents are flattened per row: ``(N, C, H, W)`` or ``(N, d)`` both become ``(N, d)`` float32. Every
fitted quantity is a plain array, so a projection round-trips through a safetensors file (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Progress = Callable[[float, str], None]
METHODS = ("pca", "umap")
CACHE_FORMAT = "distill-projection/1"


@dataclass(frozen=True)
class ProjectionConfig:
    method: str = "pca"            # "pca" or "umap"
    per_class: int = 300           # real latents per class in the reference subsample (seeded)
    seed: int = 0
    n_neighbors: int = 15          # umap
    min_dist: float = 0.1          # umap
    knn: int = 8                   # umap: reference neighbours that place a new point (see Projection)
    n_epochs: int | None = None    # umap: optimisation epochs (None: umap's default, 500 below 10k points)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"projection method must be one of {METHODS}, got {self.method!r}")
        for name, low in (("per_class", 1), ("n_neighbors", 2), ("knn", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"projection {name} must be >= {low}, got {getattr(self, name)}")
        if not self.min_dist >= 0:
            raise ValueError(f"projection min_dist must be >= 0, got {self.min_dist}")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise ValueError(f"projection n_epochs must be None or >= 1, got {self.n_epochs}")


@dataclass
class Projection:
    """A fitted 2-D projection of M reference latents.

    - PCA: ``transform`` is the exact linear map ``(x - mean) @ components.T`` (sklearn ``PCA(2)``
      fitted on the flattened reference); ``coords == transform(reference latents)``.
    - UMAP: ``coords`` is UMAP's embedding of ``reference_latents``; ``transform`` places a new point at
      the inverse-distance-weighted mean of the coordinates of its ``knn`` nearest reference latents
      (Euclidean); a point equal to a reference latent gets that latent's coordinate exactly.
    """
    method: str
    reference_index: np.ndarray                    # (M,) int64 indices into the full latent array
    reference_labels: np.ndarray                   # (M,) int64
    coords: np.ndarray                             # (M, 2) float32
    mean: np.ndarray | None = None                 # pca: (d,) float32
    components: np.ndarray | None = None           # pca: (2, d) float32
    reference_latents: np.ndarray | None = None    # umap: (M, d) float32, flattened
    knn: int = 8                                   # umap
    explained_variance: np.ndarray | None = None   # pca: (2,) share of the reference's variance per component

    def __post_init__(self):
        m = len(self.coords)
        ok = (self.method in METHODS and self.coords.shape == (m, 2) and m >= 2
              and self.reference_index.shape == (m,) and self.reference_labels.shape == (m,))
        if self.method == "pca":
            ok = ok and self.mean is not None and self.components is not None and self.mean.ndim == 1 \
                and self.components.shape == (2, len(self.mean))
        elif ok:
            ok = self.reference_latents is not None and self.reference_latents.ndim == 2 \
                and len(self.reference_latents) == m and self.knn >= 1
        if not ok:
            raise ValueError(f"inconsistent {self.method!r} projection arrays (coords {self.coords.shape})")

    def axis_titles(self) -> tuple[str, str]:
        """Axis titles: 'PC 1 (23% of variance)' for PCA; 'UMAP 1' for UMAP (its axes have no units)."""
        if self.method == "pca":
            share = [None, None] if self.explained_variance is None else self.explained_variance
            return tuple(f"PC {k + 1}" + ("" if share[k] is None else f" ({100 * share[k]:.0f}% of variance)")
                         for k in range(2))
        return "UMAP 1", "UMAP 2"

    @property
    def dim(self) -> int:
        return len(self.mean) if self.method == "pca" else self.reference_latents.shape[1]

    def transform(self, x) -> np.ndarray:
        """``x`` (K, ...) torch or numpy latents, flattened per row to (K, d) -> (K, 2) float32."""
        x = _rows(x, "latents to project")
        if x.shape[1] != self.dim:
            raise ValueError(f"latents to project have {x.shape[1]} values per row, the projection "
                             f"was fitted on {self.dim}")
        if not np.isfinite(x).all():
            raise ValueError("latents to project contain NaN or inf")
        if self.method == "pca":
            return ((x.astype(np.float64) - self.mean) @ self.components.T.astype(np.float64)).astype(np.float32)
        # kNN placement instead of umap's own transform(): that one JIT-compiles on first use (tens of
        # seconds on this CPU) and then costs seconds per call, while the app must redraw within ~1 s.
        # Placing a point at the weighted mean of its nearest neighbours' coordinates is exactly how
        # umap's transform initialises new points; we skip only its optimisation epochs.
        return np.concatenate([self._knn_place(x[i:i + 1024]) for i in range(0, len(x), 1024)]
                              or [np.zeros((0, 2), np.float32)])

    def _knn_place(self, x: np.ndarray) -> np.ndarray:
        ref = self.reference_latents
        k = min(self.knn, len(ref))
        sq = (x * x).sum(1)[:, None] - 2.0 * (x @ ref.T) + (ref * ref).sum(1)[None]  # (K, M) approx. d^2
        idx = np.argpartition(sq, k - 1, axis=1)[:, :k]                                 # (K, k)
        dist = np.linalg.norm(x[:, None, :] - ref[idx], axis=2)                         # exact, 0 on hits
        exact = dist == 0
        w = np.where(exact.any(1, keepdims=True), exact, 1.0 / np.where(exact, 1.0, dist))
        return ((w[..., None] * self.coords[idx]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)


def subsample_index(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted int64 indices: ``min(per_class, n_c)`` of each class c, drawn without replacement with
    ``np.random.default_rng(seed)`` class by class in ascending label order (reproducible)."""
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())),
                        replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks or [np.zeros(0, np.int64)])).astype(np.int64)


def fit_projection(latents, labels, config: ProjectionConfig, progress: Progress | None = None) -> Projection:
    """Fit ``config.method`` on the reference subsample of ``latents`` (N, ...) with ``labels`` (N,).

    ``progress(fraction, message)`` is called at stages (UMAP takes minutes on a cold process)."""
    ref, index, ref_labels = _reference(latents, labels, config)
    return _fit(ref, index, ref_labels, config, progress or (lambda f, m: None))


def load_or_fit_projection(latents, labels, config: ProjectionConfig, cache_file: Path | None,
                           progress: Progress | None = None) -> Projection:
    """``fit_projection`` with a safetensors cache for UMAP (PCA takes ~0.05 s: never cached).

    The cache is used when its stored config (all fields but ``knn``, which only affects ``transform``)
    and its fingerprint of the inputs (shapes, labels, reference latents) match; otherwise, or when the
    file is unreadable or inconsistent, the projection is refitted and the file rewritten atomically."""
    progress = progress or (lambda f, m: None)
    ref, index, ref_labels = _reference(latents, labels, config)
    if config.method != "umap" or cache_file is None:
        return _fit(ref, index, ref_labels, config, progress)
    cache_file = Path(cache_file)
    meta = {"format": CACHE_FORMAT, "config": {k: v for k, v in asdict(config).items() if k != "knn"},
            "fingerprint": _fingerprint(np.shape(latents), labels, index, ref)}
    if cache_file.is_file():
        try:
            projection = _load(cache_file, meta, config.knn)
            progress(1.0, f"loaded cached UMAP projection from {cache_file.name}")
            return projection
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            progress(0.0, f"cached projection {cache_file.name} unusable ({exc}); refitting")
    projection = _fit(ref, index, ref_labels, config, progress)
    _save(cache_file, projection, meta)
    return projection


# ---------------------------------------------------------------------------------------------- helpers

def _rows(x, what: str) -> np.ndarray:
    """torch or numpy (K, ...) -> numpy (K, d) float32 (no copy when already float32 on the CPU)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{what} must have shape (K, ...) with at least 2 dimensions, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
    return np.ascontiguousarray(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))), dtype=np.float32)


def _reference(latents, labels, config: ProjectionConfig):
    """Validate inputs; return (reference rows (M, d) float32, index (M,), labels (M,))."""
    x = _rows(latents, "latents")
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if len(labels) != len(x):
        raise ValueError(f"latents have {len(x)} rows but labels have {len(labels)}")
    if len(x) < 2:
        raise ValueError(f"need at least 2 latents to fit a 2-D projection, got {len(x)}")
    if x.shape[1] < 2:
        raise ValueError(f"need at least 2 values per latent to fit a 2-D projection, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ValueError(f"latents contain {int((~np.isfinite(x)).sum())} NaN or inf values")
    index = subsample_index(labels, config.per_class, config.seed)
    if len(index) < 2:
        raise ValueError(f"the reference subsample has {len(index)} latent(s); need at least 2")
    return x[index], index, labels[index].astype(np.int64)


def _fit(ref: np.ndarray, index: np.ndarray, ref_labels: np.ndarray, config: ProjectionConfig,
         progress: Progress) -> Projection:
    m = len(ref)
    if config.method == "pca":
        from sklearn.decomposition import PCA
        pca = PCA(n_components=2, random_state=config.seed).fit(ref)
        p = Projection("pca", index, ref_labels, np.zeros((m, 2), np.float32),
                       mean=pca.mean_.astype(np.float32), components=pca.components_.astype(np.float32),
                       explained_variance=pca.explained_variance_ratio_.astype(np.float32))
        p.coords = p.transform(ref)  # exactly what transform gives for the reference latents
        progress(1.0, "done")
        return p
    progress(0.0, "importing umap (first time: compiles, ~30 s)")
    import umap  # lazy: 3-30 s of numba set-up
    progress(0.1, f"fitting UMAP on {m} points (first fit in a process: ~1-2 min)")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(config.n_neighbors, m - 1), min_dist=config.min_dist,
                        n_epochs=config.n_epochs, random_state=config.seed)  # random_state: single-threaded
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random_state.*")
        coords = np.asarray(reducer.fit_transform(ref), dtype=np.float32)
    progress(1.0, "done")
    return Projection("umap", index, ref_labels, coords, reference_latents=ref, knn=config.knn)


def _fingerprint(shape, labels, index: np.ndarray, ref: np.ndarray) -> str:
    labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    h = hashlib.sha256(repr(tuple(shape)).encode())
    for a in (labels.astype(np.int64), index, ref):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


_ARRAYS = ("reference_index", "reference_labels", "coords", "mean", "components", "reference_latents")


def _save(path: Path, p: Projection, meta: dict) -> None:
    from safetensors.numpy import save_file

    from core.io import atomic_write
    arrays = {k: np.ascontiguousarray(getattr(p, k)) for k in _ARRAYS if getattr(p, k) is not None}
    meta = {"projection": json.dumps({**meta, "method": p.method})}
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=meta))


def _load(path: Path, meta: dict, knn: int) -> Projection:
    """Load a cached projection; ValueError if it is corrupt or was made from other inputs/config."""
    from safetensors import SafetensorError, safe_open

    from core.errors import CheckpointError
    from core.reads import parse_json
    try:
        with safe_open(str(path), framework="numpy") as f:
            stored = parse_json((f.metadata() or {})["projection"], path)
            arrays = {k: f.get_tensor(k) for k in f.keys() if k in _ARRAYS}
    except SafetensorError as exc:
        raise ValueError(f"not a readable safetensors file: {exc}") from exc
    except CheckpointError as exc:   # its metadata: not JSON, or nested too deeply
        raise ValueError(str(exc)) from exc
    if {k: stored.get(k) for k in meta} != meta:
        raise ValueError("made with another config or from other latents")
    return Projection(stored["method"], knn=knn, **arrays)
