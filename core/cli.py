"""Command line: ``python -m core COMMAND ...``. Every command takes --seed and prints where outputs went."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.assets import FLOW_DIR, TEACHER_DIR, VAE_DIR, ModelSpec
from core.errors import DistillError


def _cmd_train_vae(args: argparse.Namespace) -> None:
    from core.autoencoder import TinyVAEConfig, train_tiny_vae

    config = TinyVAEConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           threads=args.threads)
    train_tiny_vae(config, args.out, args.data_dir)


def _cmd_train_teacher(args: argparse.Namespace) -> None:
    from core.teacher import TeacherTrainConfig, train_teacher

    config = TeacherTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                threads=args.threads)
    train_teacher(config, args.out, args.data_dir)


def _encode(args: argparse.Namespace, split: str):
    from core.assets import load_vae
    from core.data import load_dataset
    from core.latents import encode_dataset

    dataset = load_dataset(args.dataset, split, args.data_dir, args.resolution, args.channels)
    vae = load_vae(ModelSpec(vae=args.vae, device=args.device))
    latents = encode_dataset(dataset, vae, args.cache_dir)
    return dataset, vae, latents


def _cmd_encode(args: argparse.Namespace) -> None:
    for split in args.splits:
        t0 = time.perf_counter()
        dataset, _, latents = _encode(args, split)
        print(f"{dataset.name}: {len(latents)} latents of shape {latents.latent_shape} -> {latents.path} "
              f"({time.perf_counter() - t0:.1f} s)")


def _cmd_train_flow(args: argparse.Namespace) -> None:
    import json

    from core.flow import train_flow
    from core.training import LatentModelTrainConfig
    from core.io import read_json, write_json

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    _, vae, latents = _encode(args, "train")
    config = LatentModelTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width,
                             hidden=args.hidden, depth=args.depth, seed=args.seed, threads=args.threads)
    provenance = {"vae": args.vae, "vae_fingerprint": vae.fingerprint, "dataset": args.dataset,
                  "dataset_fingerprint": latents.dataset_fingerprint}
    flow = train_flow(config, latents, args.out, resume=not args.no_resume, provenance=provenance)
    if args.dataset == "fashion-mnist" and Path(args.teacher).is_dir():
        from core.assets import load_teacher
        from core.data import load_fashion_mnist
        from core.quality import generator_quality

        teacher = load_teacher(ModelSpec(teacher=args.teacher))
        test = load_fashion_mnist("test", args.data_dir)
        sweep = {str(w): generator_quality(flow, vae, teacher, test, per_class=100, cfg_scale=w, seed=args.seed)
                 ["conditional_accuracy"] for w in (1.0, 1.5, 2.0, 3.0, 4.0)}
        print(f"conditional accuracy by CFG scale (10 Euler steps, 100/class): {json.dumps(sweep)}")
        record = read_json(Path(args.out) / "training.json")
        record["cfg_sweep_conditional_accuracy"] = sweep
        record["command"] = (f"python -m core train-flow --out {args.out} --steps {args.steps} --seed {args.seed}")
        write_json(Path(args.out) / "training.json", record)
    print(f"flow model: {args.out}")


def _cmd_eval_models(args: argparse.Namespace) -> None:
    """Print (and record) the figures of the shipped models that the foundation issue asks for."""
    import json

    import torch

    from core.assets import load_flow_for, load_teacher, load_vae
    from core.autoencoder import measure_vae
    from core.data import load_fashion_mnist
    from core.io import write_json
    from core.quality import generator_quality

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = ModelSpec(vae=args.vae, flow=args.flow, teacher=args.teacher, device=args.device)
    test = load_fashion_mnist("test", args.data_dir)
    vae, teacher = load_vae(spec), load_teacher(spec)
    report = {"vae": measure_vae(vae, test), "teacher": {"test_accuracy": round(teacher.accuracy(test), 4)}}
    print(f"VAE     test PSNR {report['vae']['test_psnr_db']:.2f} dB (target >= 24) | encode "
          f"{report['vae']['encode_images_per_s']:.0f} img/s (target >= 1000) | decode "
          f"{report['vae']['decode_images_per_s']:.0f} img/s | {torch.get_num_threads()} threads on {vae.device}")
    print(f"teacher test accuracy {report['teacher']['test_accuracy']:.2%} (target >= 92%)")
    flow = load_flow_for(spec, vae.latent_shape(32), test.num_classes)
    q = generator_quality(flow, vae, teacher, test, per_class=args.per_class, steps=args.steps,
                          cfg_scale=args.cfg_scale, seed=args.seed)
    report["flow"] = q
    print(f"flow    conditional accuracy {q['conditional_accuracy']:.2%} (target >= 90%; {args.steps} Euler steps, "
          f"CFG {args.cfg_scale}, {q['samples']} samples) | FID(teacher) generated vs test "
          f"{q['fid_teacher_generated_vs_test']:.2f}, test half vs half {q['fid_teacher_test_half_vs_half']:.2f} "
          f"({q['feature_samples_per_set']} per set)")
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    else:
        print(json.dumps(report["flow"]["per_class_accuracy"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Distill Studio engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func, data: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
        p.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST IDX files: default "
                       "$FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist; imagefolder: its root)")
        p.set_defaults(func=func)
        return p

    def add_models(p: argparse.ArgumentParser, flow: bool = False, teacher: bool = False) -> None:
        p.add_argument("--vae", default=str(VAE_DIR), help="VAE folder or diffusers hub id (default: embedded)")
        if flow:
            p.add_argument("--flow", default=str(FLOW_DIR), help="flow model folder (default: embedded)")
        if teacher:
            p.add_argument("--teacher", default=str(TEACHER_DIR), help="teacher folder (default: embedded)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")

    def add_dataset(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "imagefolder"])
        p.add_argument("--resolution", type=int, default=32, help="imagefolder: image size (default 32)")
        p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="imagefolder: 1 or 3")
        p.add_argument("--cache-dir", default=None, help="latent cache root (default $DISTILL_CACHE or .cache/)")

    p = add("train-vae", "Train the embedded tiny VAE (1x32x32 -> 4x8x8) on Fashion-MNIST.", _cmd_train_vae)
    p.add_argument("--out", default=str(VAE_DIR), help="output folder (default assets/vae)")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)

    p = add("train-teacher", "Train the ConvNet-3 teacher (metric features, soft labels) on Fashion-MNIST.",
            _cmd_train_teacher)
    p.add_argument("--out", default=str(TEACHER_DIR), help="output folder (default assets/teacher)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)

    p = add("encode", "Encode a dataset with the VAE into the latent cache (reused when present).", _cmd_encode)
    add_models(p)
    add_dataset(p)
    p.add_argument("--splits", nargs="+", default=["train", "test"])

    p = add("train-flow", "Train a class-conditional flow-matching model on the VAE latents (resumable).",
            _cmd_train_flow)
    add_models(p, teacher=True)
    add_dataset(p)
    p.add_argument("--out", default=str(FLOW_DIR), help="output folder (default assets/flow)")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt and start afresh")

    p = add("eval-models", "Measure the shipped models: VAE PSNR and speed, teacher accuracy, flow sample "
            "quality (teacher accuracy of samples, FID-style distance).", _cmd_eval_models)
    add_models(p, flow=True, teacher=True)
    p.add_argument("--per-class", type=int, default=500, help="flow samples per class (default 500)")
    p.add_argument("--steps", type=int, default=10, help="Euler steps (default 10)")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DistillError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
