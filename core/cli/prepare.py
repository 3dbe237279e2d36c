"""`prepare`: one command that makes the model set of an ImageFolder dataset, resumable.

``python -m core prepare ROOT --out models/NAME`` runs, in order, each as its own command would (the same
options, the same outputs): ``train-vae`` (or takes ``--vae``), ``train-teacher``, ``train-flow``,
``train-diffusion`` (unless ``--no-diffusion``) and ``eval-models``, into ``OUT/vae``, ``OUT/teacher``,
``OUT/flow``, ``OUT/diffusion`` and ``OUT/eval.json``; ``OUT/dataset.json`` records the data (root,
resolution, channels, splits). Run again, it skips the steps whose output is complete (and ``train-flow`` /
``train-diffusion`` resume from their checkpoints). ``--models OUT`` then gives every other command (and
its data options) this set.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from core.cli.options import add_dataset, bounded, portable, set_option
from core.config import DIFFUSION_DIR, FLOW_DIR, TEACHER_DIR, VAE_DIR
from core.models.spec import MODEL_FOLDER_RECORD

MODEL_PARTS = ("vae", "teacher", "flow", "diffusion")


def add_parsers(add) -> None:
    p = add("prepare", "Make the model set of an ImageFolder dataset (VAE, teacher, flow, diffusion counterpart, "
            "their figures) in one resumable command.", _cmd_prepare)
    p.add_argument("root", help="the dataset root: ROOT/train/<class>/... (optionally ROOT/val, ROOT/test)")
    p.add_argument("--out", required=True, help="the model folder to write (models/NAME); run again to resume")
    add_dataset(p)
    set_option(p, "dataset", default="imagefolder", choices=["imagefolder"], help="imagefolder (the only choice)")
    p.add_argument("--vae", default=None, help="use this VAE (a folder or a diffusers hub id) instead of training one")
    p.add_argument("--vae-epochs", type=bounded("epochs", float), default=4.0, help="train-vae epochs (default 4)")
    p.add_argument("--vae-batch-size", type=bounded("batch"), default=64, help="train-vae batch (default 64)")
    p.add_argument("--teacher-epochs", type=bounded("epochs"), default=8, help="train-teacher epochs (default 8)")
    p.add_argument("--teacher-batch-size", type=bounded("batch"), default=128,
                   help="train-teacher batch (default 128; at most the training images: a small dataset needs less)")
    p.add_argument("--flow-steps", type=bounded("train steps"), default=8000,
                   help="train-flow / train-diffusion steps (default 8000)")
    p.add_argument("--model", default="mlp-m", help="train-flow / train-diffusion network (default mlp-m)")
    p.add_argument("--batch-size", type=bounded("batch"), default=256,
                   help="train-flow / train-diffusion batch (default 256)")
    p.add_argument("--no-diffusion", action="store_true", help="skip the diffusion counterpart")
    p.add_argument("--eval-per-class", type=bounded("images"), default=100,
                   help="eval-models: flow samples per class (default 100)")


def _done(folder: Path, steps: int | None = None) -> bool:
    """A model folder a train command finished: its weights and training record (for a flow or diffusion
    model, of at least ``steps`` steps: its checkpoint stays, to resume or extend it)."""
    from core.reads import read_json

    if not ((folder / "config.json").is_file() and (folder / "training.json").is_file()):
        return False
    if steps is None:
        return True
    try:
        return int(read_json(folder / "training.json")["config"]["steps"]) >= steps
    except (ValueError, KeyError, TypeError):
        return False


def _check_data(args: argparse.Namespace) -> None:
    """Before any work: the dataset has a test split (the models are measured on it), and each training stage gets
    at least one optimisation step on its training images (counted from the file names; else the option to change)."""
    from core.data.splits import folder_splits, require_test_split, training_images
    from core.training.teacher import teacher_steps_per_epoch
    from core.training.vae import vae_steps

    splits = folder_splits(args.root, args.test_dir)
    require_test_split(splits)
    images = training_images(splits)
    if args.vae is None:
        vae_steps(images, args.vae_epochs, args.vae_batch_size, ("--vae-epochs", "--vae-batch-size"))
    teacher_steps_per_epoch(images, args.teacher_batch_size, "--teacher-batch-size")


def _recorded(path: str | None) -> str | None:
    """A path of the model folder's record: inside the repository relative to it, else absolute (so that
    ``--models`` finds it from any folder); a name that is no local path (a hub id) as given."""
    return portable(os.path.abspath(path)) if path and Path(path).exists() else path


def _cmd_prepare(args: argparse.Namespace) -> None:
    from core.cli.options import check_folder
    from core.io import write_json

    main = args.run_command   # core.cli.main.run_command, handed over by it (importing it here would be a cycle)
    out = Path(args.out)
    args.data_dir = args.root
    check_folder(args)   # splits, class folders and what loading does: before any work
    _check_data(args)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--seed", str(args.seed), "--threads", str(args.threads)]
    data = ["--dataset", "imagefolder", "--data-dir", str(args.root), "--resolution", str(args.resolution),
            "--channels", str(args.channels)] + (["--test-dir", args.test_dir] if args.test_dir else [])
    vae = args.vae or str(out / "vae")
    steps = []
    if args.vae is None:
        steps.append(("vae", out / "vae", ["train-vae", *data, "--epochs", str(args.vae_epochs),
                                           "--batch-size", str(args.vae_batch_size), "--out", vae]))
    steps.append(("teacher", out / "teacher", ["train-teacher", *data, "--epochs", str(args.teacher_epochs),
                                               "--batch-size", str(args.teacher_batch_size),
                                               "--out", str(out / "teacher")]))
    for name in ("flow",) + (() if args.no_diffusion else ("diffusion",)):
        steps.append((name, out / name, [f"train-{name}", *data, "--vae", vae, "--steps", str(args.flow_steps),
                                         "--model", args.model, "--batch-size", str(args.batch_size),
                                         "--out", str(out / name)]))
    eval_args = ["eval-models", *data, "--vae", vae, "--flow", str(out / "flow"), "--teacher", str(out / "teacher"),
                 "--diffusion", str(out / "diffusion"), "--per-class", str(args.eval_per_class),
                 "--cfg-sweep", "--diffusion-steps", "25", "--json", str(out / "eval.json")]
    write_json(out / MODEL_FOLDER_RECORD, {"root": _recorded(args.root), "resolution": args.resolution,
                                           "channels": args.channels, "test_dir": _recorded(args.test_dir),
                                           "vae": _recorded(args.vae)})   # None: OUT/vae
    started = time.perf_counter()
    total = len(steps) + 1
    for k, (name, folder, command) in enumerate(steps, 1):
        if _done(folder, args.flow_steps if name in ("flow", "diffusion") else None):
            print(f"[prepare {k}/{total}] {name}: done before ({folder}), skipped", flush=True)
            continue
        print(f"[prepare {k}/{total}] {name}: python -m core {' '.join(command)}", flush=True)
        t0 = time.perf_counter()
        if main([*command, *common]) != 0:
            raise ValueError(f"prepare stopped at step {k} ({name}); fix the error above and run it again to resume")
        print(f"[prepare {k}/{total}] {name}: {time.perf_counter() - t0:.0f} s "
              f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    print(f"[prepare {total}/{total}] eval-models: python -m core {' '.join(eval_args)}", flush=True)
    if main([*eval_args, *common]) != 0:
        raise ValueError("prepare stopped at eval-models; fix the error above and run it again to resume")
    print(f"prepare: the model set is in {out} ({time.perf_counter() - started:.0f} s); use it with "
          f"`python -m core distill --models {out} ...` or `evaluate --models {out}`")


def apply_model_folder(args: argparse.Namespace) -> None:
    """``--models DIR`` (a folder ``prepare`` wrote): the model options left at their defaults take its parts
    and the data options its dataset, so that ``distill --models DIR`` needs nothing else."""
    from core.models.spec import open_model_folder

    if not getattr(args, "models", None):
        return
    try:
        found = open_model_folder(args.models)
    except ValueError as exc:
        raise ValueError(f"--models {exc}") from exc
    defaults = {"vae": VAE_DIR, "teacher": TEACHER_DIR, "flow": FLOW_DIR, "diffusion": DIFFUSION_DIR}
    for part, default in defaults.items():
        if getattr(args, part, None) == str(default):   # left at the embedded default: the folder's part
            setattr(args, part, getattr(found.spec, part))
    if hasattr(args, "dataset") and args.dataset == "fashion-mnist" and args.data_dir is None:
        args.dataset, args.data_dir = "imagefolder", found.root
        args.resolution, args.channels = found.resolution, found.channels
        if hasattr(args, "test_dir") and args.test_dir is None:
            args.test_dir = found.test_dir
