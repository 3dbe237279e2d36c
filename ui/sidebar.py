"""The shared sidebar: dataset and models, classes, IPC, method and the sampler/guidance knobs.

Every page renders it (through ``ui.frame.page_frame``); values live in session state and survive page
changes.
Returns a DistillConfig, or None with an inline error when the combination is invalid.
"""
from __future__ import annotations

import streamlit as st

from core.diffusion import DiffusionSamplerConfig
from core.guidance import SCHEDULES, GuidanceConfig
from core.pipeline import DEFAULT_PGFM_GUIDANCE, METHODS, DistillConfig
from core.sampling import SamplerConfig
from core.solvers import SOLVERS
from core.studio import Studio

METHOD_HELP = {
    "random": "random real images", "d4m": "k-means centroids decoded by the VAE",
    "ddoq": "centroids decoded through the flow, weighted by cell mass", "fm": "unguided flow samples",
    "pgfm": "flow samples guided to the prototypes", "diffusion-d4m": "diffusion counterpart, warm start",
    "diffusion-mg": "diffusion counterpart, mode guidance",
}
DEFAULTS = {"method": "pgfm", "ipc": 10, "guidance": DEFAULT_PGFM_GUIDANCE.strength,
            "schedule": DEFAULT_PGFM_GUIDANCE.schedule, "t_start": DEFAULT_PGFM_GUIDANCE.t_start,
            "t_stop": DEFAULT_PGFM_GUIDANCE.t_stop, "t0": 0.0, "trust_radius": 0.0, "solver": "euler",
            "steps": SamplerConfig().steps, "cfg_scale": SamplerConfig().cfg_scale,
            "diffusion_steps": DiffusionSamplerConfig().steps, "seed": 0, "projection": "PCA"}


def render(studio: Studio) -> DistillConfig | None:
    names = list(studio.engine.latents.class_names)
    state = st.session_state
    # Each page renders this sidebar, so its widgets belong to that page; re-assigning their values keeps
    # them when the user switches pages (Streamlit otherwise resets a widget it has not seen on this page).
    for key, value in {**DEFAULTS, "classes": names}.items():
        state[key] = state.get(key, value)
    with st.sidebar:
        st.header("Data and models")
        st.selectbox("Dataset", ["Fashion-MNIST (embedded)"], key="dataset",
                     help="The embedded default: Fashion-MNIST with the shipped VAE, flow, diffusion and teacher.")
        st.caption(f"{len(studio.engine.dataset):,} training images · latents "
                   f"{'×'.join(map(str, studio.engine.latents.latent_shape))}")
        st.header("Distillation")
        chosen = st.multiselect("Classes", names, key="classes")
        st.number_input("IPC (images per class)", min_value=1, max_value=100_000, step=1, key="ipc")
        method = st.selectbox("Method", METHODS, key="method", format_func=lambda m: f"{m} — {METHOD_HELP[m]}")
        flow, pgfm = method in ("ddoq", "fm", "pgfm"), method == "pgfm"
        with st.expander("PGFM guidance", expanded=pgfm):
            st.slider("Guidance λ", 0.0, 1.5, step=0.05, key="guidance", disabled=not pgfm)
            st.selectbox("Schedule λ(t)", SCHEDULES, key="schedule", disabled=not pgfm)
            st.slider("Guidance starts at t", 0.0, 1.0, step=0.05, key="t_start", disabled=not pgfm)
            st.slider("Guidance stops at t", 0.0, 1.0, step=0.05, key="t_stop", disabled=not pgfm)
            st.slider("Warm start t₀", 0.0, 0.95, step=0.05, key="t0", disabled=not pgfm)
            st.slider("Trust radius r (0 = none)", 0.0, 2.0, step=0.05, key="trust_radius", disabled=not pgfm,
                      help="caps the guidance step at r latent RMS units")
        with st.expander("Sampler", expanded=flow):
            st.selectbox("Solver", SOLVERS, key="solver", disabled=not flow)
            st.slider("Steps", 1, 64, key="steps", disabled=not flow)
            st.slider("CFG scale", 1.0, 6.0, step=0.25, key="cfg_scale", disabled=not flow)
            st.slider("Diffusion DDIM steps", 2, 100, key="diffusion_steps", disabled=not method.startswith("diffusion"))
        st.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="seed")
        st.header("View")
        st.radio("Projection", ("PCA", "UMAP"), horizontal=True, key="projection",
                 help="UMAP is fitted once per dataset and VAE (first time ~2 min); PCA is shown meanwhile.")
        if not chosen:
            st.error("Pick at least one class.")
            return None
        try:
            guidance = GuidanceConfig(strength=state.guidance, schedule=state.schedule, t_start=state.t_start,
                                      t_stop=state.t_stop, trust_radius=state.trust_radius or None)
            sampler = SamplerConfig(solver=state.solver, steps=int(state.steps), cfg_scale=float(state.cfg_scale),
                                    guidance=guidance, t0=state.t0)
            config = DistillConfig(method=method, ipc=int(state.ipc), classes=tuple(names.index(c) for c in chosen),
                                   seed=int(state.seed), sampler=sampler,
                                   diffusion=DiffusionSamplerConfig(steps=int(state.diffusion_steps)))
            studio.engine.check(config)
        except ValueError as exc:
            st.error(f"Not run: {exc}. The pages keep showing the last good result.")
            return None
    return config
