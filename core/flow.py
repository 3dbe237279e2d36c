"""Class-conditional flow matching in latent space (DESIGN.md section 2).

Time t in [0, 1]: x_0 ~ N(0, I) is noise, x_1 = z is data, x_t = (1 - t) x_0 + t x_1, target velocity
u = x_1 - x_0. Labels are dropped to the null id with probability ``label_dropout`` so that
classifier-free guidance v = v_null + w (v_y - v_null) is available (w = 1: none).
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
from core.io import atomic_write, load_state_checked, read_model_folder, save_model_folder, write_json
from core.latent_mlp import LatentMLP, LatentMLPConfig
from core.latents import LatentSet
from core.solvers import integrate, time_grid

KIND = "distill-studio/flow-mlp"
FIX = "re-create it with `python -m core train-flow --out DIR`"


def flow_matching_loss(model: torch.nn.Module, x1: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                       label_dropout: float = 0.1, null_class: int | None = None) -> torch.Tensor:
    """E ||v(x_t, t, y) - (x_1 - x_0)||² with t ~ U(0, 1) and labels dropped to ``null_class``."""
    x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    t = torch.rand(len(x1), generator=generator).to(x1.device)
    if label_dropout > 0:
        drop = (torch.rand(len(y), generator=generator) < label_dropout).to(y.device)
        y = torch.where(drop, torch.full_like(y, model.null_class if null_class is None else null_class), y)
    tb = t.view(-1, *([1] * (x1.ndim - 1)))
    xt = (1 - tb) * x0 + tb * x1
    return (model(xt, t, y) - (x1 - x0)).pow(2).mean()


def cfg_velocity(model: torch.nn.Module, x: torch.Tensor, t: float | torch.Tensor, y: torch.Tensor,
                 cfg_scale: float = 1.0) -> torch.Tensor:
    """Velocity with classifier-free guidance; conditional and null passes share one batched forward."""
    tt = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(len(x)) if not torch.is_tensor(t) or t.ndim == 0 else t
    if cfg_scale == 1.0:
        return model(x, tt, y)
    null = torch.full_like(y, model.null_class)
    v = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]))
    v_cond, v_null = v.chunk(2)
    return v_null + cfg_scale * (v_cond - v_null)


@torch.inference_mode()
def sample_flow(model: torch.nn.Module, labels: torch.Tensor, steps: int = 10, cfg_scale: float = 2.0,
                solver: str = "euler", seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """Unguided class-conditional samples x_1 (B, *latent_shape) from seeded noise, on CPU."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), *model.config.latent_shape, generator=generator)
    times = time_grid(steps)
    out = []
    for i in range(0, len(labels), batch_size):
        y = labels[i:i + batch_size].to(device)
        x, _ = integrate(lambda x, t: cfg_velocity(model, x, t, y, cfg_scale), noise[i:i + batch_size].to(device),
                         times, solver)
        out.append(x.float().cpu())
    return torch.cat(out)


# -------------------------------------------------------------------------------------------------
# Saving and loading
# -------------------------------------------------------------------------------------------------

def save_flow(model: LatentMLP, out: str | Path) -> Path:
    return save_model_folder(out, KIND, model.config_dict(), model.state_dict())


def load_flow(path: str | Path, device: str | torch.device = "cpu", latent_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> LatentMLP:
    """Load a saved flow model; checks its latent shape and class count against the data's when given."""
    config, state = read_model_folder(path, KIND, FIX)
    config = LatentMLPConfig(**config)
    if latent_shape is not None and tuple(latent_shape) != config.latent_shape:
        raise CheckpointError(f"{path}: flow model was trained on latents of shape {config.latent_shape}, "
                              f"the data's are {tuple(latent_shape)}; train one for this VAE with `python -m core train-flow`")
    if num_classes is not None and num_classes != config.num_classes:
        raise CheckpointError(f"{path}: flow model has {config.num_classes} classes, the data has {num_classes}; "
                              "train one for this dataset with `python -m core train-flow`")
    model = LatentMLP(config)
    load_state_checked(model, state, path, FIX)
    return model.to(device).eval().requires_grad_(False)


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------

@dataclass
class FlowTrainConfig:
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


def train_flow(config: FlowTrainConfig, latents: LatentSet, out: str | Path, resume: bool = True,
               log: Callable[[str], None] = print, provenance: dict | None = None) -> LatentMLP:
    """Train a flow model on ``latents``; EMA weights are saved to ``out``.

    A resumable checkpoint (weights, EMA, optimiser, RNG, step) is written atomically to
    ``out/checkpoint.pt`` every ``checkpoint_every`` steps and read back with ``weights_only=True``.
    """
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
    bar = tqdm(range(start, config.steps), desc="train-flow", unit="step", mininterval=5, initial=start,
               total=config.steps)
    for step in bar:
        idx = torch.randint(0, len(x_all), (config.batch_size,), generator=generator)
        loss = flow_matching_loss(model, x_all[idx], y_all[idx], generator, config.label_dropout)
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
    save_flow(ema.eval(), out)
    write_json(out / "training.json", {"config": asdict(config), "train_seconds_this_run": round(seconds, 1),
                                       "final_loss_avg100": round(float(np.mean(losses[-100:])), 5) if losses else None,
                                       "provenance": provenance or {}, "torch": torch.__version__})
    log(f"flow model (EMA weights) saved to {out}; resumable checkpoint at {ckpt}")
    return ema
