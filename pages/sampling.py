"""Sampling: the synthetic images grouped by class, each beside its decoded prototype, and the metrics.
Clicking an image's pill under its class toggles it in the selection that the Export page writes."""
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
pill_keys = {c: f"pills_{run.run_id}_{c}" for c in classes}


def sync_selection() -> None:
    state.set_selected([i for key in pill_keys.values() for i in st.session_state.get(key) or []])


st.title("Sampling")
st.caption(f"Run {run.run_id}: **{run.config.method}**, IPC {run.config.ipc}. Each pair: the synthetic image (left) "
           "and its prototype decoded by the VAE (right). Pills: sample id · landing error ‖x₁ − p‖ (latent RMS "
           "units); click to select for export.")
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
    pairs = dset.images if run.prototype_images is None else torch.cat([dset.images, run.prototype_images], dim=3)
    for c in classes:
        ids = np.flatnonzero(dset.labels == c)
        coverage = "" if run.coverage is None else f" · mode coverage {100 * run.coverage.per_class[c]:.0f}%"
        st.markdown(f"**{names[c]}**{coverage}")
        st.image(image_grid(pairs[torch.from_numpy(ids)], per_row, pad=4), width="stretch", clamp=True)
        st.session_state[pill_keys[c]] = [int(i) for i in ids if int(i) in selected]
        st.pills(f"select {names[c]}", [int(i) for i in ids], selection_mode="multi", key=pill_keys[c],
                 on_change=sync_selection, label_visibility="collapsed",
                 format_func=lambda i: f"#{i}" + ("" if np.isnan(dset.landing_error[i]) else f" · {dset.landing_error[i]:.2f}"))
