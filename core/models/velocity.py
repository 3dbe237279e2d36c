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
3. a diffusers DiT folder (config.json with ``"_class_name": "DiTTransformer2DModel"``, or
   ``"Transformer2DModel"`` with ``norm_type "ada_norm_zero"`` as older diffusers saved DiT, and its safetensors;
   or a pipeline folder with it under ``transformer/``). Its convention comes from the pipeline's
   ``scheduler/scheduler_config.json`` (a DDPM-family scheduler: ``NoiseConvention`` with that β schedule; a
   flow-matching scheduler: ``"diffusers-flow"``) or must be declared, by the ``convention`` argument or a
   ``velocity_convention.json`` beside its config.json (e.g. ``{"preset": "ddpm-eps"}``); a declaration that
   contradicts the scheduler config is refused.

Linear presets (``CONVENTIONS``, a ``VelocityConvention``): ``"sit"`` (also the project's: time_scale 1,
forward time, sign +1) and ``"diffusers-flow"`` (time_scale 1000, σ = 1 - t, sign -1: a model trained with
diffusers' flow-matching scheduler on x_σ = (1 - σ) x_data + σ ε with target ε - x_data and timestep 1000·σ,
as SD3 is). Noise preset (``NOISE_PRESETS``, a ``NoiseConvention``): ``"ddpm-eps"``, a DDPM ε-predictor on
DiT's schedule (linear β 1e-4 .. 0.02, 1000 steps: facebook/DiT-XL-2-*, the DiT authors' ``DiT-XL-2-*.pt``),
converted to a velocity exactly (``vp_time``, ``vp_to_velocity``).
Nothing is ever unpickled: a ``.pt`` that holds Python objects besides tensors is refused.
"""
from __future__ import annotations

import math
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

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class NoiseConvention:
    """A DDPM / VP diffusion backbone (DiT, diffusers' DDPM-family schedulers), converted to a velocity.

    The backbone was trained on x_τ = a_τ x_data + b_τ ε, a_τ = sqrt(ᾱ_τ), b_τ = sqrt(1 - ᾱ_τ), for timesteps
    τ = 0 .. N-1 (τ = 0 nearly data, τ = N-1 nearly noise: the opposite direction to DESIGN.md's t), with
    ᾱ_τ = prod_{k <= τ} (1 - β_k) from ``beta_schedule`` (diffusers' names and formulas). It predicts
    ``prediction_type``: "epsilon" (ε, DiT), "v_prediction" (a ε - b x_data) or "sample" (x_data). With learned
    sigma (2·C output channels) the first C are the prediction. ``VelocityAdapter`` maps DESIGN time t to
    the τ of equal signal-to-noise ratio (``vp_time``) and the prediction to v = x̂_1 - x̂_0 (``vp_to_velocity``).
    """

    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got "
                             f"{self.prediction_type!r}")
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
        if not (isinstance(self.beta_start, (int, float)) and isinstance(self.beta_end, (int, float))
                and 0 < self.beta_start <= self.beta_end < 1):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start!r}, {self.beta_end!r}")

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_τ for τ = 0 .. N-1, float64 (N,), strictly decreasing."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n, dtype=torch.float64) ** 2
        else:  # squaredcos_cap_v2 (Nichol & Dhariwal's cosine schedule, β capped at 0.999 as diffusers does)
            def abar(s: float) -> float:
                return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                                 dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)

    def time_range(self) -> tuple[float, float]:
        """[t_min, t_max]: the DESIGN times of τ = N-1 and τ = 0 (SNR matched); outside it ``vp_time`` clamps."""
        abar = self.alphas_cumprod()
        ends = torch.stack([abar[-1], abar[0]])
        t = ends.sqrt() / (ends.sqrt() + (1 - ends).sqrt())
        return float(t[0]), float(t[1])

    def record(self) -> dict:
        """A dict that ``resolve_convention`` reads back (for manifests)."""
        return {"preset": "ddpm-eps", **asdict(self)}


NOISE_PRESETS: dict[str, NoiseConvention] = {"ddpm-eps": NoiseConvention()}


def vp_time(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DESIGN time -> DDPM timestep of the same signal-to-noise ratio.

    ``t`` (B,) in [0, 1] (t = 0 noise, t = 1 data); ``alphas_cumprod`` (N,) strictly decreasing. On the path
    x_t = t x_1 + (1 - t) x_0 the SNR is t / (1 - t); on x_τ = a_τ x + b_τ ε it is a_τ / b_τ. Returns float64
    ``(tau, t_c)``: τ (B,) in [0, N-1], real-valued, linear in log-SNR between the table's integer timesteps,
    and t_c (B,), t clamped to the table's SNR range [t(τ = N-1), t(τ = 0)], for which
    ᾱ(τ) = t_c² / (t_c² + (1 - t_c)²) exactly."""
    abar = alphas_cumprod.to(torch.float64).cpu()
    lam_table = torch.log(abar) - torch.log1p(-abar)          # log SNR², decreasing in τ
    if len(lam_table) < 2 or not bool((lam_table[1:] < lam_table[:-1]).all()):
        raise ValueError("alphas_cumprod must hold at least 2 strictly decreasing values")
    tt = t.detach().to(torch.float64).cpu().clamp(1e-12, 1 - 1e-12)
    lam = (2 * (torch.log(tt) - torch.log1p(-tt))).clamp(float(lam_table[-1]), float(lam_table[0]))
    t_c = torch.sigmoid(lam / 2)
    xs = -lam_table                                           # increasing
    idx = torch.searchsorted(xs, -lam).clamp(1, len(xs) - 1)
    lo, hi = xs[idx - 1], xs[idx]
    tau = (idx - 1).to(torch.float64) + ((-lam) - lo) / (hi - lo)
    return tau.clamp(0, len(xs) - 1), t_c


def vp_to_velocity(out: torch.Tensor, x_vp: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """A VP backbone's prediction at x_vp = a x_data + b ε -> DESIGN velocity v = x̂_data - ε̂ (= E[x_1 - x_0 | x_t]).

    ``a``, ``b`` broadcast against ``out`` / ``x_vp`` (a² + b² = 1). "epsilon": x̂ = (x_vp - b ε̂) / a;
    "v_prediction" (v̂ = a ε - b x): x̂ = a x_vp - b v̂, ε̂ = b x_vp + a v̂; "sample": ε̂ = (x_vp - a x̂) / b."""
    if prediction_type == "epsilon":
        eps, x_hat = out, (x_vp - b * out) / a
    elif prediction_type == "v_prediction":
        eps, x_hat = b * x_vp + a * out, a * x_vp - b * out
    elif prediction_type == "sample":
        eps, x_hat = (x_vp - a * out) / b, out
    else:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    return x_hat - eps


def convention_from_scheduler(config: Mapping[str, Any]) -> "VelocityConvention | NoiseConvention | None":
    """The convention a diffusers ``scheduler_config.json`` implies: a flow-matching scheduler (class name with
    "FlowMatch") -> ``CONVENTIONS["diffusers-flow"]``; a DDPM-family one (β schedule keys: DDPM, DDIM, DPMSolver,
    Euler, PNDM, ...) -> a NoiseConvention of its training schedule (``prediction_type`` default "epsilon", as
    diffusers'); anything else -> None. ValueError for a DDPM-family config this conversion does not cover
    (``trained_betas``, ``rescale_betas_zero_snr``, an unknown schedule or prediction type)."""
    name = str(config.get("_class_name") or "")
    if "FlowMatch" in name:
        return CONVENTIONS["diffusers-flow"]
    if not any(k in config for k in ("beta_schedule", "beta_start", "beta_end")):
        return None
    if config.get("trained_betas") is not None:
        raise ValueError(f"{name or 'scheduler'}: trained_betas (an explicit β table) is not supported; "
                         f"give its schedule as beta_schedule / beta_start / beta_end")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(f"{name or 'scheduler'}: rescale_betas_zero_snr (ᾱ = 0 at the last step) is not supported")
    default = NoiseConvention()
    return NoiseConvention(beta_schedule=str(config.get("beta_schedule") or default.beta_schedule),
                           beta_start=float(config.get("beta_start", default.beta_start)),
                           beta_end=float(config.get("beta_end", default.beta_end)),
                           num_train_timesteps=int(config.get("num_train_timesteps", default.num_train_timesteps)),
                           prediction_type=str(config.get("prediction_type") or default.prediction_type))


def resolve_convention(convention: str | Mapping[str, Any] | VelocityConvention | NoiseConvention | None,
                       default: VelocityConvention | None = None,
                       name: str = "convention") -> VelocityConvention | NoiseConvention | None:
    """A VelocityConvention or NoiseConvention from a preset name (``CONVENTIONS``, ``NOISE_PRESETS``), a dict
    (``{"preset": ...}`` and/or the fields of either), or one itself."""
    if convention is None:
        return default
    if isinstance(convention, (VelocityConvention, NoiseConvention)):
        return convention
    presets = (*CONVENTIONS, *NOISE_PRESETS)
    if isinstance(convention, str):
        if convention in NOISE_PRESETS:
            return NOISE_PRESETS[convention]
        if convention not in CONVENTIONS:
            raise ValueError(f"{name}: unknown convention {convention!r}; choose one of {', '.join(presets)} "
                             f"or give time_scale / time_reversed / velocity_sign")
        return CONVENTIONS[convention]
    if isinstance(convention, Mapping):
        params = dict(convention)
        noise_fields = {f.name for f in fields(NoiseConvention)}
        if params.get("preset") in NOISE_PRESETS or (noise_fields & set(params) and "preset" not in params):
            base = NOISE_PRESETS[params.pop("preset", "ddpm-eps")]
            unknown = set(params) - noise_fields
            if unknown:
                raise ValueError(f"{name}: unknown fields {sorted(unknown)} for a noise-prediction convention; "
                                 f"known: preset, {', '.join(sorted(noise_fields))}")
            return NoiseConvention(**{**asdict(base), **params})
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
    The convention maps t and the output; the output is returned in x's dtype. A VelocityConvention passes x
    through unchanged and maps time and sign linearly. A NoiseConvention (a DDPM / VP backbone) calls the
    backbone at the timestep τ of t's SNR (``vp_time``; t outside the schedule's range [t_min, t_max] is
    clamped to it, so v(x, t) = v(x, t_c) there) on x_vp = x / sqrt(t_c² + (1 - t_c)²) (the VP state of the
    same point) and returns ``vp_to_velocity`` of its prediction, computed in float32.
    """

    def __init__(self, backbone: nn.Module, latent_shape: Sequence[int], backbone_num_classes: int,
                 convention: VelocityConvention | NoiseConvention | str | Mapping[str, Any] = "sit",
                 learned_sigma: bool = False,
                 backbone_call: str = "xty", class_map: Sequence[int] | None = None, kind: str = "custom",
                 source: str = "", backbone_config: dict | None = None):
        super().__init__()
        if backbone_call not in ("xty", "diffusers"):
            raise ValueError(f"backbone_call must be 'xty' or 'diffusers', got {backbone_call!r}")
        self.backbone = backbone
        self.convention = resolve_convention(convention, default=CONVENTIONS["sit"])
        self._alphas_cumprod = (self.convention.alphas_cumprod() if isinstance(self.convention, NoiseConvention)
                                else None)   # float64 on the CPU: vp_time's table
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
        record = (self.convention.record() if isinstance(self.convention, NoiseConvention)
                  else asdict(self.convention))
        self.config = VelocityModelConfig(tuple(latent_shape), num_classes, kind, source, record,
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

    def _backbone(self, x: torch.Tensor, s: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The backbone's first C output channels (its prediction) at time input ``s``, in its dtype."""
        param = next(self.backbone.parameters(), None)
        xb = x if param is None or not param.is_floating_point() else x.to(param.dtype)
        if self.backbone_call == "diffusers":
            out = self.backbone(xb, timestep=s, class_labels=yb, return_dict=False)[0]
        else:
            out = self.backbone(xb, s, yb)
        if self.learned_sigma:
            out = out[:, :self.config.latent_shape[0]]
        if out.shape[1:] != x.shape[1:]:
            raise ValueError(f"backbone returned {tuple(out.shape)} for latents {tuple(x.shape)}"
                             f"{'' if self.learned_sigma else ' (learned sigma?)'}")
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) at DESIGN time ``t`` (scalar or (B,), t = 0 noise, t = 1 data), ``y`` (B,) class ids
        (null = num_classes) -> velocity dx/dt (B, C, H, W) in x's dtype."""
        shape = self.config.latent_shape
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"model expects latents of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(len(x)) if t.ndim == 0 else t.float()
        yb = self.backbone_labels(y.to(x.device))
        if isinstance(self.convention, NoiseConvention):
            tau, t_c = vp_time(t, self._alphas_cumprod)
            t_c = t_c.to(device=x.device, dtype=torch.float32).view(-1, *([1] * (x.ndim - 1)))
            norm = (t_c ** 2 + (1 - t_c) ** 2).sqrt()
            x_vp = x.float() / norm
            out = self._backbone(x_vp, tau.to(device=x.device, dtype=torch.float32), yb).float()
            v = vp_to_velocity(out, x_vp, t_c / norm, (1 - t_c) / norm, self.convention.prediction_type)
            return v.to(x.dtype)
        out = self._backbone(x, self.convention.backbone_time(t), yb).to(x.dtype)
        return out if self.convention.velocity_sign > 0 else -out


# -------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------
