"""`bench`: the benchmark of every method (distil, score, students, sweep, efficiency); resumable."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from core.cli.options import (
    add_distill_options,
    add_registry,
    bounded,
    distill_config_from_args,
    engine_from_args,
    open_registry,
)
from core.config import (
    ASSETS,
    BENCH_METHODS,
    PROTOCOLS,
    STUDENT_ARCHITECTURES,
    TEACHER_DIR,
    TRAIN_MINUS_VAL,
)


def add_parsers(add) -> None:
    p = add("bench", "Benchmark every method: distil, score (coverage, PRDC, W2, NFE, time), train students under "
            "each protocol (test split), the whole-data row, cross-architecture students, DD-Ranking scores, the "
            "PGFM sweep (validation split), NFE against diffusion; resumable.", _cmd_bench)
    add_distill_options(p, single=False)
    p.add_argument("--ipc", type=bounded("ipc"), nargs="+", default=[1, 10, 50], help="IPC values (default 1 10 50)")
    p.add_argument("--seeds", type=bounded("seeds"), default=3)
    p.add_argument("--epochs", type=bounded("epochs"), default=300)
    p.add_argument("--methods", nargs="+", default=list(BENCH_METHODS), choices=list(BENCH_METHODS))
    p.add_argument("--protocols", nargs="+", default=["hard", "hard-dsa", "soft-online"], choices=list(PROTOCOLS),
                   help="student protocols of the main table (DESIGN.md 4b; default hard hard-dsa soft-online)")
    p.add_argument("--pool", default=TRAIN_MINUS_VAL, choices=[TRAIN_MINUS_VAL, "train"],
                   help="training images the methods draw from (default: the validation split held out)")
    p.add_argument("--whole-epochs", type=bounded("epochs"), default=4,
                   help="epochs of the whole-training-set students (one per protocol; default 4)")
    p.add_argument("--no-whole", action="store_true", help="skip the whole-training-set row")
    p.add_argument("--architectures", nargs="*", default=["resnet-bn", "mlp"], choices=list(STUDENT_ARCHITECTURES),
                   help="cross-architecture students (hard-dsa, IPC 10 and 50; none: skip)")
    p.add_argument("--sweep-protocol", default="hard", choices=list(PROTOCOLS),
                   help="protocol of the PGFM sweep's validation accuracy (default hard)")
    p.add_argument("--sweep-ipc", type=bounded("ipc"), default=10, help="IPC of the PGFM sweep (default 10)")
    p.add_argument("--sweep-variants", nargs="+", default=[], metavar="NAME",
                   help="run only these sweep variants (e.g. default 'window=[0,0.5]' 'cell offset=1' 'random real')")
    p.add_argument("--sweep-seeds", type=bounded("seeds"), default=1, help="seeds per sweep variant (default 1)")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-main", action="store_true", help="skip the main table (e.g. to run a sweep alone)")
    p.add_argument("--no-efficiency", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite RESULTS.md and the plots from the results.json in --out (e.g. of a partial run)")
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--out", default="benchmarks", help="output folder (default benchmarks/); several benchmarks may run on one folder at once (e.g. "
                   "one per core, other methods each): every write merges with the others' under a lock")
    add_registry(p)


def _cmd_bench(args: argparse.Namespace) -> None:
    from core.data.splits import load_dataset
    from core.evaluation.benchmark import (
        Bench,
        BenchConfig,
        results_summary,
        run_benchmark,
    )
    from core.models.loading import load_teacher
    from core.models.spec import ModelSpec
    from core.reads import read_json

    if args.report_only:
        results_file = Path(args.out) / "results.json"
        if not results_file.is_file():
            raise SystemExit(f"no {results_file} to report on; run `python -m core bench --out {args.out}` first")
        from core.evaluation.benchmark import write_report

        results = read_json(results_file)
        print(results_summary(results))
        print(f"table written to {write_report(results, Path(args.out))}")
        return
    config = BenchConfig(ipcs=tuple(args.ipc), seeds=args.seeds, methods=tuple(args.methods),
                         protocols=tuple(args.protocols), epochs=args.epochs, pool=args.pool,
                         whole_data=not args.no_whole, whole_data_epochs=args.whole_epochs,
                         architectures=tuple(args.architectures), main=not args.no_main, sweep=not args.no_sweep,
                         sweep_ipc=args.sweep_ipc, sweep_seeds=args.sweep_seeds, sweep_protocol=args.sweep_protocol,
                         sweep_variants=tuple(args.sweep_variants), efficiency=not args.no_efficiency,
                         seed=args.seed, distill=distill_config_from_args(args, "pgfm", 10))
    check_results_folder(Path(args.out), args)   # before any work: a folder of another dataset's benchmark
    registry = open_registry(args)   # before any work: a file it cannot use is refused now
    # k-means from the disk cache would make the table's distillation times those of a file read
    engine = dataclasses.replace(engine_from_args(args), quantize_cache=None)
    if config.pool == TRAIN_MINUS_VAL:
        from core.data.splits import validation_rows
        from core.pipeline.distill import hold_out_validation

        engine = hold_out_validation(engine, validation_rows(args.dataset, engine.dataset.labels, args.data_dir,
                                                             args.test_dir))
    teacher = load_teacher(ModelSpec(teacher=args.teacher))
    split = (args.dataset, args.data_dir, args.resolution, args.channels, args.test_dir)
    test = load_dataset(split[0], "test", *split[1:])
    validation = load_dataset(split[0], "val", *split[1:]) if config.sweep else None
    teacher_accuracy = shipped_teacher_accuracy(args.teacher)
    t0 = time.perf_counter()
    record = Path(args.teacher) / "training.json"
    teacher_split = (read_json(record).get("config") or {}).get("train_split", "train") if record.is_file() else "train"
    bench = Bench(engine, teacher, test, Path(args.out), config, validation, registry=registry)
    try:
        results = run_benchmark(bench, teacher_accuracy, teacher_split, args.bench_dataset)
    finally:
        if registry is not None:
            registry.close()
    print(results_summary(results))
    print(f"benchmark finished in {(time.perf_counter() - t0) / 60:.1f} min; results in {Path(args.out) / 'results.json'}, "
          f"table in {Path(args.out) / 'RESULTS.md'}")


def dataset_label(args: argparse.Namespace) -> str:
    """The dataset a benchmark measures, as results.json records it (``meta.dataset``)."""
    if args.dataset == "fashion-mnist":
        return "fashion-mnist"
    return f"imagefolder {Path(args.data_dir).resolve()} at {args.resolution} px, {args.channels} channel(s)"


def check_results_folder(out: Path, args: argparse.Namespace) -> None:
    """Refuse to resume ``out/results.json`` when it holds the benchmark of another dataset (its cells would
    be mixed into this one's table); results that predate ``meta.dataset`` are Fashion-MNIST's. Records this
    run's dataset in the arguments (``args.bench_dataset``) for the benchmark's meta."""
    from core.reads import read_json

    args.bench_dataset = dataset_label(args)
    path = out / "results.json"
    if not path.is_file():
        return
    recorded = (read_json(path).get("meta") or {}).get("dataset", "fashion-mnist")
    if recorded != args.bench_dataset:
        raise ValueError(f"{path} holds the benchmark of {recorded}, not of {args.bench_dataset}: give another "
                         "--out (e.g. benchmarks/NAME) for this dataset; nothing was changed")


def shipped_teacher_accuracy(teacher: str) -> float | None:
    """The teacher's test accuracy as its model set recorded it: the embedded default's assets/metrics.json,
    or the eval.json that `prepare` (eval-models) wrote beside a model folder's teacher; None when unknown."""
    from core.reads import read_json

    folder = Path(teacher)
    figures = ASSETS / "metrics.json" if folder.resolve() == TEACHER_DIR.resolve() else folder.parent / "eval.json"
    if not figures.is_file():
        return None
    return (read_json(figures).get("teacher") or {}).get("test_accuracy")
