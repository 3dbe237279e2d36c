"""`train-vae`, `train-teacher`, `train-flow`, `train-diffusion`: train the models of a dataset (resumable where
long), each written as a folder with its config and training record."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.options import (
    add_dataset,
    add_models,
    bounded,
    encode_split,
    portable,
    set_option,
)
from core.config import (
    ASSETS,
    DIFFUSION_DIR,
    FLOW_DIR,
    MLP_PRESETS,
    MODEL_PRESETS,
    TEACHER_DIR,
    TRAIN_MINUS_VAL,
    VAE_DIR,
)
from core.errors import OutputError


def add_train_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-split", default=None, choices=[TRAIN_MINUS_VAL, "train"],
                   help="images to train on: train-minus-val (the default: the validation split held out, DESIGN.md "
                        "4b: Fashion-MNIST's 500 per class, an ImageFolder's ROOT/val or 10%% of each class) or "
                        "train (all of them, e.g. all 60k as the shipped models were trained); a latent store trains "
                        "on all its images")


def add_parsers(add) -> None:
    p = add("train-vae", "Train a small VAE: the embedded one (1x32x32 -> 4x8x8) on Fashion-MNIST, or one for an "
            "ImageFolder (C x R x R -> 4x8x8, one encoder block per halving).", _cmd_train_vae)
    add_dataset(p)
    p.add_argument("--out", default=str(VAE_DIR), help="output folder (default assets/vae)")
    p.add_argument("--epochs", type=bounded("epochs", float), default=4.0)
    p.add_argument("--batch-size", type=bounded("batch"), default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    add_train_split(p)

    p = add("train-teacher", "Train the ConvNet teacher (metric features, soft labels) on Fashion-MNIST or an "
            "ImageFolder (depth by resolution as in DC/DSA: 3 blocks at 32 px, 4 at 64, 5 at 128).", _cmd_train_teacher)
    add_dataset(p)
    p.add_argument("--out", default=str(TEACHER_DIR), help="output folder (default assets/teacher)")
    p.add_argument("--epochs", type=bounded("epochs"), default=8)
    p.add_argument("--batch-size", type=bounded("batch"), default=128)
    p.add_argument("--lr", type=float, default=0.05)
    add_train_split(p)

    for name, what, default_out in (("train-flow", "a class-conditional flow-matching model", FLOW_DIR),
                                    ("train-diffusion", "the ε-prediction diffusion counterpart", DIFFUSION_DIR)):
        flow_cmd = name == "train-flow"
        p = add(name, f"Train {what} on the VAE latents (resumable; EMA weights).", _cmd_train_latent_model)
        add_models(p)
        set_option(p, "device", default="auto",
                    help="auto (cuda, then mps, then cpu), cpu, cuda or cuda:N (default auto); also encodes there")
        add_dataset(p)
        p.add_argument("--out", default=str(default_out), help=f"output folder (default {default_out.relative_to(ASSETS.parent)})")
        p.add_argument("--steps", type=bounded("train steps"), default=8000)
        add_train_split(p)
        p.add_argument("--batch-size", type=bounded("batch"), default=256)
        g = p.add_argument_group("model")
        g.add_argument("--model", default="mlp-m", choices=list(MODEL_PRESETS if flow_cmd else MLP_PRESETS),
                       type=str.lower,
                       help="network: mlp-s (width 256, hidden 512, depth 4) or mlp-m (512, 1024, 4: the shipped "
                            "flow), the project's adaLN MLP on the flattened latent" + (
                                "; or a SiT transformer preset (patch 2) sized for the latents: sit-s/2 (hidden 384, "
                                "depth 12, 6 heads), sit-b/2 (768, 12, 12), sit-l/2 (1024, 24, 16), sit-xl/2 (1152, "
                                "28, 16), with the data's classes + a null class for CFG and no learned sigma"
                                if flow_cmd else "") + " (default mlp-m)")
        g.add_argument("--width", type=bounded("width"), default=None,
                       help="MLP width" + (" / SiT hidden size" if flow_cmd else "") + " (default: the preset's)")
        g.add_argument("--hidden", type=bounded("width"), default=None, help="MLP hidden width (default: the preset's)")
        g.add_argument("--depth", type=bounded("width"), default=None,
                       help="MLP blocks" + (" / SiT transformer blocks" if flow_cmd else "") + " (default: the preset's)")
        if flow_cmd:
            g.add_argument("--heads", type=bounded("width"), default=None, help="SiT attention heads (default: the preset's)")
        g = p.add_argument_group("optimisation")
        g.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate (default 1e-3 MLP, 1e-4 SiT)")
        g.add_argument("--warmup", type=bounded("train steps", low=0), default=200, help="linear warm-up steps before the cosine decay")
        g.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the saved weights (default 0.999 "
                       "MLP, 0.9999 SiT; the EMA copies the weights until the warm-up ends)")
        g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="mixed precision (autocast; weights, optimiser and EMA stay float32): auto = bf16 on a "
                            "CUDA GPU that has it, else fp16 on CUDA, fp32 on CPU; bf16 on a CPU only where it has "
                            "native bf16; fp16 adds loss scaling (GradScaler)")
        g.add_argument("--grad-checkpointing", action="store_true",
                       help="recompute block activations in the backward pass (less memory, ~1 extra forward)")
        g.add_argument("--checkpoint-every", type=bounded("train steps"), default=500, help="steps between OUT/checkpoint.pt writes")
        g.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt and start afresh")
        g = p.add_argument_group("data")
        g.add_argument("--latent-store", default=None, metavar="DIR",
                       help="train on a latent store written by `encode --store DIR` instead of encoding --dataset "
                            "(its VAE is recorded in it; a --vae given explicitly is checked against it)")
        g.add_argument("--store-max-gib", type=bounded("GiB", float), default=4.0,
                       help="--latent-store: largest store (float32 GiB) to hold in memory (default 4)")


def _cmd_train_vae(args: argparse.Namespace) -> None:
    from core.models.vae import TinyVAEConfig
    from core.training.vae import is_vae_folder, train_tiny_vae

    out = Path(args.out)
    if out.exists() and not is_vae_folder(out):
        raise OutputError(f"--out {out} exists and is not a VAE folder that train-vae wrote (config.json, weights and "
                          "training.json, nothing else); train-vae replaces its output folder whole, so give a new "
                          "folder or one it wrote before")
    from core.cli.options import check_folder

    if args.dataset == "imagefolder":
        from core.models.vae import vae_widths

        vae_widths(args.resolution)   # a size it cannot build is refused before any image is read
        check_folder(args)
    config = TinyVAEConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           threads=args.threads, train_split=args.train_split or TRAIN_MINUS_VAL,
                           dataset=args.dataset, resolution=args.resolution, channels=args.channels,
                           test_dir=args.test_dir)
    train_tiny_vae(config, args.out, args.data_dir)


def _cmd_train_teacher(args: argparse.Namespace) -> None:
    from core.cli.options import check_folder
    from core.training.teacher import TeacherTrainConfig, train_teacher

    if args.dataset == "imagefolder":
        check_folder(args)
    config = TeacherTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                threads=args.threads, train_split=args.train_split or TRAIN_MINUS_VAL,
                                dataset=args.dataset, resolution=args.resolution, channels=args.channels,
                                test_dir=args.test_dir)
    train_teacher(config, args.out, args.data_dir)


def _cmd_train_latent_model(args: argparse.Namespace) -> None:
    """train-flow and train-diffusion: the same networks, data and loop; only the objective differs.

    --model picks the network (mlp-s / mlp-m: the project's LatentMLP; sit-*: core/models/sit.py presets sized for
    the latents, train-flow only); --width / --hidden / --depth / --heads override the preset's sizes."""
    # Long by design: options -> training config (presets and overrides) -> data (store or dataset) -> training.
    import torch

    from core.device import resolve_device
    from core.io import write_json
    from core.models.spec import ModelSpec
    from core.reads import read_json
    from core.training.loop import LatentModelTrainConfig, is_sit_model, mlp_preset

    if args.command == "train-flow":
        from core.training.generators import train_flow as train
    else:
        from core.training.generators import train_diffusion as train
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model.strip().lower()
    sit = is_sit_model(model)
    if sit and args.hidden is not None:
        raise ValueError("--hidden is the MLP's hidden width; a SiT's MLP is 4 × --width (its hidden size)")
    if not sit and getattr(args, "heads", None) is not None:
        raise ValueError("--heads applies to SiT models (--model sit-*)")
    device = str(resolve_device(args.device))
    if sit:
        overrides = {k: v for k, v in (("depth", args.depth), ("hidden_size", args.width),
                                        ("num_heads", getattr(args, "heads", None))) if v is not None}
        sizes = {}
    else:
        overrides = {}
        sizes = mlp_preset(model)
        sizes.update({k: getattr(args, k) for k in ("width", "hidden", "depth") if getattr(args, k) is not None})
    config = LatentModelTrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr if args.lr is not None else (1e-4 if sit else 1e-3),
        ema_decay=args.ema_decay if args.ema_decay is not None else (0.9999 if sit else 0.999), warmup=args.warmup,
        checkpoint_every=args.checkpoint_every, seed=args.seed, threads=args.threads,
        model=model if sit else "mlp", sit_overrides=overrides, precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, device=device, **sizes)
    if args.train_split == TRAIN_MINUS_VAL and args.latent_store:
        raise ValueError("--train-split train-minus-val holds out a dataset's validation split; a latent store trains "
                         "on all its images (leave --train-split out)")
    train_split = "train" if args.latent_store else (args.train_split or TRAIN_MINUS_VAL)
    if args.latent_store:
        from core.data.latent_store import LatentStore

        store = LatentStore(args.latent_store)
        if args.vae != str(VAE_DIR):  # a VAE named explicitly must be the store's
            from core.models.loading import load_vae

            store.check(load_vae(ModelSpec(vae=args.vae, device=device)))
        latents = store.as_latent_set(max_bytes=int(args.store_max_gib * 2**30))
        provenance = {"vae": str(store.index.get("vae", "")), "vae_fingerprint": store.vae_fingerprint,
                      "dataset": str(store.index.get("dataset", "")), "dataset_fingerprint": store.dataset_fingerprint,
                      "latent_store": portable(args.latent_store), "train_split": train_split}
    else:
        dataset, vae, latents = encode_split(args, "train")
        if train_split == TRAIN_MINUS_VAL:
            import numpy as np

            from core.data.splits import validation_rows

            held_out = validation_rows(args.dataset, dataset.labels, args.data_dir, args.test_dir)
            rows = np.setdiff1d(np.arange(len(dataset)), held_out)
            latents = latents.subset(rows, dataset.subset(rows).fingerprint)
        provenance = {"vae": portable(args.vae), "vae_fingerprint": vae.fingerprint, "dataset": args.dataset,
                      "dataset_fingerprint": latents.dataset_fingerprint,
                      "train_split": train_split}
    provenance["model_preset"] = model
    print(f"{args.command}: {model} on {len(latents)} latents of shape {latents.latent_shape}, {latents.num_classes} "
          f"classes; {device}, precision {config.precision}{', gradient checkpointing' if config.grad_checkpointing else ''}",
          flush=True)
    train(config, latents, args.out, resume=not args.no_resume, provenance=provenance)
    record = read_json(Path(args.out) / "training.json")
    record["command"] = (f"python -m core {args.command} --out {args.out} --model {model} --steps {args.steps} "
                         f"--seed {args.seed}")
    write_json(Path(args.out) / "training.json", record)
    print(f"{args.command}: model written to {args.out}")
