"""Distribution metrics in a feature space (DESIGN.md section 4)."""
from __future__ import annotations

import numpy as np
import torch


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
    mu_a, cov_a = _mean_cov(np.asarray(features_a))
    mu_b, cov_b = _mean_cov(np.asarray(features_b))
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
    eva, eve = np.linalg.eigh(cov_a)
    sqrt_a = (eve * np.sqrt(np.clip(eva, 0, None))) @ eve.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
