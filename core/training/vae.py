"""Training of a small VAE (diffusers AutoencoderKL): the embedded default's on Fashion-MNIST, or one sized for
an ImageFolder (``core.models.vae.vae_widths``: an 8x8 latent of 4 channels)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from core.data.splits import load_dataset
from core.device import seed_everything
from core.errors import CheckpointError
from core.io import atomic_directory, write_json
from core.models.vae import (
    TRAINING_RECORD,
    WEIGHTS_NAME,
    LatentAutoencoder,
    TinyVAEConfig,
    build_tiny_vae,
    measure_vae,
    vae_widths,
)
from core.reads import CONFIG_MAX_BYTES, read_json


def is_vae_folder(path: Path) -> bool:
    """True for an empty folder or a VAE folder that ``train-vae`` wrote (its config.json, weights and
    training.json with the train-vae command, nothing else): what ``train-vae --out`` may replace."""

    if path.is_symlink() or not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if not names:
        return True
    try:
        record = read_json(path / TRAINING_RECORD)
        return (names <= {"config.json", WEIGHTS_NAME, TRAINING_RECORD}
                and read_json(path / "config.json", CONFIG_MAX_BYTES).get("_class_name") == "AutoencoderKL"
                and "core train-vae" in str(record.get("command", "")))
    except (OSError, ValueError, AttributeError, CheckpointError):
        return False


def vae_steps(images: int, epochs: float, batch_size: int,
              options: tuple[str, str] = ("--epochs", "--batch-size")) -> int:
    """Optimisation steps of ``epochs`` over ``images`` in batches of ``batch_size``; ValueError naming ``options``
    (the epochs' and the batch size's) when there is none."""
    steps = int(epochs * images / batch_size)
    if steps < 1:
        raise ValueError(f"train-vae would take no optimisation step: {images} training images x {options[0]} "
                         f"{epochs:g} make less than one batch of {options[1]} {batch_size}; give {options[1]} "
                         f"{int(images * epochs)} or less (or more {options[0]})")
    return steps


def train_tiny_vae(config: TinyVAEConfig, out: str | Path, data_dir: str | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Train a small VAE on ``config.train_split`` of the dataset, set its latent scaling, save it, return metrics.

    The scaling convention: after training, ``shift_factor`` = mean and ``scaling_factor`` = 1 / std of
    the posterior means on 10k training images, so latents are roughly zero-mean with unit variance.
    """
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    train, test = (load_dataset(config.dataset, split, data_dir, config.resolution, config.channels, config.test_dir)
                   for split in (config.train_split, "test"))
    size = train.image_shape[-1]
    if config.dataset != "fashion-mnist":
        config = replace(config, block_out_channels=vae_widths(size))
    vae = build_tiny_vae(config, in_channels=train.image_shape[0], sample_size=size)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    steps = vae_steps(len(train), config.epochs, config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.05)
    t_start = time.perf_counter()
    vae.train()
    bar = tqdm(range(steps), desc="train-vae", unit="step", mininterval=5)
    order = torch.empty(0, dtype=torch.long)
    for step in bar:
        if len(order) < config.batch_size:
            order = torch.randperm(len(train), generator=generator)
        idx, order = order[:config.batch_size], order[config.batch_size:]
        x = train.batch(idx.numpy())
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=None)
        recon = vae.decode(z).sample
        rec_loss = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec_loss + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(mse=f"{rec_loss.item():.4f}", psnr=f"{10 * math.log10(4 / max(rec_loss.item(), 1e-12)):.2f}")
    train_seconds = time.perf_counter() - t_start
    vae.eval()

    ae = LatentAutoencoder(vae)
    with torch.inference_mode():
        raw = torch.cat([vae.encode(train.batch(slice(i, i + 500))).latent_dist.mean
                         for i in range(0, min(10000, len(train)), 500)])
    vae.register_to_config(shift_factor=float(raw.mean()), scaling_factor=float(1.0 / raw.std()))
    ae = LatentAutoencoder(vae)
    metrics = measure_vae(ae, test)
    out = Path(out)
    record = {"config": asdict(config), "metrics": metrics, "train_seconds": round(train_seconds, 1),
              "steps": steps, "dataset": f"{train.name} ({len(train)} images)",
              "evaluated_on": f"{test.name} ({len(test)} images)", "torch": torch.__version__,
              "command": f"python -m core train-vae --out {out} --seed {config.seed}" + (
                  f" --dataset imagefolder --data-dir {data_dir} --resolution {config.resolution} --channels "
                  f"{config.channels}" if config.dataset == "imagefolder" else "")}
    with atomic_directory(out, replaceable=is_vae_folder) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / TRAINING_RECORD, record)
    log(f"VAE saved to {out} (test PSNR {metrics['test_psnr_db']:.2f} dB, "
        f"encode {metrics['encode_images_per_s']:.0f} img/s, trained in {train_seconds / 60:.1f} min)")
    return record
