"""Which models a run uses (ModelSpec: folders or a hub id per model, device, a foreign flow's convention,
heads and class map), checked when it is made; core.models.loading loads what it names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.config import DIFFUSION_DIR, FLOW_DIR, TEACHER_DIR, VAE_DIR


@dataclass
class ModelSpec:
    """Which models to use: folders (or a diffusers hub id for the VAE).

    ``flow`` may be any reference ``core.models.loading.load_velocity_model`` takes: the project's flow folder,
    a diffusers DiTTransformer2DModel folder, or a raw SiT/DiT ``.pt`` / ``.safetensors`` state dict.
    ``flow_convention``: its time / sign convention, a preset name ("sit", "diffusers-flow", "ddpm-eps") or a
    dict / JSON object text (``{"time_scale": 1000, "time_reversed": true, "velocity_sign": -1}``); None: the
    loader's default (the project's for its own folders, "sit" for state-dict files; a diffusers folder's
    scheduler config, else it must declare one).
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
    if isinstance(convention, str) and convention.strip().startswith("{"):
        from core.errors import CheckpointError
        from core.reads import parse_json

        try:
            convention = parse_json(convention, "flow convention", 'give a preset name or an object such as '
                                    '{"time_scale": 1000, "time_reversed": true, "velocity_sign": -1}')
        except CheckpointError as exc:
            raise ValueError(str(exc)) from exc
    from core.models.velocity import resolve_convention

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


MODEL_FOLDER_RECORD = "dataset.json"   # written by `python -m core prepare` into the model folder


@dataclass(frozen=True)
class ModelFolder:
    """A model folder made by ``python -m core prepare ROOT --out models/NAME``: its models (``spec``) and the
    ImageFolder dataset they were trained on (``root`` at ``resolution`` px with ``channels`` channels; its
    test split is ``test_dir`` or the convention of ``core.data.splits``)."""

    path: str
    spec: ModelSpec
    root: str
    resolution: int
    channels: int
    test_dir: str | None = None

    def data_options(self) -> dict:
        """The data arguments of ``core.pipeline.distill.load_engine`` / ``core.data.splits.load_dataset``."""
        return {"dataset": "imagefolder", "data_dir": self.root, "resolution": self.resolution,
                "channels": self.channels}


def open_model_folder(folder: str | Path, device: str = "cpu") -> ModelFolder:
    """The ``ModelFolder`` at ``folder``; ValueError when it is not one (no record) or its record is damaged.
    Relative paths in the record are relative to the repository (``prepare`` writes them so for paths inside it,
    absolute ones else), or else to the model folder."""
    from core.config import ASSETS
    from core.reads import read_json

    folder = Path(folder)
    record_file = folder / MODEL_FOLDER_RECORD
    if not record_file.is_file():
        raise ValueError(f"{folder}: not a model folder written by `prepare` (no {MODEL_FOLDER_RECORD})")
    record = read_json(record_file)

    def located(path: str | None) -> str | None:
        if path is None or Path(path).is_absolute():
            return path
        return next((str(base / path) for base in (ASSETS.parent, folder.absolute())
                     if (base / path).exists()), path)

    try:
        root, resolution, channels = located(record["root"]), int(record["resolution"]), int(record["channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{record_file}: not a complete `prepare` record ({exc!r}); run prepare again") from exc
    spec = ModelSpec(vae=located(record.get("vae")) or str(folder / "vae"), flow=str(folder / "flow"),
                     teacher=str(folder / "teacher"), diffusion=str(folder / "diffusion"), device=device)
    return ModelFolder(str(folder), spec, root, resolution, channels, located(record.get("test_dir")))
