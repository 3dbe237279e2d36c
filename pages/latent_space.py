"""Latent space: real latents (a per-class subsample) in 2-D, prototypes sized by their DDOQ weight and
the synthetic samples on top; lasso or box selection chooses samples for export."""
import streamlit as st

from core.studio.figures import latent_scatter
from core.studio.selection import ids_from_plot_selection
from ui import state
from ui.frame import page_frame
from ui.projection import get_projection, run_points, umap_job
from ui.widgets import require_run

studio, _ = page_frame()
run = require_run()
st.title("Latent space")
projection, note = get_projection(studio, st.session_state.get("projection", "PCA"))
if note:
    @st.fragment(run_every=2.0)
    def umap_progress() -> None:
        job = umap_job(studio)
        if job.done:
            st.rerun(scope="app")
        st.progress(job.fraction, text=f"UMAP: {job.message} ({job.elapsed:.0f} s)")

    st.info(note)
    umap_progress()

synth_xy, proto_xy = run_points(projection, run)
names = run.dset.class_names
fig = latent_scatter(projection.coords, projection.reference_labels, names, synth_xy, run.dset.labels, proto_xy,
                     run.dset.weights, state.selected_ids(),
                     title=f"{projection.method.upper()} of {len(projection.coords):,} real latents · run {run.run_id}",
                     axis_titles=projection.axis_titles())
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("lasso", "box", "points"),
                        key=f"latent_scatter_{run.run_id}", width="stretch")
picked = ids_from_plot_selection(event, len(run.dset))
left, right = st.columns(2)
if picked != st.session_state.get("lasso_seen"):  # act on a new selection only, not on one already applied
    st.session_state["lasso_seen"] = picked
    if picked:
        state.set_selected(picked)
        st.rerun()
left.write(f"**Selected:** {len(state.selected_ids())} samples (lasso/box on the synthetic points; "
           "the Export page writes them).")
if right.button("Clear selection", disabled=not state.selected_ids()):
    state.set_selected([])
    st.rerun()
uniform = bool((run.dset.weights == run.dset.weights[0]).all())
st.caption("Faint dots: real latents coloured by class. Diamonds: prototypes, area ∝ DDOQ weight"
           + (f" (this {run.config.method} set's weights are all equal, so every diamond has the same size; "
              "ddoq gives each image its k-means cell's mass)" if uniform else "")
           + ". Circles: synthetic samples (ringed when selected).")
