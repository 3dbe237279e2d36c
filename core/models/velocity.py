"""Class-conditional latent velocity models loaded by reference, mapped to DESIGN.md section 2.

The engine (``core.transport.path.cfg_velocity``, ``core.transport.sampler``) calls ``model(x, t, y) -> v`` with

- x (B, C, H, W) latents, t (B,) float in [0, 1] with **t = 0 noise, t = 1 data**,
  x_t = (1 - t) x_0 + t x_1, and v ≈ dx_t/dt = x_1 - x_0 (data minus noise);
- y (B,) int64 class ids, ``model.null_class`` (= ``model.config.num_classes``) the null id of CFG;

and reads ``model.config.latent_shape`` / ``model.config.num_classes``. This module holds the conventions and
the adapter; ``core.models.loading.load_velocity_model(ref)`` gives such a module for

1. the project's own folder (config.json with ``"kind": "distill-studio/flow-mlp"``): ``load_flow``;
   or a SiT trained by ``train-flow --model sit-*`` (``"kind": "distill-studio/flow-sit"``): ``load_sit_flow``;
2. a raw SiT/DiT state dict (``.pt`` / ``.pth`` / ``.bin`` read with ``torch.load(weights_only=True)``, or
   ``.safetensors``), e.g. the SiT authors' ``SiT-XL-2-256x256.pt``: ``core.models.sit.SiT`` in a ``VelocityAdapter``
   with the SiT convention (the defaults below) unless ``convention`` says otherwise;
3. a diffusers ``DiTTransformer2DModel`` folder (config.json with ``"_class_name": "DiTTransformer2DModel"`` and
   its safetensors; or a pipeline folder with it under ``transformer/``). Its convention must be declared,
   by the ``convention`` argument or a ``velocity_convention.json`` beside its config.json
   (e.g. ``{"preset": "diffusers-flow"}`` or ``{"time_scale": 1000, "time_reversed": true,
   "velocity_sign": -1}``): diffusers' own DiT checkpoints (facebook/DiT-XL-2-*) are DDPM ε-predictors, not
   velocity models, and no weight shows which a folder holds.

Presets (``CONVENTIONS``): ``"sit"`` (also the project's: time_scale 1, forward time, sign +1) and
``"diffusers-flow"`` (time_scale 1000, σ = 1 - t, sign -1: a model trained with diffusers' flow-matching
scheduler on x_σ = (1 - σ) x_data + σ ε with target ε - x_data and timestep 1000·σ, as SD3 is).
Nothing is ever unpickled: a ``.pt`` that holds Python objects besides tensors is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
from torch import nn

CONVENTION_FILE = "velocity_convention.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class VelocityConvention:
    """How a backbone's time input and output relate to DESIGN.md's (t = 0 noise, t = 1 data, v = x_1 - x_0).

    The adapter calls ``backbone(x, s, y)`` with ``s = time_scale · (1 - t if time_reversed else t)`` and returns
    ``velocity_sign · output``:

    - ``time_scale``: factor on the backbone's time input. 1 for SiT (t in [0, 1] fed to its sinusoidal
      embedding directly); 1000 for diffusers-style models, whose timestep is 1000·σ (or DDPM's 0..999).
    - ``time_reversed``: the backbone's time runs from data to noise, σ = 1 - t (σ = 0 data, σ = 1 noise),
      as diffusers' FlowMatchEulerDiscreteScheduler and SD3 do; False for SiT, whose t matches ours.
    - ``velocity_sign``: +1 if the backbone predicts data - noise (SiT's target x_1 - x_0, and this project's);
      -1 if it predicts noise - data, which a σ = 1 - t model trained with diffusers' flow-matching target
      (ε - x_data = d x_σ / dσ) does: d x / dt = -d x / dσ.
    """

    time_scale: float = 1.0
    time_reversed: bool = False
    velocity_sign: float = 1.0

    def __post_init__(self) -> None:
        if float(self.velocity_sign) not in (1.0, -1.0):
            raise ValueError(f"velocity_sign must be +1 or -1, got {self.velocity_sign}")
        if not float(self.time_scale) > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")

    def backbone_time(self, t: torch.Tensor) -> torch.Tensor:
        """The backbone's time input for DESIGN.md time ``t``."""
        return float(self.time_scale) * ((1.0 - t) if self.time_reversed else t)


CONVENTIONS: dict[str, VelocityConvention] = {
    "sit": VelocityConvention(1.0, False, 1.0),
    "distill-studio": VelocityConvention(1.0, False, 1.0),
    "diffusers-flow": VelocityConvention(1000.0, True, -1.0),
}


def resolve_convention(convention: str | Mapping[str, Any] | VelocityConvention | None,
                       default: VelocityConvention | None = None,
                       name: str = "convention") -> VelocityConvention | None:
    """A VelocityConvention from a preset name, a dict (``{"preset": ...}`` and/or the fields), or one itself."""
    if convention is None:
        return default
    if isinstance(convention, VelocityConvention):
        return convention
    if isinstance(convention, str):
        if convention not in CONVENTIONS:
            raise ValueError(f"{name}: unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)} "
                             f"or give time_scale / time_reversed / velocity_sign")
        return CONVENTIONS[convention]
    if isinstance(convention, Mapping):
        params = dict(convention)
        base = resolve_convention(params.pop("preset"), name=name) if "preset" in params else VelocityConvention()
        known = {f.name for f in fields(VelocityConvention)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"{name}: unknown convention fields {sorted(unknown)}; "
                             f"known: preset, {', '.join(sorted(known))}")
        merged = {**asdict(base), **params}
        return VelocityConvention(float(merged["time_scale"]), bool(merged["time_reversed"]),
                                  float(merged["velocity_sign"]))
    raise TypeError(f"{name}: expected a preset name, a dict or a VelocityConvention, got {type(convention).__name__}")


@dataclass
class VelocityModelConfig:
    """What the engine reads (``latent_shape``, ``num_classes``) plus provenance of the loaded model."""

    latent_shape: tuple[int, int, int]
    num_classes: int
    kind: str = "custom"
    source: str = ""
    convention: dict = field(default_factory=dict)
    learned_sigma: bool = False
    backbone: dict = field(default_factory=dict)
    class_map: list[int] | None = None

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(s) for s in self.latent_shape)  # type: ignore[assignment]


class VelocityAdapter(nn.Module):
    """Wraps a class-conditional backbone so that ``adapter(x, t, y)`` follows DESIGN.md section 2.

    ``backbone_call``: ``"xty"`` calls ``backbone(x, s, y)`` (SiT, LatentMLP); ``"diffusers"`` calls
    ``backbone(x, timestep=s, class_labels=y, return_dict=False)[0]`` (DiTTransformer2DModel).
    ``learned_sigma``: the backbone outputs 2·C channels (DiT's learned variance); the first C are kept.
    ``backbone_num_classes``: the backbone's class count; its null id is that number.
    ``class_map`` (optional): backbone class id of each of the adapter's classes (e.g. the 10 ImageNet ids of
    an ImageNet subset): the adapter then has ``len(class_map)`` classes and maps its null id to the
    backbone's. Without it the adapter has the backbone's classes.
    The convention (see VelocityConvention) maps t and the output; x is passed through unchanged and the output
    is returned in x's dtype.
    """

    def __init__(self, backbone: nn.Module, latent_shape: Sequence[int], backbone_num_classes: int,
                 convention: VelocityConvention | str | Mapping[str, Any] = "sit", learned_sigma: bool = False,
                 backbone_call: str = "xty", class_map: Sequence[int] | None = None, kind: str = "custom",
                 source: str = "", backbone_config: dict | None = None):
        super().__init__()
        if backbone_call not in ("xty", "diffusers"):
            raise ValueError(f"backbone_call must be 'xty' or 'diffusers', got {backbone_call!r}")
        self.backbone = backbone
        self.convention = resolve_convention(convention, default=CONVENTIONS["sit"])
        self.learned_sigma = bool(learned_sigma)
        self.backbone_call = backbone_call
        self.backbone_num_classes = int(backbone_num_classes)
        if class_map is not None:
            class_map = [int(c) for c in class_map]
            bad = [c for c in class_map if not 0 <= c < self.backbone_num_classes]
            if bad or not class_map:
                raise ValueError(f"class_map ids {bad or '[]'} are not classes of the backbone "
                                 f"(0..{self.backbone_num_classes - 1})")
            # id table: adapter class -> backbone class, adapter null (last) -> backbone null
            self.register_buffer("_class_table", torch.tensor(class_map + [self.backbone_num_classes]),
                                 persistent=False)
        else:
            self._class_table = None
        num_classes = len(class_map) if class_map is not None else self.backbone_num_classes
        self.config = VelocityModelConfig(tuple(latent_shape), num_classes, kind, source, asdict(self.convention),
                                          self.learned_sigma, dict(backbone_config or {}), class_map)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def backbone_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Adapter class ids (null = num_classes) -> backbone class ids (null = backbone_num_classes)."""
        y = y.long()
        if self._class_table is None:
            return y
        return self._class_table.to(y.device)[y]

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        shape = self.config.latent_shape
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"model expects latents of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(len(x)) if t.ndim == 0 else t.float()
        s = self.convention.backbone_time(t)
        yb = self.backbone_labels(y.to(x.device))
        param = next(self.backbone.parameters(), None)
        xb = x if param is None or not param.is_floating_point() else x.to(param.dtype)
        if self.backbone_call == "diffusers":
            out = self.backbone(xb, timestep=s, class_labels=yb, return_dict=False)[0]
        else:
            out = self.backbone(xb, s, yb)
        if self.learned_sigma:
            out = out[:, :shape[0]]
        if out.shape[1:] != x.shape[1:]:
            raise ValueError(f"backbone returned {tuple(out.shape)} for latents {tuple(x.shape)}"
                             f"{'' if self.learned_sigma else ' (learned sigma?)'}")
        out = out.to(x.dtype)
        return out if self.convention.velocity_sign > 0 else -out


# -------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------
