"""Training loop shared by the latent generative models (flow matching and the diffusion counterpart).

AdamW with warm-up and cosine decay, gradient clipping, EMA weights, label dropout for CFG, and a
resumable checkpoint (weights, EMA, optimiser, schedule, RNG, step) written atomically to
``out/checkpoint.pt`` and read back with ``weights_only=True``. The EMA weights are saved to ``out``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.device import seed_everything
from core.errors import CheckpointError
from core.io import atomic_write, save_model_folder, write_json
from core.latent_mlp import LatentMLP, LatentMLPConfig
from core.latents import LatentSet

# objective(model, x1, y, generator, label_dropout) -> scalar loss
Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator, float], torch.Tensor]


@dataclass
class LatentModelTrainConfig:
    steps: int = 8000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    width: int = 512
    hidden: int = 1024
    depth: int = 4
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 0


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def train_latent_model(config: LatentModelTrainConfig, latents: LatentSet, out: str | Path, objective: Objective,
                       kind: str, name: str, resume: bool = True, log: Callable[[str], None] = print,
                       provenance: dict | None = None) -> LatentMLP:
    """Train a LatentMLP on ``latents`` to minimise ``objective``; returns (and saves) the EMA model."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    model = LatentMLP(LatentMLPConfig(latents.latent_shape, latents.num_classes, config.width, config.hidden,
                                      config.depth, extra=dict(provenance or {})))
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    out = Path(out)
    ckpt = out / "checkpoint.pt"
    start = 0
    if resume and ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            start = int(state["step"])
        except Exception as exc:  # noqa: BLE001 - unpickling, key and shape errors alike mean 'cannot resume'
            raise CheckpointError(f"{ckpt}: cannot resume from this checkpoint ({exc}); delete it to start afresh "
                                  "or pass --no-resume") from exc
        log(f"resuming from {ckpt} at step {start}")

    def save_checkpoint(step: int) -> None:
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "generator": generator.get_state(), "step": step}
        atomic_write(ckpt, lambda p: torch.save(state, p))

    x_all, y_all = latents.latents, torch.from_numpy(latents.labels)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(start, config.steps), desc=name, unit="step", mininterval=5, initial=start,
               total=config.steps)
    for step in bar:
        idx = torch.randint(0, len(x_all), (config.batch_size,), generator=generator)
        loss = objective(model, x_all[idx], y_all[idx], generator, config.label_dropout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        _ema_update(ema, model, config.ema_decay if step >= config.warmup else 0.0)
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(step + 1)
    seconds = time.perf_counter() - t0
    save_model_folder(out, kind, ema.config_dict(), ema.eval().state_dict(), dtype=torch.float16)
    write_json(out / "training.json", {"config": asdict(config), "train_seconds_this_run": round(seconds, 1),
                                       "final_loss_avg100": round(float(np.mean(losses[-100:])), 5) if losses else None,
                                       "provenance": provenance or {}, "torch": torch.__version__})
    log(f"{name}: EMA weights saved to {out}; resumable checkpoint at {ckpt}")
    return ema
