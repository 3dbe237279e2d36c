"""Command line: ``python -m core COMMAND ...``. Every command takes --seed and prints where outputs went.

Each command lives in its own module (its options and its run function); this one assembles the parser
and turns refusals into one line ``error: ...``. Nothing here imports torch, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys

from core.cli import (
    bench,
    distill,
    encode,
    eval_models,
    evaluate,
    prepare,
    proxy,
    speed,
    startup,
    sweep,
    train,
)
from core.cli.options import bounded, non_negative_int
from core.errors import DistillError, OutputError

COMMANDS = (train, encode, distill, bench, speed, startup, evaluate, eval_models, sweep, prepare, proxy)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (exit 2) for bad options, like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="Distill Studio engine (headless).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func) -> argparse.ArgumentParser:
        """A sub-command with the options every command has."""
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--seed", type=bounded("seed"), default=0, help="random seed (default 0; at most 2**31 - 1)")
        p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: default)")
        p.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST IDX files: default "
                       "$FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist; imagefolder: its root)")
        p.set_defaults(func=func)
        return p

    for command in COMMANDS:
        command.add_parsers(add)
    return parser


# Options naming what a command writes, and the inputs they must stay out of: an ImageFolder (any folder in it
# may be read as a class or a split; Fashion-MNIST's files are read by name) and a latent store.
OUTPUT_OPTIONS = ("out", "json", "store", "cache_dir")
INPUT_OPTIONS = {"root": "the dataset", "data_dir": "the dataset --data-dir", "test_dir": "the test split --test-dir",
                 "latent_store": "the latent store --latent-store"}
FOLDER_OPTIONS = ("data_dir", "test_dir")   # inputs only for --dataset imagefolder


def _check_outputs(args: argparse.Namespace) -> None:
    """Every command's --out folder and --json file can be written and lie outside its inputs, checked before any
    work (distill checks its export target itself: core.pipeline.export.check_export_target)."""
    from core.io import check_outside, check_writable_target

    folder = getattr(args, "dataset", "imagefolder") == "imagefolder"
    for option in OUTPUT_OPTIONS:
        for source, name in INPUT_OPTIONS.items():
            if getattr(args, option, None) and getattr(args, source, None) and (folder or source not in FOLDER_OPTIONS):
                check_outside(getattr(args, option), f"--{option.replace('_', '-')}", getattr(args, source), name)
    if args.command == "distill":
        return
    for option in ("out", "json"):
        value = getattr(args, option, None)
        if value:
            target = check_writable_target(value, f"--{option}", replaces=False)
            if option == "json" and target.is_dir():
                raise OutputError(f"--json {target} is a folder; give a file path, e.g. {target / 'result.json'}")
            if option == "out" and target.exists() and not target.is_dir():
                raise OutputError(f"--out {target} is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    """Run a command: a refusal prints one line ``error: ...`` (exit 2; 1 for the file system), an interrupt
    (Ctrl-C) the line ``interrupted`` (exit 130)."""
    try:
        return run_command(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_command(argv: list[str] | None = None) -> int:
    """``main`` without the interrupt handling: what a command that runs others (prepare) calls, so that an
    interrupt stops them all."""
    args = build_parser().parse_args(argv)
    try:
        prepare.apply_model_folder(args)
        _check_outputs(args)
        args.run_command = run_command
        args.func(args)
    except (DistillError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused something while working (disk full, permissions, ...)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
