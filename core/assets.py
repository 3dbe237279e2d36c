"""The embedded default: where the shipped models live and how to load them together."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent.parent / "assets"
VAE_DIR, FLOW_DIR, TEACHER_DIR = ASSETS / "vae", ASSETS / "flow", ASSETS / "teacher"
DIFFUSION_DIR = ASSETS / "diffusion"


@dataclass
class ModelSpec:
    """Which models to use: folders (or a diffusers hub id for the VAE)."""

    vae: str = str(VAE_DIR)
    flow: str = str(FLOW_DIR)
    teacher: str = str(TEACHER_DIR)
    diffusion: str = str(DIFFUSION_DIR)
    device: str = "cpu"


def load_vae(spec: ModelSpec):
    from core.autoencoder import LatentAutoencoder

    return LatentAutoencoder.from_pretrained(spec.vae, device=spec.device)


def load_teacher(spec: ModelSpec):
    from core.teacher import Teacher

    return Teacher.load(spec.teacher, device=torch.device(spec.device))


def load_flow_for(spec: ModelSpec, latent_shape: tuple[int, ...], num_classes: int):
    from core.flow import load_flow

    return load_flow(spec.flow, spec.device, latent_shape, num_classes)
