"""Auto-tune: a budgeted, seeded Optuna TPE search over guidance knobs, resumable from the run registry.

The search space gives each knob (core.studio.sweeps.KNOBS) a range ("guidance=0:1.5", "steps=4:16") or a
list of choices ("solver=euler,heun"). Objectives (``OBJECTIVES``):

- ``val-accuracy``: mean validation accuracy of students trained under a protocol (DESIGN.md 4b: a choice
  reads validation, never test);
- ``mode-coverage``: mode coverage, with the landing error kept at or below a cap. TPE maximises the
  coverage of a trial within the cap and minus its excess landing error beyond it (below every feasible
  trial, and pointing back inside); the best is the feasible trial with the highest coverage;
- ``predicted-hard-dsa`` / ``predicted-soft-online``: the accuracy proxy of the set under that protocol's labels
  (core.evaluation.proxy, on the validation split): a trial costs about a second, so hundreds fit in minutes.
  With ``confirm`` N, the N best trials then get real students (``student``) on the validation split, so the
  table shows proxy and students side by side.

The first trial is the base config's own setting (the hand-chosen default: what the search must beat).
Every trial is a registry run (kind ``tune``, the study's name), so a search stopped by a cancel, a closed
tab or a killed process resumes: the trials recorded under the name are given back to a fresh study before it
asks for more. A resumed search continues from those trials, so its later picks can differ from an
uninterrupted one with the same seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import DistillConfig
from core.evaluation.students import EvalConfig, EvaluationCancelled
from core.pipeline.distill import DistillEngine
from core.studio.knobs import knob
from core.studio.session import PROXY_SCORES, Progress, Studio
from core.studio.sweeps import (
    check_name,
    distill_point,
    named_runs,
    recorded_run,
    validation_engine,
)

PROXY_OBJECTIVES = {f"predicted-{protocol}": key for key, protocol in PROXY_SCORES.items()}   # objective -> metric
OBJECTIVES = ("val-accuracy", "mode-coverage", *PROXY_OBJECTIVES)


@dataclass(frozen=True)
class SearchKnob:
    """A knob of the search space: ``low``..``high`` for a number (log-uniform never: these are all linear
    settings), or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def distribution(self):
        import optuna

        k = knob(self.name)
        if k.kind == "choice":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if k.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high))


def parse_search_knob(text: str) -> SearchKnob:
    """``NAME=LOW:HIGH`` for a number, ``NAME=A,B,...`` for a choice (the CLI's --space, the app's fields)."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"a search knob is NAME=LOW:HIGH or NAME=A,B (e.g. guidance=0:1.5), got {text!r}")
    k = knob(name)
    if k.kind == "choice":
        choices = tuple(dict.fromkeys(k.cast(v) for v in values.split(",") if v.strip()))
        if len(choices) < 2:
            raise ValueError(f"{name}: a search needs at least two choices, got {values!r}")
        return SearchKnob(name, choices=choices)
    parts = values.split(":")
    if len(parts) != 2:
        raise ValueError(f"{name}: a search range is LOW:HIGH, got {values!r}")
    low, high = k.cast(parts[0]), k.cast(parts[1])
    if not low < high:
        raise ValueError(f"{name}: the range needs LOW < HIGH, got {low}:{high}")
    return SearchKnob(name, low, high)


@dataclass(frozen=True)
class TuneSpec:
    """What to search: ``space`` around ``base``, ``trials`` in all (recorded ones included), ``seed`` of
    the TPE sampler. ``student`` is required by ``val-accuracy``; ``landing_cap`` by ``mode-coverage``."""

    base: DistillConfig
    space: tuple[SearchKnob, ...]
    objective: str = "val-accuracy"
    trials: int = 20
    seed: int = 0
    student: EvalConfig | None = None
    landing_cap: float | None = None
    confirm: int = 0   # a proxy objective: the best trials that get real students afterwards

    def __post_init__(self) -> None:
        if not self.space:
            raise ValueError("the search space is empty: give at least one knob")
        names = [k.name for k in self.space]
        if len(set(names)) != len(names):
            raise ValueError(f"a knob appears twice in the search space: {', '.join(names)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "val-accuracy" and self.student is None:
            raise ValueError("the val-accuracy objective trains students: give the student settings")
        if self.objective == "mode-coverage" and (self.landing_cap is None or not self.landing_cap > 0):
            raise ValueError("the mode-coverage objective needs a landing-error cap > 0")
        if isinstance(self.trials, bool) or not 1 <= self.trials <= 10_000:
            raise ValueError(f"trials must be from 1 to 10000, got {self.trials}")
        if self.confirm and (self.objective not in PROXY_OBJECTIVES or self.student is None):
            raise ValueError("confirming trials with students is for the predicted-accuracy objectives, and needs the "
                             "student settings")
        if isinstance(self.confirm, bool) or not 0 <= self.confirm <= min(self.trials, 20):
            raise ValueError(f"confirm must be from 0 to min(trials, 20), got {self.confirm}")
        if self.base.method != "pgfm":
            raise ValueError(f"auto-tune searches PGFM's guidance knobs; the base method is {self.base.method!r}")

    def config(self, params: dict) -> DistillConfig:
        config = self.base
        for name, value in params.items():
            config = knob(name).set(config, value)
        return config

    def contains(self, params: dict) -> bool:
        return all(params[k.name] in k.choices if k.choices else k.low <= params[k.name] <= k.high for k in self.space)

    def student_for_run(self) -> EvalConfig | None:
        return self.student if self.objective == "val-accuracy" else None


@dataclass
class TuneResult:
    """The trials (one row each: trial number, registry run, knob values, objective, feasible), and the best."""

    trials: list[dict] = field(default_factory=list)
    best: dict | None = None

    @property
    def best_run_id(self) -> int | None:
        return None if self.best is None else self.best["run"]


def objective_value(spec: TuneSpec, run: dict) -> tuple[float, bool]:
    """(objective, feasible) of a registry run under ``spec``."""
    if spec.objective == "val-accuracy":
        accuracy = _student_accuracy(spec.student, run)
        return (math.nan if accuracy is None else accuracy), True
    if spec.objective in PROXY_OBJECTIVES:
        value = run["metrics"].get(PROXY_OBJECTIVES[spec.objective])
        return (math.nan if value is None else float(value)), True
    landing = run["metrics"].get("landing_error_mean")
    feasible = landing is not None and landing <= spec.landing_cap
    return float(run["metrics"].get("mode_coverage") or 0.0), feasible


def search_value(spec: TuneSpec, run: dict) -> float:
    """What TPE maximises: the objective, or for an infeasible trial minus its landing error beyond the cap."""
    value, feasible = objective_value(spec, run)
    if feasible:
        return value
    landing = run["metrics"].get("landing_error_mean")
    return -(landing - spec.landing_cap) if landing is not None else -1e9


def _row(spec: TuneSpec, number: int, run: dict, params: dict) -> dict:
    value, feasible = objective_value(spec, run)
    row = {"trial": number, "run": run["id"], **params, "objective": value, "feasible": feasible,
           "mode_coverage": run["metrics"].get("mode_coverage"),
           "landing_error_mean": run["metrics"].get("landing_error_mean")}
    if spec.confirm:
        row["val accuracy"] = _student_accuracy(spec.student, run)
    return row


def _student_accuracy(student: EvalConfig, run: dict) -> float | None:
    """The latest validation accuracy of ``student``'s settings recorded for ``run``, or None."""
    accuracies = [e["accuracy_mean"] for e in run["evaluations"] if e["split"] == "val"
                  and e["protocol"] == student.protocol and e["epochs"] == student.epochs
                  and e["architecture"] == student.architecture and tuple(e["seeds"]) == tuple(student.seeds)]
    return accuracies[-1] if accuracies else None


def _recorded_trials(studio: Studio, spec: TuneSpec, name: str) -> list[tuple[dict, dict]]:
    """(params, run) of the study's recorded runs that fit the current space and objective."""
    if studio.registry is None:
        return []
    out = []   # check_name has made sure every run of the name is around this study's base
    for run, config in named_runs(studio.registry, "tune", name):
        params = {k.name: knob(k.name).get(config) for k in spec.space}
        if spec.contains(params) and not math.isnan(objective_value(spec, run)[0]):
            out.append((params, run))
    return out


def tune(studio: Studio, spec: TuneSpec, name: str, engine: DistillEngine | None = None,
         progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
         on_trial: Callable[[dict], None] | None = None) -> TuneResult:
    """Run the search until ``spec.trials`` trials are recorded under ``name`` (resuming recorded ones)."""
    import optuna

    check_name(studio, "tune", name, spec.base, [k.name for k in spec.space])
    if spec.objective != "mode-coverage" and (studio.validation is None or studio.teacher is None):
        raise ValueError(f"the {spec.objective} objective needs the validation split and teacher of the embedded default")
    if spec.objective == "mode-coverage" and studio.teacher is None:
        raise ValueError("mode coverage needs the teacher of the embedded default")
    engine = engine or validation_engine(studio)
    report = progress or (lambda fraction, message: None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    recorded = _recorded_trials(studio, spec, name)[:spec.trials]
    # a sampler with the search's own seed would propose the recorded trials' settings again (its random
    # start does not depend on the trials it is given): a resumed search is seeded past them
    sampler = optuna.samplers.TPESampler(seed=spec.seed + len(recorded))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    distributions = {k.name: k.distribution() for k in spec.space}
    result = TuneResult()

    def add(number: int, run: dict, params: dict) -> dict:
        row = _row(spec, number, run, params)
        result.trials.append(row)
        if row["feasible"] and (result.best is None or row["objective"] > result.best["objective"]):
            result.best = row
        return row

    for params, run in recorded:
        add(len(result.trials), run, params)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=search_value(spec, run)))
    resumed = len(result.trials)
    base = {k.name: knob(k.name).get(spec.base) for k in spec.space}
    if spec.contains(base):
        study.enqueue_trial(base, skip_if_exists=True)   # trial 0 is the hand-chosen setting: the one to beat
    student = spec.student_for_run()
    counted = {row["run"] for row in result.trials}
    invalid = 0
    while len(result.trials) < spec.trials:
        if should_stop is not None and should_stop():
            raise EvaluationCancelled(f"search {name!r} stopped after {len(result.trials)} of {spec.trials} trials")
        trial = study.ask(distributions)
        params = dict(trial.params)
        n = len(result.trials)
        label = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        try:
            config = spec.config(params)
        except ValueError as exc:   # e.g. a window start after its stop: not a setting, so not a trial
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            invalid += 1
            if invalid >= 100:
                raise ValueError(f"the search space keeps giving invalid settings ({exc}); narrow it") from exc
            continue
        known = recorded_run(studio, "tune", name, config)
        if known is not None and known["id"] in counted:   # a setting tried already: TPE learns, no new trial
            study.tell(trial, search_value(spec, known))
            invalid += 1
            if invalid >= 100:
                raise ValueError("the search keeps proposing settings it has tried; widen the space or ask for "
                                 "fewer trials")
            continue
        report(n / spec.trials, f"trial {n + 1}/{spec.trials}: {label}")

        def trial_progress(f: float, message: str, n: int = n, label: str = label) -> None:
            report((n + f) / spec.trials, f"trial {n + 1}/{spec.trials} ({label}): {message}")

        run = distill_point(studio, engine, "tune", name, config, student, trial_progress, should_stop)
        counted.add(run["id"])
        row = add(n, run, params)
        study.tell(trial, search_value(spec, run))
        if on_trial is not None:
            on_trial(row)
    _confirm(studio, spec, name, engine, result, report, should_stop)
    report(1.0, f"search {name!r}: {len(result.trials)} trials ({resumed} resumed from the registry)")
    return result


def _confirm(studio: Studio, spec: TuneSpec, name: str, engine: DistillEngine, result: TuneResult, report: Progress,
             should_stop: Callable[[], bool] | None) -> None:
    """Real students for the ``spec.confirm`` best trials by the proxy (a trial already confirmed is kept)."""
    ranked = sorted((r for r in result.trials if not math.isnan(r["objective"])), key=lambda r: -r["objective"])
    for k, row in enumerate(ranked[:spec.confirm]):
        if row.get("val accuracy") is not None:
            continue
        report(0.99, f"confirming trial {row['trial']} with students ({k + 1}/{spec.confirm})")
        config = spec.config({key.name: row[key.name] for key in spec.space})
        run = distill_point(studio, engine, "tune", name, config, spec.student, None, should_stop)
        row["val accuracy"] = _student_accuracy(spec.student, run)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
