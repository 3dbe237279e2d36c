"""`evaluate`: train students only on a distilled folder and test them on the real test split, on ``--device``
(seeds split across ranks under torchrun: rank r trains seeds r, r + W, ...; each rank on its own GPU)."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.options import (
    add_dataset,
    add_model_folder,
    add_registry,
    bounded,
    check_folder,
    open_registry,
    world_size,
)
from core.config import DEFAULT_TF32, PROTOCOLS, STUDENT_ARCHITECTURES, TEACHER_DIR


def add_parsers(add) -> None:
    p = add("evaluate", "Train students only on a distilled ImageFolder and test them on the real test split.",
            _cmd_evaluate)
    p.add_argument("folder", help="an exported set (manifest weights are used) or any ImageFolder of the classes")
    p.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                   help="hard (cross-entropy, no augmentation), hard-dsa (hard labels, DSA augmentation on every "
                        "batch), soft (KL to the teacher's outputs on the un-augmented images, computed once), "
                        "soft-online (every augmented batch labelled by the teacher); default: from --labels / "
                        "--augment (hard)")
    p.add_argument("--labels", default="hard", choices=["hard", "soft"], help="without --protocol: hard or soft")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="score the students on the test split (for reported tables) or on the validation split "
                        "(500 per class held out of train, for every choice that looks at accuracy; default test)")
    p.add_argument("--seeds", type=bounded("seeds"), default=3, help="number of seeds (seed, seed+1, ...)")
    p.add_argument("--epochs", type=bounded("epochs"), default=300)
    p.add_argument("--architecture", default="convnet", choices=list(STUDENT_ARCHITECTURES),
                   help="student network: convnet (ConvNet-3, the protocol), resnet / resnet-bn (ResNet-10-style, instance / "
                        "batch norm), mlp (2 hidden layers of 128 units)")
    p.add_argument("--augment", default="none", choices=["none", "dsa"], help="without --protocol: none or dsa")
    p.add_argument("--temperature", type=float, default=4.0, help="soft labels: teacher temperature")
    p.add_argument("--no-weights", action="store_true", help="ignore the manifest's per-image weights")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="student training precision (auto: bf16 mixed precision where supported)")
    p.add_argument("--device", default="cpu",
                   help="where students train and test: cpu, cuda, cuda:N, mps or auto (default cpu); under torchrun "
                        "cuda / auto give each process its own GPU (cuda:LOCAL_RANK)")
    p.add_argument("--tf32", default=DEFAULT_TF32, action=argparse.BooleanOptionalAction,
                   help="TF32 float32 matmuls and convolutions on CUDA (Ampere and later; default on)")
    p.add_argument("--teacher", default=str(TEACHER_DIR),
                   help="teacher folder (soft labels; default: the embedded Fashion-MNIST teacher)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    add_dataset(p)
    add_model_folder(p)
    add_registry(p)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """Train students on a distilled folder; under torchrun (WORLD_SIZE > 1) the seeds are split across the
    processes (core.evaluation.students.evaluate_set_distributed) and rank 0 alone shows progress and writes."""
    ctx = None
    if world_size() > 1:
        from core.pipeline.distributed import init_from_env

        ctx = init_from_env(device=args.device)   # gloo for cpu, nccl on cuda:LOCAL_RANK for cuda
    try:
        _evaluate(args, ctx)
    finally:
        if ctx is not None:
            ctx.shutdown()


def check_validation_safe(folder: str) -> None:
    """Refuse to score a set on the validation split when its manifest says it was drawn from a pool that
    includes the validation images (random real picks or medoids could be those very images)."""
    from core.data.datasets import holds_out_validation
    from core.evaluation.students import read_manifest

    manifest = read_manifest(folder)
    pool = ((manifest or {}).get("models") or {}).get("pool") if isinstance((manifest or {}).get("models"), dict) else None
    if manifest is None:
        print(f"warning: {folder} has no manifest.json: nothing says whether its images avoid the validation split")
    elif not isinstance(pool, str) or not holds_out_validation(pool):
        raise ValueError(f"{folder} was distilled from {pool or 'a pool its manifest does not record'}, which includes "
                         "the validation images; scoring it on them would select on seen data. Distil with "
                         "`--pool train-minus-val` (the default of `distill`) or score it on --split test")


def _evaluate(args: argparse.Namespace, ctx=None) -> None:
    import sys as _sys
    from dataclasses import replace

    import numpy as np
    import torch
    from tqdm import tqdm

    from core.data.splits import load_dataset
    from core.evaluation.students import (
        EvalConfig,
        eval_device,
        evaluate_set,
        read_distilled_folder,
    )
    from core.io import write_json
    from core.models.spec import ModelSpec

    main = ctx is None or ctx.is_main
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.protocol is not None and (args.labels, args.augment) != ("hard", "none"):
        raise ValueError("give either --protocol or --labels / --augment, not both")
    protocol = dict(PROTOCOLS[args.protocol]) if args.protocol else {"labels": args.labels, "augment": args.augment}
    device = args.device
    if ctx is not None:
        from core.pipeline.distributed import rank_device

        device = rank_device(ctx, device)
    config = EvalConfig(architecture=args.architecture, temperature=args.temperature, epochs=args.epochs,
                        use_weights=not args.no_weights, seeds=tuple(range(args.seed, args.seed + args.seeds)),
                        precision=args.precision, device=str(device), tf32=args.tf32, **protocol)
    # the device is checked (and "auto" resolved, so that the result records it) before anything is read
    config = replace(config, device=str(eval_device(config)))
    if args.split == "val":
        check_validation_safe(args.folder)
    registry = open_registry(args) if main else None
    if args.dataset == "imagefolder" and main:
        check_folder(args)
    test = load_dataset(args.dataset, args.split, args.data_dir, args.resolution, args.channels, args.test_dir)
    split = {"test": "test", "val": "validation"}[args.split]
    images, labels, weights, classes = read_distilled_folder(args.folder, test.class_names, test.image_shape)
    if len(classes) < test.num_classes:  # an export of some classes is tested on those classes' test images
        test = test.subset(np.flatnonzero(np.isin(test.labels, classes)))
        if main:
            print(f"{args.folder}: classes {', '.join(test.class_names[c] for c in classes)} (as its manifest "
                  f"records): tested on their {len(test)} {split} images")
    teacher = None
    if config.labels == "soft":
        from core.models.loading import load_teacher

        teacher = load_teacher(ModelSpec(teacher=args.teacher, device=config.device))
        if not teacher.fits(test.image_shape, test.num_classes):
            raise ValueError(f"the teacher {args.teacher} does not fit this data ({test.num_classes} classes of "
                             f"{'x'.join(map(str, test.image_shape))} images); soft labels need a teacher of it: "
                             "`python -m core train-teacher --dataset imagefolder --data-dir ROOT ...`, then --teacher")
    bar = tqdm(total=1000, desc=f"evaluate {Path(args.folder).name}", file=_sys.stderr, mininterval=1) if main else None

    def progress(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message)

    if ctx is not None:
        from core.evaluation.students import evaluate_set_distributed

        result = evaluate_set_distributed(images, labels, test, config, ctx, weights, teacher,
                                          progress if main else None)
    else:
        result = evaluate_set(images, labels, test, config, weights, teacher, progress)
    if bar is not None:
        bar.close()
    if not main:
        return
    where = f" ({ctx.world_size} processes)" if ctx is not None and ctx.is_distributed else ""
    print(f"{args.folder}: {len(images)} images, {config.architecture}, protocol {config.protocol}, "
          f"{'weighted' if weights is not None and config.use_weights else 'unweighted'}: {split} accuracy "
          f"{100 * result.mean:.2f} ± {100 * result.std:.2f} % over {len(config.seeds)} seeds "
          f"({', '.join(f'{100 * a:.2f}' for a in result.accuracies)}); {sum(result.seconds):.1f} s on "
          f"{config.device}{where}")
    if args.json:
        write_json(args.json, {"folder": str(args.folder), "split": args.split, **result.to_dict()})
        print(f"result written to {args.json}")
    if registry is not None:
        from core.evaluation.students import read_manifest

        manifest = read_manifest(args.folder) or {}
        with registry:
            run = registry.add_run("evaluate", manifest.get("config") or {"folder": str(args.folder)},
                                   manifest.get("whole_set_metrics") or manifest.get("metrics") or {},
                                   export_path=str(args.folder), source=str((manifest.get("models") or {}).get("pool", "")))
            registry.add_evaluation(run, config.protocol, config.architecture, config.epochs, args.split, config.seeds,
                                    result.accuracies, result.seconds)
        print(f"recorded as run {run} in {registry.path}")
