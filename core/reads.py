"""Safe, checked reads: JSON, safetensors (never pickle), model folders and their configs. Every
problem is a CheckpointError that names the file, the field and the fix; non-finite weights are refused."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from core.errors import CheckpointError


JSON_MAX_BYTES = 64 * 2**20     # a manifest, a latent store's index, a results file: far above any this tool writes
CONFIG_MAX_BYTES = 2**20        # a model's config.json, a scheduler config, a convention file
RESTORE = "restore or re-create this file"


def parse_json(data: str | bytes, source: str | Path, fix: str = RESTORE) -> Any:
    """The JSON value of ``data``; CheckpointError naming ``source`` and ``fix`` for invalid JSON or JSON nested
    too deeply for the parser (``[[[[...``: Python's recursion limit, about 1000 levels)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise CheckpointError(f"{source}: JSON nested too deeply (over {sys.getrecursionlimit()} levels of [ or {{); "
                              f"not something this tool wrote; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:   # JSONDecodeError is a ValueError
        raise CheckpointError(f"{source}: not valid JSON ({exc}); {fix}") from exc


def read_json(path: str | Path, max_bytes: int = JSON_MAX_BYTES, fix: str = RESTORE) -> Any:
    """The JSON file ``path``, refused (CheckpointError naming it, its size and ``fix``) before it is read when it
    is larger than ``max_bytes``; see ``parse_json``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise CheckpointError(f"{path}: {max(size, len(data)) / 2**20:.1f} MiB, larger than the {max_bytes / 2**20:g} "
                              f"MiB allowed for this JSON file; not something this tool wrote; {fix}")
    return parse_json(data, path, fix)


def load_tensors(path: str | Path, fix: str = "") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file raises CheckpointError naming it and ``fix``."""
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}){hint}") from exc


def tensors_fingerprint(tensors: dict[str, torch.Tensor], extra: str = "") -> str:
    """SHA-256 over names, shapes, dtypes and bytes of ``tensors`` (sorted by name) plus ``extra``."""
    h = hashlib.sha256(extra.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


MODEL_WEIGHTS = "model.safetensors"


MODEL_CONFIG = "config.json"


def read_model_folder(path: str | Path, kind: str, fix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a folder written by ``save_model_folder``; a foreign or corrupt one raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model folder not found; {fix}")
    meta = read_json(path / MODEL_CONFIG, CONFIG_MAX_BYTES)
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path / MODEL_CONFIG}: holds a {found!r} model, expected {kind!r}; {fix}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path / MODEL_CONFIG}: field \"config\" must be an object of the model's settings; {fix}")
    weights = path / MODEL_WEIGHTS
    return meta["config"], require_finite(load_tensors(weights, fix), weights, fix)


def require_finite(tensors: dict[str, torch.Tensor], source: str | Path, fix: str = "") -> dict[str, torch.Tensor]:
    """``tensors`` unchanged; CheckpointError naming ``source`` and the first tensors holding NaN or ±inf."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: weights hold NaN or infinite values ({', '.join(sorted(bad)[:5])}"
                              f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}); the model cannot produce "
                              f"valid outputs{'; ' + fix if fix else ''}")
    return tensors


def require_finite_module(module: torch.nn.Module, source: str | Path, fix: str = "") -> torch.nn.Module:
    """``module`` unchanged, after ``require_finite`` on its parameters and buffers."""
    require_finite(dict(module.state_dict()), source, fix)
    return module


def config_from_json(cls: type, data: Any, path: str | Path, fix: str = ""):
    """``cls(**data)`` for a config dataclass read from ``path``, after checking that ``data`` is an object
    whose fields are fields of ``cls`` with values of the annotated types (int, float, bool, str, tuples
    and lists of ints, dicts, optional ones). A mismatch raises CheckpointError naming the file and field."""
    import dataclasses
    import typing

    hint = f"; {fix}" if fix else ""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the model config must be a JSON object, found {type(data).__name__}{hint}")
    types = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{path}: unknown config fields {unknown} (a {cls.__name__} has {sorted(names)}){hint}")
    for name, value in data.items():
        if not _json_value_fits(value, types[name]):
            raise CheckpointError(f"{path}: config field {name!r} must be {_type_text(types[name])}, got "
                                  f"{json.dumps(value)[:60]}{hint}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc}){hint}") from exc


def _json_value_fits(value: Any, annotation: Any) -> bool:
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_json_value_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (tuple, list) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and Ellipsis not in args:
            return len(value) == len(args) and all(_json_value_fits(v, a) for v, a in zip(value, args))
        return all(_json_value_fits(v, args[0]) for v in value)
    return True  # an annotation this check does not know: left to the dataclass


def _type_text(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "dict": "an object"}.get(text or "", str(annotation).replace("typing.", ""))


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, fix: str) -> None:
    """``load_state_dict`` that turns missing, unexpected or mis-shaped weights into a CheckpointError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({' '.join(first)}); {fix}") from exc
