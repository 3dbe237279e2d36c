"""Differentiable-siamese-style augmentation (DSA, Zhao & Bilen 2021) for student training.

The DSA strategy "color_crop_cutout_flip_scale_rotate" on a batch (B, C, H, W) in [-1, 1]: brightness,
saturation and contrast jitter, random translation (crop), cutout, horizontal flip, scale and rotation.
One random draw per sample, from a seeded generator. Written with plain torch ops (affine_grid /
grid_sample) because no maintained library ships the DSA parameterisation used in this literature.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dsa_augment(x: torch.Tensor, generator: torch.Generator, ratio_crop: float = 0.125,
                ratio_cutout: float = 0.5, ratio_scale: float = 1.2, ratio_rotate: float = 15.0) -> torch.Tensor:
    b, c = x.shape[:2]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device)

    # colour: brightness, saturation, contrast (as DSA: applied in the image's own range)
    x = x + (rand(b, 1, 1, 1) - 0.5)
    if c > 1:
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * (rand(b, 1, 1, 1) * 2) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (rand(b, 1, 1, 1) + 0.5) + mean
    # scale, rotation, flip and translation as one affine warp
    sx = rand(b) * (ratio_scale - 1 / ratio_scale) + 1 / ratio_scale
    sy = rand(b) * (ratio_scale - 1 / ratio_scale) + 1 / ratio_scale
    angle = (rand(b) - 0.5) * 2 * ratio_rotate * math.pi / 180
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
    tx, ty = (rand(b) - 0.5) * 4 * ratio_crop, (rand(b) - 0.5) * 4 * ratio_crop
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * sx * flip, -sin * sy, tx], 1),
                         torch.stack([sin * sx * flip, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    # cutout: one square per image set to 0 (the middle of the range)
    h, w = x.shape[-2:]
    ch, cw = int(h * ratio_cutout / 2), int(w * ratio_cutout / 2)
    cy = (rand(b) * (h - ch)).long().view(b, 1, 1)
    cx = (rand(b) * (w - cw)).long().view(b, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= cy) & (rows < cy + ch) & (cols >= cx) & (cols < cx + cw)
    return x.masked_fill(hole[:, None], 0.0)
