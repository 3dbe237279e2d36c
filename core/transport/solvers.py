"""Fixed-step ODE solvers for dx/dt = v(x, t) on a time grid from t_0 to 1 (data at t = 1).

Each solver counts its velocity evaluations (NFE) exactly and can call ``on_step`` after every step.
Written by hand rather than with torchdiffeq because guided sampling needs per-step access to the state,
the velocity and the predicted endpoint; torchdiffeq's dopri5 serves as the reference in tests.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.config import EVALS_PER_STEP, SOLVERS

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def time_grid(steps: int, t0: float = 0.0, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` increasing times from t0 to 1 (float64).

    ``shift`` > 1 spends more steps near the noise end, as SD3's shift does on σ = 1 - t:
    σ' = shift·σ / (1 + (shift - 1)·σ). shift = 1 is the uniform grid.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t0 < 1.0:
        raise ValueError(f"t0 must lie in [0, 1), got {t0}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(t0, 1.0, steps + 1, dtype=torch.float64)
    sigma = 1.0 - t
    sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return 1.0 - sigma


def step(method: str, velocity: Velocity, x: torch.Tensor, t: float, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``method``; returns (x_next, velocity at (x, t)) — the latter for trajectory records."""
    v1 = velocity(x, t)
    if method == "euler":
        return x + dt * v1, v1
    if method == "heun":
        v2 = velocity(x + dt * v1, t + dt)
        return x + 0.5 * dt * (v1 + v2), v1
    if method == "midpoint":
        v2 = velocity(x + 0.5 * dt * v1, t + 0.5 * dt)
        return x + dt * v2, v1
    if method == "rk4":
        v2 = velocity(x + 0.5 * dt * v1, t + 0.5 * dt)
        v3 = velocity(x + 0.5 * dt * v2, t + 0.5 * dt)
        v4 = velocity(x + dt * v3, t + dt)
        return x + dt / 6.0 * (v1 + 2 * v2 + 2 * v3 + v4), v1
    raise ValueError(f"unknown solver {method!r}; choose one of {', '.join(SOLVERS)}")


def integrate(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, method: str = "euler",
              on_step: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, int]:
    """Integrate from times[0] to times[-1]. Returns (x at the end, NFE).

    ``on_step(i, t_i, x_i, v_i)`` is called with the state and velocity at the start of each step.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; choose one of {', '.join(SOLVERS)}")
    nfe = 0
    for i in range(len(times) - 1):
        t, dt = float(times[i]), float(times[i + 1] - times[i])
        x_next, v = step(method, velocity, x, t, dt)
        nfe += EVALS_PER_STEP[method]
        if on_step is not None:
            on_step(i, t, x, v)
        x = x_next
    return x, nfe
