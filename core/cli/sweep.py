"""`sweep` and `tune`: the app's Sweeps page headless. Both distil from the training split without its
validation images, score every point (coverage, landing error, W2, PRDC), optionally train students on the
validation split, and write each point to the run registry as it finishes; run again with the same --name,
they resume from it."""
from __future__ import annotations

import argparse
from dataclasses import replace

from core.cli.options import (
    add_distill_options,
    add_registry,
    bounded,
    distill_config_from_args,
    model_spec,
    open_registry,
)
from core.config import PROTOCOLS, STUDENT_ARCHITECTURES, TEACHER_DIR


def add_parsers(add) -> None:
    p = add("sweep", "Distil and score a grid of one or two guidance knobs (students on the validation split "
            "optional), each point recorded in the run registry; resumable by --name.", _cmd_sweep)
    p.add_argument("--knob", action="append", required=True, metavar="NAME=VALUES",
                   help="a knob and its values, once or twice (two: a grid): a list (guidance=0.3,0.6,0.9; "
                        "solver=euler,heun) or start:stop:count (t_stop=0.4:1:4). Knobs: " + _knob_names())
    _add_common(p)
    p.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                   help="also train students under this protocol and score them on the validation split "
                        "(default: metrics only)")
    p = add("tune", "Auto-tune PGFM's guidance knobs: a seeded Optuna TPE search maximising validation accuracy "
            "or mode coverage at a landing-error cap; resumable by --name.", _cmd_tune)
    p.add_argument("--space", action="append", required=True, metavar="NAME=LOW:HIGH|A,B",
                   help="a knob of the search space with its range (guidance=0:1.5, steps=4:16) or choices "
                        "(solver=euler,heun); repeat for more. Knobs: " + _knob_names())
    p.add_argument("--objective", default="val-accuracy",
                   choices=["val-accuracy", "mode-coverage", "predicted-hard-dsa", "predicted-soft-online"],
                   help="val-accuracy: students under --protocol on the validation split; mode-coverage: coverage "
                        "with the landing error at most --landing-cap; predicted-*: the accuracy proxy under that "
                        "protocol's labels (about a second a trial)")
    p.add_argument("--confirm", type=int, default=0, metavar="N",
                   help="predicted-*: train students (the objective's protocol, --epochs, --student-seeds) on the N "
                        "best trials afterwards, on the validation split (default 0)")
    p.add_argument("--trials", type=int, default=20, help="trials in all, recorded ones included (default 20)")
    p.add_argument("--landing-cap", type=float, default=None, help="mode-coverage: the largest landing error allowed")
    _add_common(p)
    p.add_argument("--protocol", default="hard", choices=list(PROTOCOLS),
                   help="val-accuracy: the students' protocol (default hard)")


def _knob_names() -> str:
    from core.studio.knobs import KNOBS

    return ", ".join(f"{k.name} ({k.label})" for k in KNOBS.values())


def _add_common(p: argparse.ArgumentParser) -> None:
    add_distill_options(p)
    p.add_argument("--name", required=True, help="the run's name in the registry (run again to resume)")
    p.add_argument("--epochs", type=bounded("epochs"), default=300, help="student epochs (default 300)")
    p.add_argument("--student-seeds", type=bounded("seeds"), default=1,
                   help="students per point, seeds 0..n-1 (default 1)")
    p.add_argument("--architecture", default="convnet", choices=list(STUDENT_ARCHITECTURES))
    p.add_argument("--teacher", default=str(TEACHER_DIR), help="teacher folder (default: embedded)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_registry(p)


def _student(args: argparse.Namespace):
    from core.evaluation.students import protocol_config

    if args.protocol is None:
        return None
    if args.student_seeds < 1:
        raise ValueError(f"--student-seeds must be >= 1, got {args.student_seeds}")
    return protocol_config(args.protocol, epochs=args.epochs, architecture=args.architecture,
                           seeds=tuple(range(args.student_seeds)))   # as the app's: students 0..n-1


def _studio(args: argparse.Namespace):
    """The studio of the options, recording into --registry (refused before any work if unusable)."""
    if getattr(args, "latent_store", None) or args.dataset != "fashion-mnist":
        raise ValueError("sweep and tune run on the embedded Fashion-MNIST default for now (the validation split, "
                         "the teacher and the real reference of their scores exist only there)")
    registry = open_registry(args)
    if registry is None:
        raise ValueError("sweep and tune record their points in the run registry: --registry none cannot be used")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from core.studio.session import load_studio

    return load_studio(replace(model_spec(args), teacher=args.teacher), args.data_dir, progress=_printer(),
                       registry=registry)


def _printer():
    last = [""]

    def show(fraction: float, message: str) -> None:
        if message != last[0]:
            print(f"[{100 * fraction:5.1f} %] {message}", flush=True)
            last[0] = message
    return show


def _print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _cmd_sweep(args: argparse.Namespace) -> None:
    from core.studio.knobs import parse_knob
    from core.studio.sweeps import SweepSpec, run_sweep

    if len(args.knob) > 2:
        raise ValueError(f"a sweep varies one or two knobs, got {len(args.knob)} --knob options")
    spec = SweepSpec(distill_config_from_args(args), tuple(parse_knob(k) for k in args.knob), _student(args))
    spec.configs()   # every point checked before anything loads
    studio = _studio(args)
    rows = run_sweep(studio, spec, args.name, progress=_printer())
    _print_rows(rows)
    print(f"{len(rows)} points recorded in {studio.registry.path} (kind sweep, name {args.name!r})")
    if args.json:
        from core.io import write_json

        write_json(args.json, {"name": args.name, "knobs": [list(k) for k in spec.knobs], "rows": rows})


def _cmd_tune(args: argparse.Namespace) -> None:
    from core.studio.tuning import TuneSpec, parse_search_knob, tune

    if args.objective.startswith("predicted-"):
        args.protocol = args.objective.removeprefix("predicted-")   # its students confirm the same protocol
    wants_student = args.objective == "val-accuracy" or args.confirm
    spec = TuneSpec(distill_config_from_args(args), tuple(parse_search_knob(s) for s in args.space), args.objective,
                    args.trials, args.seed, _student(args) if wants_student else None, args.landing_cap, args.confirm)
    studio = _studio(args)
    result = tune(studio, spec, args.name, progress=_printer())
    _print_rows(result.trials)
    if result.best is None:
        print("no trial met the landing-error cap; raise --landing-cap or widen the space")
    else:
        best = ", ".join(f"{k.name}={result.best[k.name]}" for k in spec.space)
        print(f"best: trial {result.best['trial']} (run {result.best['run']}): {best}, "
              f"{args.objective} {result.best['objective']:.4f}")
    if args.json:
        from core.io import write_json

        write_json(args.json, {"name": args.name, "objective": args.objective, "trials": result.trials,
                               "best": result.best})
