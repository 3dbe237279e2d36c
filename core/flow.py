"""Class-conditional flow matching in latent space (DESIGN.md section 2).

Time t in [0, 1]: x_0 ~ N(0, I) is noise, x_1 = z is data, x_t = (1 - t) x_0 + t x_1, target velocity
u = x_1 - x_0. Labels are dropped to the null id with probability ``label_dropout`` so that
classifier-free guidance v = v_null + w (v_y - v_null) is available (w = 1: none).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from core.io import save_model_folder
from core.latent_mlp import LatentMLP, load_latent_mlp
from core.latents import LatentSet
from core.solvers import integrate, time_grid
from core.training import LatentModelTrainConfig, train_latent_model

KIND = "distill-studio/flow-mlp"
SIT_KIND = "distill-studio/flow-sit"  # a SiT trained by train-flow --model sit-*: config.json + model.safetensors
FIX = "train one for this VAE and dataset with `python -m core train-flow --out DIR`"


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
              num_classes: int | None = None) -> torch.nn.Module:
    """Load a saved flow model; checks its latent shape and class count against the data's when given.

    The project's LatentMLP folder gives a LatentMLP; a SiT folder written by ``train-flow --model sit-*``
    (kind ``SIT_KIND``) gives a ``core.velocity_models.VelocityAdapter`` around the SiT (same call and
    attributes)."""
    from core.io import MODEL_CONFIG, read_json

    config = Path(path) / MODEL_CONFIG
    if config.is_file():
        meta = read_json(config)
        if isinstance(meta, dict) and meta.get("kind") == SIT_KIND:
            from core.velocity_models import load_sit_flow

            return load_sit_flow(path, device, latent_shape, num_classes)
    return load_latent_mlp(path, KIND, FIX, device, latent_shape, num_classes)


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------

def train_flow(config: LatentModelTrainConfig, latents: LatentSet, out: str | Path, resume: bool = True,
               log: Callable[[str], None] = print, provenance: dict | None = None) -> torch.nn.Module:
    """Train a flow model on ``latents`` with the flow-matching loss; EMA weights are saved to ``out``.

    ``config.model``: "mlp" (a LatentMLP folder, kind ``KIND``) or a SiT preset (kind ``SIT_KIND``); both load
    with ``load_flow`` and ``core.velocity_models.load_velocity_model``. Returns the EMA network itself."""
    kind = KIND if config.model == "mlp" else SIT_KIND
    return train_latent_model(config, latents, out, flow_matching_loss, kind, "train-flow", resume, log, provenance)
