"""Distances between latents and prototypes: squared Euclidean distances (chunked) and the exact
Wasserstein-2 distance (POT) between a class's real latents and a weighted or uniform quantizer."""
from __future__ import annotations

import numpy as np
import torch


def _as_matrix(latents: torch.Tensor | np.ndarray, name: str = "latents", dtype=np.float32) -> np.ndarray:
    """(N, *shape) tensor/array -> C-contiguous (N, d) of ``dtype`` (may share memory with the input)."""
    if isinstance(latents, torch.Tensor):
        latents = latents.detach().cpu()
        latents = (latents if latents.dtype in (torch.float32, torch.float64) else latents.float()).numpy()
    array = np.asarray(latents, dtype=dtype)
    if array.ndim < 2:
        raise ValueError(f"{name} must have shape (N, *latent_shape), got {tuple(array.shape)}")
    return np.ascontiguousarray(array.reshape(len(array), -1))


def squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """float64 (n, K) squared Euclidean distances between rows of x (n, d) and centres (K, d)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def wasserstein2(real: np.ndarray | torch.Tensor, prototypes: np.ndarray | torch.Tensor,
                 weights: np.ndarray | None = None, cost: np.ndarray | None = None) -> float:
    """Exact W2 between real points (uniform mass) and sum_k w_k δ(c_k) (uniform 1/K when weights is None).

    Squared-Euclidean cost, POT's network simplex; returns sqrt(optimal cost). ``cost`` (n, K) may be
    passed when already computed.
    """
    import ot

    if cost is None:
        cost = squared_distances(_as_matrix(real, dtype=np.float64),
                                 _as_matrix(prototypes, "prototypes", dtype=np.float64))
    n, k = cost.shape
    a = np.full(n, 1.0 / n)
    if weights is None:
        b = np.full(k, 1.0 / k)
    else:
        b = np.asarray(weights, dtype=np.float64)
        if b.shape != (k,) or not np.all(np.isfinite(b)) or (b < 0).any() or b.sum() <= 0:
            raise ValueError(f"weights must be {k} finite non-negative numbers with a positive sum")
        b = b / b.sum()
    value, log = ot.emd2(a, b, np.ascontiguousarray(cost), numItermax=max(1_000_000, 50 * n * k), log=True)
    if log.get("warning"):
        raise RuntimeError(f"exact OT did not converge: {log['warning']}")
    return float(np.sqrt(max(float(value), 0.0)))


def _w2_weighted_uniform(cost: np.ndarray, weights: np.ndarray, method: str) -> tuple[float, float]:
    """(weighted, uniform) W2 from a cost matrix; they coincide unless DDOQ weights are in play."""
    uniform = wasserstein2(None, None, cost=cost)
    return (wasserstein2(None, None, weights=weights, cost=cost) if method == "ddoq" else uniform), uniform
