"""PGFM guidance (DESIGN.md section 3): endpoint correction toward a prototype, schedule, trust region.

For a sample with prototype p at state x and time t (data at t = 1), with the model velocity v:

    x̂_1 = x + (1 - t) v                         predicted endpoint
    c   = λ(t) · (p - x̂_1)                      endpoint correction
    c   = c · min(1, r·sqrt(d) / ||c||)          trust region: at most r latent-RMS units per sample
    ṽ   = v + c / max(1 - t, ε)

λ(t) follows a schedule (constant, linear decay, cosine decay) on the window [t_start, t_stop] and is 0
outside it. λ ≡ 0 returns v itself (bit for bit); λ ≡ 1 without trust region is the straight path to p.
"""
from __future__ import annotations

import math

import torch

from core.config import GuidanceConfig, guidance_weight


def trust_region(correction: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Scale each sample's correction so that ||c|| <= r·sqrt(d) (d = elements per sample)."""
    if radius is None:
        return correction
    d = correction[0].numel()
    norm = correction.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (radius * math.sqrt(d) / norm).clamp(max=1.0)
    return correction * scale.view(-1, *([1] * (correction.ndim - 1)))


def guided_velocity(v: torch.Tensor, x: torch.Tensor, t: float, prototypes: torch.Tensor | None,
                    config: GuidanceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(ṽ, x̂_1) for model velocity ``v`` at state ``x`` and time ``t``; ṽ is ``v`` itself when λ(t) = 0."""
    endpoint = x + (1.0 - t) * v
    lam = guidance_weight(t, config) if prototypes is not None else 0.0
    if lam == 0.0:
        return v, endpoint
    correction = trust_region(lam * (prototypes - endpoint), config.trust_radius)
    return v + correction / max(1.0 - t, config.eps), endpoint


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ||a - b|| / sqrt(d): distance in latent RMS units, shape (B,)."""
    return (a - b).flatten(1).norm(dim=1) / math.sqrt(a[0].numel())
