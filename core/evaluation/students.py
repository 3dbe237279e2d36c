"""Student evaluation: train a classifier only on a distilled set, test it on the real test split.

Protocol (DESIGN.md section 4): ConvNet-3 (width 128, instance norm, avg-pool), SGD lr 0.01, momentum 0.9,
weight decay 5e-4, 300 epochs, lr x0.1 at half, mean ± std over seeds. Per-image weights (DDOQ cell
masses, mean 1 per class) multiply each sample's loss.

Protocols (DESIGN.md section 4b; ``PROTOCOLS``, ``EvalConfig.protocol``):
- ``hard``: cross-entropy on the set's labels, no augmentation;
- ``hard-dsa``: the same with DSA augmentation drawn afresh for every batch (core.data.augment);
- ``soft``: KL (· T²) to the teacher's temperature-T outputs on the un-augmented images, computed once;
- ``soft-online``: every batch is DSA-augmented and the teacher labels *that* batch (FKD / SRe2L / RDED
  relabelling), KL · T².

Device (``EvalConfig.device``, default cpu): the student and every batch live there, autocast runs on that
device type, TF32 is allowed on CUDA (``EvalConfig.tf32``); a device that is not there is refused before any
work. Initialisation and the batch order come from CPU generators, so a seed's draws are the same on every
device (the arithmetic differs in the last bits between devices). ``evaluate_set_distributed``: rank r of
W trains seeds r, r + W, ... (``seed_shard``).
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from core.config import PROTOCOLS, SOFT_TEMPERATURE, check_int
from core.data.augment import dsa_augment
from core.data.datasets import LabelledImages
from core.device import bf16_supported, configure_device, resolve_device
from core.models.convnet import ARCHITECTURES, ConvNetConfig, build_classifier

if TYPE_CHECKING:
    from core.pipeline.distributed import DistContext

Progress = Callable[[float, str], None]
TEST_SHARE = 0.1   # the part of a seed's progress bar that the test pass fills


class EvaluationCancelled(Exception):
    """Raised when ``should_stop()`` returns True between epochs."""


@dataclass(frozen=True)
class EvalConfig:
    architecture: str = "convnet"
    width: int = 128
    labels: str = "hard"             # hard | soft
    temperature: float = SOFT_TEMPERATURE
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    use_weights: bool = True
    augment: str = "none"            # none | dsa
    relabel: bool = False            # soft labels from the teacher on every augmented batch (soft-online)
    seeds: tuple[int, ...] = (0, 1, 2)
    test_batch_size: int = 1000
    precision: str = "auto"          # auto | bf16 | fp32 (auto: bf16 autocast where the CPU/GPU supports it)
    device: str = "cpu"              # where students train and test: cpu, cuda, cuda:N, mps, auto
    tf32: bool = True                # TF32 matmuls / convolutions on CUDA (core.device.configure_device)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.labels not in ("hard", "soft"):
            raise ValueError(f"labels must be 'hard' or 'soft', got {self.labels!r}")
        if self.augment not in ("none", "dsa"):
            raise ValueError(f"augment must be 'none' or 'dsa', got {self.augment!r}")
        if self.relabel and self.labels != "soft":
            raise ValueError("relabel (the teacher labels every batch) needs labels='soft'")
        for name, kind in (("epochs", "epochs"), ("batch_size", "batch"), ("width", "width"),
                           ("test_batch_size", "batch")):
            check_int(name, int(getattr(self, name)), kind)
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        check_int("the number of seeds", len(self.seeds), "seeds")
        for seed in self.seeds:
            check_int("a student seed", seed, "seed")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        try:
            if self.device != "auto":
                torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {self.device!r}") from exc

    @property
    def protocol(self) -> str:
        """The protocol name of these label / augmentation settings (``custom`` for other combinations)."""
        settings = {"labels": self.labels, "augment": self.augment, "relabel": self.relabel}
        return next((name for name, fields in PROTOCOLS.items() if fields == settings), "custom")

    def autocast(self, device: torch.device | str | None = None) -> torch.autocast:
        """bf16 mixed precision on ``device``'s type (default ``self.device``; weights and optimiser stay fp32).
        ``auto`` uses it only where bf16 is native: a CUDA GPU with bf16 (Ampere and later) or a CPU with
        AVX512-BF16 / AMX (where it halves the time of a ConvNet-3 step)."""
        device = resolve_device(self.device if device is None else device)
        enabled = self.precision == "bf16" or (self.precision == "auto" and bf16_supported(device))
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def eval_device(config: EvalConfig) -> torch.device:
    """The torch.device ``config`` asks for, checked to exist (ValueError: e.g. cuda on a machine without
    CUDA, or bf16 on a GPU or MPS device without it), so that nothing starts on a device that is not there."""
    device = resolve_device(config.device)
    if config.precision == "bf16" and device.type != "cpu" and not bf16_supported(device):
        raise ValueError(f"precision bf16 requested but {device} has no bf16; use --precision fp32 or auto")
    return device


def seed_shard(n: int, rank: int, world: int) -> list[int]:
    """Indices of the ``n`` seeds that ``rank`` of ``world`` trains: rank, rank + world, ... (strided, so that
    ranks stay busy alike when seeds are few; together exactly range(n), each once)."""
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    return list(range(rank, n, world))


@dataclass
class EvalResult:
    accuracies: list[float]
    seconds: list[float]
    config: EvalConfig
    num_images: int
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"protocol": self.config.protocol, "accuracy_mean": round(self.mean, 5), "accuracy_std": round(self.std, 5),
                "accuracies": [round(a, 5) for a in self.accuracies], "seconds": [round(s, 2) for s in self.seconds],
                "num_images": self.num_images, "config": asdict(self.config), **self.extra}


def test_accuracy(model: torch.nn.Module, test: LabelledImages, batch_size: int = 1000,
                  autocast: torch.autocast | None = None, progress: Progress | None = None) -> float:
    """Fraction of ``test`` the model classifies correctly (batches moved to the model's device);
    ``progress(fraction, message)`` after each batch."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode(), (autocast or nullcontext()):
        for i in range(0, len(test), batch_size):
            pred = model(test.batch(slice(i, i + batch_size)).to(device)).argmax(1).cpu().numpy()
            correct += int((pred == test.labels[i:i + batch_size]).sum())
            if progress is not None:
                done = min(i + batch_size, len(test))
                progress(done / len(test), f"testing: {done:,} of {len(test):,} images")
    return correct / len(test)


def train_student(images: torch.Tensor, labels: np.ndarray, num_classes: int, config: EvalConfig, seed: int,
                  weights: np.ndarray | None = None, soft_targets: torch.Tensor | None = None,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                  teacher=None) -> torch.nn.Module:
    """Train one student on (images in [-1, 1] (N, C, H, W), labels (N,)) on ``config.device``; returns the
    trained model (on that device).

    ``soft_targets`` (N, classes): static soft labels; with ``config.relabel`` the ``teacher`` labels every
    (augmented) batch instead. The student is initialised on the CPU (the same weights on every device) and
    moved; the images, labels, weights and targets are moved to the device once (a distilled set is small)."""
    if config.relabel and teacher is None:
        raise ValueError("the soft-online protocol needs a teacher to label every batch")
    device = eval_device(config)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, h = images.shape[1], images.shape[2]
    model = build_classifier(config.architecture, ConvNetConfig(c, num_classes, h, config.width)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [config.epochs // 2], gamma=0.1)
    images = images.to(device)
    y = torch.from_numpy(labels).long().to(device)
    w = torch.ones(len(y)) if weights is None or not config.use_weights else torch.from_numpy(np.asarray(weights)).float()
    w = w.to(device)
    soft_targets = None if soft_targets is None else soft_targets.to(device)
    model.train()
    for epoch in range(config.epochs):
        if should_stop is not None and should_stop():
            raise EvaluationCancelled(f"cancelled at epoch {epoch} of {config.epochs}")
        order = torch.randperm(len(y), generator=generator)   # drawn on the CPU: the same order on every device
        for start in range(0, len(y), config.batch_size):
            idx = order[start:start + config.batch_size].to(device)
            x = images[idx]
            if config.augment == "dsa":
                x = dsa_augment(x, generator)
            with config.autocast(device):
                logits = model(x)
            logits = logits.float()
            if config.relabel:  # the teacher labels this augmented batch (its forward in the student's precision)
                with config.autocast(device):
                    targets = teacher.soft_labels(x, config.temperature).to(device)
            else:
                targets = None if soft_targets is None else soft_targets[idx]
            if targets is None:
                per_sample = F.cross_entropy(logits, y[idx], reduction="none")
            else:
                t = config.temperature
                per_sample = F.kl_div(F.log_softmax(logits / t, 1), targets, reduction="none").sum(1) * t * t
            loss = (per_sample * w[idx]).sum() / w[idx].sum().clamp_min(1e-12)  # a batch of weight-0 images: no step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        if progress is not None and (epoch % 10 == 9 or epoch == config.epochs - 1):
            progress((epoch + 1) / config.epochs, f"seed {seed}: epoch {epoch + 1}/{config.epochs}, loss {loss.item():.3f}")
    return model


def protocol_config(protocol: str, **settings) -> EvalConfig:
    """The EvalConfig of a protocol name (``PROTOCOLS``) with other ``settings`` (epochs, seeds, ...)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return EvalConfig(**PROTOCOLS[protocol], **settings)


def evaluate_set(images: torch.Tensor, labels: np.ndarray, test: LabelledImages, config: EvalConfig = EvalConfig(),
                 weights: np.ndarray | None = None, teacher=None, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None) -> EvalResult:
    """Train one student per seed on the set and test each on ``test``; mean ± std of test accuracy.
    Students train and test on ``config.device`` (checked first, before any work; TF32 there per ``config.tf32``)."""
    device = eval_device(config)
    if images.ndim != 4 or tuple(images.shape[1:]) != test.image_shape:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, test.image_shape))}) like the test split, "
                         f"got {tuple(images.shape)}")
    if len(labels) != len(images) or len(images) == 0:
        raise ValueError(f"need one label per image and at least one image, got {len(labels)} labels for {len(images)}")
    if weights is not None and (len(weights) != len(images) or not np.all(np.isfinite(weights)) or np.any(np.asarray(weights) < 0)):
        raise ValueError("weights must be one finite non-negative number per image")
    if weights is not None and config.use_weights:
        sums = np.bincount(labels, weights=np.asarray(weights, dtype=np.float64), minlength=test.num_classes)
        zero = [test.class_names[c] for c in np.unique(labels) if sums[c] <= 0]
        if zero:
            raise ValueError(f"the images of class {', '.join(zero)} all have weight 0, so no loss could be trained "
                             "on them; give them weights > 0 (or evaluate unweighted: --no-weights)")
    configure_device(device, config.tf32)
    soft = None
    if config.labels == "soft":
        if teacher is None:
            raise ValueError(f"soft labels (protocol {config.protocol}) need a teacher")
        if not config.relabel:
            soft = teacher.soft_labels(images, config.temperature)
    accuracies, seconds = [], []
    n = len(config.seeds)
    for k, seed in enumerate(config.seeds):
        t0 = time.perf_counter()
        # a seed's share of the bar: training fills 1 - TEST_SHARE of it, the test pass the rest
        train_progress = test_progress = None
        if progress is not None:
            def train_progress(f: float, message: str, k: int = k) -> None:
                progress((k + (1 - TEST_SHARE) * f) / n, message)

            def test_progress(f: float, message: str, k: int = k, seed: int = seed) -> None:
                progress((k + 1 - TEST_SHARE + TEST_SHARE * f) / n, f"seed {seed}: {message}")

        model = train_student(images, labels, test.num_classes, config, seed, weights, soft, train_progress, should_stop,
                              teacher)
        accuracies.append(test_accuracy(model, test, config.test_batch_size, config.autocast(device), test_progress))
        seconds.append(time.perf_counter() - t0)
        if progress is not None:
            progress((k + 1) / len(config.seeds), f"seed {seed}: test accuracy {accuracies[-1]:.2%}")
    return EvalResult(accuracies, seconds, config, len(images))


class DistilledFolder(NamedTuple):
    """A set read from disk: images float32 in [-1, 1] (N, C, H, W), labels int64 (N,), weights (N,) from
    the manifest (None without one), and the class ids the set covers (ascending)."""

    images: torch.Tensor
    labels: np.ndarray
    weights: np.ndarray | None
    classes: tuple[int, ...]


def read_manifest(root: str | Path) -> dict | None:
    """``root/manifest.json`` checked strictly (None when there is none): an object whose ``images`` is a list
    of entries, each with a ``file`` (``CLASS_FOLDER/IMAGE`` inside ``root``, present on disk) and a finite
    ``weight`` >= 0 (1 when absent). Every problem is named with its entry, in one ValueError."""
    import json
    from pathlib import PurePosixPath

    from core.errors import CheckpointError
    from core.pipeline.export import MANIFEST
    from core.reads import read_json

    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path, fix="restore it, or delete it to evaluate the folder as a plain ImageFolder "
                             "(unweighted)")
    except CheckpointError as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: must be a JSON object with a list \"images\", found {type(manifest).__name__}")
    entries = manifest.get("images")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: \"images\" must be a list of {{\"file\", \"weight\"}} entries, found "
                         f"{type(entries).__name__ if 'images' in manifest else 'nothing'}")
    problems = []
    for k, entry in enumerate(entries):
        where = f"{MANIFEST} images[{k}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object with \"file\" and \"weight\", found {type(entry).__name__}")
            continue
        file, weight = entry.get("file"), entry.get("weight", 1.0)
        if not isinstance(file, str) or not file:
            problems.append(f"{where}: \"file\" must be a path string, found {json.dumps(file)[:40]}")
            continue
        parts = PurePosixPath(file).parts
        if len(parts) != 2 or PurePosixPath(file).is_absolute() or ".." in parts:
            problems.append(f"{where}: \"file\" {file!r} must be CLASS_FOLDER/IMAGE inside the folder")
        elif not (root / file).is_file():
            problems.append(f"{where}: \"file\" {file!r} is listed but not on disk")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            problems.append(f"{where} ({file}): \"weight\" must be a finite number >= 0, found {json.dumps(weight)[:40]}")
    if problems:
        raise ValueError(f"{path}: invalid manifest:\n  - " + "\n  - ".join(problems[:20])
                         + (f"\n  - ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    return manifest


def _manifest_classes(manifest: dict, num_classes: int) -> tuple[int, ...]:
    """The classes a manifest records: the exported ``classes`` (a selection may hold fewer than were
    distilled), else its config's ``classes``, else all."""
    where = "classes"
    classes = manifest.get("classes")
    if classes is None:
        where = "config.classes"
        classes = (manifest.get("config") or {}).get("classes") if isinstance(manifest.get("config"), dict) else None
    if classes is None:
        return tuple(range(num_classes))
    if not isinstance(classes, list) or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes
                                                for c in classes) or not classes:
        raise ValueError(f"manifest.json: {where} must be a list of class ids in [0, {num_classes}), "
                         f"found {classes!r}")
    return tuple(sorted(set(classes)))


def read_distilled_folder(path: str | Path, class_names: tuple[str, ...], image_shape: tuple[int, int, int]
                          ) -> DistilledFolder:
    """Images, labels, weights (from a manifest) and classes of an exported set or any ImageFolder.

    Class folders are matched to ``class_names`` by the manifest, by ``NN-name`` prefixes or by name. An
    export covers the classes its manifest records (``--classes 0,1``: those two); any other ImageFolder
    must have every class. Every problem found (missing or unknown class folders, empty classes, unreadable
    or mis-sized images, an invalid manifest) is collected and reported in one ValueError.
    """
    from PIL import Image, UnidentifiedImageError

    from core.data.datasets import IMAGE_EXTENSIONS
    from core.pipeline.export import class_folder_name

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    manifest = read_manifest(root)
    expected = _manifest_classes(manifest, len(class_names)) if manifest else tuple(range(len(class_names)))
    by_name = {class_folder_name(i, n): i for i, n in enumerate(class_names)}
    by_name.update({n: i for i, n in enumerate(class_names)})
    weight_of = {im["file"]: float(im.get("weight", 1.0)) for im in manifest["images"]} if manifest else {}
    problems, images, labels, weights = [], [], [], []
    seen = set()
    for folder in folders:
        if folder.name not in by_name:
            problems.append(f"folder {folder.name!r} is not a class of this dataset ({', '.join(class_names)})")
            continue
        label = by_name[folder.name]
        seen.add(label)
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            problems.append(f"class folder {folder.name!r} is empty")
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("L" if image_shape[0] == 1 else "RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError):
                problems.append(f"{f.relative_to(root)}: unreadable image")
                continue
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if arr.shape != image_shape:
                problems.append(f"{f.relative_to(root)}: size {arr.shape[1]}x{arr.shape[2]}, expected "
                                f"{image_shape[1]}x{image_shape[2]}")
                continue
            images.append(arr)
            labels.append(label)
            weights.append(weight_of.get(f"{folder.name}/{f.name}", 1.0))
    missing = [class_names[i] for i in expected if i not in seen]
    if missing:
        problems.append(f"missing class folders: {', '.join(missing)}")
    extra = sorted(seen - set(expected))
    if extra:
        problems.append(f"class folders of {', '.join(class_names[i] for i in extra)} are not among the classes "
                        f"manifest.json records ({', '.join(class_names[i] for i in expected)})")
    if problems:
        raise ValueError(f"{root}: cannot evaluate this folder:\n  - " + "\n  - ".join(problems))
    x = torch.from_numpy(np.stack(images)).float().div_(127.5).sub_(1.0)
    return DistilledFolder(x, np.asarray(labels, dtype=np.int64), np.asarray(weights) if manifest else None, expected)


def evaluate_set_distributed(images: torch.Tensor, labels: np.ndarray, test: LabelledImages, config: EvalConfig,
                             ctx: "DistContext", weights: np.ndarray | None = None, teacher=None,
                             progress: Progress | None = None,
                             should_stop: Callable[[], bool] | None = None) -> EvalResult:
    """``evaluate_set`` with the seeds split across ranks (rank r trains seeds r, r + W, ...: ``seed_shard``),
    each on its ``config.device`` (under torchrun pass each rank's own, e.g. ``rank_device(ctx, "cuda")``);
    the results are gathered and the same EvalResult is returned on every rank (accuracies in seed order,
    equal to one process's on the same hardware; ``progress`` is reported by rank 0 for its seeds). A failure
    on one rank is raised on all."""
    from core.pipeline.distributed import _run_shard, assemble_items

    mine = seed_shard(len(config.seeds), ctx.rank, ctx.world_size)

    def compute() -> list[tuple[float, float]]:
        if not len(mine):
            return []
        local = replace(config, seeds=tuple(config.seeds[i] for i in mine))
        r = evaluate_set(images, labels, test, local, weights, teacher, progress if ctx.is_main else None, should_stop)
        return list(zip(r.accuracies, r.seconds))

    results = assemble_items(_run_shard(ctx, compute, mine), len(config.seeds))
    return EvalResult([a for a, _ in results], [s for _, s in results], config, len(images))
