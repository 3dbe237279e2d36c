"""Sweeps: distil and score a grid of one or two guidance knobs, optionally training students on the
validation split, each point recorded in the run registry as it finishes.

The knobs and their values are ``core.studio.knobs``'; ``SweepSpec.points`` is their grid. ``run_sweep`` distils every point with
``run_once`` (coverage, landing error, W2, PRDC), trains students on the validation split when asked (DESIGN.md
4b: choices read validation, never test), and writes one registry row per point (kind ``sweep``, the
sweep's name, its students under split ``val``). A sweep run again with the same name resumes: points already
in the registry are read back, not distilled again. Used by the app's Sweeps page and ``python -m core sweep``.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

from core.config import DistillConfig, config_hash
from core.evaluation.students import EvalConfig, EvaluationCancelled, evaluate_set
from core.pipeline.distill import DistillEngine
from core.studio.knobs import KNOBS, knob
from core.studio.session import Progress, Studio, run_once

SWEEP_METRICS = ("predicted_hard_dsa", "predicted_soft_online", "mode_coverage", "landing_error_mean", "w2_latent_mean",
                 "precision", "recall", "coverage")
METRIC_LABELS = {"predicted_hard_dsa": "predicted accuracy (hard-dsa)",
                 "predicted_soft_online": "predicted accuracy (soft-online)", "mode_coverage": "mode coverage", "landing_error_mean": "landing error",
                 "w2_latent_mean": "W2 (latent)", "precision": "precision", "recall": "recall",
                 "coverage": "PRDC coverage"}


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: one or two knobs with their values around ``base``; ``student`` (or None: metrics only) is
    trained on the validation split at every point."""

    base: DistillConfig
    knobs: tuple[tuple[str, tuple], ...]
    student: EvalConfig | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.knobs) <= 2:
            raise ValueError(f"a sweep varies one or two knobs, got {len(self.knobs)}")
        names = [name for name, _ in self.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"a knob appears twice in the sweep: {', '.join(names)}")
        for name, values in self.knobs:
            if self.base.method not in knob(name).methods:
                raise ValueError(f"{name} does not change a {self.base.method} set (it acts on "
                                 f"{', '.join(knob(name).methods)}): every point would be the same")
            if not values:
                raise ValueError(f"{name}: give at least one value")

    def points(self) -> list[dict]:
        """The grid: one {knob: value} per point, the first knob varying slowest."""
        names = [name for name, _ in self.knobs]
        return [dict(zip(names, combo)) for combo in itertools.product(*(values for _, values in self.knobs))]

    def config(self, point: dict) -> DistillConfig:
        config = self.base
        for name, value in point.items():
            config = KNOBS[name].set(config, value)
        return config

    def configs(self) -> list[DistillConfig]:
        """Every point's config, all checked before any work: an invalid point (e.g. a window start after its
        stop) is a ValueError naming it."""
        configs, bad = [], []
        for point in self.points():
            try:
                configs.append(self.config(point))
            except ValueError as exc:
                bad.append(f"{point}: {exc}")
        if bad:
            raise ValueError("these sweep points are not valid settings:\n  " + "\n  ".join(bad))
        return configs


def validation_engine(studio: Studio) -> DistillEngine:
    """The engine a choice-making run distils from: the studio's, with the validation split held out unless it
    already is (students tested on validation must never train on a validation image)."""
    from core.data.datasets import holds_out_validation
    from core.pipeline.distill import hold_out_validation

    if holds_out_validation(studio.engine.dataset.name):
        return studio.engine
    if studio.held_out is None:   # kept: its k-means results are cached on it
        studio.held_out = hold_out_validation(studio.engine, studio.validation_rows)
    return studio.held_out


def student_column(protocol: str, epochs: int, architecture: str) -> str:
    """The table column of a validation evaluation: its protocol, and the student and epochs when they are
    not the protocol's own (ConvNet-3, 300 epochs)."""
    extra = ", ".join(x for x in (architecture if architecture != "convnet" else "",
                                  f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs != 300 else "") if x)
    return f"val accuracy ({protocol}{', ' + extra if extra else ''}) %"


def _point_row(point: dict, run: dict) -> dict:
    """A sweep table row of a registry run: the knob values, the metrics, the validation accuracies (%)."""
    row = {"run": run["id"], **point, **{m: run["metrics"].get(m) for m in SWEEP_METRICS}}
    for e in run["evaluations"]:
        if e["split"] == "val":
            row[student_column(e["protocol"], e["epochs"], e["architecture"])] = round(100 * e["accuracy_mean"], 2)
    return row


def _has_evaluation(run: dict, student: EvalConfig) -> bool:
    return any(e["split"] == "val" and e["protocol"] == student.protocol and e["epochs"] == student.epochs
               and e["architecture"] == student.architecture and tuple(e["seeds"]) == tuple(student.seeds)
               for e in run["evaluations"])


def evaluate_on_validation(studio: Studio, run_id: int, dset, student: EvalConfig,
                           progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> float:
    """Train ``student`` on a distilled set, test on the validation split, record it under ``run_id``; the mean."""
    if studio.validation is None or studio.teacher is None:
        raise ValueError("students can be trained only where the studio has a validation split and a teacher "
                         "(the embedded default)")
    weights = dset.weights if student.use_weights else None
    result = evaluate_set(dset.images, dset.labels, studio.validation, student, weights, studio.teacher, progress,
                          should_stop)
    if studio.registry is not None:
        studio.registry.add_evaluation(run_id, student.protocol, student.architecture, student.epochs, "val",
                                       student.seeds, result.accuracies, result.seconds)
    return result.mean


def recorded_run(studio: Studio, kind: str, name: str, config: DistillConfig) -> dict | None:
    """The registry's latest run of ``kind`` / ``name`` with ``config``, or None."""
    if studio.registry is None:
        return None
    runs = [r for r in studio.registry.runs(kind=kind, config_hash=config_hash(config)) if r["name"] == name]
    return max(runs, key=lambda r: r["id"]) if runs else None


def distill_point(studio: Studio, engine: DistillEngine, kind: str, name: str, config: DistillConfig,
                  student: EvalConfig | None, progress: Progress | None = None,
                  should_stop: Callable[[], bool] | None = None) -> dict:
    """One sweep or tuning point: the registry's run when it has it, else distil, score and record it; with a
    ``student``, also its validation evaluation (protocol, student, epochs and seeds), added to the recorded
    run when only that is missing (the set is distilled again for it: the same seed gives the same images).
    Returns the registry run (a dict as ``Registry.get`` gives)."""
    if studio.registry is None:
        raise ValueError("sweeps and tuning record their points in the run registry, and this studio has none")
    known = recorded_run(studio, kind, name, config)
    if known is not None and (student is None or _has_evaluation(known, student)):
        return known
    run = run_once(replace(studio, engine=engine), config)
    if known is None:
        run_id = studio.registry.add_run(kind, config.to_dict(), run.metrics, run.dset.timings, config_hash(config),
                                         source=engine.dataset.name, name=name)
    else:
        run_id = known["id"]
    if student is not None:
        evaluate_on_validation(studio, run_id, run.dset, student, progress, should_stop)
    return studio.registry.get(run_id)


def named_runs(registry, kind: str, name: str) -> list[tuple[dict, DistillConfig]]:
    """(run, its DistillConfig) of the registry's runs of ``kind`` named ``name``, oldest first; a row whose
    config this version cannot read (a newer one's) is left out."""
    out = []
    for run in sorted((r for r in registry.runs(kind=kind) if r["name"] == name), key=lambda r: r["id"]):
        try:
            out.append((run, DistillConfig.from_dict(run["config"])))
        except ValueError:
            continue
    return out


def check_name(studio: Studio, kind: str, name: str, base: DistillConfig, knobs: list[str]) -> None:
    """Refuse a name already recorded around other settings: each of its runs, with ``knobs`` set back to
    ``base``'s values, must be ``base`` (one name, one sweep or search; its table would mix them otherwise)."""
    if not name.strip():
        raise ValueError(f"a {'sweep' if kind == 'sweep' else 'search'} needs a name (its points are found again "
                         "in the registry by it)")
    if studio.registry is None:
        return
    for _, config in named_runs(studio.registry, kind, name):
        for k in knobs:
            config = KNOBS[k].set(config, KNOBS[k].get(base))
        if config != base:
            raise ValueError(f"{name!r} is already the name of a {'sweep' if kind == 'sweep' else 'search'} around "
                             "other settings (or of other knobs); give this one another name")


def run_sweep(studio: Studio, spec: SweepSpec, name: str, engine: DistillEngine | None = None,
              progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
              on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Every point of ``spec`` (resumed from the registry where recorded): a list of table rows (knob values,
    ``SWEEP_METRICS``, validation accuracy). ``on_row`` receives each row as it is ready (the app streams
    them); ``should_stop`` is polled between points and during student training (EvaluationCancelled)."""
    check_name(studio, "sweep", name, spec.base, [k for k, _ in spec.knobs])
    if spec.student is not None and (studio.validation is None or studio.teacher is None):
        raise ValueError("training students needs the validation split and the teacher of the embedded default; "
                         "sweep the metrics only (no student) on this data")
    configs = spec.configs()
    engine = engine or validation_engine(studio)
    report = progress or (lambda fraction, message: None)
    rows = []
    for i, (point, config) in enumerate(zip(spec.points(), configs)):
        if should_stop is not None and should_stop():
            raise EvaluationCancelled(f"sweep {name!r} stopped after {i} of {len(configs)} points")
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        report(i / len(configs), f"point {i + 1}/{len(configs)}: {label}")

        def point_progress(f: float, message: str, i: int = i, label: str = label) -> None:
            report((i + f) / len(configs), f"point {i + 1}/{len(configs)} ({label}): {message}")

        run = distill_point(studio, engine, "sweep", name, config, spec.student, point_progress, should_stop)
        rows.append(_point_row(point, run))
        if on_row is not None:
            on_row(rows[-1])
    report(1.0, f"sweep {name!r}: {len(rows)} points")
    return rows


def recorded_names(registry, kind: str = "sweep") -> list[str]:
    """Names of the sweeps (or searches: ``kind='tune'``) in the registry, the latest first."""
    runs = sorted(registry.runs(kind=kind), key=lambda r: -r["id"])
    return list(dict.fromkeys(r["name"] for r in runs))


def recorded_rows(registry, name: str, kind: str = "sweep") -> tuple[list[str], list[dict]]:
    """The knobs that vary across a recorded sweep's runs, and its table rows (oldest first)."""
    pairs = named_runs(registry, kind, name)
    runs, configs = [r for r, _ in pairs], [c for _, c in pairs]
    varying = [k for k, spec in KNOBS.items() if len({repr(spec.get(c)) for c in configs}) > 1]
    return varying, [_point_row({k: KNOBS[k].get(c) for k in varying}, r) for r, c in zip(runs, configs)]
