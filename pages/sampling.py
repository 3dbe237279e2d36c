"""Sampling: the synthetic images grouped by class, each beside its decoded prototype, and the metrics."""
import numpy as np
import streamlit as st

from core.visualize import to_uint8
from ui import state
from ui.frame import page_frame
from ui.widgets import metric_panel, require_run

studio, _ = page_frame()
run = require_run()
dset = run.dset
names = dset.class_names
selected = set(state.selected_ids())


def toggle(sample: int) -> None:
    state.set_selected(sorted(set(state.selected_ids()) ^ {sample}))


st.title("Sampling")
st.caption(f"Run {run.run_id}: **{run.config.method}**, IPC {run.config.ipc}. Each tile: the synthetic image (left) "
           "and its prototype decoded by the VAE (right), with the landing error ‖x₁ − p‖ in latent RMS units. "
           "Tick images to select them for export.")
gallery, side = st.columns([3, 1])
with side:
    metric_panel(run)
    st.write(f"**Selected:** {len(selected)} of {len(dset)}")
    if st.button("Clear selection", disabled=not selected):
        state.set_selected([])
        st.rerun()
with gallery:
    pixels = to_uint8(dset.images)
    protos = to_uint8(run.prototype_images) if run.prototype_images is not None else None
    per_row = st.slider("Tiles per row", 4, 12, 10, key="tiles_per_row")
    for c in dict.fromkeys(dset.labels.tolist()):
        ids = np.flatnonzero(dset.labels == c)
        st.markdown(f"**{names[c]}** — mode coverage {100 * run.coverage.per_class[c]:.0f}%")
        for start in range(0, len(ids), per_row):
            cols = st.columns(per_row)
            for col, i in zip(cols, ids[start:start + per_row]):
                tile = pixels[i] if protos is None else np.concatenate([pixels[i], protos[i]], axis=1)
                landing = dset.landing_error[i]
                caption = f"#{i}" + ("" if np.isnan(landing) else f" · {landing:.3f}")
                col.image(tile, caption=caption, width="stretch", clamp=True)
                key = f"pick_{run.run_id}_{i}"
                st.session_state[key] = int(i) in selected
                col.checkbox("select", key=key, on_change=toggle, args=(int(i),), label_visibility="collapsed")
