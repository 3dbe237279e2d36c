"""Atomic writes and safe, checked reads of JSON and safetensors files.

Every write goes to a temporary file in the target directory and is renamed into place, so a crash
never leaves a half-written file behind. Weights are read with safetensors only (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import CheckpointError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; written files are ordinary, shareable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` (removed on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); restore or re-create this file") from exc


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


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


def save_model_folder(out: str | Path, kind: str, config: dict, state_dict: dict[str, torch.Tensor],
                      dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` ({"kind", "config"}) and ``model.safetensors`` into folder ``out``.

    ``dtype`` (e.g. float16) stores floating-point weights at that precision to halve the file; loading
    copies them into the float32 module (``load_state_dict`` casts)."""
    out = Path(out)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    save_tensors(out / MODEL_WEIGHTS, state_dict, metadata={"kind": kind})
    write_json(out / MODEL_CONFIG, {"kind": kind, "config": config})
    return out


def is_model_folder(path: str | Path | None) -> bool:
    """True when ``path`` holds a saved model (its config.json), not e.g. only a training checkpoint."""
    return bool(path) and (Path(path) / MODEL_CONFIG).is_file()


def read_model_folder(path: str | Path, kind: str, fix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a folder written by ``save_model_folder``; a foreign or corrupt one raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model folder not found; {fix}")
    meta = read_json(path / MODEL_CONFIG)
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path / MODEL_CONFIG}: holds a {found!r} model, expected {kind!r}; {fix}")
    return meta["config"], load_tensors(path / MODEL_WEIGHTS, fix)


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, fix: str) -> None:
    """``load_state_dict`` that turns missing, unexpected or mis-shaped weights into a CheckpointError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({' '.join(first)}); {fix}") from exc
