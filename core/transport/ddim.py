"""Diffusion counterpart for the efficiency comparison: an ε-prediction model of the flow model's size.

Same network (LatentMLP), same latents, same training loop; diffusers ``DDPMScheduler`` (cosine betas,
1000 steps) defines the forward process for training and ``DDIMScheduler`` (η = 0, trailing spacing)
samples. Timesteps k ∈ {0..999} enter the network as they are (DDPM's sinusoidal embedding of k).

Distillation modes toward a prototype p (a clean latent):
- ``d4m``: prototype warm start, as img2img "strength" s: noise p to the DDIM timestep at fraction s of
  the schedule and denoise from there (s = 1: pure noise; the analogue of PGFM's t_0 = 1 - s).
- ``mg``: mode guidance (MGD3-style): at each step the predicted clean latent x̂_0 is pulled toward p,
  x̂_0 ← x̂_0 + λ (p - x̂_0), and ε is recomputed from it; applied on the first ``stop`` fraction of steps.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from core.config import DiffusionSamplerConfig
from core.transport.guidance import rms_distance
from core.transport.path import cfg_velocity as cfg_prediction  # the CFG mix is the same for ε as for v
from core.transport.sampler import DTYPES, SampleResult, check_noise, initial_noise

TRAIN_TIMESTEPS = 1000


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False, prediction_type="epsilon")


def sampling_scheduler(x0_clip: float | None = None) -> DDIMScheduler:
    """DDIM over the training schedule, trailing spacing (the first step is at k = 999, pure noise).

    Under the capped cosine schedule ᾱ_999 ≈ 2e-9, so the x̂_0 implied by ε at the first step is
    ill-conditioned (an ε error of 0.07 becomes ~1500 in x̂_0). Clipping x̂_0 to ±``x0_clip`` (diffusers'
    ``clip_sample``) keeps it in the data's range: the embedded default's standardised latents stay within
    ±3 (max |z| = 2.97 on the training set)."""
    return DDIMScheduler.from_config(training_scheduler().config, clip_sample=x0_clip is not None,
                                     clip_sample_range=x0_clip or 1.0, set_alpha_to_one=True,
                                     timestep_spacing="trailing")


def diffusion_timesteps(config: DiffusionSamplerConfig) -> torch.Tensor:
    """The DDIM timesteps ``config`` runs (d4m: the last ``strength`` fraction of them); ``config.nfe`` long."""
    scheduler = sampling_scheduler(config.x0_clip)
    scheduler.set_timesteps(config.steps)
    timesteps = scheduler.timesteps
    if config.mode == "d4m":
        timesteps = timesteps[config.steps - config.nfe:]
    return timesteps


def epsilon_loss(model: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                 label_dropout: float = 0.1) -> torch.Tensor:
    """E ||ε_θ(x_k, k, y) - ε||² with k uniform over the training timesteps and labels dropped to null."""
    scheduler = training_scheduler()
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    k = torch.randint(0, TRAIN_TIMESTEPS, (len(x0),), generator=generator)
    if label_dropout > 0:
        drop = torch.rand(len(y), generator=generator) < label_dropout
        y = torch.where(drop.to(y.device), torch.full_like(y, model.null_class), y)
    xk = scheduler.add_noise(x0, noise.to(x0.device), k)
    return F.mse_loss(model(xk, k.to(x0.device).float(), y), noise.to(x0.device))


def sample_diffusion(model: torch.nn.Module, labels: torch.Tensor, prototypes: torch.Tensor | None = None,
                     config: DiffusionSamplerConfig = DiffusionSamplerConfig(),
                     noise: torch.Tensor | None = None) -> SampleResult:
    """DDIM samples (one per label); toward ``prototypes`` (B, *latent_shape) in modes d4m and mg.

    ``noise`` (B, *latent_shape) replaces ``initial_noise(B, shape, config.seed)`` (see core.transport.sampler.sample).
    """
    shape = tuple(model.config.latent_shape)
    if config.mode != "plain":
        if prototypes is None or tuple(prototypes.shape) != (len(labels), *shape):
            raise ValueError(f"mode {config.mode!r} needs prototypes of shape ({len(labels)}, "
                             f"{', '.join(map(str, shape))}), got {None if prototypes is None else tuple(prototypes.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= model.config.num_classes):
        raise ValueError(f"labels must lie in [0, {model.config.num_classes}) for this model")
    device = next(model.parameters()).device
    scheduler = sampling_scheduler(config.x0_clip)
    scheduler.set_timesteps(config.steps)
    timesteps = diffusion_timesteps(config)
    guided_steps = math.floor(config.stop * len(timesteps)) if config.mode == "mg" else 0
    alphas = scheduler.alphas_cumprod
    noise = check_noise(noise, len(labels), shape) if noise is not None else initial_noise(len(labels), shape, config.seed)
    amp = torch.autocast(device.type, dtype=DTYPES[config.dtype]) if config.dtype != "float32" else nullcontext()
    t_begin = time.perf_counter()
    finals = []
    with torch.inference_mode():
        for start in range(0, len(labels), config.batch_size):
            y = labels[start:start + config.batch_size].to(device)
            x = noise[start:start + config.batch_size].to(device)
            p = None if prototypes is None else prototypes[start:start + config.batch_size].to(device).float()
            if config.mode == "d4m":
                x = scheduler.add_noise(p, x, timesteps[:1].repeat(len(x)))
            for i, k in enumerate(timesteps):
                with amp:
                    eps = cfg_prediction(model, x, float(k), y, config.cfg_scale).float()
                if i < guided_steps:
                    a = alphas[int(k)].to(device)
                    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
                    if config.x0_clip is not None:
                        x0 = x0.clamp(-config.x0_clip, config.x0_clip)
                    x0 = x0 + config.guidance * (p - x0)
                    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
                x = scheduler.step(eps, int(k), x, eta=0.0).prev_sample
            finals.append(x.float().cpu())
    latents = torch.cat(finals)
    landing = rms_distance(latents, prototypes.float()) if prototypes is not None else None
    return SampleResult(latents, len(timesteps), time.perf_counter() - t_begin, landing)
