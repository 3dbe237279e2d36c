"""The embedded default: where the shipped models live and how to load them together."""
from __future__ import annotations

import pickle
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from core.errors import CheckpointError
from core.io import save_model_folder
from core.models.kinds import (
    DIFFUSION_FIX,
    DIFFUSION_KIND,
    FLOW_FIX,
    FLOW_KIND,
    SIT_FLOW_KIND,
)
from core.models.latent_mlp import LatentMLP, load_latent_mlp
from core.models.spec import ModelSpec
from core.models.vae import LatentAutoencoder
from core.models.velocity import (
    CONVENTION_FILE,
    CONVENTIONS,
    NOISE_PRESETS,
    TORCH_SUFFIXES,
    NoiseConvention,
    VelocityAdapter,
    VelocityConvention,
    convention_from_scheduler,
    resolve_convention,
)


def load_vae(spec: ModelSpec):

    return LatentAutoencoder.from_pretrained(spec.vae, device=spec.device)


def load_teacher(spec: ModelSpec):
    from core.models.teacher import Teacher

    return Teacher.load(spec.teacher, device=torch.device(spec.device))


def load_flow_for(spec: ModelSpec, latent_shape: tuple[int, ...], num_classes: int):
    """The flow ``spec.flow`` refers to (any kind ``load_velocity_model`` takes), checked against the data's
    latent shape and class count (through ``spec.flow_class_map`` when given)."""
    from core.device import pick_device
    return load_velocity_model(spec.flow, latent_shape, num_classes, pick_device(spec.device), spec.flow_convention,
                               num_heads=spec.flow_num_heads, class_map=spec.flow_class_map)


def flow_record(model, ref: str | None = None) -> dict | None:
    """Provenance of a loaded flow for manifests: kind, source, convention, class map, latent shape, classes
    (None: no flow). The project's LatentMLP has no kind / source in its config: its kind is
    "distill-studio/flow-mlp", its source ``ref`` and its convention DESIGN.md's."""
    if model is None:
        return None

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
    from core.reads import load_tensors, require_finite

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


DIT_CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")  # the latter: DiT as diffusers < 0.28 saved it
NOT_A_VELOCITY_FOLDER = ("not a velocity model folder: expected this project's flow folder (config.json with "
                         "\"kind\"), or a diffusers DiT folder (config.json with \"_class_name\": "
                         "\"DiTTransformer2DModel\", or \"Transformer2DModel\" with norm_type \"ada_norm_zero\"; "
                         "or a pipeline folder with one under transformer/)")


def _read_config(path: Path) -> dict:
    from core.reads import CONFIG_MAX_BYTES, read_json

    meta = read_json(path, CONFIG_MAX_BYTES)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    return meta


def _not_a_dit(meta: Mapping[str, Any]) -> str | None:
    """Why a diffusers transformer config is not a class-conditional latent DiT (None: it is one)."""
    name = meta.get("_class_name")
    if name == "Transformer2DModel":
        if meta.get("norm_type") != "ada_norm_zero":
            return (f"a diffusers Transformer2DModel with norm_type {meta.get('norm_type')!r} is not a DiT (only "
                    f"norm_type \"ada_norm_zero\", class-conditional DiT, is a velocity model here; text-conditioned "
                    f"transformers such as PixArt are not)")
        if meta.get("patch_size") is None:
            return "a diffusers Transformer2DModel without patch_size works on pixels or tokens, not a DiT on latents"
    if meta.get("num_embeds_ada_norm") is None:
        return "num_embeds_ada_norm is null: not a class-conditional DiT"
    return None


def inspect_velocity_folder(path: str | Path) -> tuple[str, Path, dict]:
    """What the folder ``path`` holds, read from its config files only (no weights): ``("own", path, config)``
    for this project's formats (config.json with "kind") or ``("diffusers-dit", folder, config)`` for a
    diffusers DiT (``path`` or its ``transformer/``). Everything else raises CheckpointError naming the
    config file and why, the one message ``load_velocity_model`` gives for that folder; every folder that
    ``model_present`` accepts ends here as one of the two or as such an error."""
    path = Path(path)
    for config in (path / "config.json", path / "transformer" / "config.json"):
        if not config.is_file():
            continue
        meta = _read_config(config)
        if config.parent == path and "kind" in meta:
            if meta["kind"] not in (FLOW_KIND, SIT_FLOW_KIND):
                raise CheckpointError(f"{config}: holds a {meta['kind']!r} model, not a velocity model "
                                      f"({FLOW_KIND!r} or {SIT_FLOW_KIND!r})")
            return "own", path, meta
        name = meta.get("_class_name")
        if name in DIT_CLASS_NAMES:
            reason = _not_a_dit(meta)
            if reason is not None:
                raise CheckpointError(f"{config}: {reason}")
            return "diffusers-dit", config.parent, meta
        if name is not None:
            raise CheckpointError(f"{config}: holds a diffusers {name}, not a velocity model; {NOT_A_VELOCITY_FOLDER}")
    raise CheckpointError(f"{path}: {NOT_A_VELOCITY_FOLDER}")


def _scheduler_config(root: Path, folder: Path) -> Path | None:
    """The pipeline's scheduler config: ``root/scheduler/``, ``folder/``, or ``../scheduler/`` of a ``transformer/``."""
    candidates = [root / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"]
    if folder == root and root.name == "transformer":
        candidates.append(root.parent / "scheduler" / "scheduler_config.json")
    return next((c for c in candidates if c.is_file()), None)


def _describe(conv) -> str:
    if isinstance(conv, NoiseConvention):
        return (f"DDPM {conv.prediction_type}-prediction ({conv.beta_schedule} β {conv.beta_start:g}..{conv.beta_end:g}, "
                f"{conv.num_train_timesteps} steps)")
    preset = next((k for k, v in CONVENTIONS.items() if v == conv and k != "distill-studio"), None)
    return repr(preset) if preset else str(asdict(conv))


def dit_convention(root: Path, folder: Path, declared) -> VelocityConvention | NoiseConvention:
    """The convention of a diffusers DiT folder (``folder``, inside ``root`` or ``root`` itself): the pipeline's scheduler config and
    ``declared`` (the argument, else ``velocity_convention.json``) must agree (a declared DDPM convention such
    as "ddpm-eps" takes the scheduler's schedule and prediction type: the scheduler describes the checkpoint);
    with neither, CheckpointError asks for a declaration."""
    declared = declared if declared is not None else _read_declared_convention(folder, root)
    try:
        conv = resolve_convention(declared, name=str(folder))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(str(exc)) from exc
    sched_path = _scheduler_config(root, folder)
    derived = None
    if sched_path is not None:
        try:
            derived = convention_from_scheduler(_read_config(sched_path))
        except ValueError as exc:
            raise CheckpointError(f"{sched_path}: {exc}") from exc
    if derived is None and conv is None:
        raise CheckpointError(
            f"{folder}: a diffusers DiT folder without a scheduler config does not show which time and sign "
            f"convention it was trained with (diffusers' own DiT checkpoints, facebook/DiT-XL-2-*, are DDPM noise "
            f"predictors, not velocity models). Declare it: convention='ddpm-eps' (DDPM ε-prediction, DiT's linear "
            f"β 1e-4..0.02 over 1000 steps; converted to a velocity), 'diffusers-flow' (σ = 1 - t, timestep 1000·σ, "
            f"predicts noise - data) or 'sit', or a {CONVENTION_FILE} in the folder such as "
            f"{{\"preset\": \"ddpm-eps\"}}; or give the pipeline folder with its scheduler/")
    if derived is None:
        return conv
    if conv is None:
        return derived
    if isinstance(conv, NoiseConvention) and isinstance(derived, NoiseConvention) and conv == NOISE_PRESETS["ddpm-eps"]:
        return derived
    if conv != derived:
        raise CheckpointError(f"{folder}: declared convention {_describe(conv)} contradicts {sched_path}, which says "
                              f"{_describe(derived)}; drop the declaration (the scheduler config decides) or fix it")
    return conv


def _read_declared_convention(folder: Path, root: Path) -> dict | None:
    for candidate in (folder / CONVENTION_FILE, root / CONVENTION_FILE):
        if candidate.is_file():
            from core.reads import CONFIG_MAX_BYTES, read_json

            data = read_json(candidate, CONFIG_MAX_BYTES)
            if not isinstance(data, dict):
                raise CheckpointError(f"{candidate}: expected a JSON object with preset / time_scale / "
                                      f"time_reversed / velocity_sign")
            return data
    return None


def _load_diffusers_dit(root: Path, folder: Path, convention, latent_shape, num_classes, class_map, device):
    # DiTTransformer2DModel also reads the Transformer2DModel configs of DiT (same weights)
    from diffusers import DiTTransformer2DModel

    conv = dit_convention(root, folder, convention)
    cfg = _read_config(folder / "config.json")
    in_ch = int(cfg.get("in_channels", 4))
    size = int(cfg.get("sample_size", 32))
    out_ch = cfg.get("out_channels") or in_ch
    if int(out_ch) not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"{folder}: out_channels {out_ch} is neither in_channels {in_ch} nor twice that")
    model_classes = cfg["num_embeds_ada_norm"]   # inspect_velocity_folder checked it is set
    shape = (in_ch, size, size)
    _check_data(str(folder), shape, int(model_classes), latent_shape, num_classes, class_map)
    try:  # safetensors only (no pickle); diffusers only warns about missing keys, so they are checked here
        backbone, info = DiTTransformer2DModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False,
            output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{folder}: could not load the diffusers DiT "
                              f"({' '.join(lines[:2])[:400]})") from exc
    problems = {k: v for k, v in info.items() if v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')} {list(v)[:6]}" for k, v in problems.items())
        raise CheckpointError(f"{folder}: weights do not fit its config.json ({detail})")
    from core.reads import require_finite_module

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
    from core.models.kinds import SIT_FLOW_KIND as SIT_FLOW_KIND
    from core.models.sit import SiTConfig
    from core.reads import MODEL_CONFIG, config_from_json, read_model_folder

    path = Path(path)
    name = str(path)
    config, state = read_model_folder(path, SIT_FLOW_KIND, FLOW_FIX)
    config = dict(config)
    config.pop("extra", None)
    sit = config_from_json(SiTConfig, config, path / MODEL_CONFIG, FLOW_FIX)
    _check_data(name, sit.latent_shape, sit.num_classes, latent_shape, num_classes, None)
    model = build_sit(_strip_prefixes(state), name, input_size=sit.input_size, num_heads=sit.num_heads, device=device)
    if model.config != sit:
        raise CheckpointError(f"{name}: the weights describe {model.config}, config.json says {sit}; {FLOW_FIX}")
    return VelocityAdapter(model, sit.latent_shape, sit.num_classes, CONVENTIONS["distill-studio"],
                           learned_sigma=sit.learn_sigma, kind="distill-studio/flow-sit", source=name,
                           backbone_config=model.config_dict()).eval().requires_grad_(False)


def load_velocity_model(ref: str | Path, latent_shape: Sequence[int] | None = None, num_classes: int | None = None,
                        device: str | torch.device = "cpu",
                        convention: str | Mapping[str, Any] | VelocityConvention | None = None, *,
                        num_heads: int | None = None, class_map: Sequence[int] | None = None) -> nn.Module:
    """Load the velocity model ``ref`` refers to, checked against the data, in eval mode without gradients.

    ``ref``: the project's flow folder, a diffusers DiT folder (DiTTransformer2DModel, or Transformer2DModel
    with norm_type "ada_norm_zero"; or a pipeline folder with it under ``transformer/``; see
    ``inspect_velocity_folder``), or a SiT/DiT state dict file (``.pt``/``.pth``/``.bin``/``.ckpt`` or
    ``.safetensors``). ``latent_shape`` (C, H, W) / ``num_classes``: the data's, checked when given (a SiT file
    without ``pos_embed`` needs ``latent_shape`` for its latent size). ``convention``: a preset name ("sit",
    "diffusers-flow", "ddpm-eps"), a dict, a VelocityConvention or a NoiseConvention; default "sit" for
    state-dict files (the DiT authors' ``DiT-XL-2-*.pt`` need "ddpm-eps"); for diffusers folders taken from
    the pipeline's scheduler config and/or declared (argument or ``velocity_convention.json``; see
    ``dit_convention``); must be left unset for the project's own format. ``num_heads``: attention heads of a SiT whose width is no preset's (else read from safetensors
    metadata "num_heads" or the preset). ``class_map``: the model's class id for each data class.
    Raises CheckpointError (naming the file and what differs) for unknown, corrupt or mismatched checkpoints.
    """
    # Long by design: the one dispatch over every kind of velocity model (own folders, diffusers DiT folders,
    # SiT/DiT state dicts), each branch a few checks and a call.
    path = Path(ref)
    name = str(path)
    if class_map is not None:
        class_map = [int(c) for c in class_map]
    if path.is_dir():
        kind, folder, meta = inspect_velocity_folder(path)
        if kind == "own":   # the project's own formats (MLP or SiT)
            if convention is not None and resolve_convention(convention) != CONVENTIONS["distill-studio"]:
                raise CheckpointError(f"{name}: the project's flow models follow DESIGN.md's convention; "
                                      f"leave convention unset")
            if class_map is not None:
                raise CheckpointError(f"{name}: class_map applies to foreign models only")
            load = load_flow if meta["kind"] == FLOW_KIND else load_sit_flow
            return load(path, device, tuple(latent_shape) if latent_shape is not None else None, num_classes)
        return _load_diffusers_dit(path, folder, convention, latent_shape, num_classes, class_map, device)
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
    return save_model_folder(out, FLOW_KIND, model.config_dict(), model.state_dict())


def load_flow(path: str | Path, device: str | torch.device = "cpu", latent_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None) -> torch.nn.Module:
    """Load a saved flow model; checks its latent shape and class count against the data's when given.

    The project's LatentMLP folder gives a LatentMLP; a SiT folder written by ``train-flow --model sit-*``
    (kind ``SIT_FLOW_KIND``) gives a ``core.models.velocity.VelocityAdapter`` around the SiT (same call and
    attributes)."""
    from core.reads import CONFIG_MAX_BYTES, MODEL_CONFIG, read_json

    config = Path(path) / MODEL_CONFIG
    if config.is_file():
        meta = read_json(config, CONFIG_MAX_BYTES)
        if isinstance(meta, dict) and meta.get("kind") == SIT_FLOW_KIND:
            return load_sit_flow(path, device, latent_shape, num_classes)
    return load_latent_mlp(path, FLOW_KIND, FLOW_FIX, device, latent_shape, num_classes)


def model_present(ref: str | None) -> bool:
    """True when ``ref`` names something to load: an existing file, or a folder holding a model config
    (its own ``config.json`` or a diffusers pipeline's ``transformer/config.json``). A folder without one
    (e.g. only a training checkpoint) or a missing path is left out, as the embedded default's may be.
    Deliberately permissive: a flow folder it accepts is then loaded by ``load_velocity_model`` or refused with
    ``inspect_velocity_folder``'s message (an unsupported or broken config fails loudly, never silently
    leaves the run without its model)."""
    from pathlib import Path

    if not ref:
        return False
    path = Path(ref)
    if path.is_dir():
        return (path / "config.json").is_file() or (path / "transformer" / "config.json").is_file()
    return path.is_file()
