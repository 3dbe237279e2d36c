"""Training of the teacher classifier (ConvNet-3) used for metrics and soft labels."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from core.data.splits import load_dataset
from core.device import seed_everything
from core.io import save_model_folder, write_json
from core.models.convnet import ConvNet, ConvNetConfig
from core.models.teacher import KIND, Teacher


@dataclass
class TeacherTrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    max_shift: int = 2
    seed: int = 0
    threads: int = 0
    train_split: str = "train-minus-val"   # the validation split held out (DESIGN.md 4b); "train": all images
    dataset: str = "fashion-mnist"         # or "imagefolder" (core.data.splits: ROOT/train, val, test)
    resolution: int = 32                   # imagefolder: image size (Fashion-MNIST is 32, padded)
    channels: int = 1                      # imagefolder: 1 or 3
    test_dir: str | None = None            # imagefolder: the test split's folder (default ROOT/test, else ROOT/val)


def convnet_depth(resolution: int) -> int:
    """ConvNet blocks by image size, as the DC/DSA code sizes its ConvNet: 3 at 32 px, 4 at 64, 5 at 128
    (each block halves the size; the last feature map is 4x4)."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"the ConvNet teacher needs a power-of-two resolution of at least 8, got {resolution}")
    return max(1, resolution.bit_length() - 3)


def teacher_steps_per_epoch(images: int, batch_size: int, option: str = "--batch-size") -> int:
    """Optimisation steps of an epoch over ``images`` (the last, partial batch is dropped); ValueError naming
    ``option`` (the batch size's) when there is none."""
    if images < batch_size:
        raise ValueError(f"train-teacher would take no optimisation step: {images} training images make less than "
                         f"one batch of {option} {batch_size}; give {option} {images} or less")
    return images // batch_size


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool, max_shift: int) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``max_shift`` pixels (zero = -1 padding)."""
    if flip:
        mask = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if max_shift:
        s = max_shift
        padded = F.pad(x, (s, s, s, s), value=-1.0)
        dx, dy = torch.randint(0, 2 * s + 1, (2,), generator=generator).tolist()
        x = padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return x


def train_teacher(config: TeacherTrainConfig, out: str | Path, data_dir: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Train a ConvNet on ``config.train_split`` of the dataset (SGD + one-cycle), test it on the test split,
    save it to ``out``."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    train, test = (load_dataset(config.dataset, split, data_dir, config.resolution, config.channels, config.test_dir)
                   for split in (config.train_split, "test"))
    channels, size = train.image_shape[0], train.image_shape[-1]
    net = ConvNet(ConvNetConfig(in_channels=channels, num_classes=train.num_classes, image_size=size,
                                depth=convnet_depth(size)))
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = teacher_steps_per_epoch(len(train), config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps_per_epoch,
                                                   pct_start=0.15)
    labels = torch.from_numpy(train.labels)
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(train), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"train-teacher epoch {epoch + 1}/{config.epochs}", mininterval=5)
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = augment(train.batch(idx.numpy()), generator, config.flip, config.max_shift)
            loss = F.cross_entropy(net(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - t0
    teacher = Teacher(net)
    metrics = {"test_accuracy": round(teacher.accuracy(test), 4), "train_accuracy_first_10k":
               round(teacher.accuracy(train.subset(torch.arange(min(10000, len(train))).numpy())), 4)}
    out = Path(out)
    save_model_folder(out, KIND, net.config_dict(), net.state_dict())
    record = {"config": asdict(config), "metrics": metrics, "train_seconds": round(train_seconds, 1),
              "dataset": f"{train.name} ({len(train)} images)", "evaluated_on": f"{test.name} ({len(test)} images)",
              "torch": torch.__version__, "command": f"python -m core train-teacher --out {out} --seed {config.seed}" + (
                  f" --dataset imagefolder --data-dir {data_dir} --resolution {config.resolution} --channels "
                  f"{config.channels}" if config.dataset == "imagefolder" else "")}
    write_json(out / "training.json", record)
    log(f"teacher saved to {out} (test accuracy {metrics['test_accuracy']:.2%}, trained in {train_seconds / 60:.1f} min)")
    return record
