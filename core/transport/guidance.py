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
from dataclasses import dataclass

import torch

SCHEDULES = ("constant", "linear", "cosine")


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class GuidanceConfig:
    """strength λ >= 0; window 0 <= t_start <= t_stop <= 1; trust_radius r > 0 or None (no trust region)."""

    strength: float = 0.0
    schedule: str = "constant"
    t_start: float = 0.0
    t_stop: float = 0.8
    trust_radius: float | None = None
    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_finite("guidance strength λ", self.strength)
        if self.strength < 0:
            raise ValueError(f"guidance strength λ must be >= 0, got {self.strength}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check_finite("t_start", self.t_start)
        _check_finite("t_stop", self.t_stop)
        if not 0.0 <= self.t_start <= self.t_stop <= 1.0:
            raise ValueError(f"guidance window needs 0 <= t_start <= t_stop <= 1, got [{self.t_start}, {self.t_stop}]")
        if self.trust_radius is not None:
            _check_finite("trust radius r", self.trust_radius)
            if self.trust_radius <= 0:
                raise ValueError(f"trust radius r must be > 0 (or None for no trust region), got {self.trust_radius}")
        _check_finite("eps", self.eps)
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")

    @property
    def active(self) -> bool:
        return self.strength > 0


def guidance_weight(t: float, config: GuidanceConfig) -> float:
    """λ(t): the schedule's value inside [t_start, t_stop], 0 outside."""
    if not config.active or t < config.t_start or t > config.t_stop:
        return 0.0
    span = config.t_stop - config.t_start
    u = 0.0 if span == 0 else (t - config.t_start) / span
    if config.schedule == "constant":
        return config.strength
    if config.schedule == "linear":
        return config.strength * (1.0 - u)
    return config.strength * 0.5 * (1.0 + math.cos(math.pi * u))


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
