"""`proxy-calibrate` and `bench-proxy`: how well the accuracy proxies rank distilled sets the way students do
(on the validation split), and how fast the default one is.

``proxy-calibrate`` reads the calibration data file (``--data``; ``--collect FOLDER...`` first rebuilds it
from benchmark results folders whose sweeps were scored on validation), distils every set again (deterministic
from its config; the scores are kept in ``--scores`` so a second run only scores new sets or estimators), and
prints and writes, per IPC and protocol, Spearman's ρ and Kendall's τ of each estimator and of each live score
against the students, beside the seed-to-seed ceiling; the scatter plots of the chosen estimator go to
``--figure``."""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from core.cli.options import add_distill_options, bounded, distill_config_from_args, model_spec

CALIBRATION_PROTOCOLS = ("hard-dsa", "soft-online")


def estimators() -> dict:
    """The proxies compared (name -> ProxyConfig); the first is the one the app shows (DEFAULT_PROXY)."""
    from core.evaluation.proxy import DEFAULT_PROXY, ProxyConfig

    return {"random-convnet": DEFAULT_PROXY, "teacher-linear": ProxyConfig(), "teacher-rbf": ProxyConfig(kernel="rbf"),
            "teacher-rbf-aug4": ProxyConfig(kernel="rbf", augmentations=4),
            "random-convnet-aug4": ProxyConfig(embedding="random-convnet", augmentations=4)}


def add_parsers(add) -> None:
    p = add("proxy-calibrate", "Rank correlation of each accuracy proxy and live score with students' validation "
            "accuracy, per IPC and protocol, beside the seed-to-seed ceiling; scatter plots.", _cmd_calibrate)
    p.add_argument("--data", default="benchmarks/proxy/sets.json", help="the calibration data file")
    p.add_argument("--collect", nargs="+", default=None, metavar="FOLDER",
                   help="first rebuild --data from these benchmark results folders (their validation sweeps)")
    p.add_argument("--scores", default="benchmarks/proxy/scores.json", help="proxy scores of the sets (a cache)")
    p.add_argument("--report", default="benchmarks/proxy/CALIBRATION.md")
    p.add_argument("--figure", default="docs/proxy_calibration.png")
    p.add_argument("--teacher", default=None, help="teacher folder (default: the embedded one)")
    p.add_argument("--scored-only", action="store_true",
                   help="report on the sets every estimator has scored already (nothing is distilled)")
    p = add("bench-proxy", "Seconds per score of the default accuracy proxy for 10 classes at IPC 1 / 10 / 50 "
            "(the set's teacher features included; median of --repeats).", _cmd_speed)
    add_distill_options(p)
    p.add_argument("--repeats", type=bounded("repeats"), default=5)
    p.add_argument("--json", default=None)


def _studio_parts(spec, data_dir: str | None):
    """(engine of the training split without validation, with the teacher as the benchmark's; the teacher; the
    validation split): what the benchmark's sweeps distilled from and scored on, for models ``spec``."""
    from core.data.datasets import load_fashion_mnist
    from core.data.splits import validation_rows
    from core.models.loading import load_teacher
    from core.pipeline.distill import hold_out_validation, load_engine

    engine = load_engine(spec, "fashion-mnist", data_dir)
    engine = hold_out_validation(engine, validation_rows("fashion-mnist", engine.dataset.labels, data_dir, None))
    teacher = load_teacher(spec)
    return replace(engine, teacher=teacher, quantize_cache=None), teacher, load_fashion_mnist("val", data_dir)


def _score_sets(records: list[dict], cache: dict, engine, teacher, validation, save) -> dict:
    """{estimator: {set key: {protocol: proxy}}}, computing what ``cache`` lacks (each set distilled once;
    ``save(cache)`` after each, so an interrupted run resumes)."""
    from core.config import DistillConfig
    from core.evaluation.proxy import KernelProxy
    from core.pipeline.distill import distill

    proxies = {}
    for name, config in estimators().items():
        tag = _tag(name, config)
        table = cache.setdefault(tag, {})
        todo = [r for r in records if r["key"] not in table]
        if not todo:
            continue
        proxies[tag] = KernelProxy(validation, teacher, config)
    for i, record in enumerate(r for r in records if any(r["key"] not in cache[t] for t in proxies)):
        t0 = time.perf_counter()
        dset = distill(engine, DistillConfig.from_dict(record["distill"]))
        for tag, proxy in proxies.items():
            cache[tag][record["key"]] = {p: proxy.score(dset.images, dset.labels, p) for p in CALIBRATION_PROTOCOLS}
        save(cache)
        print(f"[{i + 1}] IPC {record['ipc']} {record['name']}: distilled and scored in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return {name: cache[_tag(name, config)] for name, config in estimators().items()}


def _tag(name: str, config) -> str:
    """The key of an estimator's scores in the cache: its name and a hash of its settings."""
    from core.config import config_hash

    return f"{name}/{config_hash(asdict(config))}"


def _table(records: list[dict], scores: dict) -> list[dict]:
    """One row per IPC x protocol: n, ceiling, each estimator's and live score's ρ / τ."""
    from core.evaluation.calibration import LIVE_SCORES, ceiling, live_scores, rank_correlations

    rows = []
    for ipc in sorted({r["ipc"] for r in records}):
        group = [r for r in records if r["ipc"] == ipc]
        for protocol in CALIBRATION_PROTOCOLS:
            top, pairs = ceiling(group, protocol)
            row = {"ipc": ipc, "protocol": protocol, "ceiling": top, "ceiling_sets": pairs}
            for name, table in scores.items():
                row[name] = rank_correlations(group, table, protocol)
            for name, sign in LIVE_SCORES.items():
                row[f"live {name}"] = rank_correlations(group, live_scores(group, name), protocol, sign)
            rows.append(row)
    return rows


def _markdown(rows: list[dict], names: list[str]) -> str:
    fmt = (lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}")  # noqa: E731
    live = [k for k in rows[0] if k.startswith("live ")] if rows else []
    head = ["IPC", "protocol", "sets", "ceiling ρ (sets)", *[f"{n} ρ / τ" for n in names], "best live score ρ"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        best = max(live, key=lambda k: -2 if math.isnan(row[k]["rho"]) else row[k]["rho"], default=None)
        cells = [str(row["ipc"]), row["protocol"], str(row[names[0]]["n"]),
                 f"{fmt(row['ceiling'])} ({row['ceiling_sets']})",
                 *[f"{fmt(row[n]['rho'])} / {fmt(row[n]['tau'])}" for n in names],
                 f"{fmt(row[best]['rho'])} ({best[5:]})" if best and not math.isnan(row[best]["rho"]) else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from core.evaluation.calibration import collect_sets, scatter_figure
    from core.io import atomic_write, write_json
    from core.models.spec import ModelSpec
    from core.reads import read_json

    if args.collect:
        results = [read_json(Path(folder) / "results.json") for folder in args.collect]
        write_json(args.data, {"sets": collect_sets(results)})
    records = read_json(args.data)["sets"]
    cache = read_json(args.scores) if Path(args.scores).is_file() else {}
    if args.scored_only:
        scores = {name: cache.get(_tag(name, config), {}) for name, config in estimators().items()}
        records = [r for r in records if all(r["key"] in table for table in scores.values())]
    else:
        spec = ModelSpec() if args.teacher is None else ModelSpec(teacher=args.teacher)
        scores = _score_sets(records, cache, *_studio_parts(spec, args.data_dir), lambda c: write_json(args.scores, c))
    rows = _table(records, scores)
    names = list(scores)
    text = (f"# Accuracy proxy calibration\n\n`python -m core proxy-calibrate --data {args.data}`: Spearman ρ / "
            f"Kendall τ against ConvNet-3 students' validation accuracy ({len(records)} sets).\n\n"
            + _markdown(rows, names))
    atomic_write(args.report, lambda p: p.write_text(text))
    write_json(Path(args.report).with_name("calibration.json"), {"estimator": names[0], "rows": [
        {"ipc": r["ipc"], "protocol": r["protocol"], "ceiling": _finite(r["ceiling"]), "ceiling_sets": r["ceiling_sets"],
         **{k: _finite(v) for k, v in r[names[0]].items()}} for r in rows]})
    scatter_figure(records, scores[names[0]], list(CALIBRATION_PROTOCOLS), f"proxy {names[0]}", args.figure)
    print(text)
    print(f"written: {args.report}, {Path(args.report).with_name('calibration.json')}, {args.figure}"
          + ("" if args.scored_only else f", {args.scores}"))


def _cmd_speed(args: argparse.Namespace) -> None:
    import torch

    from core.evaluation.proxy import KernelProxy
    from core.io import write_json
    from core.pipeline.distill import distill

    engine, teacher, validation = _studio_parts(model_spec(args), args.data_dir)
    proxy = KernelProxy(validation, teacher, next(iter(estimators().values())))
    figures = {}
    for ipc in (1, 10, 50):
        dset = distill(engine, replace(distill_config_from_args(args, "pgfm", ipc), ipc=ipc))
        for protocol in CALIBRATION_PROTOCOLS:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                proxy.score(dset.images, dset.labels, protocol)
                times.append(time.perf_counter() - t0)
            figures[f"ipc{ipc} {protocol}"] = statistics.median(times)
            print(f"IPC {ipc:>2} ({len(dset)} images), {protocol}: {figures[f'ipc{ipc} {protocol}']:.3f} s "
                  f"(median of {args.repeats}, {torch.get_num_threads()} threads)", flush=True)
    if args.json:
        write_json(args.json, {"seconds": figures, "threads": torch.get_num_threads()})
