"""Sampling: the synthetic images grouped by class, each beside its decoded prototype, and the metrics.
Each row of images has its own pills beneath it, in the same order; clicking one toggles that image in the
selection that the Export page writes."""
import numpy as np
import streamlit as st
import torch

from core.data.visualize import image_grid
from ui import state
from ui.frame import page_frame
from ui.widgets import metric_panel, require_run

studio, _ = page_frame()
run = require_run()
dset = run.dset
names = dset.class_names
classes = list(dict.fromkeys(dset.labels.tolist()))
PAIRS = {"random": "the real training image (left) and its VAE round trip, encode → decode (right)",
         "d4m": None}   # d4m's images are the decoded prototypes themselves: no pair
pair_text = PAIRS.get(run.config.method, "the synthetic image (left) and its assigned prototype (a k-means centroid "
                                         "of the class's latents) decoded by the VAE (right)")
show_pairs = run.prototype_images is not None and pair_text is not None


def sync_selection() -> None:
    keys = [k for k in st.session_state if str(k).startswith(f"pills_{run.run_id}_")]
    state.set_selected([i for key in keys for i in st.session_state.get(key) or []])


st.title("Sampling")
what = (f"Each pair: {pair_text}." if show_pairs else
        "Each image is a k-means centroid decoded by the VAE." if run.config.method == "d4m" else "")
refined = run.config.refine
recipe = (f", refined ({refined.embedding} features, {refined.objective}, {refined.iterations} iterations)"
          if refined.iterations else "")
st.caption(f"Run {run.run_id}: **{run.config.method}**{recipe}, IPC {run.config.ipc}. {what} The pills under each row "
           "name its images left to right: sample id · landing error ‖x₁ − p‖ (latent RMS units); click to select "
           "for export.")
gallery, side = st.columns([3, 1])
selected = set(state.selected_ids())
with side:
    metric_panel(run)
    st.write(f"**Selected:** {len(selected)} of {len(dset)}")
    if st.button("Clear selection", disabled=not selected):
        state.set_selected([])
        st.rerun()
with gallery:
    per_row = st.slider("Pairs per row", 2, 10, 5, key="pairs_per_row")
    pairs = torch.cat([dset.images, run.prototype_images], dim=3) if show_pairs else dset.images
    for c in classes:
        ids = np.flatnonzero(dset.labels == c)
        coverage = "" if run.coverage is None else f" · mode coverage {100 * run.coverage.per_class[c]:.0f}%"
        st.markdown(f"**{names[c]}**{coverage}")
        for start in range(0, len(ids), per_row):   # one image row, then its pills in the same order
            row = ids[start:start + per_row]
            blank = per_row - len(row)               # a short last row keeps the image width of full rows
            tiles = torch.cat([pairs[torch.from_numpy(row)], torch.full((blank, *pairs.shape[1:]), -1.0)]) if blank else \
                pairs[torch.from_numpy(row)]
            st.image(image_grid(tiles, per_row, pad=4), width="stretch", clamp=True)
            key = f"pills_{run.run_id}_{c}" + (f"_{start}" if start else "")
            st.session_state[key] = [int(i) for i in row if int(i) in selected]
            st.pills(f"select {names[c]} {start}", [int(i) for i in row], selection_mode="multi", key=key,
                     on_change=sync_selection, label_visibility="collapsed",
                     format_func=lambda i: f"#{i}" + ("" if np.isnan(dset.landing_error[i]) else f" · {dset.landing_error[i]:.2f}"))
