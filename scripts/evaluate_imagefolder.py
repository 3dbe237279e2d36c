"""Train students on a distilled set and test them on a real ImageFolder split (e.g. ImageNette's val/).

``python -m core evaluate`` tests on the Fashion-MNIST test split; this script is the same protocol
(core.evaluation.students.evaluate_set: ConvNet-3 or the small ResNet, SGD, DDOQ weights from the manifest) with the test
split read from an ImageFolder at ``--resolution`` px (shorter side resized, centre crop, as encoding does); the
distilled images are resized to the same size (bicubic, antialiased). Students train on ``--device`` (default cpu).

    python scripts/evaluate_imagefolder.py out/imagenette-pgfm-ipc10 --val-dir data/imagenette2/val \\
        --classes imagenette --resolution 128 --seeds 3 --json out/imagenette-pgfm-ipc10/eval.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load_split(root: str, classes: str | None, resolution: int, batch_size: int = 256):
    """The ImageFolder split as LabelledImages (uint8, the same pixels the loader gives, as [-1, 1] floats)."""
    import numpy as np
    import torch

    from core.data.datasets import LabelledImages
    from core.data.imagefolder import StreamingImageFolder

    folder = StreamingImageFolder(root, classes, resolution)
    parts = [((b.images + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()
             for b in folder.iter_batches(batch_size)]
    images = np.concatenate(parts) if parts else np.zeros((0, 3, resolution, resolution), np.uint8)
    return LabelledImages(images, folder.labels.astype(np.int64), tuple(folder.class_names),
                          f"{Path(root).name}-{resolution}", folder.fingerprint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a distilled set written by `python -m core distill` (or any ImageFolder of the classes)")
    p.add_argument("--val-dir", required=True, help="the real test split: ROOT/<class folder>/<image>")
    p.add_argument("--classes", default=None, help="as `encode --classes`: 'imagenette', 'imagewoof', a class-list file "
                   "or comma-separated folders (default: every class folder); must give the distilled set's class names")
    p.add_argument("--resolution", type=int, default=128, help="student input size (default 128)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--architecture", default="convnet", choices=["convnet", "resnet"])
    p.add_argument("--augment", default="none", choices=["none", "dsa"])
    p.add_argument("--no-weights", action="store_true")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default="cpu", help="where students train and test: cpu, cuda, cuda:N, mps, auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from core.evaluation.students import (
        EvalConfig,
        eval_device,
        evaluate_set,
        read_distilled_folder,
    )
    from core.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(eval_device(EvalConfig(device=args.device, precision=args.precision)))  # checked before any work
    test = load_split(args.val_dir, args.classes, args.resolution)
    first = next(f for f in sorted(Path(args.folder).rglob("*.png")))
    from PIL import Image

    size = Image.open(first).size[0]
    images, labels, weights, _ = read_distilled_folder(args.folder, test.class_names, (3, size, size))
    if size != args.resolution:
        images = F.interpolate(images, size=(args.resolution,) * 2, mode="bicubic", antialias=True).clamp_(-1, 1)
    config = EvalConfig(architecture=args.architecture, epochs=args.epochs, use_weights=not args.no_weights,
                        augment=args.augment, seeds=tuple(range(args.seed, args.seed + args.seeds)),
                        precision=args.precision, device=device)
    result = evaluate_set(images, labels, test, config, weights)
    print(f"{args.folder}: {len(images)} images at {args.resolution} px, {config.architecture}: test accuracy on "
          f"{args.val_dir} ({len(test)} images) {100 * result.mean:.2f} ± {100 * result.std:.2f} % over "
          f"{len(config.seeds)} seeds ({', '.join(f'{100 * a:.2f}' for a in result.accuracies)}); "
          f"{sum(result.seconds):.1f} s on {device}")
    if args.json:
        write_json(args.json, {"folder": str(args.folder), "val_dir": str(args.val_dir),
                               "resolution": args.resolution, **result.to_dict()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
