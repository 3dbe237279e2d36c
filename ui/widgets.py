"""Small page building blocks shared by several pages."""
from __future__ import annotations

import streamlit as st

from core.studio.session import Run
from ui import state

METRIC_LABELS = {
    "mode_coverage": ("Mode coverage", "{:.0%}"), "precision": ("Precision", "{:.3f}"),
    "recall": ("Recall", "{:.3f}"), "density": ("Density", "{:.3f}"), "coverage": ("PRDC coverage", "{:.3f}"),
    "w2_latent_mean": ("W2 (latent)", "{:.3f}"), "landing_error_mean": ("Landing error", "{:.4f}"),
    "diversity_latent": ("Diversity (latent)", "{:.2f}"), "nfe_per_image": ("NFE per image", "{}"),
}


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


def metric_panel(run: Run, columns: int = 1) -> None:
    """The run's metrics (DESIGN.md section 4) as st.metric tiles."""
    items = [(label, fmt.format(run.metrics[key])) for key, (label, fmt) in METRIC_LABELS.items() if key in run.metrics]
    items.append(("Time (distil + score)", f"{run.seconds:.2f} s"))
    cols = st.columns(columns)
    for k, (label, value) in enumerate(items):
        cols[k % columns].metric(label, value)
