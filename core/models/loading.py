"""The embedded default: where the shipped models live and how to load them together."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from core.config import DIFFUSION_DIR, FLOW_DIR, TEACHER_DIR, VAE_DIR
from core.models.kinds import DIFFUSION_FIX, DIFFUSION_KIND, FLOW_KIND
from core.models.latent_mlp import LatentMLP, load_latent_mlp


@dataclass
class ModelSpec:
    """Which models to use: folders (or a diffusers hub id for the VAE).

    ``flow`` may be any reference ``core.models.velocity.load_velocity_model`` takes: the project's flow folder,
    a diffusers DiTTransformer2DModel folder, or a raw SiT/DiT ``.pt`` / ``.safetensors`` state dict.
    ``flow_convention``: its time / sign convention, a preset name ("sit", "diffusers-flow") or a dict / JSON
    object text (``{"time_scale": 1000, "time_reversed": true, "velocity_sign": -1}``); None: the loader's
    default (the project's for its own folders, "sit" for state-dict files; diffusers folders must declare one).
    ``flow_num_heads``: attention heads of a SiT whose width is no preset's. ``flow_class_map``: the flow's
    class id of each data class (an ImageNet SiT used on an ImageNet subset). A generator set to None or ""
    is not loaded.
    """

    vae: str = str(VAE_DIR)
    flow: str | None = str(FLOW_DIR)
    teacher: str = str(TEACHER_DIR)
    diffusion: str | None = str(DIFFUSION_DIR)
    device: str = "cpu"
    flow_convention: Any = None
    flow_num_heads: int | None = None
    flow_class_map: Sequence[int] | None = None

    def __post_init__(self) -> None:
        self.flow_convention = parse_convention(self.flow_convention)
        if self.flow_num_heads is not None and (isinstance(self.flow_num_heads, bool)
                                                or not isinstance(self.flow_num_heads, int) or self.flow_num_heads < 1):
            raise ValueError(f"flow_num_heads must be an integer >= 1, got {self.flow_num_heads!r}")
        if self.flow_class_map is not None:
            self.flow_class_map = tuple(parse_class_map(self.flow_class_map))


def parse_convention(convention: Any) -> Any:
    """A convention option as given (preset name, JSON object text, dict), checked; JSON text becomes a dict.

    Raises ValueError naming the valid presets for an unknown name, or the JSON problem."""
    if convention is None or convention == "":
        return None
    from core.models.velocity import resolve_convention

    if isinstance(convention, str) and convention.strip().startswith("{"):
        try:
            convention = json.loads(convention)
        except json.JSONDecodeError as exc:
            raise ValueError(f"flow convention: not valid JSON ({exc}); give a preset name or an object such as "
                             '{"time_scale": 1000, "time_reversed": true, "velocity_sign": -1}') from exc
    try:
        resolve_convention(convention, name="flow convention")
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
    return convention


def parse_class_map(class_map: str | Sequence[int | str]) -> list[int]:
    """"207,360,1" or a sequence -> [207, 360, 1]; ValueError for anything but integers >= 0."""
    items = [c.strip() for c in class_map.split(",")] if isinstance(class_map, str) else list(class_map)
    ids = []
    for c in items:
        if isinstance(c, bool) or not (isinstance(c, int) or (isinstance(c, str) and c.isdigit())):
            raise ValueError(f"flow class map: expected comma-separated model class ids (integers >= 0), "
                             f"one per data class, got {c!r}")
        ids.append(int(c))
    if not ids:
        raise ValueError("flow class map is empty; give one model class id per data class")
    return ids


def load_vae(spec: ModelSpec):
    from core.models.vae import LatentAutoencoder

    return LatentAutoencoder.from_pretrained(spec.vae, device=spec.device)


def load_teacher(spec: ModelSpec):
    from core.models.teacher import Teacher

    return Teacher.load(spec.teacher, device=torch.device(spec.device))


def load_flow_for(spec: ModelSpec, latent_shape: tuple[int, ...], num_classes: int):
    """The flow ``spec.flow`` refers to (any kind ``load_velocity_model`` takes), checked against the data's
    latent shape and class count (through ``spec.flow_class_map`` when given)."""
    from core.device import pick_device
    from core.models.velocity import load_velocity_model

    return load_velocity_model(spec.flow, latent_shape, num_classes, pick_device(spec.device), spec.flow_convention,
                               num_heads=spec.flow_num_heads, class_map=spec.flow_class_map)


def flow_record(model, ref: str | None = None) -> dict | None:
    """Provenance of a loaded flow for manifests: kind, source, convention, class map, latent shape, classes
    (None: no flow). The project's LatentMLP has no kind / source in its config: its kind is
    "distill-studio/flow-mlp", its source ``ref`` and its convention DESIGN.md's."""
    if model is None:
        return None
    from dataclasses import asdict

    from core.models.velocity import CONVENTIONS

    config = getattr(model, "config", None)
    kind = getattr(config, "kind", None) or FLOW_KIND
    convention = getattr(config, "convention", None) or asdict(CONVENTIONS["distill-studio"])
    class_map = getattr(config, "class_map", None)
    return {"kind": kind, "source": getattr(config, "source", None) or (str(ref) if ref is not None else ""),
            "convention": dict(convention), "class_map": None if class_map is None else [int(c) for c in class_map],
            "latent_shape": [int(s) for s in getattr(config, "latent_shape", ())],
            "num_classes": getattr(config, "num_classes", None)}


def load_diffusion(path: str | Path, device: str | torch.device = "cpu", latent_shape: tuple[int, ...] | None = None,
                   num_classes: int | None = None) -> LatentMLP:
    return load_latent_mlp(path, DIFFUSION_KIND, DIFFUSION_FIX, device, latent_shape, num_classes)
