"""A class- and time-conditional residual MLP on flattened latents.

Used as the velocity model of the flow (core/flow.py) and, at the same size, as the noise predictor of
the diffusion counterpart. On the 4x8x8 latents of the embedded default an MLP trains and samples 10-40x
faster on CPU than a small ``UNet2DModel`` (MACHINE-NOTES.md), and conditions through adaLN (scale,
shift, gate per block) as DiT does. Inputs: x (B, C, H, W), t (B,) float in [0, 1], y (B,) int64 with
``num_classes`` as the null (unconditional) id.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class LatentMLPConfig:
    latent_shape: tuple[int, int, int] = (4, 8, 8)
    num_classes: int = 10
    width: int = 512
    hidden: int = 1024
    depth: int = 4
    emb_dim: int = 256
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. the VAE fingerprint)

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(s) for s in self.latent_shape)  # type: ignore[assignment]


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (multiplied by ``scale``), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _Block(nn.Module):
    def __init__(self, width: int, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))
        self.modulation = nn.Linear(emb_dim, 3 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(emb).chunk(3, dim=1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class LatentMLP(nn.Module):
    def __init__(self, config: LatentMLPConfig):
        super().__init__()
        self.config = config
        dim = int(math.prod(config.latent_shape))
        self.input = nn.Linear(dim, config.width)
        self.time_mlp = nn.Sequential(nn.Linear(config.emb_dim, config.emb_dim), nn.SiLU(),
                                      nn.Linear(config.emb_dim, config.emb_dim))
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.emb_dim)
        self.blocks = nn.ModuleList(_Block(config.width, config.hidden, config.emb_dim) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(config.width, elementwise_affine=False)
        self.out_modulation = nn.Linear(config.emb_dim, 2 * config.width)
        self.output = nn.Linear(config.width, dim)
        for layer in (self.out_modulation, self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.config.latent_shape:
            raise ValueError(f"model expects latents of shape (B, {', '.join(map(str, self.config.latent_shape))}), "
                             f"got {tuple(x.shape)}")
        emb = nn.functional.silu(self.time_mlp(timestep_embedding(t, self.config.emb_dim).to(x.dtype))
                                 + self.class_embedding(y))
        h = self.input(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.out_modulation(emb).chunk(2, dim=1)
        return self.output(self.out_norm(h) * (1 + scale) + shift).view_as(x)

    def config_dict(self) -> dict:
        return asdict(self.config)
