"""Guided few-step sampling of a class-conditional flow model (PGFM; unguided when λ = 0).

Time runs from t_0 to 1 (data at t = 1). Noise is drawn on the CPU from the seed, so a seed gives the
same samples on every device. With a warm start t_0 > 0 the ODE starts at x_{t_0} = (1 - t_0) ε + t_0 p,
a point of the conditional path to the prototype p.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from core.config import SAMPLER_DTYPES, SamplerConfig
from core.transport.guidance import guided_velocity, rms_distance
from core.transport.path import cfg_velocity
from core.transport.solvers import step, time_grid

DTYPES = {name: getattr(torch, name) for name in SAMPLER_DTYPES}


@dataclass
class Trajectories:
    """Per-step records. times (S+1,); states (S+1, B, ...); endpoints x̂_1 (S, B, ...) at the start of
    each step; endpoint_distance (S, B) = RMS distance of x̂_1 to the prototype (NaN without prototypes)."""

    times: torch.Tensor
    states: torch.Tensor
    endpoints: torch.Tensor
    endpoint_distance: torch.Tensor


@dataclass
class SampleResult:
    latents: torch.Tensor                  # (B, *latent_shape), float32, CPU
    nfe: int                               # model evaluations per sample
    seconds: float
    landing_error: torch.Tensor | None     # (B,) RMS distance of x_1 to its prototype
    trajectories: Trajectories | None = None


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def check_noise(noise: torch.Tensor, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``noise`` as float32 after checking that it has shape (n, *shape)."""
    if tuple(noise.shape) != (n, *shape):
        raise ValueError(f"noise must have shape ({n}, {', '.join(map(str, shape))}) (one per sample), "
                         f"got {tuple(noise.shape)}")
    return noise.float()


def _check_inputs(model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None,
                  config: SamplerConfig) -> None:
    shape, num_classes = tuple(model.config.latent_shape), int(model.config.num_classes)
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) for this model, got [{labels.min()}, {labels.max()}]")
    if prototypes is not None:
        if tuple(prototypes.shape) != (len(labels), *shape):
            raise ValueError(f"prototypes must have shape ({len(labels)}, {', '.join(map(str, shape))}) "
                             f"(one per sample), got {tuple(prototypes.shape)}")
        if not torch.isfinite(prototypes).all():
            raise ValueError("prototypes contain NaN or infinite values")
    elif config.t0 > 0 or config.guidance.active:
        raise ValueError("a warm start (t0 > 0) or guidance (λ > 0) needs prototypes")


def sample(model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None = None,
           config: SamplerConfig = SamplerConfig(), record: bool = False,
           noise: torch.Tensor | None = None) -> SampleResult:
    """Sample one latent per label, guided toward ``prototypes`` (B, *latent_shape) when λ > 0.

    ``noise`` (B, *latent_shape): the initial noise to use instead of ``initial_noise(B, shape,
    config.seed)``; a caller that samples rows of a larger batch (core.pipeline.distributed) passes those rows of
    the batch's noise, so that they come out as they would in the whole batch.
    """
    _check_inputs(model, labels, prototypes, config)
    device = next(model.parameters()).device
    shape = tuple(model.config.latent_shape)
    noise = check_noise(noise, len(labels), shape) if noise is not None else initial_noise(len(labels), shape, config.seed)
    times = time_grid(config.steps, config.t0, config.time_shift)
    amp = (torch.autocast(device.type, dtype=DTYPES[config.dtype]) if config.dtype != "float32" else nullcontext())
    methods = config.step_methods()
    t_begin = time.perf_counter()
    finals, records = [], []
    for start in range(0, len(labels), config.batch_size):
        y = labels[start:start + config.batch_size].to(device)
        p = None if prototypes is None else prototypes[start:start + config.batch_size].to(device).float()
        x = noise[start:start + config.batch_size].to(device)
        if config.t0 > 0:
            x = (1 - config.t0) * x + config.t0 * p
        stash: dict[str, torch.Tensor] = {}

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            with amp:
                v = cfg_velocity(model, x, t, y, config.cfg_scale).float()
            v_guided, endpoint = guided_velocity(v, x, t, p, config.guidance)
            stash.setdefault("endpoint", endpoint)  # first evaluation of a step is at (x_i, t_i)
            return v_guided

        states, endpoints = [x.cpu()] if record else [], []
        with torch.inference_mode():
            for i in range(config.steps):
                stash.clear()
                t, dt = float(times[i]), float(times[i + 1] - times[i])
                x, _ = step(methods[i], velocity, x, t, dt)
                if record:
                    states.append(x.cpu())
                    endpoints.append(stash["endpoint"].cpu())
        finals.append(x.float().cpu())
        if record:
            records.append((torch.stack(states), torch.stack(endpoints)))
    latents = torch.cat(finals)
    seconds = time.perf_counter() - t_begin
    landing = rms_distance(latents, prototypes.float()) if prototypes is not None else None
    trajectories = None
    if record:
        states, endpoints = torch.cat([r[0] for r in records], 1), torch.cat([r[1] for r in records], 1)
        if prototypes is not None:
            distance = torch.stack([rms_distance(e, prototypes.float()) for e in endpoints])
        else:
            distance = torch.full(endpoints.shape[:2], float("nan"))
        trajectories = Trajectories(times.float(), states, endpoints, distance)
    return SampleResult(latents, config.nfe, seconds, landing, trajectories)
