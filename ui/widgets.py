"""Small page building blocks shared by several pages."""
from __future__ import annotations

import streamlit as st

from core.studio.session import PROXY_SCORES, Run
from ui import state

# metric key -> (label, format, one-line help: what, units, which way is better)
METRIC_LABELS = {
    "predicted_hard_dsa": ("Predicted accuracy (hard-dsa)", "{:.1%}", "a kernel ridge regression in the features of "
                           "random ConvNets, fitted to the set's hard labels and scored on the validation split: a "
                           "prediction of a ConvNet-3 student's validation accuracy under hard-dsa, in well under a "
                           "second (core/evaluation/proxy.py); higher is better"),
    "predicted_soft_online": ("Predicted accuracy (soft-online)", "{:.1%}", "the same regression fitted to the "
                              "teacher's soft labels of the set: a prediction for soft-online students; higher is better"),
    "mode_coverage": ("Mode coverage", "{:.0%}", "share of the real data's modes (10 k-means clusters of teacher "
                      "features per class) that some sample reaches; higher is better"),
    "precision": ("Precision", "{:.3f}", "share of samples inside the real images' k-NN balls (teacher features): "
                  "realism, 0–1, higher is better"),
    "recall": ("Recall", "{:.3f}", "share of real images inside the samples' k-NN balls: diversity, 0–1, higher is "
               "better"),
    "density": ("Density", "{:.3f}", "how many real k-NN balls contain a sample, normalised (≈1 for real data; "
                "higher: samples crowd dense regions)"),
    "coverage": ("Neighbourhood coverage (PRDC)", "{:.3f}", "share of real images whose k-NN ball holds a sample "
                 "(PRDC's coverage, not mode coverage), 0–1, higher is better"),
    "w2_latent_mean": ("W2 (latent)", "{:.3f}", "Wasserstein-2 distance of the set to the real latents of its class "
                       "(weighted, exact OT), mean over classes; latent units, lower is better"),
    "landing_error_mean": ("Landing error", "{:.4f}", "RMS latent distance of each sample to its assigned prototype; "
                           "lower = closer to the prototype (too low can mean lost diversity)"),
    "diversity_latent": ("Diversity (latent)", "{:.2f}", "mean pairwise latent distance within a class; higher = more "
                         "varied samples"),
    "nfe_per_image": ("NFE per image", "{}", "network evaluations per synthetic image; lower is cheaper"),
}


LOWER_IS_BETTER = {METRIC_LABELS["w2_latent_mean"][0], METRIC_LABELS["nfe_per_image"][0]}


def previous_run(run: Run) -> Run | None:
    """The run this session made before ``run`` (its tiles show their change against it), or None."""
    runs = state.history().runs
    index = next((i for i, r in enumerate(runs) if r is run), None)
    return runs[index - 1] if index else None


def metric_delta(key: str, run: Run, previous: Run | None) -> str | None:
    """The change of metric ``key`` against the previous run, in the tile's units (None when either lacks it)."""
    if previous is None or key not in previous.metrics or key not in run.metrics:
        return None
    change = run.metrics[key] - previous.metrics[key]
    if key in PROXY_SCORES or key == "mode_coverage":
        return f"{100 * change:+.1f} pts"
    return f"{change:+.3g}"


@st.cache_data(max_entries=4, show_spinner=False)
def _calibration_rows(path: str, modified_ns: int) -> list[dict]:
    """The rows of the calibration file (read once per version of the file, not on every poll of the tiles)."""
    from core.errors import DistillError
    from core.reads import read_json

    try:
        return list(read_json(path)["rows"])
    except (DistillError, OSError, ValueError, KeyError, TypeError):   # a damaged file costs the note only
        return []


def proxy_note(key: str, ipc: int) -> str:
    """What the calibration measured for the proxy of ``key`` at the IPC nearest ``ipc``."""
    from core.config import ASSETS

    path = ASSETS.parent / "benchmarks" / "proxy" / "calibration.json"
    rows = _calibration_rows(str(path), path.stat().st_mtime_ns) if path.is_file() else []
    rows = [r for r in rows if r.get("protocol") == PROXY_SCORES[key]]
    if not rows:
        return "Not calibrated against students yet (python -m core proxy-calibrate)"
    row = min(rows, key=lambda r: abs(r["ipc"] - ipc))
    number = (lambda v: "n/a" if v is None else f"{v:+.2f}")  # noqa: E731
    return (f"Measured against {row['n']} sets' students (validation accuracy) at IPC {row['ipc']}: Spearman ρ "
            f"{number(row['rho'])}; two student seeds of the same sets agree to ρ {number(row['ceiling'])}")


def keep_values(defaults: dict) -> None:
    """Keep widget values across page changes; call before creating the widgets. Streamlit forgets the
    state of a widget that a page run did not draw (the Evaluate page's settings while another page is
    shown), so each value is also kept under a key of its own (``kept:KEY``) and given back from there."""
    for key, value in defaults.items():
        kept = f"kept:{key}"
        if key in st.session_state:
            st.session_state[kept] = st.session_state[key]
        st.session_state[key] = st.session_state.get(kept, value)


def require_run() -> Run:
    """The session's current run, or stop the page with a hint."""
    run = state.current_run()
    if run is None:
        st.info("No distilled set yet: fix the settings in the sidebar.")
        st.stop()
    return run


# How often a page polls for scores that a background job is computing. Each poll is a script run that holds
# the server (and its GIL) while the browser fetches the page's images: at 0.3 s a λ step in chromium took
# 2.8-4.6 s until every image had loaded, at 1.0 s 1.1-1.2 s (tests/e2e, 2026-12-03); scores take 1-2 s.
SCORE_POLL_S = 1.0


def metric_panel(run: Run, columns: int = 1) -> None:
    """The run's metrics (DESIGN.md section 4) as st.metric tiles. The teacher's scores and W2 arrive from the
    run's background job (``run_once(defer=True)``): until then their tiles say so and the panel redraws
    itself; once they are in, the page is drawn again (its captions and charts use them too)."""
    job = run.scores_job
    pending = job is not None and not job.done

    @st.fragment(run_every=SCORE_POLL_S if pending else None)
    def tiles() -> None:
        waiting = set(run.pending_metrics)
        items = []
        previous = previous_run(run)
        for key, (label, fmt, help) in METRIC_LABELS.items():
            if key in run.metrics:
                help = f"{help}. {proxy_note(key, run.config.ipc)}" if key in PROXY_SCORES else help
                items.append((label, fmt.format(run.metrics[key]), help, metric_delta(key, run, previous)))
            elif key in waiting:
                error = job.error if job is not None else None
                items.append((label, "failed" if error else "computing…", f"{help} ({error})" if error else help,
                              None))
        items.append(("Time (distil + score)", f"{run.seconds:.2f} s", "wall time of this run's distillation and the "
                      "scores shown with its images" + (" (the teacher's scores and W2 follow in the background)"
                                                        if job is not None else ""), None))
        cols = st.columns(columns)
        for k, (label, value, help, delta) in enumerate(items):
            cols[k % columns].metric(label, value, delta=delta, help=help,
                                     delta_color="inverse" if label in LOWER_IS_BETTER else "normal")
        if pending and job.done:
            st.rerun()   # the scores are in: redraw the page once, now without the timer

    tiles()


def job_progress(job, label: str, cancel_key: str) -> bool:
    """A background job (``core.studio.jobs.BackgroundJob``) as a page shows it, inside an ``st.fragment`` that
    refreshes while it runs. Running: its progress bar (``label``: message, elapsed, ETA) and a Cancel button,
    then True. Done: the first time a page draws it since, the whole page is drawn again (its results are
    new), then False (the caller shows the outcome)."""
    if not job.done:
        eta = f", about {job.eta:.0f} s left" if job.eta is not None else ""
        st.progress(min(1.0, job.fraction), text=f"{label}: {job.message} ({job.elapsed:.0f} s{eta})")
        st.button("Cancel", on_click=job.cancel, key=cancel_key)
        return True
    shown = f"{cancel_key}:shown"
    if st.session_state.get(shown) is not job:
        st.session_state[shown] = job
        st.rerun()
    return False
