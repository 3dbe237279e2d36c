"""What every page starts with: the shared resources, the shared sidebar and the current run."""
from __future__ import annotations

import streamlit as st

from core.studio.data_root import redact
from core.studio.session import Run, Studio
from ui import sidebar, state
from ui.projection import autostart_umap
from ui.widgets import job_progress


def refining(job) -> None:
    """The session's refinement job, while it runs: progress, ETA and Cancel, refreshed every second; when it is
    done the page is drawn again, and the refined set becomes the current run."""
    if job is None or (job.done and st.session_state.get("refine_cancel:shown") is job):
        return

    @st.fragment(run_every=1.0)
    def status() -> None:
        job_progress(job, "Refining the set (it becomes a new run when done)", "refine_cancel")
    status()


def page_frame() -> tuple[Studio, Run | None]:
    """Load (once) the studio, render the sidebar, (re)run the distillation if its settings changed.
    A bad combination shows an inline error and the last good run stays current."""
    source = sidebar.render_source()
    try:
        studio = state.get_studio(source)
    except Exception as exc:  # bad references or a foreign store: say so, fall back to the embedded default
        st.sidebar.error(f"Could not load that dataset and models: {redact(str(exc))}")
        st.session_state["source"] = None
        studio = state.get_studio(None)
    studio = state.session_studio(studio)
    for warning in studio.warnings:
        st.sidebar.warning(warning)
    config, error = sidebar.render(studio)
    auto = st.session_state.get("auto_apply", True)
    apply = auto or st.session_state.pop("apply_now", False)
    run, run_error = state.update_run(studio, config, apply)
    if not auto and state.pending_changes(studio, config):
        st.sidebar.button("Apply settings", type="primary", key="apply_settings",
                          on_click=lambda: st.session_state.update(apply_now=True),
                          help="run the distillation with the settings above (one run for all the changes)")
        st.info("Settings changed: press **Apply settings** in the sidebar to run them.")
    refining(st.session_state.get("refine_job"))
    autostart_umap(studio)   # after the first run, so fitting UMAP does not delay the first page
    if run_error:
        st.sidebar.error(f"Not run: {run_error}.")
    error = error or run_error
    refused = st.session_state.get("address_refused")   # until another run replaces the address's (ui.state)
    if refused:
        error = f"{error}; " if error else ""
        error += f"values in the page's address outside what the sidebar allows ({refused})"
    if error:
        shown = f"showing run {run.run_id}" if run is not None else "nothing to show yet"
        st.warning(f"Your settings were not applied: {error}. The page is {shown}, the last good result.",
                   icon="⚠️")
    return studio, run
