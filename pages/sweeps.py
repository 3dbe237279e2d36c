"""Sweeps: vary one or two guidance knobs around the current run's settings, or let a seeded Optuna search
tune them, in a background job of this session (progress, cancel; it keeps going on other pages). Every point
is written to the run registry as it finishes, so the table and plots below grow while the job runs, and a
sweep or search started again under its name resumes. Students, when asked for, are scored on the validation
split (choices read validation, never test)."""
import pandas as pd
import streamlit as st

from core.config import PROTOCOLS
from core.evaluation.students import EvaluationCancelled, protocol_config
from core.studio.figures import sweep_heatmap, sweep_lines
from core.studio.jobs import BackgroundJob
from core.studio.knobs import KNOBS, parse_values
from core.studio.runs import sidebar_settings
from core.studio.sweeps import (
    METRIC_LABELS,
    SweepSpec,
    recorded_names,
    recorded_rows,
    run_sweep,
)
from core.studio.tuning import OBJECTIVES, TuneSpec, parse_search_knob, tune
from ui.frame import page_frame
from ui.widgets import job_progress, keep_values, require_run

KNOB_HELP = "the setting to vary: " + "; ".join(f"{k.name}: {k.label}" for k in KNOBS.values())
SETTINGS = {"sweep_name": "sweep 1", "sweep_knob1": "guidance", "sweep_values1": "0:1.5:4", "sweep_knob2": "none",
            "sweep_values2": "0.5,0.8", "sweep_students": False, "tune_name": "search 1",
            "tune_objective": "mode-coverage", "tune_knobs": ["guidance", "t_stop"], "tune_trials": 12, "tune_confirm": 3,
            "tune_cap": 0.1,
            **{f"{p}_{k}": v for p in ("sweep", "tune") for k, v in (("protocol", "hard"), ("epochs", 300), ("seeds", 1))},
            **{f"tune_range_{k.name}": ",".join(k.choices) if k.choices else f"{k.low:g}:{k.high:g}"
               for k in KNOBS.values()}}

studio, _ = page_frame()
run = require_run()
st.title("Sweeps")
registry = studio.registry
if registry is None:
    st.info("No run registry (the sidebar says why): sweeps record every point there, so none can run.")
    st.stop()
if st.session_state.pop("go_sampling", False):   # set by "apply the best": show its set
    st.switch_page("pages/sampling.py")
keep_values(SETTINGS)
job: BackgroundJob | None = st.session_state.get("sweep_job")
busy = job is not None and not job.done
st.caption(f"Around run {run.run_id}'s settings ({run.config.method}, IPC {run.config.ipc}); distilled from the "
           "training split without its validation images. Points are recorded as they finish.")


def student_settings(prefix: str):
    """The validation students' settings (protocol, epochs, seeds) in one row of widgets."""
    cols = st.columns(3)
    protocol = cols[0].selectbox("Student protocol", tuple(PROTOCOLS), key=f"{prefix}_protocol", disabled=busy,
                                 help="how the students train: hard, hard-dsa (DSA augmentation), soft, soft-online")
    epochs = cols[1].number_input("Student epochs", 1, 1000, key=f"{prefix}_epochs", disabled=busy,
                                  help="epochs per student (the protocol: 300); fewer is faster and noisier")
    seeds = cols[2].number_input("Student seeds", 1, 5, key=f"{prefix}_seeds", disabled=busy,
                                 help="students per point, seeds 0..n-1; the point's accuracy is their mean")
    return protocol_config(protocol, epochs=int(epochs), seeds=tuple(range(int(seeds))))


def start(kind: str, name: str, work) -> None:
    holder = {}
    new = BackgroundJob(lambda progress: work(progress, lambda: holder["job"].cancelled), name=kind)
    new.kind, new.label = kind, name
    holder["job"] = new
    st.session_state["sweep_job"] = new.start()
    st.session_state["sweep_show"] = f"{kind}: {name}"


sweep_tab, tune_tab = st.tabs(["Sweep", "Auto-tune"])
with sweep_tab:
    name = st.text_input("Sweep name", key="sweep_name", disabled=busy,
                         help="its points are recorded under this name; starting it again resumes it")
    cols = st.columns(2)
    knob1 = cols[0].selectbox("Knob", tuple(KNOBS), key="sweep_knob1", disabled=busy, help=KNOB_HELP)
    values1 = cols[1].text_input("Values", key="sweep_values1", disabled=busy,
                                 help="a list (0.3,0.6,0.9; euler,heun) or start:stop:count (0:1.5:4)")
    cols = st.columns(2)
    knob2 = cols[0].selectbox("Second knob (a grid)", ("none", *KNOBS), key="sweep_knob2", disabled=busy,
                              help="optional: a second setting; every pair of values is a point")
    values2 = cols[1].text_input("Values of the second knob", key="sweep_values2", disabled=busy or knob2 == "none",
                                 help="a list or start:stop:count")
    students = st.checkbox("Train students on the validation split at every point", key="sweep_students",
                           disabled=busy, help="slower: one student per seed and point")
    student = student_settings("sweep") if students else None
    spec = error = None
    try:
        knobs = [(knob1, parse_values(knob1, values1))]
        if knob2 != "none":
            knobs.append((knob2, parse_values(knob2, values2)))
        spec = SweepSpec(run.config, tuple(knobs), student)
        spec.configs()
        if not name.strip():
            raise ValueError("give the sweep a name")
    except ValueError as exc:
        error = str(exc)
        st.error(error)
    if spec is not None and not error:
        st.caption(f"{len(spec.points())} points.")
    if st.button("Start sweep", type="primary", disabled=busy or bool(error), key="sweep_start"):
        start("sweep", name, lambda progress, stop, spec=spec, name=name: run_sweep(
            studio, spec, name, progress=progress, should_stop=stop))
        busy = True

with tune_tab:
    name = st.text_input("Search name", key="tune_name", disabled=busy,
                         help="its trials are recorded under this name; starting it again resumes it")
    cols = st.columns(3)
    objective = cols[0].selectbox("Objective", OBJECTIVES, key="tune_objective", disabled=busy,
                                  help="val-accuracy: students on the validation split (slow); mode-coverage: "
                                       "coverage with the landing error at most the cap (fast); predicted-*: the "
                                       "accuracy proxy under that protocol's labels (about a second a trial)")
    trials = cols[1].number_input("Trials", 1, 1000, key="tune_trials", disabled=busy,
                                  help="trials in all, recorded ones included; trial 0 is the current setting")
    cap = cols[2].number_input("Landing-error cap", 0.001, 10.0, key="tune_cap", format="%.3f", step=0.01,
                               disabled=busy or objective != "mode-coverage",
                               help="mode-coverage: trials landing farther than this from their prototypes lose")
    chosen = st.multiselect("Knobs to search", tuple(KNOBS), key="tune_knobs", disabled=busy, help=KNOB_HELP)
    ranges = st.columns(max(1, len(chosen)))
    texts = {k: ranges[i].text_input(f"{k} range", key=f"tune_range_{k}", disabled=busy,
                                     help="LOW:HIGH for a number, A,B,... for choices") for i, k in enumerate(chosen)}
    confirm = 0
    if objective.startswith("predicted-"):
        confirm = int(st.number_input("Confirm the best trials with students", 0, 20, key="tune_confirm",
                                      disabled=busy, help="after the search, train students under the objective's "
                                      "protocol on this many of the best trials (validation split): proxy and "
                                      "students side by side"))
        st.session_state["tune_protocol"] = objective.removeprefix("predicted-")
    student = student_settings("tune") if objective == "val-accuracy" or confirm else None
    tune_spec = error = None
    try:
        space = tuple(parse_search_knob(f"{k}={text}") for k, text in texts.items())
        tune_spec = TuneSpec(run.config, space, objective, int(trials), run.config.seed, student,
                             float(cap) if objective == "mode-coverage" else None, confirm)
        if not name.strip():
            raise ValueError("give the search a name")
    except ValueError as exc:
        error = str(exc)
        st.error(error)
    if st.button("Start search", type="primary", disabled=busy or bool(error), key="tune_start"):
        start("search", name, lambda progress, stop, spec=tune_spec, name=name: tune(
            studio, spec, name, progress=progress, should_stop=stop))
        busy = True


def apply_best(settings: dict) -> None:   # a callback: runs before the sidebar's widgets exist
    st.session_state.update(settings, auto_apply=True, go_sampling=True)


@st.fragment(run_every=1.0 if busy else None)
def results() -> None:
    """The job's progress, and the chosen sweep's or search's rows from the registry (they grow while it runs)."""
    job: BackgroundJob | None = st.session_state.get("sweep_job")
    if job is not None and not job_progress(job, f"{job.kind} {job.label!r}", "sweep_cancel"):
        if isinstance(job.error, EvaluationCancelled):
            st.warning(f"Cancelled: {job.error}; the finished points are kept (start it again to resume).")
        elif job.error is not None:
            st.error(f"The {job.kind} {job.label!r} failed: {job.error}")
        elif job.kind == "search" and job.result.best is not None:
            best = job.result.best
            knobs = ", ".join(f"{k}={best[k]:.3g}" if isinstance(best[k], float) else f"{k}={best[k]}"
                              for k in job.result.trials[0] if k in KNOBS)
            st.success(f"Best of {len(job.result.trials)} trials: trial {best['trial']} ({knobs}), objective "
                       f"{best['objective']:.4f}.")
            try:
                settings = sidebar_settings(registry.get(best["run"]), list(studio.engine.latents.class_names))
            except KeyError:
                st.info(f"Run {best['run']} of the best trial was deleted from the registry.")
            else:
                st.button("Apply the best settings", key="tune_apply", on_click=apply_best, args=(settings,),
                          help="put them in the sidebar and show the set (drawn from the app's whole training "
                               "split, so it differs slightly from the trial's)")
        elif job.kind == "search":
            st.warning("No trial met the landing-error cap: raise it or widen the ranges.")
    options = [f"sweep: {n}" for n in recorded_names(registry, "sweep")] + \
              [f"search: {n}" for n in recorded_names(registry, "tune")]
    if not options:
        st.info("No sweeps or searches recorded yet.")
        return
    shown = st.session_state.get("sweep_show")
    index = options.index(shown) if shown in options else 0
    pick = st.selectbox("Show", options, index=index, key="sweep_pick", help="a recorded sweep or search")
    kind, _, label = pick.partition(": ")
    varying, rows = recorded_rows(registry, label, "sweep" if kind == "sweep" else "tune")
    st.dataframe(pd.DataFrame(rows).set_index("run"), width="stretch")
    if not varying:
        return
    accuracy = [c for c in rows[0] if c.startswith("val accuracy")]
    labels = {**METRIC_LABELS, **{k: v.label for k, v in KNOBS.items()}}
    metrics = st.multiselect("Metrics to plot", [*accuracy, *METRIC_LABELS], key="sweep_metrics",
                             default=[*accuracy, "mode_coverage", "landing_error_mean", "w2_latent_mean"][:4],
                             format_func=lambda m: labels.get(m, m), help="one panel per metric")
    if not metrics:
        return
    if kind == "search":
        for k in varying:
            st.plotly_chart(sweep_lines(rows, k, metrics, labels=labels, markers_only=True), width="stretch",
                            key=f"sweep_slice_{k}")
        return
    group = varying[1] if len(varying) > 1 else None
    st.plotly_chart(sweep_lines(rows, varying[0], metrics, group, labels), width="stretch", key="sweep_lines")
    if group is not None:
        metric = st.selectbox("Heat map of", metrics, key="sweep_heat_metric", format_func=lambda m: labels.get(m, m),
                              help="the metric over the grid of both knobs")
        st.plotly_chart(sweep_heatmap(rows, varying[0], group, metric, labels), width="stretch", key="sweep_heatmap")


results()
