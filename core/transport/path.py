"""Class-conditional flow matching in latent space (DESIGN.md section 2).

Time t in [0, 1]: x_0 ~ N(0, I) is noise, x_1 = z is data, x_t = (1 - t) x_0 + t x_1, target velocity
u = x_1 - x_0. Labels are dropped to the null id with probability ``label_dropout`` so that
classifier-free guidance v = v_null + w (v_y - v_null) is available (w = 1: none).
"""
from __future__ import annotations

import torch

from core.transport.solvers import integrate, time_grid


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


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------
