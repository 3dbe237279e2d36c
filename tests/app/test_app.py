"""The app on the embedded default, driven by Streamlit's AppTest (no browser): every page opens, the
main widgets change the result, bad combinations show an inline error and keep the last good run."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ["pages/sampling.py", "pages/latent_space.py", "pages/trajectories.py", "pages/coverage.py",
         "pages/evaluate.py", "pages/runs.py", "pages/sweeps.py", "pages/export.py", "pages/dataset.py"]


@pytest.fixture(autouse=True)
def _no_umap(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_STUDIO_UMAP_AUTOSTART", "0")
    monkeypatch.setenv("DISTILL_STUDIO_EXPORT_ROOT", str(tmp_path / "exports"))


def open_app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def current(at: AppTest):
    return at.session_state["run"]


def test_every_page_opens_without_an_exception():
    at = open_app(ipc=2)
    assert len(at.get("image")) >= 10   # a row of pairs per class
    assert {m.label for m in at.metric} >= {"Mode coverage", "Precision", "W2 (latent)", "NFE per image",
                                            "Neighbourhood coverage (PRDC)"}
    assert all(m.proto.help for m in at.metric), [m.label for m in at.metric if not m.proto.help]
    knobs = [*at.sidebar.slider, *at.sidebar.selectbox, *at.sidebar.number_input, *at.sidebar.multiselect]
    assert knobs and all(w.help for w in knobs), [w.label for w in knobs if not w.help]
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])


def test_changing_guidance_reruns_and_changes_the_result():
    at = open_app(ipc=2)
    first = current(at)
    assert first.registry_id is not None   # recorded in the run registry
    at.slider(key="guidance").set_value(1.0).run()
    second = current(at)
    assert second.run_id == first.run_id + 1
    assert second.config.sampler.guidance.strength == 1.0
    assert second.metrics["landing_error_mean"] < first.metrics["landing_error_mean"]
    at.selectbox(key="method").set_value("d4m").run()
    assert current(at).config.method == "d4m" and not at.exception


def test_removing_every_class_shows_the_error_instead_of_running_all_classes():
    at = open_app(ipc=2)
    first = current(at)
    at.multiselect(key="classes").set_value([]).run()
    assert any("Pick at least one class" in e.value for e in at.error)
    assert current(at).run_id == first.run_id          # nothing ran; the last good run is kept
    assert at.multiselect(key="classes").value == []   # and the pick stays empty across reruns
    at.run()
    assert at.multiselect(key="classes").value == [] and current(at).run_id == first.run_id


def test_values_survive_page_changes():
    at = open_app(ipc=2)
    at.slider(key="guidance").set_value(0.3).run()
    at.switch_page("pages/coverage.py").run()
    at.switch_page("pages/sampling.py").run()
    assert at.slider(key="guidance").value == 0.3
    assert current(at).config.sampler.guidance.strength == 0.3


@pytest.mark.parametrize("change", [{"t_start": 0.9, "t_stop": 0.5}, {"ipc": 100_000}, {"ipc": 0}])
def test_an_invalid_combination_shows_an_inline_error_and_keeps_the_last_good_run(change):
    at = open_app(ipc=2)
    good = current(at)
    for key, value in change.items():
        (at.slider if key.startswith("t_") else at.number_input)(key=key).set_value(value)
    at.run()
    assert not at.exception
    assert any("Not run" in e.value or "IPC must be at least 1" in e.value for e in at.sidebar.error)
    banner = [w.value for w in at.main.warning if "settings were not applied" in w.value]
    assert banner and f"showing run {good.run_id}" in banner[0]
    assert current(at).run_id == good.run_id
    assert len(at.get("image")) >= 10   # the gallery still shows the last good set


def test_clicking_gallery_pills_selects_images_for_export(tmp_path):
    at = open_app(ipc=2)
    run = current(at)
    key = f"pills_{run.run_id}_0"
    at.button_group(key=key).set_value([0, 1]).run()
    assert at.session_state["selected"] == [0, 1]
    at.button_group(key=key).set_value([1]).run()
    assert at.session_state["selected"] == [1]
    at.switch_page("pages/export.py").run()
    assert "**1** images" in " ".join(m.value for m in at.markdown)
    at.text_input(key="export_folder").set_value("my-set").run()
    next(b for b in at.button if b.label == "Export to folder").click().run()
    assert not at.exception and any("Wrote 1 images" in s.value for s in at.success)
    manifest = json.loads((tmp_path / "exports" / "my-set" / "manifest.json").read_text())
    assert manifest["num_images"] == 1 and manifest["ipc"] == 1 and manifest["distilled_ipc"] == 2
    assert "whole_set_metrics" in manifest and "metrics" not in manifest


def test_export_refuses_a_folder_outside_its_root():
    at = open_app(ipc=2)
    at.switch_page("pages/export.py").run()
    at.text_input(key="export_folder").set_value("../escape").run()
    next(b for b in at.button if b.label == "Export to folder").click().run()
    assert any("outside" in e.value for e in at.error)


def test_coverage_page_compares_two_runs():
    at = open_app(ipc=2)
    at.number_input(key="seed").set_value(3).run()
    at.switch_page("pages/coverage.py").run()
    assert not at.exception
    assert at.selectbox(key="compare_a").value == 1 and at.selectbox(key="compare_b").value == 2
    assert len(at.dataframe) == 2   # history and the side-by-side comparison


def start_evaluation(at: AppTest, wait: bool = True) -> None:
    """Click Start; the student trains in the session's background job: wait for it, then redraw."""
    next(b for b in at.button if b.label == "Start evaluation").click().run()
    assert not at.exception, at.exception
    if wait:
        at.session_state["eval_job"].wait(300)
        at.run()


def test_evaluate_page_trains_a_student_and_records_the_result():
    at = open_app(ipc=2)
    at.switch_page("pages/evaluate.py").run()
    at.number_input(key="eval_epochs").set_value(2).run()
    start_evaluation(at)
    assert any("test accuracy" in s.value and "1 seed, no spread" in s.value and "±" not in s.value for s in at.success)
    assert current(at).evaluations and current(at).evaluations[0]["epochs"] == 2
    table = at.dataframe[0].value
    assert 0 <= table["test accuracy (%)"][0] <= 100 and table["test accuracy (%)"][0] > 1   # in %, not a fraction
    at.selectbox(key="eval_protocol").set_value("soft-online").run()
    at.number_input(key="eval_seeds").set_value(2).run()
    start_evaluation(at)
    assert not at.exception and any("protocol soft-online" in s.value and "over 2 seeds" in s.value for s in at.success)
    assert [e["protocol"] for e in current(at).evaluations] == ["hard", "soft-online"]


def test_a_student_keeps_training_across_page_changes_and_the_settings_stay():
    at = open_app(ipc=2)
    at.switch_page("pages/evaluate.py").run()
    at.number_input(key="eval_epochs").set_value(40).run()
    at.selectbox(key="eval_protocol").set_value("hard-dsa").run()
    start_evaluation(at, wait=False)
    assert at.button(key="eval_cancel") is not None and any("Run 1, hard-dsa" in p.proto.text for p in at.get("progress"))
    at.switch_page("pages/coverage.py").run()
    at.session_state["eval_job"].wait(300)   # the job outlived the page change
    at.switch_page("pages/evaluate.py").run()
    assert at.number_input(key="eval_epochs").value == 40 and at.selectbox(key="eval_protocol").value == "hard-dsa"
    assert [e["protocol"] for e in current(at).evaluations] == ["hard-dsa"]
    assert any("Run 1, protocol hard-dsa" in s.value for s in at.success)
    at.number_input(key="seed").set_value(5).run()   # a new run: the old run's message is not shown as its own
    assert not at.success and any("last evaluation was of run 1" in i.value for i in at.info)


def test_two_sessions_keep_their_own_runs_and_selections():
    first, second = open_app(ipc=2), open_app(ipc=3)
    first.button_group(key=f"pills_{current(first).run_id}_0").set_value([1]).run()
    second.number_input(key="seed").set_value(4).run()
    assert [r.config.ipc for r in first.session_state["history"].runs] == [2]
    assert [(r.config.ipc, r.config.seed) for r in second.session_state["history"].runs] == [(3, 0), (3, 4)]
    assert first.session_state["selected"] == [1] and second.session_state["selected"] == []
    # both sessions share one engine (loaded once per process) and their sets still match their configs
    assert len(current(first).dset) == 20 and len(current(second).dset) == 30


def test_a_latent_store_with_a_sit_checkpoint_runs_through_the_app_and_exports(scale, monkeypatch):
    """The issue's end-to-end in the app: SD-shaped store -> pgfm with a raw SiT -> pages -> export."""
    monkeypatch.setenv("DISTILL_STUDIO_DATA_ROOT", str(scale.root))
    at = open_app()
    at.radio(key="data_source").set_value("Latent store + models").run()
    at.text_input(key="store_dir").set_value(str(scale.store))
    at.text_input(key="vae_ref").set_value(str(scale.vae))
    at.text_input(key="flow_ref").set_value(str(scale.sit))
    at.number_input(key="flow_num_heads").set_value(2)
    at.number_input(key="ipc").set_value(2)
    at.button(key="load_source").click().run()
    assert not at.exception, at.exception
    run = current(at)
    assert run.dset.images.shape == (6, 3, 256, 256) and run.dset.latents.shape[1:] == (4, 32, 32)
    assert run.coverage is None and "w2_latent_mean" in run.metrics and "landing_error_mean" in run.metrics
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    at.switch_page("pages/export.py").run()
    at.radio(key="export_what").set_value("whole set").run()
    at.text_input(key="export_folder").set_value("sd-set").run()
    next(b for b in at.button if b.label == "Export to folder").click().run()
    assert any("Wrote 6 images" in s.value for s in at.success)


def test_bad_model_references_show_an_error_and_keep_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_STUDIO_DATA_ROOT", str(tmp_path))
    for name in ("missing-store", "missing-vae"):   # inside the data root, but not a latent store or a VAE
        (tmp_path / name).mkdir()
    at = open_app(ipc=2)
    at.radio(key="data_source").set_value("Latent store + models").run()
    at.text_input(key="store_dir").set_value(str(tmp_path / "missing-store"))
    at.text_input(key="vae_ref").set_value(str(tmp_path / "missing-vae"))
    at.button(key="load_source").click().run()
    assert not at.exception
    assert any("Could not load" in e.value for e in at.sidebar.error)
    assert not any(str(tmp_path) in e.value for e in at.sidebar.error)   # the server's paths are not shown
    assert current(at).dset.images.shape[1:] == (1, 32, 32)


def test_with_apply_off_several_changes_cost_one_run_and_known_settings_are_reused():
    at = open_app(ipc=2)
    first = current(at)
    at.toggle(key="auto_apply").set_value(False).run()
    at.slider(key="guidance").set_value(0.5).run()
    at.multiselect(key="classes").set_value(["Trouser", "Bag"]).run()
    assert current(at).run_id == first.run_id and any("press **Apply settings**" in i.value for i in at.info)
    at.button(key="apply_settings").click().run()
    second = current(at)
    assert second.run_id == first.run_id + 1 and second.config.classes == (1, 8)
    assert second.config.sampler.guidance.strength == 0.5 and not at.info
    at.toggle(key="auto_apply").set_value(True).run()
    at.slider(key="guidance").set_value(first.config.sampler.guidance.strength).run()
    at.multiselect(key="classes").set_value(list(first.dset.class_names)).run()
    assert current(at) is first   # the first run's settings again: reused from the history, not re-run
    assert len(at.session_state["history"].runs) == 3   # the intermediate λ-only change ran once


def test_settings_live_in_the_address_so_a_link_or_reload_restores_them():
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"ipc": "2", "guidance": "1.2", "classes": "1,8", "t_stop": "oops"})
    at.run()
    assert not at.exception, at.exception
    run = current(at)
    assert run.config.ipc == 2 and run.config.sampler.guidance.strength == 1.2 and run.config.classes == (1, 8)
    assert any("t_stop" in w.value for w in at.sidebar.warning)   # what did not parse is named, not applied
    at.slider(key="guidance").set_value(0.5).run()
    params = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert params["guidance"] == "0.5" and params["classes"] == "1,8" and "t_stop" not in params
    reloaded = AppTest.from_file(APP, default_timeout=300)   # a new browser session with the same address
    reloaded.query_params.update(params)
    reloaded.run()
    assert current(reloaded).config == current(at).config


def test_runs_page_lists_registry_runs_pins_them_and_reapplies_their_settings():
    at = open_app(ipc=2)
    first = current(at)
    at.slider(key="guidance").set_value(0.4).run()
    second = current(at)
    at.switch_page("pages/runs.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert {first.registry_id, second.registry_id} <= set(table.index)
    at.selectbox(key="runs_pick").set_value(first.registry_id).run()
    at.button(key="runs_pin").click().run()
    table = at.dataframe[0].value
    assert table.loc[first.registry_id, "pinned"] and table["pinned"].iloc[0]   # pinned runs come first
    at.button(key="runs_same").click().run()   # back to the first run's settings: its run, from the history
    assert not at.exception, at.exception
    assert current(at).config == first.config and current(at) is first


def test_sweeps_page_runs_a_grid_in_the_background_and_applies_the_best_of_a_search():
    at = open_app(ipc=1)
    at.switch_page("pages/sweeps.py").run()
    assert not at.exception, at.exception
    at.text_input(key="sweep_values1").set_value("0.3,1.2").run()
    at.selectbox(key="sweep_knob2").set_value("t_stop").run()
    at.text_input(key="sweep_values2").set_value("0.4,0.9").run()
    assert any("4 points" in c.value for c in at.caption)
    at.text_input(key="sweep_values2").set_value("0.4,x").run()   # a bad value: said, and nothing can start
    assert any("not a number" in e.value for e in at.error) and at.button(key="sweep_start").disabled
    at.text_input(key="sweep_values2").set_value("0.4,0.9").run()
    at.button(key="sweep_start").click().run()
    at.session_state["sweep_job"].wait(300)
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == 4 and {"guidance", "t_stop", "mode_coverage", "landing_error_mean"} <= set(table.columns)
    assert len(at.get("plotly_chart")) == 2   # metric panels against λ, and the heat map over the grid
    at.selectbox(key="tune_objective").set_value("mode-coverage").run()
    at.multiselect(key="tune_knobs").set_value(["guidance"]).run()
    at.number_input(key="tune_trials").set_value(3).run()
    at.number_input(key="tune_cap").set_value(1.0).run()
    at.button(key="tune_start").click().run()
    result = at.session_state["sweep_job"].wait(300)
    at.run()
    assert not at.exception, at.exception
    assert len(result.trials) == 3 and any("Best of 3 trials" in s.value for s in at.success)
    best = result.best["guidance"]
    at.button(key="tune_apply").click().run()
    assert not at.exception, at.exception
    assert current(at).config.sampler.guidance.strength == pytest.approx(best, abs=1e-6)


def test_a_prepare_model_folder_runs_every_page_with_its_own_teacher_and_test_split(shapes_models, monkeypatch):
    """Your own dataset in the app: the folder `prepare` made for a drawn ImageFolder, loaded from the sidebar,
    gets mode coverage and PRDC from its own teacher, and the Evaluate page tests on its own test split."""
    monkeypatch.setenv("DISTILL_STUDIO_DATA_ROOT", str(shapes_models.models.parent))
    at = open_app(ipc=2)
    at.radio(key="data_source").set_value("Model folder (prepare)").run()
    at.text_input(key="model_folder").set_value(str(shapes_models.models)).run()
    at.button(key="load_folder").click().run()
    assert not at.exception, at.exception
    assert not at.sidebar.error, [e.value for e in at.sidebar.error]
    run = current(at)
    assert run.dset.images.shape == (6, 3, 16, 16) and run.dset.class_names == ("circle", "square", "triangle")
    assert run.wait_for_scores(120) is None
    assert {"mode_coverage", "precision", "coverage", "w2_latent_mean"} <= run.metrics.keys()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
    at.switch_page("pages/evaluate.py").run()
    at.number_input(key="eval_epochs").set_value(2).run()
    start_evaluation(at)
    assert any("test accuracy" in s.value for s in at.success), [s.value for s in at.success]
    assert any("tested on imagefolder-data-16-test (36 real images)" in c.value for c in at.caption)
    assert 0 <= current(at).evaluations[0]["accuracy_mean"] <= 1


@pytest.mark.parametrize("field, value, message", [
    ("model_folder", "/etc", "outside the data root"),
    ("model_folder", "../../", "outside the data root"),
    ("model_folder", "nothing-here", "was not found in the data root"),
    ("vae_ref", "stabilityai/sd-vae-ft-mse", "looks like a model hub id"),
])
def test_sidebar_paths_are_confined_to_the_data_root_and_hub_ids_need_an_opt_in(tmp_path, monkeypatch, field, value,
                                                                              message):
    monkeypatch.setenv("DISTILL_STUDIO_DATA_ROOT", str(tmp_path))
    (tmp_path / "store").mkdir()
    at = open_app(ipc=2)
    first = current(at)
    if field == "model_folder":
        at.radio(key="data_source").set_value("Model folder (prepare)").run()
        at.text_input(key="model_folder").set_value(value).run()
        at.button(key="load_folder").click().run()
    else:
        at.radio(key="data_source").set_value("Latent store + models").run()
        at.text_input(key="store_dir").set_value("store")
        at.text_input(key="vae_ref").set_value(value)
        at.button(key="load_source").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors
    assert str(tmp_path) not in errors[0] and "/work" not in errors[0]   # no server path
    assert current(at) is first and at.session_state["source"] is None   # nothing was loaded


@pytest.mark.parametrize("address, named", [
    ({"steps": "100000"}, "steps=100000"), ({"t0": "5"}, "t0=5"), ({"guidance": "inf"}, "guidance=inf"),
    ({"cfg_scale": "-1"}, "cfg_scale=-1"), ({"classes": "-1"}, "classes=-1"), ({"seed": "99999999999"}, "seed=99999999999"),
    ({"method": "magic"}, "method=magic"),
])
def test_out_of_range_values_in_the_address_are_refused_with_the_banner(address, named):
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({"ipc": "2", **address})
    at.run()
    assert not at.exception, at.exception
    assert any(named in w.value and "Your settings were not applied" in w.value for w in at.warning), \
        [w.value for w in at.warning]
    run = current(at)   # the rest of the address applies, the refused value keeps its default
    assert run.config.ipc == 2 and run.config.classes in (None, tuple(range(10)))
    assert run.config.seed == 0 and run.config.sampler.steps == 8


def test_every_guidance_step_shows_the_predicted_accuracy_with_its_change_against_the_previous_run():
    at = open_app(ipc=2)
    first = current(at)
    assert first.wait_for_scores(300) is None
    at.run()
    label = "Predicted accuracy (hard-dsa)"
    tiles = {m.label: m for m in at.metric}
    assert tiles[label].value == f"{first.metrics['predicted_hard_dsa']:.1%}" and tiles[label].delta in (None, "")
    assert "Predicted accuracy (soft-online)" in tiles
    at.slider(key="guidance").set_value(0.3).run()
    second = current(at)
    assert second is not first and second.wait_for_scores(300) is None
    at.run()
    tile = {m.label: m for m in at.metric}[label]
    change = 100 * (second.metrics["predicted_hard_dsa"] - first.metrics["predicted_hard_dsa"])
    assert tile.value == f"{second.metrics['predicted_hard_dsa']:.1%}" and tile.delta == f"{change:+.1f} pts"


def test_a_refinement_runs_in_the_background_and_becomes_a_new_run_that_exports():
    at = open_app(ipc=2)
    first = current(at)
    at.selectbox(key="refine_preset").set_value("tdm").run()
    at.slider(key="refine_iterations").set_value(10).run()
    assert current(at) is first   # the last run stays while the refinement works
    job = at.session_state["refine_job"]
    assert job.wait(300) is not None
    at.run()
    refined = current(at)
    assert refined is not first and refined.config.refine.iterations == 10
    assert refined.config.refine.embedding == "teacher" and refined.config.refine.objective == "mmd"
    assert refined.registry_id is not None and "refine_job" not in at.session_state
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="refine_preset").set_value("none").run()
    assert current(at).config.refine.iterations == 0   # back to the unrefined settings: that run again


def test_a_cancelled_refinement_keeps_the_last_run_and_says_so():
    at = open_app(ipc=2)
    first = current(at)
    at.selectbox(key="refine_preset").set_value("dm").run()
    job = at.session_state["refine_job"]
    job.cancel()
    with pytest.raises(Exception):
        job.wait(300)
    at.run()
    assert current(at) is first
    assert any("refinement did not finish" in w.value for w in at.warning), [w.value for w in at.warning]
