"""Training of the latent generators: the flow (flow-matching loss) and its diffusion counterpart
(ε-prediction), with the same networks, data and loop (core.training.loop)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from core.data.latent_cache import LatentSet
from core.models.kinds import DIFFUSION_KIND, FLOW_KIND, SIT_FLOW_KIND
from core.models.latent_mlp import LatentMLP
from core.training.loop import LatentModelTrainConfig, train_latent_model
from core.transport.ddim import epsilon_loss, training_scheduler
from core.transport.path import flow_matching_loss


def train_flow(config: LatentModelTrainConfig, latents: LatentSet, out: str | Path, resume: bool = True,
               log: Callable[[str], None] = print, provenance: dict | None = None) -> torch.nn.Module:
    """Train a flow model on ``latents`` with the flow-matching loss; EMA weights are saved to ``out``.

    ``config.model``: "mlp" (a LatentMLP folder, kind ``FLOW_KIND``) or a SiT preset (kind ``SIT_FLOW_KIND``); both load
    with ``load_flow`` and ``core.models.loading.load_velocity_model``. Returns the EMA network itself."""
    kind = FLOW_KIND if config.model == "mlp" else SIT_FLOW_KIND
    return train_latent_model(config, latents, out, flow_matching_loss, kind, "train-flow", resume, log, provenance)


def train_diffusion(config: LatentModelTrainConfig, latents: LatentSet, out: str | Path, resume: bool = True,
                    log: Callable[[str], None] = print, provenance: dict | None = None) -> LatentMLP:
    if config.model != "mlp":
        raise ValueError(f"train-diffusion trains the LatentMLP counterpart only (mlp-s, mlp-m), not {config.model!r}")
    model = train_latent_model(config, latents, out, epsilon_loss, DIFFUSION_KIND, "train-diffusion", resume, log, provenance)
    training_scheduler().save_config(str(out))
    return model
