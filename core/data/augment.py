"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021) as its reference code evaluates students.

The strategy "color_crop_cutout_flip_scale_rotate" in the reference's default single mode (``aug_mode
'S'``): for every batch ONE of the six policies is drawn, then applied with parameters drawn per image
(students are trained with ``seed = -1``, so nothing is shared across the batch). The reference's ranges:

- color: brightness x + (u - 0.5), saturation (x - mean_c)·2u + mean_c (a no-op on one channel),
  contrast (x - mean)·(u + 0.5) + mean, with u ~ U(0, 1) per image and per transform;
- crop: an integer translation of up to round(0.125·size) pixels each way, zeros shifted in;
- cutout: a square of round(0.5·size) pixels set to 0, its centre anywhere in the image (clipped);
- flip: horizontal, probability 0.5;
- scale: x and y scaled by factors in [1/1.2, 1.2]; rotate: by up to ±15°; both as affine warps
  (``align_corners=True``, zeros outside).

Images are (B, C, H, W) in [-1, 1]; every draw comes from ``generator``, so a seed fixes the whole stream.
Written with plain torch ops because no maintained package ships the DSA parameterisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POLICIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def _uniform(generator: torch.Generator, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device=like.device, dtype=like.dtype)


def _color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = len(x)
    x = x + (_uniform(g, b, x).view(b, 1, 1, 1) - 0.5)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (_uniform(g, b, x).view(b, 1, 1, 1) * 2.0) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(g, b, x).view(b, 1, 1, 1) + 0.5) + mean


def _crop(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b,), generator=g)
    dx = torch.randint(-sw, sw + 1, (b,), generator=g)
    rows = torch.arange(h).view(1, h, 1) + dy.view(b, 1, 1)
    cols = torch.arange(w).view(1, 1, w) + dx.view(b, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).to(x.device)
    flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w).to(x.device)
    shifted = x.flatten(2).gather(2, flat.expand(-1, x.shape[1], -1)).view_as(x)
    return shifted * inside[:, None].to(x.dtype)


def _cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b,), generator=g).view(b, 1, 1)
    cx = torch.randint(0, w + (1 - cw % 2), (b,), generator=g).view(b, 1, 1)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    hole = ((rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch) & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw))
    return x.masked_fill(hole[:, None].to(x.device), 0.0)


def _flip(x: torch.Tensor, g: torch.Generator, prob: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=g) < prob).view(-1, 1, 1, 1).to(x.device)
    return torch.where(flip, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: torch.Tensor, g: torch.Generator, ratio: float = 1.2) -> torch.Tensor:
    b = len(x)
    sx = torch.rand(b, generator=g) * (ratio - 1.0 / ratio) + 1.0 / ratio
    sy = torch.rand(b, generator=g) * (ratio - 1.0 / ratio) + 1.0 / ratio
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta)


def _rotate(x: torch.Tensor, g: torch.Generator, degrees: float = 15.0) -> torch.Tensor:
    b = len(x)
    angle = (torch.rand(b, generator=g) - 0.5) * 2 * degrees / 180 * math.pi
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(b)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


TRANSFORMS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def dsa_augment(x: torch.Tensor, generator: torch.Generator, policy: str | None = None) -> torch.Tensor:
    """One DSA draw for the batch ``x`` (B, C, H, W): a policy of POLICIES (drawn from ``generator`` unless
    given), applied with per-image parameters. Returns a new tensor; ``x`` is not modified."""
    if policy is None:
        policy = POLICIES[int(torch.randint(len(POLICIES), (1,), generator=generator))]
    if policy not in TRANSFORMS:
        raise ValueError(f"DSA policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return TRANSFORMS[policy](x, generator).contiguous()
