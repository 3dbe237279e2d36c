"""Sweeps and auto-tune on the tiny engine: knob parsing, grids checked before work, points streamed into the
registry, resuming by name, cancelling, a seeded TPE search that resumes from the registry."""
from dataclasses import replace

import numpy as np
import pytest

from core.config import DistillConfig
from core.evaluation.assess import build_reference
from core.evaluation.students import EvalConfig, EvaluationCancelled
from core.models.convnet import ConvNet, ConvNetConfig
from core.models.teacher import Teacher
from core.registry import Registry
from core.studio.knobs import KNOBS, parse_knob, parse_values
from core.studio.session import Studio
from core.studio.sweeps import SweepSpec, run_sweep
from core.studio.tuning import SearchKnob, TuneSpec, parse_search_knob, tune

BASE = DistillConfig(method="pgfm", ipc=2)
STUDENT = EvalConfig(epochs=1, seeds=(0,), width=8)


@pytest.fixture
def studio(engine, tmp_path) -> Studio:
    teacher = Teacher(ConvNet(ConvNetConfig(1, 3, 32, width=8)))
    reference = build_reference(engine, teacher, per_class=20, num_modes=3)
    data = engine.dataset
    return Studio(engine, teacher, reference, data.subset(np.arange(0, 90, 3), "tiny-test"),
                  registry=Registry(tmp_path / "runs.sqlite"), validation=data.subset(np.arange(1, 90, 3), "tiny-val"))


def test_values_parse_as_lists_and_ranges_with_clear_errors():
    assert parse_values("guidance", "0.3, 0.6,0.9") == (0.3, 0.6, 0.9)
    assert parse_values("t_stop", "0.4:1:4") == (0.4, 0.6, 0.8, 1.0)
    assert parse_values("steps", "4:16:4") == (4, 8, 12, 16)
    assert parse_values("solver", "euler,heun") == ("euler", "heun")
    assert parse_knob("cfg_scale=1,2") == ("cfg_scale", (1.0, 2.0))
    for text, message in (("guidance=a", "not a number"), ("guidance=0:1", "start:stop:count"),
                          ("guidance=0:1:99", "1 to 50"), ("steps=2.5", "whole numbers"),
                          ("solver=adams", "one of"), ("lambda=1", "unknown knob"), ("guidance", "NAME=VALUES"),
                          ("guidance=nan", "finite")):
        with pytest.raises(ValueError, match=message):
            parse_knob(text)


def test_a_knob_sets_and_reads_its_setting():
    config = BASE
    for name, value in (("guidance", 0.4), ("t_start", 0.1), ("t0", 0.2), ("steps", 4), ("solver", "heun"),
                        ("cfg_scale", 1.5), ("cell_offset", 0.5), ("trust_radius", 0.7), ("schedule", "cosine")):
        config = KNOBS[name].set(config, value)
        assert KNOBS[name].get(config) == value
    assert config.sampler.guidance.strength == 0.4 and config.sampler.solver == "heun"
    assert KNOBS["trust_radius"].set(config, 0.0).sampler.guidance.trust_radius is None


def test_a_grid_is_checked_before_any_work():
    spec = SweepSpec(BASE, (("t_start", (0.0, 0.6)), ("t_stop", (0.5, 0.9))))
    assert spec.points() == [{"t_start": 0.0, "t_stop": 0.5}, {"t_start": 0.0, "t_stop": 0.9},
                             {"t_start": 0.6, "t_stop": 0.5}, {"t_start": 0.6, "t_stop": 0.9}]
    with pytest.raises(ValueError, match=r"t_start': 0.6, 't_stop': 0.5.*window"):
        spec.configs()
    with pytest.raises(ValueError, match="one or two knobs"):
        SweepSpec(BASE, (("guidance", (1,)), ("t0", (0,)), ("steps", (4,))))
    with pytest.raises(ValueError, match="appears twice"):
        SweepSpec(BASE, (("guidance", (1,)), ("guidance", (2,))))
    with pytest.raises(ValueError, match="does not change a ddoq set"):
        SweepSpec(replace(BASE, method="ddoq"), (("guidance", (0.3, 0.9)),))
    assert SweepSpec(replace(BASE, method="ddoq"), (("steps", (4, 8)),)).points()


def test_a_sweep_streams_points_into_the_registry_and_resumes_by_name(studio):
    spec = SweepSpec(BASE, (("guidance", (0.0, 0.9)), ("steps", (2, 4))))
    streamed = []
    rows = run_sweep(studio, spec, "grid", engine=studio.engine, on_row=streamed.append)
    assert streamed == rows and len(rows) == 4
    assert [(r["guidance"], r["steps"]) for r in rows] == [(0.0, 2), (0.0, 4), (0.9, 2), (0.9, 4)]
    recorded = studio.registry.runs(kind="sweep")
    assert len(recorded) == 4 and {r["name"] for r in recorded} == {"grid"}
    assert {r["config"]["sampler"]["steps"] for r in recorded} == {2, 4}
    assert all(0 <= r["mode_coverage"] <= 1 and r["landing_error_mean"] >= 0 for r in rows)
    # λ = 0 leaves the samples unguided: they land farther from their prototypes than λ = 0.9
    assert rows[0]["landing_error_mean"] > rows[2]["landing_error_mean"]
    again = run_sweep(studio, spec, "grid", engine=studio.engine)
    assert again == rows and len(studio.registry.runs(kind="sweep")) == 4   # read back, not distilled again
    run_sweep(studio, spec, "other name", engine=studio.engine)
    assert len(studio.registry.runs(kind="sweep")) == 8
    with pytest.raises(ValueError, match="already the name of a sweep around other settings"):
        run_sweep(studio, SweepSpec(replace(BASE, ipc=3), spec.knobs), "grid", engine=studio.engine)
    with_students = run_sweep(studio, replace(spec, student=STUDENT), "grid", engine=studio.engine)
    assert len(studio.registry.runs(kind="sweep")) == 8   # the students joined the recorded points
    assert [r["run"] for r in with_students] == [r["run"] for r in rows]
    assert all("val accuracy (hard, 1 epoch) %" in r for r in with_students)


def test_a_sweep_with_students_scores_them_on_validation_and_a_cancel_keeps_what_is_done(studio):
    spec = SweepSpec(BASE, (("guidance", (0.3, 0.6, 0.9)),), student=STUDENT)
    done = []
    with pytest.raises(EvaluationCancelled, match="after 1 of 3"):
        run_sweep(studio, spec, "students", engine=studio.engine, on_row=done.append, should_stop=lambda: bool(done))
    (run,) = studio.registry.runs(kind="sweep")
    assert [(e["split"], e["protocol"], e["epochs"]) for e in run["evaluations"]] == [("val", "hard", 1)]
    rows = run_sweep(studio, spec, "students", engine=studio.engine)
    assert rows[0] == done[0] and len(studio.registry.runs(kind="sweep")) == 3
    assert all(0 <= r["val accuracy (hard, 1 epoch) %"] <= 100 for r in rows)
    with pytest.raises(ValueError, match="validation split"):
        run_sweep(replace(studio, validation=None), spec, "students", engine=studio.engine)


def test_search_knobs_parse_ranges_and_choices():
    assert parse_search_knob("guidance=0:1.5") == SearchKnob("guidance", 0.0, 1.5)
    assert parse_search_knob("steps=2:8") == SearchKnob("steps", 2, 8)
    assert parse_search_knob("solver=euler,heun") == SearchKnob("solver", choices=("euler", "heun"))
    for text, message in (("guidance=1:0", "LOW < HIGH"), ("guidance=0:1:3", "LOW:HIGH"), ("solver=euler", "two"),
                          ("guidance", "NAME=LOW:HIGH")):
        with pytest.raises(ValueError, match=message):
            parse_search_knob(text)
    with pytest.raises(ValueError, match="landing-error cap"):
        TuneSpec(BASE, (SearchKnob("guidance", 0, 1),), "mode-coverage")
    with pytest.raises(ValueError, match="student"):
        TuneSpec(BASE, (SearchKnob("guidance", 0, 1),), "val-accuracy")
    with pytest.raises(ValueError, match="PGFM"):
        TuneSpec(replace(BASE, method="ddoq"), (SearchKnob("guidance", 0, 1),), "val-accuracy", student=STUDENT)


def _search(trials: int, seed: int = 0) -> TuneSpec:
    return TuneSpec(BASE, (SearchKnob("guidance", 0.0, 1.5), SearchKnob("steps", 2, 8)), "mode-coverage", trials,
                    seed, landing_cap=10.0)


def test_tune_is_seeded_records_every_trial_and_resumes_from_the_registry(studio, tmp_path):
    first = tune(studio, _search(4), "search", engine=studio.engine)
    assert [t["trial"] for t in first.trials] == [0, 1, 2, 3]
    base = (BASE.sampler.guidance.strength, BASE.sampler.steps)
    assert (first.trials[0]["guidance"], first.trials[0]["steps"]) == base   # trial 0: the hand-chosen setting
    assert len(studio.registry.runs(kind="tune")) == 4
    assert first.best == max((t for t in first.trials if t["feasible"]), key=lambda t: t["objective"])
    assert all(0 <= t["guidance"] <= 1.5 and 2 <= t["steps"] <= 8 for t in first.trials)
    other = replace(studio, registry=Registry(tmp_path / "other.sqlite"))
    repeat = tune(other, _search(4), "search", engine=studio.engine)
    assert [(t["guidance"], t["steps"]) for t in repeat.trials] == [(t["guidance"], t["steps"]) for t in first.trials]
    resumed = tune(studio, _search(6), "search", engine=studio.engine)
    assert resumed.trials[:4] == first.trials and len(resumed.trials) == 6
    assert len(studio.registry.runs(kind="tune")) == 6   # two new settings, none of the recorded ones again
    with pytest.raises(ValueError, match="already the name of a search"):
        tune(studio, replace(_search(6), base=replace(BASE, ipc=3)), "search", engine=studio.engine)


def test_tune_on_validation_accuracy_trains_a_student_per_trial(studio):
    spec = TuneSpec(BASE, (SearchKnob("guidance", 0.0, 1.5),), "val-accuracy", 2, student=STUDENT)
    result = tune(studio, spec, "accuracy", engine=studio.engine)
    assert len(result.trials) == 2 and all(0 <= t["objective"] <= 1 for t in result.trials)
    runs = studio.registry.runs(kind="tune")
    assert all(e["split"] == "val" for r in runs for e in r["evaluations"]) and len(runs) == 2


def test_a_search_on_the_accuracy_proxy_trains_no_student_until_it_confirms_its_best(studio):
    spec = TuneSpec(BASE, (SearchKnob("guidance", 0.0, 1.5),), "predicted-hard-dsa", 5, student=STUDENT, confirm=2)
    result = tune(studio, spec, "proxy", engine=studio.engine)
    assert len(result.trials) == 5 and all(0 <= t["objective"] <= 1 for t in result.trials)
    confirmed = [t for t in result.trials if t["val accuracy"] is not None]
    best_two = sorted(result.trials, key=lambda t: -t["objective"])[:2]
    assert [t["trial"] for t in confirmed] == sorted(t["trial"] for t in best_two)
    runs = studio.registry.runs(kind="tune")
    assert sum(len(r["evaluations"]) for r in runs) == 2   # students for the two confirmed trials only
    assert all(r["metrics"]["predicted_hard_dsa"] == t["objective"] for r in runs for t in result.trials
               if t["run"] == r["id"])
    again = tune(studio, spec, "proxy", engine=studio.engine)   # resumed: nothing new to train
    assert sum(len(r["evaluations"]) for r in studio.registry.runs(kind="tune")) == 2
    assert [t["val accuracy"] for t in again.trials] == [t["val accuracy"] for t in result.trials]
    with pytest.raises(ValueError, match="confirming trials with students"):
        TuneSpec(BASE, (SearchKnob("guidance", 0.0, 1.5),), "mode-coverage", 5, landing_cap=1.0, confirm=2)
