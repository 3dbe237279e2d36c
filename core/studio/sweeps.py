"""Sweeps: distil and score a grid of one or two guidance knobs, optionally training students on the
validation split, each point recorded in the run registry as it finishes.

A knob (``KNOBS``) names one setting of a ``DistillConfig`` (λ, the guidance window's ends, t0, the trust
radius, steps, solver, CFG, ...). ``parse_values`` reads the values a researcher types ("0.3,0.6,0.9" or
"0:1.2:5", five evenly spaced); ``sweep_points`` is their grid. ``run_sweep`` distils every point with
``run_once`` (coverage, landing error, W2, PRDC), trains students on the validation split when asked (DESIGN.md
4b: choices read validation, never test), and writes one registry row per point (kind ``sweep``, the
sweep's name, its students under split ``val``). A sweep run again with the same name resumes: points already
in the registry are read back, not distilled again. Used by the app's Sweeps page and ``python -m core sweep``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.config import FLOW_METHODS, SCHEDULES, SOLVERS, DistillConfig, config_hash
from core.evaluation.students import EvalConfig, EvaluationCancelled, evaluate_set
from core.pipeline.distill import DistillEngine
from core.studio.session import Progress, Studio, run_once

SWEEP_METRICS = ("mode_coverage", "landing_error_mean", "w2_latent_mean", "precision", "recall", "coverage")
METRIC_LABELS = {"mode_coverage": "mode coverage", "landing_error_mean": "landing error",
                 "w2_latent_mean": "W2 (latent)", "precision": "precision", "recall": "recall",
                 "coverage": "PRDC coverage"}


@dataclass(frozen=True)
class Knob:
    """One tunable setting: ``path`` is its attribute path in a DistillConfig; ``kind`` float, int or
    'choice' (one of ``choices``); ``low`` / ``high`` the range a search may use."""

    name: str
    label: str
    path: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("pgfm",)   # the methods whose sets the setting changes

    def get(self, config: DistillConfig) -> Any:
        value: Any = config
        for part in self.path.split("."):
            value = getattr(value, part)
        if self.name == "trust_radius":   # no trust region reads as 0, as on the sidebar
            value = value or 0.0
        return value

    def set(self, config: DistillConfig, value: Any) -> DistillConfig:
        if self.name == "trust_radius":
            value = float(value) or None
        return _replace_path(config, self.path.split("."), value)

    def cast(self, text: str) -> Any:
        text = text.strip()
        if self.kind == "choice":
            if text not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {text!r}")
            return text
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{self.name}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{self.name}: {text!r} is not a finite number")
        if self.kind == "int":
            if value != int(value):
                raise ValueError(f"{self.name} takes whole numbers, got {text!r}")
            return int(value)
        return value


def _replace_path(obj: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    return replace(obj, **{head: _replace_path(getattr(obj, head), rest, value) if rest else value})


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("guidance", "guidance strength λ", "sampler.guidance.strength", "float", 0.0, 2.0),
    Knob("t_start", "guidance window start", "sampler.guidance.t_start", "float", 0.0, 1.0),
    Knob("t_stop", "guidance window stop", "sampler.guidance.t_stop", "float", 0.0, 1.0),
    Knob("schedule", "guidance schedule", "sampler.guidance.schedule", "choice", choices=SCHEDULES),
    Knob("trust_radius", "trust radius r (0: none)", "sampler.guidance.trust_radius", "float", 0.0, 3.0),
    Knob("t0", "warm start t0", "sampler.t0", "float", 0.0, 0.9),
    Knob("steps", "ODE steps", "sampler.steps", "int", 2, 32, methods=FLOW_METHODS),
    Knob("solver", "ODE solver", "sampler.solver", "choice", choices=SOLVERS, methods=FLOW_METHODS),
    Knob("cfg_scale", "CFG scale", "sampler.cfg_scale", "float", 1.0, 4.0, methods=FLOW_METHODS),
    Knob("cell_offset", "cell offset", "cell_offset", "float", 0.0, 1.0),
)}


def knob(name: str) -> Knob:
    if name not in KNOBS:
        raise ValueError(f"unknown knob {name!r}; choose from {', '.join(KNOBS)}")
    return KNOBS[name]


def parse_values(name: str, text: str) -> tuple:
    """The values of knob ``name`` in ``text``: a comma-separated list ("0.3,0.6,0.9", "euler,heun") or, for a
    number, ``start:stop:count`` (``count`` evenly spaced values, ends included; whole numbers for an int knob)."""
    k = knob(name)
    text = text.strip()
    if not text:
        raise ValueError(f"{name}: give at least one value")
    if ":" in text and k.kind != "choice":
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: a range is start:stop:count, got {text!r}")
        start, stop = k.cast(parts[0]), k.cast(parts[1])
        count = knob_count(name, parts[2])
        values = np.linspace(float(start), float(stop), count)
        if k.kind == "int":
            return tuple(dict.fromkeys(round(v) for v in values.tolist()))
        return tuple(round(float(v), 6) for v in values)
    values = tuple(dict.fromkeys(k.cast(part) for part in text.split(",") if part.strip()))
    if not values:
        raise ValueError(f"{name}: give at least one value")
    return values


def knob_count(name: str, text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{name}: the count of a range must be a whole number, got {text!r}") from None
    if not 1 <= count <= 50:
        raise ValueError(f"{name}: a range takes 1 to 50 values, got {count}")
    return count


def parse_knob(text: str) -> tuple[str, tuple]:
    """``NAME=VALUES`` (the CLI's --knob) -> (name, values)."""
    name, sep, values = text.partition("=")
    if not sep:
        raise ValueError(f"a knob is NAME=VALUES (e.g. guidance=0.3,0.6,0.9 or t_stop=0.4:1:4), got {text!r}")
    return name.strip(), parse_values(name.strip(), values)


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
        studio.held_out = hold_out_validation(studio.engine)
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


def check_name(studio: Studio, kind: str, name: str, base: DistillConfig, knobs: list[str]) -> None:
    """Refuse a name already recorded around other settings: each of its runs, with ``knobs`` set back to
    ``base``'s values, must be ``base`` (one name, one sweep or search; its table would mix them otherwise)."""
    if not name.strip():
        raise ValueError(f"a {'sweep' if kind == 'sweep' else 'search'} needs a name (its points are found again "
                         "in the registry by it)")
    if studio.registry is None:
        return
    for run in studio.registry.runs(kind=kind):
        if run["name"] != name:
            continue
        try:
            config = DistillConfig.from_dict(run["config"])
        except ValueError:
            continue
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
    runs, configs = [], []
    for r in sorted((r for r in registry.runs(kind=kind) if r["name"] == name), key=lambda r: r["id"]):
        try:
            configs.append(DistillConfig.from_dict(r["config"]))
        except ValueError:   # a row of a newer version: not shown
            continue
        runs.append(r)
    varying = [k for k, spec in KNOBS.items() if len({repr(spec.get(c)) for c in configs}) > 1]
    return varying, [_point_row({k: KNOBS[k].get(c) for k in varying}, r) for r, c in zip(runs, configs)]
