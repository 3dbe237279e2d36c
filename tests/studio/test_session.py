"""The app's core layer without Streamlit: a run and its scores, the history, selection -> ids -> export,
background jobs and the figures."""
import io
import json
import os
import sys
import threading
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.config import PROTOCOLS, DistillConfig
from core.evaluation.assess import build_reference
from core.evaluation.students import EvalConfig
from core.models.convnet import ConvNet, ConvNetConfig
from core.models.teacher import Teacher
from core.pipeline.export import MANIFEST, export_zip, export_zip_bytes, resolve_inside
from core.studio.figures import (
    coverage_bars,
    distance_to_prototype,
    latent_scatter,
    mode_grid,
    trajectory_figure,
)
from core.studio.jobs import BACKGROUND_NICE, BackgroundJob
from core.studio.selection import ids_from_plot_selection
from core.studio.session import (
    RunHistory,
    Studio,
    covering_counts,
    evaluate_run,
    run_once,
    run_row,
)


@pytest.fixture(scope="module")
def studio(engine) -> Studio:
    teacher = Teacher(ConvNet(ConvNetConfig(1, 3, 32, width=8)))
    reference = build_reference(engine, teacher, per_class=20, num_modes=3)
    test = engine.dataset.subset(np.arange(0, 90, 3), "tiny-test")
    return Studio(engine, teacher, reference, test)


def pgfm(**changes) -> DistillConfig:
    config = DistillConfig(method="pgfm", ipc=2)
    return replace(config, **changes)


def test_run_records_trajectories_metrics_and_decoded_prototypes(studio):
    run = run_once(studio, pgfm())
    n = len(run.dset)
    assert n == 6 and run.dset.trajectories is not None
    assert run.dset.trajectories.states.shape[:2] == (run.config.sampler.steps + 1, n)
    assert run.prototype_images.shape == run.dset.images.shape
    assert run.features.shape[0] == n and 0 <= run.metrics["mode_coverage"] <= 1
    assert {"precision", "recall", "w2_latent_mean", "landing_error_mean", "nfe_per_image"} <= run.metrics.keys()
    counts = covering_counts(run)
    assert sum(int(c.sum()) for c in counts.values()) == int(run.coverage.sample_covered.sum())
    assert all(np.array_equal(counts[c] > 0, run.coverage.covered[c]) for c in counts)


def test_history_numbers_runs_keeps_a_bounded_list_and_compares(studio):
    history = RunHistory(limit=2)
    runs = [history.add(run_once(studio, pgfm(seed=s))) for s in range(3)]
    assert [r.run_id for r in runs] == [1, 2, 3] and [r.run_id for r in history.runs] == [2, 3]
    with pytest.raises(KeyError, match="run 1 is not in this session's history"):
        history.get(1)
    rows = {row["field"]: row for row in history.compare(2, 3)}
    assert rows["seed"]["run 2"] == 1 and rows["seed"]["run 3"] == 2
    assert "mode_coverage" in rows and "λ" in rows


def test_quantization_is_reused_when_only_the_sampler_changes(studio):
    first = run_once(studio, pgfm())
    sampler = first.config.sampler
    second = run_once(studio, pgfm(sampler=replace(sampler, guidance=replace(sampler.guidance, strength=1.0))))
    assert second.dset.quantization is first.dset.quantization
    assert not np.allclose(first.dset.latents.numpy(), second.dset.latents.numpy())


def test_evaluating_a_run_records_the_result(studio):
    run = run_once(studio, pgfm())
    result = evaluate_run(studio, run, EvalConfig(epochs=1, seeds=(0,), width=8))
    assert run.evaluations[-1]["accuracy_mean"] == result.mean
    assert "accuracy (hard)" in run_row(run)


def test_run_table_gives_lrs_and_ars_against_the_benchmarks_random_real_and_whole_data(studio, tmp_path):
    from core.evaluation.ranking import load_baseline, robustness_scores

    results = {"meta": {"config": {"epochs": 1}}, "cells": {
        "main/random/ipc2": {"ipc": 2, "hard": {"accuracy_mean": 0.5}, "hard-dsa": {"accuracy_mean": 0.4},
                             "soft-online": {"accuracy_mean": 0.55}},
        "whole/convnet": {"hard": {"accuracy_mean": 0.9}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    baseline = load_baseline(tmp_path / "results.json")
    run = run_once(studio, pgfm())
    for protocol in ("hard", "hard-dsa"):
        evaluate_run(studio, run, EvalConfig(epochs=1, seeds=(0,), width=8, **PROTOCOLS[protocol]), None)
    row = run_row(run, baseline)
    assert row["LRS"] is None   # no soft-online evaluation yet
    acc = {e["protocol"]: e["accuracy_mean"] for e in run.evaluations}
    assert row["ARS"] == round(robustness_scores(acc, {"hard": 0.5, "hard-dsa": 0.4}, 0.9)["ars"], 1)
    evaluate_run(studio, run, EvalConfig(epochs=1, seeds=(0,), width=8, **PROTOCOLS["soft-online"]))
    assert run_row(run, baseline)["LRS"] is not None and 0 <= run_row(run, baseline)["LRS"] <= 100
    ars = run_row(run, baseline)["ARS"]
    evaluate_run(studio, run, EvalConfig(epochs=2, seeds=(0,), width=8))   # other epochs than the benchmark's
    assert run_row(run, baseline)["accuracy (hard)"] == round(100 * run.evaluations[-1]["accuracy_mean"], 2)
    assert run_row(run, baseline)["ARS"] == ars   # ...shown, but not compared with the benchmark's students
    every = run_once(studio, pgfm(classes=(0, 1, 2)))   # the app names every class explicitly
    for protocol in ("hard", "hard-dsa"):
        evaluate_run(studio, every, EvalConfig(epochs=1, seeds=(0,), width=8, **PROTOCOLS[protocol]))
    assert run_row(every, baseline)["ARS"] is not None
    subset = run_once(studio, pgfm(classes=(0, 1)))
    evaluate_run(studio, subset, EvalConfig(epochs=1, seeds=(0,), width=8))
    assert run_row(subset, baseline)["ARS"] is None   # the benchmark's random real covers all classes
    assert load_baseline(tmp_path / "missing.json") is None


def test_plot_selection_to_ids_ignores_points_without_ids_and_stale_ids():
    event = {"selection": {"points": [{"customdata": [4, 1]}, {"customdata": [2, 0]}, {"x": 1.0},
                                      {"customdata": [4, 1]}, {"customdata": [99, 0]}]}}
    assert ids_from_plot_selection(event, num_samples=10) == [2, 4]
    assert ids_from_plot_selection(None, 10) == [] and ids_from_plot_selection({"selection": {}}, 10) == []


def test_lasso_selections_send_customdata_as_objects_keyed_by_position():
    event = {"selection": {"points": [{"customdata": {"0": 7, "1": 2}}, {"customdata": {"1": 0, "0": 3}},
                                      {"customdata": {}}, {"customdata": {"0": "x"}}], "lasso": [{}]}}
    assert ids_from_plot_selection(event, num_samples=10) == [3, 7]


def test_selection_exports_as_a_complete_zip(studio, tmp_path):
    run = run_once(studio, pgfm())
    ids = ids_from_plot_selection({"points": [{"customdata": [1]}, {"customdata": [4]}]}, len(run.dset))
    path = export_zip(run.dset, tmp_path / "set.zip", ids)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read(MANIFEST))
    assert sorted(img["index"] for img in manifest["images"]) == [1, 4]
    assert {f"{img['file']}" for img in manifest["images"]} <= set(names)
    assert "latents.safetensors" in names and len([n for n in names if n.endswith(".png")]) == 2
    assert list(tmp_path.iterdir()) == [path]   # no temporary leftovers
    whole = zipfile.ZipFile(io.BytesIO(export_zip_bytes(run.dset)))
    assert len([n for n in whole.namelist() if n.endswith(".png")]) == len(run.dset)


def test_a_failed_zip_export_leaves_no_file(studio, tmp_path):
    run = run_once(studio, pgfm())
    with pytest.raises(ValueError, match="selection ids"):
        export_zip(run.dset, tmp_path / "set.zip", [0, 1000])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../outside", "/etc/x", "a/../../b", "", "."])
def test_export_folders_must_stay_inside_the_root(tmp_path, name):
    with pytest.raises(ValueError):
        resolve_inside(tmp_path, name)
    assert resolve_inside(tmp_path, "sets/one") == (tmp_path / "sets" / "one").resolve()


def test_background_job_reports_progress_result_and_error():
    gate = threading.Event()

    def work(progress):
        progress(0.5, "half")
        gate.wait(5)
        return 42

    job = BackgroundJob(work).start()
    assert job.start() is job   # a second start does nothing
    assert not job.done
    gate.set()
    assert job.wait(5) == 42 and job.done and job.fraction == 1.0
    failing = BackgroundJob(lambda progress: 1 / 0).start()
    with pytest.raises(ZeroDivisionError):
        failing.wait(5)
    assert "failed" in failing.message


def test_waiting_on_a_job_wakes_at_the_report_that_makes_the_condition_true():
    state, gate = {"stage": 0}, threading.Event()

    def work(progress):
        state["stage"] = 1
        progress(0.5, "stage 1")
        gate.wait(5)   # the job is still running when the waiter must already be awake

    assert BackgroundJob(work).wait_until(lambda: True) and not BackgroundJob(work).wait_until(lambda: False)  # not started
    job = BackgroundJob(work)
    started = time.monotonic()
    job.start()
    assert job.wait_until(lambda: state["stage"] == 1, timeout=30) and not job.done
    assert time.monotonic() - started < 10   # woken by the report, not by the 30 s timeout
    assert not job.wait_until(lambda: state["stage"] == 2, timeout=0.05)   # times out, says so
    gate.set()
    assert not job.wait_until(lambda: state["stage"] == 2, timeout=30) and job.done   # ended without it
    assert time.monotonic() - started < 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_a_niced_job_lowers_its_own_thread_only():
    def own_niceness(progress=None):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = own_niceness()
    assert BackgroundJob(own_niceness, nice=5).start().wait(5) == min(base + 5, 19)
    assert own_niceness() == base   # the caller's thread is unchanged
    assert BackgroundJob(own_niceness, nice=0).start().wait(5) == base
    assert BackgroundJob(own_niceness).start().wait(5) == min(base + BACKGROUND_NICE, 19)   # background by default


def test_figures_carry_sample_ids_for_selection(studio):
    run = run_once(studio, pgfm())
    n = len(run.dset)
    rng = np.random.default_rng(0)
    fig = latent_scatter(rng.normal(size=(30, 2)), np.repeat(np.arange(3), 10), run.dset.class_names,
                         rng.normal(size=(n, 2)), run.dset.labels, rng.normal(size=(n, 2)), run.dset.weights, [1])
    synthetic = next(t for t in fig.data if t.name == "synthetic")
    assert [int(c[0]) for c in synthetic.customdata] == list(range(n))
    assert synthetic.marker.line.width[1] > synthetic.marker.line.width[0]   # selected sample is ringed
    traj = trajectory_figure(rng.normal(size=(9, 2, 2)), np.array([1, 1]), [0, 1], run.dset.class_names,
                             rng.normal(size=(2, 2)), axis_titles=("PC 1 (40% of variance)", "PC 2"))
    paths = [t for t in traj.data if t.mode == "lines+markers"]
    assert len(paths) == 2 and paths[0].line.color != paths[1].line.color   # same class, told apart
    assert paths[0].marker.symbol[0] == "circle-open" and paths[0].marker.size[0] > paths[0].marker.size[1]   # start
    assert {t.name for t in traj.data if t.showlegend is not False} >= {"start (noise, t = 0)", "end (t = 1)", "prototype"}
    assert traj.layout.xaxis.title.text == "PC 1 (40% of variance)"
    values = rng.random((9, n))
    distance = distance_to_prototype(np.linspace(0, 1, 9), values, run.dset.labels, run.dset.class_names,
                                     window=(0.0, 0.8))
    classes = np.unique(run.dset.labels)
    assert len(distance.data) == 2 * len(classes)   # per class: its samples' faint lines, then its bold mean
    for c, faint in zip(classes, distance.data[::2]):
        lines = np.asarray(faint.y, dtype=float).reshape(-1, len(values) + 1)   # each sample's steps, then a gap
        assert np.isnan(lines[:, -1]).all() and np.array_equal(lines[:, :-1], values[:, run.dset.labels == c].T)
    assert distance.layout.shapes[0].x0 == 0.0 and distance.layout.shapes[0].x1 == 0.8   # the guidance window
    assert len(coverage_bars({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1]}, run.dset.class_names).data) == 2
    grid = mode_grid(run.coverage.covered, covering_counts(run), run.dset.class_names)
    assert np.asarray(grid.data[0].z).shape == (3, 3)


def test_real_reference_is_cached_on_disk_and_rebuilt_when_stale(studio, tmp_path, monkeypatch):
    import core.evaluation.assess as assess_module
    from core.evaluation.assess import load_or_build_reference

    cache = tmp_path / "reference.safetensors"
    built = load_or_build_reference(studio.engine, studio.teacher, cache, per_class=20, num_modes=3)
    assert cache.is_file()
    monkeypatch.setattr(assess_module, "build_reference", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    loaded = load_or_build_reference(studio.engine, studio.teacher, cache, per_class=20, num_modes=3)
    np.testing.assert_array_equal(loaded.features, built.features)
    np.testing.assert_array_equal(loaded.radii, built.radii)
    for c in built.modes.classes:
        np.testing.assert_array_equal(loaded.modes.centres[c], built.modes.centres[c])
    monkeypatch.undo()
    cache.write_bytes(b"corrupt")
    again = load_or_build_reference(studio.engine, studio.teacher, cache, per_class=20, num_modes=3)
    np.testing.assert_array_equal(again.features, built.features)
    other = load_or_build_reference(studio.engine, studio.teacher, cache, per_class=10, num_modes=3)
    assert len(other.features) == 30   # a different parameter rebuilds


def test_deferred_scores_arrive_from_the_runs_background_job(studio):
    run = run_once(studio, pgfm(), defer=True)
    assert run.scores_job is not None and "mode_coverage" in run.pending_metrics
    assert "landing_error_mean" in run.metrics   # the latent scores come with the images
    run.wait_for_scores(60)
    direct = run_once(studio, pgfm())
    assert direct.scores_job is None and run.pending_metrics == ()
    assert run.metrics == direct.metrics | {"seconds_per_image": run.metrics["seconds_per_image"]}
    assert np.array_equal(run.features, direct.features) and run.coverage.overall == direct.coverage.overall


def test_waiting_for_the_teacher_scores_does_not_wait_for_w2(studio, monkeypatch):
    from core.studio import session
    from core.studio.session import TEACHER_SCORES

    release = threading.Event()
    real_w2 = session.w2_latent_mean

    def slow_w2(*args):
        assert release.wait(60)
        return real_w2(*args)

    monkeypatch.setattr(session, "w2_latent_mean", slow_w2)
    run = run_once(studio, pgfm(), defer=True)
    assert run.wait_for_scores(60, only=TEACHER_SCORES) is None
    assert run.pending_metrics == ("w2_latent_mean",) and "mode_coverage" in run.metrics   # W2 still on its way
    assert not run.scores_job.done
    release.set()
    assert run.wait_for_scores(60) is None and "w2_latent_mean" in run.metrics


def test_waiting_for_mode_coverage_does_not_wait_for_prdc_nor_fail_with_it(studio, monkeypatch):
    from core.studio import session
    from core.studio.session import COVERAGE_SCORES, PRDC_SCORES, TEACHER_SCORES

    release = threading.Event()

    def failing_prdc(*args):
        assert release.wait(60)
        raise RuntimeError("PRDC broke")

    monkeypatch.setattr(session, "prdc_metrics", failing_prdc)
    run = run_once(studio, pgfm(), defer=True)
    assert run.wait_for_scores(60, only=COVERAGE_SCORES) is None
    assert "mode_coverage" in run.metrics and run.coverage is not None and "precision" not in run.metrics
    assert run.pending_metrics == (*PRDC_SCORES, "w2_latent_mean") and not run.scores_job.done
    release.set()
    assert "PRDC broke" in str(run.wait_for_scores(60))
    assert run.wait_for_scores(60, only=COVERAGE_SCORES) is None   # what the Coverage page draws is in
    assert "PRDC broke" in str(run.wait_for_scores(60, only=TEACHER_SCORES))


def test_a_run_shown_again_before_its_cancelled_job_stopped_gets_its_scores(studio, monkeypatch):
    from core.studio import session
    from core.studio.session import ensure_scores

    release, real_coverage, calls = threading.Event(), session.mode_coverage, []

    def slow_coverage(*args):
        calls.append(args)
        assert release.wait(60)
        return real_coverage(*args)

    monkeypatch.setattr(session, "mode_coverage", slow_coverage)
    run = run_once(studio, pgfm(), defer=True)
    first = run.scores_job
    first.cancel()               # another run is shown: this one's job is asked to stop...
    ensure_scores(studio, run)   # ...and the run is shown again before the job has seen it
    assert run.scores_job is not first
    release.set()
    first.wait(60)
    assert run.wait_for_scores(60) is None and run.pending_metrics == ()
    assert {"mode_coverage", "precision", "w2_latent_mean"} <= run.metrics.keys()
    assert len(calls) == 1   # the teacher's stage ran once: the new job went on from where the old one stopped


def test_decoded_prototypes_follow_the_cell_offset(studio):
    centroid = run_once(studio, pgfm())
    moved = run_once(studio, pgfm(cell_offset=1.0))
    assert moved.dset.quantization is centroid.dset.quantization   # one cached quantization...
    assert torch.equal(moved.prototype_images, studio.engine.vae.decode(moved.dset.prototypes))   # ...its own targets
    assert not torch.equal(moved.prototype_images, centroid.prototype_images)


def test_app_runs_and_their_evaluations_are_recorded_in_the_registry(studio, tmp_path):
    from dataclasses import replace as dc_replace

    from core.registry import Registry
    from core.studio.session import record_run

    with Registry(tmp_path / "runs.sqlite") as reg:
        own = dc_replace(studio, registry=reg)
        run = run_once(own, pgfm(), defer=True)
        record_run(own, run)
        run.wait_for_scores(60)
        evaluate_run(own, run, EvalConfig(epochs=1, seeds=(0,), width=8))
        (row,) = reg.runs(kind="app")
    assert row["id"] == run.registry_id and row["config"]["method"] == "pgfm"
    assert row["metrics"]["w2_latent_mean"] == run.metrics["w2_latent_mean"]   # the scores that came in later
    assert row["metrics"]["mode_coverage"] == run.metrics["mode_coverage"]
    assert row["evaluations"][0]["accuracies"] == [run.evaluations[0]["accuracy_mean"]]


def test_registry_rows_become_a_table_and_sidebar_settings(tmp_path):
    from core.config import DistillConfig
    from core.registry import Registry
    from core.studio.runs import differing_columns, sidebar_settings, table_rows

    a = DistillConfig(method="pgfm", ipc=3, classes=(1,), cell_offset=0.5)
    with Registry(tmp_path / "r.sqlite") as reg:
        first = reg.add_run("app", a.to_dict(), {"mode_coverage": 0.5}, commit="")
        reg.add_evaluation(first, "hard", "convnet", 300, "test", [0], [0.75])
        reg.add_evaluation(first, "hard", "convnet", 300, "val", [0], [0.70])
        reg.add_run("bench", {"method": "pgfm", "distill": DistillConfig(method="pgfm", ipc=4).to_dict()}, commit="")
        reg.add_run("evaluate", {"folder": "somewhere"}, commit="")
        reg.update(first, pinned=True)
        runs = reg.runs()
    rows = table_rows(runs)
    assert [r["id"] for r in rows] == [first, 3, 2]                       # pinned first, then newest
    assert rows[0]["accuracy (hard) %"] == 75.0 and rows[0]["cell offset"] == 0.5   # test split only
    assert rows[2]["ipc"] == 4 and rows[1]["method"] is None                # bench config read; a folder has none
    assert "ipc" in differing_columns(rows[:1] + rows[2:]) and differing_columns(rows[:1]) == []
    names = ["a", "b", "c"]
    settings = sidebar_settings(runs[0], names)
    assert settings["classes"] == ["b"] and settings["cell_offset"] == 0.5 and settings["ipc"] == 3
    assert sidebar_settings(runs[2], names) is None


def test_an_unusable_registry_file_is_left_alone_and_said_on_every_page(tmp_path, monkeypatch):
    from core.studio.session import load_studio

    broken = tmp_path / "registry.sqlite"
    broken.write_text("my notes")
    monkeypatch.setenv("DISTILL_REGISTRY", str(broken))
    studio = load_studio()
    assert studio.registry is None and any("runs are not recorded" in w for w in studio.warnings)
    assert broken.read_text() == "my notes"


def test_a_cancelled_scoring_stops_between_stages_and_restarts_when_the_run_is_shown_again(studio):
    from core.studio.session import ensure_scores

    run = run_once(studio, pgfm(), defer=True)
    run.scores_job.cancel()
    run.wait_for_scores(60)
    if not run.pending_metrics:   # it finished before the cancel was seen: cancel a fresh one at once
        run.metrics.pop("w2_latent_mean")
        run.pending_metrics = ("w2_latent_mean",)
    assert run.scores_job.done and run.pending_metrics
    ensure_scores(studio, run)
    assert run.wait_for_scores(60) is None and run.pending_metrics == ()
    assert {"mode_coverage", "precision", "w2_latent_mean"} <= run.metrics.keys()


class Untouchable:
    """A split no code may read: any attribute access fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")


def test_the_accuracy_proxy_scores_on_the_validation_split_and_never_reads_the_test_split(studio):
    from core.studio.session import PROXY_SCORES

    validation = studio.engine.dataset.subset(np.arange(1, 90, 3), "tiny-val")
    guarded = replace(studio, test=Untouchable(), validation=validation, proxies={})
    deferred = run_once(guarded, pgfm(), defer=True)
    assert set(PROXY_SCORES) <= set(deferred.pending_metrics)
    assert deferred.wait_for_scores(60) is None and deferred.pending_metrics == ()
    at_once = run_once(guarded, pgfm())
    for run in (deferred, at_once):
        assert all(0 <= run.metrics[k] <= 1 for k in PROXY_SCORES), run.metrics
    assert deferred.metrics["predicted_hard_dsa"] == at_once.metrics["predicted_hard_dsa"]
    assert guarded.proxies["default"].val_labels.tolist() == validation.labels.tolist()
    assert run_once(replace(studio, validation=None, proxies={}), pgfm()).metrics.keys().isdisjoint(PROXY_SCORES)
