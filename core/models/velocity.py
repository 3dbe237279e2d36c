"""Class-conditional latent velocity models loaded by reference, mapped to DESIGN.md section 2.

The engine (``core.transport.path.cfg_velocity``, ``core.transport.sampler``) calls ``model(x, t, y) -> v`` with

- x (B, C, H, W) latents, t (B,) float in [0, 1] with **t = 0 noise, t = 1 data**,
  x_t = (1 - t) x_0 + t x_1, and v ≈ dx_t/dt = x_1 - x_0 (data minus noise);
- y (B,) int64 class ids, ``model.null_class`` (= ``model.config.num_classes``) the null id of CFG;

and reads ``model.config.latent_shape`` / ``model.config.num_classes``. ``load_velocity_model(ref)`` gives such
a module for

1. the project's own folder (config.json with ``"kind": "distill-studio/flow-mlp"``): ``core.models.velocity.load_flow``;
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

import json
import pickle
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from core.errors import CheckpointError
from core.io import save_model_folder
from core.models.kinds import FLOW_FIX as FIX
from core.models.kinds import FLOW_KIND as KIND
from core.models.kinds import SIT_FLOW_KIND as SIT_KIND
from core.models.latent_mlp import LatentMLP, load_latent_mlp

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

def _check_data(name: str, model_shape: tuple[int, ...], model_classes: int, latent_shape, num_classes,
                class_map, rows_without_null: bool = False) -> None:
    if latent_shape is not None and tuple(int(s) for s in latent_shape) != tuple(model_shape):
        raise CheckpointError(f"{name}: model works on latents of shape {tuple(model_shape)}, the data's are "
                              f"{tuple(int(s) for s in latent_shape)}; use the VAE and resolution it was trained with")
    if num_classes is None:
        return
    if class_map is not None:
        if len(class_map) != num_classes:
            raise CheckpointError(f"{name}: class_map lists {len(class_map)} classes, the data has {num_classes}")
        bad = [c for c in class_map if not 0 <= int(c) < model_classes]
        if bad:
            raise CheckpointError(f"{name}: class_map ids {bad} are not classes of the model (0..{model_classes - 1})")
        return
    if num_classes != model_classes:
        hint = (f" (its label table has {model_classes + 1} rows; if the last is not a null class the model was "
                f"trained without label dropout and cannot do classifier-free guidance)" if rows_without_null else "")
        raise CheckpointError(f"{name}: model has {model_classes} classes, the data has {num_classes}{hint}; "
                              f"pass class_map (the model's class id of each data class) to use a subset")


def _load_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # torch's whole reason, on one line
        if "unsupported global" not in text.lower():
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({text})") from exc
        raise CheckpointError(
            f"{path}: holds pickled Python objects besides tensors (a training checkpoint with e.g. its argparse "
            f"Namespace?), which are never unpickled here. Extract the EMA weights once, in a Python where you "
            f"trust the file: torch.save(torch.load('{path.name}', weights_only=False)['ema'], "
            f"'{path.stem}-ema.pt'), and load that file. torch's safe loader says: {text}") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict", "module"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        found = type(obj).__name__ if not isinstance(obj, Mapping) else f"a dict with keys {sorted(obj)[:8]}"
        raise CheckpointError(f"{path}: expected a state dict of tensors (or one under 'ema' / 'model'), found {found}")
    return dict(obj)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - metadata is optional; load_tensors reports a corrupt file
        return {}


def load_sit_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A SiT state dict and its metadata (safetensors header metadata; {} for torch files), safely."""
    from core.io import load_tensors, require_finite

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        return require_finite(_strip_prefixes(load_tensors(path)), path), _safetensors_metadata(path)
    return require_finite(_strip_prefixes(_load_torch_state(path)), path), {}


def build_sit(state: dict[str, torch.Tensor], name: str, input_size: int | None = None,
              num_heads: int | None = None, device: str | torch.device = "cpu"):
    """A ``core.models.sit.SiT`` holding ``state`` (float32, eval, no grad); missing / unexpected / mis-shaped keys
    raise CheckpointError naming ``name``. Built on the meta device and filled by assignment, so that a
    SiT-XL does not pay for a random initialisation."""
    from core.models.sit import SiT, infer_sit_config, sincos_2d_pos_embed

    config = infer_sit_config(state, input_size=input_size, num_heads=num_heads, name=name)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if "pos_embed" not in state:
        state["pos_embed"] = sincos_2d_pos_embed(config.hidden_size, config.input_size // config.patch_size)[None]
    with torch.device("meta"):
        model = SiT(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' …' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' …' if len(unexpected) > 6 else ''}")
        if wrong:
            parts.append("mis-shaped " + ", ".join(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                                                   for k in wrong[:4]))
        raise CheckpointError(f"{name}: weights do not fit the SiT they describe ({config}): {'; '.join(parts)}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def _diffusers_folder(path: Path) -> Path | None:
    """The folder holding a DiTTransformer2DModel config (``path`` itself or its ``transformer/``), else None."""
    for folder in (path, path / "transformer"):
        config = folder / "config.json"
        if config.is_file():
            try:
                meta = json.loads(config.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(meta, dict) and meta.get("_class_name") == "DiTTransformer2DModel":
                return folder
    return None


def _read_declared_convention(folder: Path, root: Path) -> dict | None:
    for candidate in (folder / CONVENTION_FILE, root / CONVENTION_FILE):
        if candidate.is_file():
            from core.io import read_json

            data = read_json(candidate)
            if not isinstance(data, dict):
                raise CheckpointError(f"{candidate}: expected a JSON object with preset / time_scale / "
                                      f"time_reversed / velocity_sign")
            return data
    return None


def _load_diffusers_dit(root: Path, folder: Path, convention, latent_shape, num_classes, class_map, device):
    from diffusers import DiTTransformer2DModel

    declared = convention if convention is not None else _read_declared_convention(folder, root)
    if declared is None:
        raise CheckpointError(
            f"{folder}: a diffusers DiTTransformer2DModel does not show which time and sign convention it was "
            f"trained with (diffusers' own DiT checkpoints are DDPM noise predictors, not velocity models). "
            f"Declare it: convention='diffusers-flow' (σ = 1 - t, timestep 1000·σ, predicts noise - data) or "
            f"'sit', or a {CONVENTION_FILE} in the folder such as {{\"preset\": \"diffusers-flow\"}}")
    try:
        conv = resolve_convention(declared, name=str(folder))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(str(exc)) from exc
    cfg = json.loads((folder / "config.json").read_text())
    in_ch = int(cfg.get("in_channels", 4))
    size = int(cfg.get("sample_size", 32))
    out_ch = cfg.get("out_channels") or in_ch
    if int(out_ch) not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"{folder}: out_channels {out_ch} is neither in_channels {in_ch} nor twice that")
    model_classes = cfg.get("num_embeds_ada_norm")
    if model_classes is None:
        raise CheckpointError(f"{folder}: num_embeds_ada_norm is null: not a class-conditional DiT")
    shape = (in_ch, size, size)
    _check_data(str(folder), shape, int(model_classes), latent_shape, num_classes, class_map)
    try:  # safetensors only (no pickle); diffusers only warns about missing keys, so they are checked here
        backbone, info = DiTTransformer2DModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False,
            output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{folder}: could not load the DiTTransformer2DModel "
                              f"({' '.join(lines[:2])[:400]})") from exc
    problems = {k: v for k, v in info.items() if v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')} {list(v)[:6]}" for k, v in problems.items())
        raise CheckpointError(f"{folder}: weights do not fit its config.json ({detail})")
    from core.io import require_finite_module

    backbone = require_finite_module(backbone, folder).float().to(device).eval().requires_grad_(False)
    return VelocityAdapter(backbone, shape, int(model_classes), conv, learned_sigma=int(out_ch) == 2 * in_ch,
                           backbone_call="diffusers", class_map=class_map, kind="diffusers-dit", source=str(root),
                           backbone_config={k: v for k, v in cfg.items() if not k.startswith("_")})


def load_sit_flow(path: str | Path, device: str | torch.device = "cpu", latent_shape: Sequence[int] | None = None,
                  num_classes: int | None = None) -> VelocityAdapter:
    """A SiT folder written by ``train-flow --model sit-*`` (config.json ``{"kind": "distill-studio/flow-sit",
    "config": SiTConfig fields + "extra" provenance}``, float16 ``model.safetensors`` without the fixed
    ``pos_embed``) as a VelocityAdapter in the project's convention (the SiT one: t = 0 noise, t = 1 data,
    v = x_1 - x_0), checked against the data's latent shape and class count when given."""
    from core.io import MODEL_CONFIG, config_from_json, read_model_folder
    from core.models.kinds import FLOW_FIX as FIX
    from core.models.kinds import SIT_FLOW_KIND as SIT_KIND
    from core.models.sit import SiTConfig

    path = Path(path)
    name = str(path)
    config, state = read_model_folder(path, SIT_KIND, FIX)
    config = dict(config)
    config.pop("extra", None)
    sit = config_from_json(SiTConfig, config, path / MODEL_CONFIG, FIX)
    _check_data(name, sit.latent_shape, sit.num_classes, latent_shape, num_classes, None)
    model = build_sit(_strip_prefixes(state), name, input_size=sit.input_size, num_heads=sit.num_heads, device=device)
    if model.config != sit:
        raise CheckpointError(f"{name}: the weights describe {model.config}, config.json says {sit}; {FIX}")
    return VelocityAdapter(model, sit.latent_shape, sit.num_classes, CONVENTIONS["distill-studio"],
                           learned_sigma=sit.learn_sigma, kind="distill-studio/flow-sit", source=name,
                           backbone_config=model.config_dict()).eval().requires_grad_(False)


def load_velocity_model(ref: str | Path, latent_shape: Sequence[int] | None = None, num_classes: int | None = None,
                        device: str | torch.device = "cpu",
                        convention: str | Mapping[str, Any] | VelocityConvention | None = None, *,
                        num_heads: int | None = None, class_map: Sequence[int] | None = None) -> nn.Module:
    """Load the velocity model ``ref`` refers to, checked against the data, in eval mode without gradients.

    ``ref``: the project's flow folder, a diffusers DiTTransformer2DModel folder (or pipeline folder with
    ``transformer/``), or a SiT/DiT state dict file (``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors``).
    ``latent_shape`` (C, H, W) / ``num_classes``: the data's, checked when given (a SiT file without
    ``pos_embed`` needs ``latent_shape`` for its latent size). ``convention``: a preset name ("sit",
    "diffusers-flow"), a dict or a VelocityConvention; default "sit" for state-dict files, required (argument
    or ``velocity_convention.json``) for diffusers folders, and must be left unset for the project's own
    format. ``num_heads``: attention heads of a SiT whose width is no preset's (else read from safetensors
    metadata "num_heads" or the preset). ``class_map``: the model's class id for each data class.
    Raises CheckpointError (naming the file and what differs) for unknown, corrupt or mismatched checkpoints.
    """
    path = Path(ref)
    name = str(path)
    if class_map is not None:
        class_map = [int(c) for c in class_map]
    if path.is_dir():
        own = path / "config.json"
        meta = None
        if own.is_file():
            try:
                meta = json.loads(own.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{own}: not valid JSON ({exc})") from exc
        if isinstance(meta, dict) and "kind" in meta:   # the project's own formats (MLP or SiT)
            from core.models.kinds import FLOW_KIND as KIND
            from core.models.velocity import load_flow

            if meta["kind"] not in (KIND, "distill-studio/flow-sit"):   # core.models.kinds.SIT_FLOW_KIND
                raise CheckpointError(f"{own}: holds a {meta['kind']!r} model, not a velocity model ({KIND!r})")
            if convention is not None and resolve_convention(convention) != CONVENTIONS["distill-studio"]:
                raise CheckpointError(f"{name}: the project's flow models follow DESIGN.md's convention; "
                                      f"leave convention unset")
            if class_map is not None:
                raise CheckpointError(f"{name}: class_map applies to foreign models only")
            load = load_flow if meta["kind"] == KIND else load_sit_flow
            return load(path, device, tuple(latent_shape) if latent_shape is not None else None, num_classes)
        folder = _diffusers_folder(path)
        if folder is not None:
            return _load_diffusers_dit(path, folder, convention, latent_shape, num_classes, class_map, device)
        raise CheckpointError(f"{name}: not a velocity model folder: expected this project's flow folder "
                              f"(config.json with \"kind\"), or a diffusers DiTTransformer2DModel folder "
                              f"(config.json with \"_class_name\": \"DiTTransformer2DModel\")")
    if not path.exists():
        raise CheckpointError(f"{name}: no such file or folder")
    if path.suffix not in TORCH_SUFFIXES + (".safetensors",):
        raise CheckpointError(f"{name}: unknown checkpoint type {path.suffix!r}; expected a folder, "
                              f"{', '.join(TORCH_SUFFIXES)} or .safetensors")
    try:
        conv = resolve_convention(convention, default=CONVENTIONS["sit"], name=name)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(str(exc)) from exc
    state, metadata = load_sit_state(path)
    if num_heads is None and metadata.get("num_heads", "").isdigit():
        num_heads = int(metadata["num_heads"])
    input_size = None
    if latent_shape is not None:
        c, h, w = (int(s) for s in latent_shape)
        if h != w:
            raise CheckpointError(f"{name}: SiT works on square latents, the data's are {tuple(latent_shape)}")
        input_size = h
    from core.models.sit import infer_sit_config

    config = infer_sit_config(state, input_size=input_size, num_heads=num_heads, name=name)
    _check_data(name, config.latent_shape, config.num_classes, latent_shape, num_classes, class_map,
                rows_without_null=num_classes is not None and num_classes == config.num_classes + 1)
    model = build_sit(state, name, input_size=config.input_size, num_heads=config.num_heads, device=device)
    return VelocityAdapter(model, config.latent_shape, config.num_classes, conv, learned_sigma=config.learn_sigma,
                           class_map=class_map, kind="sit", source=name,
                           backbone_config=model.config_dict()).eval().requires_grad_(False)


def save_flow(model: LatentMLP, out: str | Path) -> Path:
    return save_model_folder(out, KIND, model.config_dict(), model.state_dict())


def load_flow(path: str | Path, device: str | torch.device = "cpu", latent_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> torch.nn.Module:
    """Load a saved flow model; checks its latent shape and class count against the data's when given.

    The project's LatentMLP folder gives a LatentMLP; a SiT folder written by ``train-flow --model sit-*``
    (kind ``SIT_KIND``) gives a ``core.models.velocity.VelocityAdapter`` around the SiT (same call and
    attributes)."""
    from core.io import MODEL_CONFIG, read_json

    config = Path(path) / MODEL_CONFIG
    if config.is_file():
        meta = read_json(config)
        if isinstance(meta, dict) and meta.get("kind") == SIT_KIND:
            from core.models.velocity import load_sit_flow

            return load_sit_flow(path, device, latent_shape, num_classes)
    return load_latent_mlp(path, KIND, FIX, device, latent_shape, num_classes)
