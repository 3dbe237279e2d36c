"""Trajectories: selected samples' paths from noise (t = 0) to their endpoint (t = 1) in the 2-D projection,
as states x_t or as predicted endpoints x̂₁, with prototypes marked; decoded x̂₁ along one path; and the
distance of x̂₁ to the prototype against t for every sample."""
import numpy as np
import streamlit as st
import torch

from core.data.visualize import image_grid
from core.studio.figures import distance_to_prototype, trajectory_figure
from ui import state
from ui.frame import page_frame
from ui.projection import get_projection
from ui.widgets import require_run

studio, _ = page_frame()
run = require_run()
st.title("Trajectories")
traj = run.dset.trajectories
if traj is None:
    st.info(f"Method **{run.config.method}** has no flow trajectories; pick fm, pgfm or ddoq in the sidebar.")
    st.stop()
dset, names = run.dset, run.dset.class_names
default = state.selected_ids()[:12] or [int(np.flatnonzero(dset.labels == c)[0]) for c in dict.fromkeys(dset.labels.tolist())]
left, right = st.columns([3, 1])
chosen = left.multiselect("Samples", list(range(len(dset))), default=[i for i in default if i < len(dset)],
                          format_func=lambda i: f"#{i} {names[dset.labels[i]]}", key=f"traj_samples_{run.run_id}")
view = right.radio("Draw", ("states x_t", "predicted endpoints x̂₁"), key="traj_view")
# Paths are drawn in PCA even when UMAP is picked: UMAP can only place a new point near the real latents it
# was fitted on, so noise states (t near 0) would land at their nearest real latent, which means nothing.
projection, _ = get_projection(studio, "PCA")
if st.session_state.get("projection") == "UMAP":
    st.caption("Paths are drawn in PCA: UMAP would put the noise states at their nearest real latents, which says "
               "nothing about where they are.")
times = traj.times.numpy()
if chosen:
    idx = torch.tensor(chosen)
    if view.startswith("states"):
        path = traj.states[:, idx]                                          # (S+1, B, ...)
    else:
        path = torch.cat([traj.endpoints[:, idx], traj.states[-1:, idx]])  # x̂₁ at each step, then x₁
    steps, count = path.shape[:2]
    xy = projection.transform(path.flatten(0, 1)).reshape(steps, count, 2)
    protos = None if dset.prototypes is None else projection.transform(dset.prototypes[idx])
    st.plotly_chart(trajectory_figure(xy, dset.labels[chosen], chosen, names, protos,
                                      title=f"{view} from t = {times[0]:g} (noise) to t = 1 · {projection.method.upper()}",
                                      axis_titles=projection.axis_titles()),
                    width="stretch", key="traj_fig")
    strip_id = st.selectbox("Decoded x̂₁ along the path of", chosen, format_func=lambda i: f"#{i} {names[dset.labels[i]]}")
    frames = torch.cat([traj.endpoints[:, strip_id], traj.states[-1:, strip_id]])
    if dset.prototypes is not None:
        frames = torch.cat([frames, dset.prototypes[strip_id:strip_id + 1]])
    strip = image_grid(studio.engine.vae.decode(frames), len(frames))
    labels = [f"t={t:.2f}" for t in times[:-1]] + ["x₁"] + (["prototype"] if dset.prototypes is not None else [])
    st.image(strip, caption=" · ".join(labels), width="stretch", clamp=True)
else:
    st.info("Pick samples to draw their paths.")
if dset.prototypes is not None:
    distance = np.concatenate([traj.endpoint_distance.numpy(), dset.landing_error[None]])
    guidance = run.config.sampler.guidance
    window = (guidance.t_start, guidance.t_stop) if run.config.method == "pgfm" and guidance.strength > 0 else None
    st.plotly_chart(distance_to_prototype(np.r_[times[:-1], 1.0], distance, dset.labels, names, window=window),
                    width="stretch", key="dist_fig")
else:
    st.caption("Unguided fm samples have no prototype to measure distance to.")
