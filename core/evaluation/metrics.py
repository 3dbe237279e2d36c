"""Distribution metrics in a feature space (DESIGN.md section 4).

Fréchet distance; PRDC (Naeem et al. 2020) with cacheable real k-NN radii; per-class mode coverage;
diversity (mean pairwise distance); landing error in latent RMS units. Features are (N, D) numpy arrays
or torch tensors; distance-heavy work runs in float32 on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from core.transport.guidance import rms_distance


def _mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N >= 2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID-style Fréchet distance between Gaussians fitted to two feature sets (N, D).

    d² = |μa - μb|² + tr(Σa + Σb - 2 (Σa^½ Σb Σa^½)^½); the trace term uses symmetric eigen-
    decompositions (stable and faster than scipy.linalg.sqrtm for D in the thousands).
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1] and min(len(a), len(b)) >= 2 \
            and len(a) < a.shape[1]:
        # fewer samples than dimensions: the same d² from n x n matrices. With X the centred features,
        # Σ = XᵀX / (n-1); the non-zero eigenvalues of Σa Σb (whose square roots the trace term sums) are
        # those of Xa Σb Xaᵀ / (na-1), an na x na matrix (exact, not an approximation).
        xa, xb = a - a.mean(0), b - b.mean(0)
        cross = xa @ xb.T                                  # (na, nb)
        gram = cross @ cross.T / ((len(a) - 1) * (len(b) - 1))
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0, None)).sum()
        traces = (xa ** 2).sum() / (len(a) - 1) + (xb ** 2).sum() / (len(b) - 1)
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + traces - 2 * trace_sqrt)
    mu_a, cov_a = _mean_cov(a)
    mu_b, cov_b = _mean_cov(b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
    eva, eve = np.linalg.eigh(cov_a)
    sqrt_a = (eve * np.sqrt(np.clip(eva, 0, None))) @ eve.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------

Array = np.ndarray | torch.Tensor


def _features(name: str, x: Array, min_rows: int = 1) -> torch.Tensor:
    """(N, D) float32 CPU tensor view of a numpy/torch feature matrix; ValueError on shape or NaN/inf."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) feature matrix, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
    if len(t) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got {len(t)}")
    t = t.to(device="cpu", dtype=torch.float32)
    # fast path: a finite sum rules out NaN/inf (which propagate); only otherwise check element-wise
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _same_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {name_a} has D={a.shape[1]}, {name_b} has D={b.shape[1]}")


def _row_chunk(n_cols: int, budget: int = 1 << 23) -> int:
    """Rows per chunk so that a chunk of a (rows, n_cols) float32 matrix stays under ~32 MB."""
    return max(1, budget // max(1, n_cols))


def _distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor, a_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) via ||a||² + ||b||² - 2 a·b in float32, clamped at 0."""
    d2 = torch.addmm(b_sq.unsqueeze(0), a, b.T, beta=1.0, alpha=-2.0)
    d2.add_((a.square().sum(1) if a_sq is None else a_sq).unsqueeze(1))
    return d2.clamp_(min=0.0).sqrt_()


def _kth_nn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from every row of x (already centred) to its k-th nearest other row, shape (N,)."""
    n = len(x)
    x_sq = x.square().sum(1)
    radii = torch.empty(n, dtype=torch.float32)
    step = _row_chunk(n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        d = _distances(x[start:stop], x, x_sq)
        rows = torch.arange(stop - start)
        d[rows, rows + start] = float("inf")  # exclude self (by position, as the reference does)
        radii[start:stop] = torch.kthvalue(d, k, dim=1).values
    return radii


def _check_k(k: int, n: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n <= k:
        raise ValueError(f"{what} needs more than k = {k} samples for a k-th nearest neighbour, got {n}")


# ---------------------------------------------------------------------------------------------------------
# PRDC (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models")
# ---------------------------------------------------------------------------------------------------------


def real_radii(real_features: Array, k: int = 5) -> np.ndarray:
    """k-NN radii of the real set for `prdc`: distance of each real sample to its k-th nearest other
    real sample (self excluded), float32 (N,). Depends only on the real set: compute once and cache."""
    real = _features("real_features", real_features)
    _check_k(k, len(real), "real_features")
    real = real - real.mean(0)  # distances are shift-invariant; centring reduces float32 cancellation
    return _kth_nn_radii(real, k).numpy()


@dataclass(frozen=True)
class PreparedReal:
    """The real side of `prdc`, computed once per real set: its mean, the centred features (N, D) float32,
    their squared norms (N,) and k-NN radii (N,). Passing it skips every O(N·D) step but the one product
    with the fake features (the app scores a new set on every λ step against the same real set)."""

    centre: torch.Tensor
    features: torch.Tensor
    sq_norms: torch.Tensor
    radii: torch.Tensor
    k: int


def prepare_real(real_features: Array, k: int = 5, real_radii: Array | None = None) -> PreparedReal:
    """`PreparedReal` of a real feature matrix; ``real_radii`` (from `real_radii(real, k)`) skips the O(N²)
    real-real step and must have been computed with the same k."""
    real = _features("real_features", real_features)
    _check_k(k, len(real), "real_features")
    centre = real.mean(0)
    real = real - centre   # distances are shift-invariant; centring reduces float32 cancellation
    if real_radii is None:
        r = _kth_nn_radii(real, k)
    else:
        r = real_radii.detach() if isinstance(real_radii, torch.Tensor) else torch.as_tensor(np.asarray(real_radii))
        r = r.to(device="cpu", dtype=torch.float32)
        if r.shape != (len(real),):
            raise ValueError(f"real_radii must have shape ({len(real)},), got {tuple(r.shape)}")
        if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
            raise ValueError("real_radii must be finite and non-negative")
    return PreparedReal(centre, real, real.square().sum(1), r, k)


def prdc(real_features: Array | PreparedReal, fake_features: Array, k: int = 5,
         real_radii: Array | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage of fake (S, D) against real (N, D) features.

    Same definitions as the reference `prdc` package (k-NN radii exclude self; strict '<'):
      r_i = distance of real i to its k-th nearest real, s_j likewise within the fake set;
      precision = mean_j [exists i: d(i, j) < r_i]      recall   = mean_i [exists j: d(i, j) < s_j]
      density   = mean_j (1/k) #{i: d(i, j) < r_i}      coverage = mean_i [min_j d(i, j) < r_i]
    Distances in float32 (||a||² + ||b||² - 2ab, chunked). `real_radii` (N,) from `real_radii(real, k)`
    may be passed to skip the O(N²) real-real step; it must have been computed with the same k. Or pass a
    `PreparedReal` (`prepare_real`) as ``real_features``; its k is then used.
    """
    prepared = real_features if isinstance(real_features, PreparedReal) else prepare_real(real_features, k, real_radii)
    k, real, r = prepared.k, prepared.features, prepared.radii
    fake = _features("fake_features", fake_features)
    _same_dim("real_features", real, "fake_features", fake)
    _check_k(k, len(fake), "fake_features")
    fake = fake - prepared.centre
    s = _kth_nn_radii(fake, k)

    fake_sq = fake.square().sum(1)
    n_inside = torch.zeros(len(fake), dtype=torch.float64)  # per fake: #real balls containing it
    recalled = torch.empty(len(real), dtype=torch.bool)
    covered = torch.empty(len(real), dtype=torch.bool)
    step = _row_chunk(len(fake))
    for start in range(0, len(real), step):
        stop = min(len(real), start + step)
        d = _distances(real[start:stop], fake, fake_sq, prepared.sq_norms[start:stop])  # (chunk, S)
        inside = d < r[start:stop, None]
        n_inside += inside.sum(0, dtype=torch.float64)
        recalled[start:stop] = (d < s[None, :]).any(1)
        covered[start:stop] = d.min(1).values < r[start:stop]
    return dict(
        precision=float((n_inside > 0).double().mean()),
        recall=float(recalled.double().mean()),
        density=float(n_inside.mean() / k),
        coverage=float(covered.double().mean()),
    )


# ---------------------------------------------------------------------------------------------------------
# Mode coverage (DESIGN.md section 4)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassModes:
    """Per-class modes of the real features: centres[c] (M_c, D) float64, radii[c] (M_c,) float64,
    with M_c = min(num_modes, number of real samples of class c)."""

    centres: dict[int, np.ndarray]
    radii: dict[int, np.ndarray]
    num_features: int
    percentile: float = 95.0

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(sorted(self.centres))


@dataclass(frozen=True)
class CoverageResult:
    """Mode coverage of a synthetic set.

    covered[c]   (M_c,) bool: mode m of class c is covered by at least one synthetic sample of class c
                 (every fitted class is listed; a class absent from the synthetic set has all False).
    per_class[c] covered[c].mean() for every fitted class.
    overall      mean of per_class over the classes PRESENT in the synthetic set (so a partial or
                 single-class synthetic set is judged on what it tried to cover).
    overall_all_classes  mean over every fitted class (absent classes count 0): DESIGN.md's reading
                 when the synthetic set has every class.
    sample_mode (S,) int: index of the nearest mode centre within the sample's own class;
    sample_covered (S,) bool: that distance is within the mode's radius; sample_distance (S,) float.
    """

    covered: dict[int, np.ndarray]
    per_class: dict[int, float]
    present_classes: tuple[int, ...]
    overall: float
    overall_all_classes: float
    sample_mode: np.ndarray
    sample_covered: np.ndarray
    sample_distance: np.ndarray


def _labels(name: str, labels: Array, n: int) -> np.ndarray:
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {lab.shape}")
    if lab.dtype.kind not in "iub":
        if lab.dtype.kind == "f" and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integer class labels, got dtype {lab.dtype}")
    return lab.astype(np.int64)


def fit_modes(features: Array, labels: Array, num_modes: int = 10, seed: int = 0,
              percentile: float = 95.0) -> ClassModes:
    """Per class, k-means (scikit-learn, n_init=1, random_state=seed) of that class's real features
    (N, D) into min(num_modes, n_c) modes; a mode's radius is the `percentile` (default 95th, linear
    interpolation) of its members' Euclidean distances to the centre (0 for a memberless mode)."""
    from sklearn.cluster import KMeans

    if isinstance(num_modes, bool) or not isinstance(num_modes, (int, np.integer)) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive integer, got {num_modes!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    feats = _features("features", features).numpy()
    lab = _labels("labels", labels, len(feats))
    centres: dict[int, np.ndarray] = {}
    radii: dict[int, np.ndarray] = {}
    for c in np.unique(lab):
        x = feats[lab == c]
        m = min(num_modes, len(x))
        if m == 1:
            centre, assign = x.mean(0, keepdims=True, dtype=np.float64), np.zeros(len(x), dtype=np.int64)
        else:
            km = KMeans(n_clusters=m, n_init=1, random_state=seed).fit(x)
            centre, assign = km.cluster_centers_.astype(np.float64), km.labels_
        dist = np.linalg.norm(x.astype(np.float64) - centre[assign], axis=1)
        radii[int(c)] = np.array([np.percentile(dist[assign == j], percentile) if np.any(assign == j) else 0.0
                                  for j in range(m)])
        centres[int(c)] = centre
    return ClassModes(centres, radii, feats.shape[1], float(percentile))


def mode_coverage(modes: ClassModes, features: Array, labels: Array) -> CoverageResult:
    """Mode coverage of synthetic features (S, D) with class labels (S,), against fitted `modes`.

    A synthetic sample of class c covers mode m of class c if m is its nearest centre among class c's
    modes and its distance is <= that mode's radius. Every synthetic class must have fitted modes.
    """
    from scipy.spatial.distance import cdist

    feats = _features("features", features).numpy()
    if feats.shape[1] != modes.num_features:
        raise ValueError(f"feature dimensions differ: modes have D={modes.num_features}, features D={feats.shape[1]}")
    lab = _labels("labels", labels, len(feats))
    present = tuple(int(c) for c in np.unique(lab))
    unknown = sorted(set(present) - set(modes.centres))
    if unknown:
        raise ValueError(f"synthetic labels {unknown} have no fitted modes (fitted classes: {list(modes.classes)})")
    sample_mode = np.zeros(len(feats), dtype=np.int64)
    sample_distance = np.zeros(len(feats), dtype=np.float64)
    sample_covered = np.zeros(len(feats), dtype=bool)
    covered = {c: np.zeros(len(r), dtype=bool) for c, r in modes.radii.items()}
    for c in present:
        idx = np.flatnonzero(lab == c)
        d = cdist(feats[idx].astype(np.float64), modes.centres[c])  # (S_c, M_c)
        nearest = d.argmin(1)
        dist = d[np.arange(len(idx)), nearest]
        ok = dist <= modes.radii[c][nearest]
        sample_mode[idx], sample_distance[idx], sample_covered[idx] = nearest, dist, ok
        covered[c][nearest[ok]] = True
    per_class = {c: float(v.mean()) for c, v in covered.items()}
    return CoverageResult(
        covered=covered, per_class=per_class, present_classes=present,
        overall=float(np.mean([per_class[c] for c in present])) if present else float("nan"),
        overall_all_classes=float(np.mean(list(per_class.values()))),
        sample_mode=sample_mode, sample_covered=sample_covered, sample_distance=sample_distance,
    )


# ---------------------------------------------------------------------------------------------------------
# Diversity and landing error
# ---------------------------------------------------------------------------------------------------------


def diversity(x: Array) -> float:
    """Mean Euclidean distance over all distinct pairs i < j of samples x (N >= 2, ...), flattened per
    sample, computed in float64."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim < 2 or len(t) < 2:
        raise ValueError(f"diversity needs (N >= 2, ...) samples, got shape {tuple(t.shape)}")
    t = t.reshape(len(t), -1).to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("diversity input contains NaN or inf")
    return float(torch.pdist(t).mean())


def landing_errors(latents: Array, prototypes: Array) -> np.ndarray | torch.Tensor:
    """Per-sample ||x_1 - p|| / sqrt(d) (latent RMS units, d = elements per sample), shape (B,).

    Thin wrapper around core.transport.guidance.rms_distance with shape checks; returns a torch tensor for
    torch input and a numpy array otherwise.
    """
    as_torch = isinstance(latents, torch.Tensor)
    a = latents.detach() if as_torch else torch.as_tensor(np.asarray(latents))
    b = prototypes.detach() if isinstance(prototypes, torch.Tensor) else torch.as_tensor(np.asarray(prototypes))
    if a.ndim < 2 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"latents and prototypes must share a (B >= 1, ...) shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.double(), b.to(device=a.device, dtype=torch.float64)
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("landing_errors input contains NaN or inf")
    out = rms_distance(a, b)
    return out.to(latents.dtype if latents.is_floating_point() else torch.float64) if as_torch else out.numpy()
