"""Write a drawn ImageFolder dataset of shapes (core.data.shapes) with train/, val/ and test/ splits, to try
`python -m core prepare` on data of your own kind without downloading any.

    python scripts/draw_shapes.py data/shapes32 --train 500 --val 50 --test 100 --size 32

Refuses a root that already has any of these split folders (nothing is overwritten)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.shapes import SHAPES, draw_shapes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--train", type=int, default=500, help="training images per class (default 500)")
    p.add_argument("--val", type=int, default=50, help="validation images per class (default 50; 0: none, "
                                                      "then 10%% of train is held out)")
    p.add_argument("--test", type=int, default=100, help="test images per class (default 100)")
    p.add_argument("--size", type=int, default=32, help="image side in px (default 32)")
    p.add_argument("--classes", type=int, default=len(SHAPES), help=f"number of shapes, 1..{len(SHAPES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = Path(args.root)
    splits = [(name, n) for name, n in (("train", args.train), ("val", args.val), ("test", args.test)) if n > 0]
    taken = [name for name, _ in splits if (root / name).exists()]
    if taken:
        p.error(f"{root} already has {', '.join(taken)}/: give a new root (nothing was written)")
    if not 1 <= args.classes <= len(SHAPES):
        p.error(f"--classes must be 1..{len(SHAPES)}")
    for k, (name, n) in enumerate(splits):
        draw_shapes(root / name, n, args.size, seed=args.seed + k, shapes=SHAPES[:args.classes])
        print(f"{root / name}: {n} images of each of {args.classes} shapes at {args.size} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
