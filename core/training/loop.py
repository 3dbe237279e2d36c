"""Training loop shared by the latent generative models (flow matching and the diffusion counterpart).

AdamW with warm-up and cosine decay, gradient clipping, EMA weights, label dropout for CFG, and a
resumable checkpoint (weights, EMA, optimiser, schedule, RNG, step; the loss scaler under fp16) written
atomically to ``out/checkpoint.pt`` and read back with ``weights_only=True``. The EMA weights are saved to
``out`` (float16 safetensors + config.json).

Models (``LatentModelTrainConfig.model``): ``"mlp"``, the project's LatentMLP of ``width`` / ``hidden`` /
``depth`` (``MLP_PRESETS`` names two sizes: ``mlp-s``, ``mlp-m`` = the shipped flow's), or a SiT preset
(``"sit-s/2"``, ``"sit-b/2"``, ``"sit-l/2"``, ``"sit-xl/2"``; core/models/sit.py) sized for the data's latents: input
size and channels from the latent shape, ``num_classes`` from the data plus the null row of classifier-free
guidance, ``learn_sigma`` False (a flow predicts the velocity only); ``sit_overrides`` replace preset fields
(e.g. a tiny ``{"depth": 1, "hidden_size": 32, "num_heads": 2}`` for tests).

Execution: ``device`` (auto / cpu / cuda / cuda:N), ``precision`` (auto / fp32 / bf16 / fp16: autocast
mixed precision with float32 weights, optimiser and EMA; fp16 adds a GradScaler; see core/device.py) and
``grad_checkpointing`` (recompute block activations in the backward pass). Batches are drawn on the CPU
from the seeded generator, so the data order does not depend on the device.
"""
from __future__ import annotations

import copy
import json
import math
import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from core.config import MLP_PRESETS, SIT_MODELS
from core.data.latent_cache import LatentSet
from core.device import (
    DTYPE_NAMES,
    PRECISIONS,
    autocast,
    configure_device,
    grad_scaler,
    precision_name,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from core.errors import CheckpointError
from core.io import atomic_write, save_model_folder, write_json
from core.models.latent_mlp import LatentMLP, LatentMLPConfig

# --model presets of train-flow: the LatentMLP sizes, then the SiT presets (core/models/sit.py) sized for the data.
SIT_OVERRIDABLE = ("depth", "hidden_size", "num_heads", "mlp_ratio", "patch_size")

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
    model: str = "mlp"                 # "mlp" (LatentMLP of width / hidden / depth) or a SiT preset, e.g. "sit-b/2"
    sit_overrides: dict = field(default_factory=dict)  # SiT: SiTConfig fields replacing the preset's
    precision: str = "fp32"            # auto | fp32 | bf16 | fp16 (autocast; fp16 with loss scaling)
    grad_checkpointing: bool = False   # recompute block activations in the backward pass
    device: str = "cpu"                # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        self.model = self.model.strip().lower()
        if self.model != "mlp" and not is_sit_model(self.model):
            raise ValueError(f"model must be 'mlp' or a SiT preset ({', '.join(SIT_MODELS)}), got {self.model!r}")
        unknown = set(self.sit_overrides) - set(SIT_OVERRIDABLE)
        if unknown:
            raise ValueError(f"sit_overrides: unknown fields {sorted(unknown)}; allowed: {', '.join(SIT_OVERRIDABLE)}")
        self.precision = DTYPE_NAMES.get(self.precision, self.precision)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


def is_sit_model(name: str) -> bool:
    """True for a SiT / DiT preset name as ``core.models.sit.sit_config`` reads it ("sit-b/2", "SiT-XL/2", "dit-s/4")."""
    return re.fullmatch(r"(?:sit|dit)-(xl|l|b|s)/\d+", name.strip(), flags=re.IGNORECASE) is not None


def mlp_preset(name: str) -> dict[str, int]:
    """width / hidden / depth of an ``mlp-*`` preset."""
    if name not in MLP_PRESETS:
        raise ValueError(f"unknown MLP preset {name!r}; choose one of {', '.join(MLP_PRESETS)}")
    return dict(MLP_PRESETS[name])


def build_model(config: LatentModelTrainConfig, latent_shape: tuple[int, ...], num_classes: int,
                provenance: dict | None = None) -> torch.nn.Module:
    """The untrained network ``config.model`` describes, for latents of ``latent_shape`` and ``num_classes``
    classes (+ a null class). Both kinds are called ``model(x, t, y)`` with t in [0, 1] (DESIGN.md) and have
    ``config.latent_shape``, ``config.num_classes``, ``null_class`` and ``set_grad_checkpointing``."""
    latent_shape = tuple(int(s) for s in latent_shape)
    if config.model == "mlp":
        return LatentMLP(LatentMLPConfig(latent_shape, num_classes, config.width, config.hidden, config.depth,
                                         extra=dict(provenance or {})))
    from core.models.sit import SiT, sit_config

    if len(latent_shape) != 3 or latent_shape[1] != latent_shape[2]:
        raise ValueError(f"SiT works on square latents (C, H, H); the data's are {latent_shape}")
    try:
        sit = sit_config(config.model, input_size=latent_shape[1], in_channels=latent_shape[0],
                         num_classes=num_classes, learn_sigma=False, **config.sit_overrides)
    except ValueError as exc:
        raise ValueError(f"{config.model} on latents {latent_shape}: {exc}") from exc
    return SiT(sit)


def architecture(config: LatentModelTrainConfig, model: torch.nn.Module) -> dict:
    """What a checkpoint must match to be resumed: the model kind and its config without provenance."""
    arch = {k: v for k, v in model.config_dict().items() if k != "extra"}
    return json.loads(json.dumps({"model": "mlp" if config.model == "mlp" else "sit", **arch}))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def train_latent_model(config: LatentModelTrainConfig, latents: LatentSet, out: str | Path, objective: Objective,
                       kind: str, name: str, resume: bool = True, log: Callable[[str], None] = print,
                       provenance: dict | None = None) -> torch.nn.Module:
    """Train ``config.model`` on ``latents`` to minimise ``objective``; returns (and saves) the EMA model.

    The EMA weights go to ``out`` as float16 safetensors with a config.json of ``kind``; a SiT's fixed
    position embedding is not stored (it is rebuilt from the config). ``out/checkpoint.pt`` resumes an
    interrupted run exactly (same seed, same device and precision: the same weights as an uninterrupted run).
    """
    # Long by design: one resumable loop; model, EMA, optimiser, schedule, scaler and RNG are created, restored
    # from a checkpoint and saved together, so the pieces stay in one place.
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    configure_device(device)
    generator = seed_everything(config.seed)
    model = build_model(config, latents.latent_shape, latents.num_classes, provenance).to(device)
    model.set_grad_checkpointing(config.grad_checkpointing)
    ema = copy.deepcopy(model).requires_grad_(False).set_grad_checkpointing(False)
    arch = architecture(config, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    warmup = max(1, config.warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    scaler = grad_scaler(device, dtype)
    out = Path(out)
    ckpt = out / "checkpoint.pt"
    start = 0
    if resume and ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors of any kind mean 'cannot resume'
            raise CheckpointError(f"{ckpt}: cannot resume from this checkpoint ({exc}); delete it to start afresh "
                                  "or pass --no-resume") from exc
        saved_arch = state.get("architecture") if isinstance(state, dict) else None
        if saved_arch is not None and saved_arch != arch:
            raise CheckpointError(f"{ckpt}: was written for another model ({saved_arch}) than this run's ({arch}); "
                                  f"use the same --model and sizes to resume, another --out, or --no-resume")
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            if scaler.is_enabled() and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            start = int(state["step"])
        except Exception as exc:  # noqa: BLE001 - key and shape errors alike mean 'cannot resume'
            raise CheckpointError(f"{ckpt}: cannot resume from this checkpoint ({exc}); delete it to start afresh "
                                  "or pass --no-resume") from exc
        log(f"resuming from {ckpt} at step {start}")

    def save_checkpoint(step: int) -> None:
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "generator": generator.get_state(), "step": step,
                 "architecture": arch, "precision": precision_name(dtype)}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        atomic_write(ckpt, lambda p: torch.save(state, p))

    x_all, y_all = latents.latents, torch.from_numpy(latents.labels)
    if device.type == "cuda" and x_all.numel() * x_all.element_size() < (2 << 30):
        x_all, y_all = x_all.to(device), y_all.to(device)  # small enough: index on the GPU, no copy per step
    recent: deque[torch.Tensor] = deque(maxlen=100)
    t0 = time.perf_counter()
    bar = tqdm(range(start, config.steps), desc=name, unit="step", mininterval=5, initial=start,
               total=config.steps)
    model.train()
    for step in bar:
        idx = torch.randint(0, len(x_all), (config.batch_size,), generator=generator).to(x_all.device)
        x1, y = x_all[idx].to(device, non_blocking=True), y_all[idx].to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = objective(model, x1, y, generator, config.label_dropout)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        _ema_update(ema, model, config.ema_decay if step >= config.warmup else 0.0)
        recent.append(loss.detach().float())
        if step % 100 == 0:  # the only host-device synchronisation of the loop besides checkpoints
            bar.set_postfix(loss=f"{torch.stack(list(recent)).mean().item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(step + 1)
    seconds = time.perf_counter() - t0
    ema.eval()
    weights = {k: v for k, v in ema.state_dict().items() if k != "pos_embed"}  # SiT: rebuilt from the config
    model_config = ema.config_dict()
    if config.model != "mlp":
        model_config = {**model_config, "extra": dict(provenance or {})}
    save_model_folder(out, kind, model_config, weights, dtype=torch.float16)
    final = round(float(torch.stack(list(recent)).mean().item()), 5) if recent else None
    write_json(out / "training.json", {"config": asdict(config), "train_seconds_this_run": round(seconds, 1),
                                       "final_loss_avg100": final, "device": str(device),
                                       "precision": precision_name(dtype),
                                       "parameters": sum(p.numel() for p in ema.parameters()),
                                       "provenance": provenance or {}, "torch": torch.__version__})
    log(f"{name}: EMA weights saved to {out}; resumable checkpoint at {ckpt}")
    return ema
