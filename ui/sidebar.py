"""The shared sidebar: dataset and models, classes, IPC, method and the sampler/guidance knobs.

Every page renders it (through ``ui.frame.page_frame``); values live in session state and survive page
changes.
Returns (DistillConfig, None), or (None, message) when the combination is invalid: the message is shown
beside the widget it concerns (classes, IPC) or at the top of the Distillation section, and the page frame
adds a banner on the main page.
"""
from __future__ import annotations

import math

import streamlit as st

from core.config import (
    DEFAULT_PGFM_GUIDANCE,
    DIFFUSION_METHODS,
    RECOMMENDED_REFINE,
    REFINE_EMBEDDINGS,
    REFINE_OBJECTIVES,
    REFINE_PRESETS,
    REFINE_SPACES,
    FLOW_METHODS,
    METHODS,
    SAMPLER_DTYPES,
    SCHEDULES,
    SOLVERS,
    DiffusionSamplerConfig,
    DistillConfig,
    SamplerConfig,
    distill_config,
)
from core.device import fast_model_dtype
from core.studio.data_root import confine
from core.studio.session import Studio
from ui.widgets import keep_values

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
            "diffusion_steps": DiffusionSamplerConfig().steps, "seed": 0, "projection": "PCA", "auto_apply": True,
            "cell_offset": 0.0, "prototypes_per_class": 0, "dtype": fast_model_dtype(), "refine_preset": "none",
            "refine_iterations": REFINE_PRESETS[RECOMMENDED_REFINE].iterations, "refine_objective": "preset",
            "refine_embedding": "preset", "refine_space": "preset"}
REFINE_HELP = {"none": "off", "tdm": "teacher-feature MMD (recommended)", "dm": "random-network DM"}
# The widgets' ranges and choices: the sidebar draws them, and values in the page's address are held to them.
RANGES = {"ipc": (0, 100_000), "guidance": (0.0, 1.5), "t_start": (0.0, 1.0), "t_stop": (0.0, 1.0), "t0": (0.0, 0.95),
          "trust_radius": (0.0, 2.0), "prototypes_per_class": (0, 100_000), "cell_offset": (0.0, 1.0),
          "steps": (1, 64), "cfg_scale": (1.0, 6.0), "diffusion_steps": (2, 100), "seed": (0, 2**31 - 1),
          "refine_iterations": (10, 600)}
CHOICES = {"method": METHODS, "schedule": SCHEDULES, "solver": SOLVERS, "dtype": SAMPLER_DTYPES,
           "projection": ("PCA", "UMAP"), "refine_preset": ("none", *REFINE_PRESETS),
           "refine_objective": ("preset", *REFINE_OBJECTIVES), "refine_embedding": ("preset", *REFINE_EMBEDDINGS),
           "refine_space": ("preset", *REFINE_SPACES)}

EMBEDDED, FOLDER, CUSTOM = "Fashion-MNIST (embedded)", "Model folder (prepare)", "Latent store + models"
SOURCE_DEFAULTS = {"data_source": EMBEDDED, "model_folder": "", "store_dir": "", "image_root": "", "vae_ref": "", "flow_ref": "",
                   "flow_convention": "sit", "flow_class_map": "", "flow_num_heads": 0}


def render_source() -> dict | None:
    """Dataset and models: the embedded default, a model folder (``python -m core prepare ROOT --out
    models/NAME``: its ImageFolder dataset with every model, so every page works), or a latent store
    (``python -m core encode --store``) with a VAE and a flow model given by reference. Returns the applied
    source (None: embedded)."""
    keep_values(SOURCE_DEFAULTS)
    with st.sidebar:
        st.header("Data and models")
        choice = st.radio("Dataset", (EMBEDDED, FOLDER, CUSTOM), key="data_source",
                          help="The embedded default: Fashion-MNIST with the shipped VAE, flow, diffusion and teacher. "
                               "A model folder: your ImageFolder dataset and the models `prepare` made for it.")
        if choice == EMBEDDED:
            st.session_state["source"] = None
        elif choice == FOLDER:
            st.text_input("Model folder", key="model_folder", placeholder="models/NAME",
                          help="written by `python -m core prepare ROOT --out models/NAME`")
            if st.button("Load", key="load_folder", disabled=not st.session_state.model_folder.strip()):
                _apply_source(lambda: {"model_folder": confine(st.session_state.model_folder, "Model folder")})
        else:
            st.text_input("Latent store folder", key="store_dir", help="written by `python -m core encode --store`")
            st.text_input("Its ImageFolder (optional)", key="image_root", help="real images, for the random method")
            st.text_input("VAE (folder or diffusers id)", key="vae_ref")
            st.text_input("Flow model (project folder, diffusers DiT folder, SiT .pt / .safetensors)", key="flow_ref")
            st.selectbox("Flow convention", ("sit", "diffusers-flow", "ddpm-eps", "distill-studio"),
                         key="flow_convention")
            st.text_input("Flow class map (model class id per data class, comma-separated; optional)",
                          key="flow_class_map")
            st.number_input("Flow attention heads (0: from the preset or file)", 0, 64, step=1, key="flow_num_heads",
                            help="only for a SiT whose width matches no preset")
            if st.button("Load", key="load_source"):
                _apply_source(_custom_source)
    return st.session_state.get("source")


def _custom_source() -> dict:
    """The latent store and model references of the sidebar's fields, each confined to the data root
    (core.studio.data_root; the VAE and the flow may be hub ids where the server allows them)."""
    s = st.session_state
    optional = (lambda text, field, hub=False: confine(text, field, hub) if text.strip() else None)
    return {"models": {"vae": confine(s.vae_ref, "VAE", hub=True), "flow": optional(s.flow_ref, "Flow model", True),
                       "diffusion": None, "flow_convention": s.flow_convention,
                       "flow_class_map": s.flow_class_map.strip() or None, "flow_num_heads": int(s.flow_num_heads) or None},
            "latent_store": confine(s.store_dir, "Latent store folder"),
            "data_dir": optional(s.image_root, "Its ImageFolder")}


def _apply_source(make_source) -> None:
    """Use the source ``make_source`` builds, or show its one-line refusal and keep the current one."""
    try:
        st.session_state["source"] = make_source()
    except ValueError as exc:
        st.error(f"Not loaded: {exc}.")


def _address_value(key: str, raw: str):
    """The value of ``key`` in the page's address, held to its widget's type, range and choices (ValueError
    naming what is allowed otherwise)."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        if raw not in ("0", "1"):
            raise ValueError("0 or 1")
        return raw == "1"
    if key in CHOICES:
        if raw not in CHOICES[key]:
            raise ValueError(f"one of {', '.join(CHOICES[key])}")
        return raw
    low, high = RANGES[key]
    kind = "a whole number" if isinstance(default, int) else "a number"
    try:
        value = type(default)(raw)
    except ValueError:
        raise ValueError(f"{kind} from {low:g} to {high:g}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{kind} from {low:g} to {high:g}")
    return value


def _address_classes(raw: str, names: list[str]) -> list[str]:
    try:
        ids = [int(i) for i in raw.split(",") if i != ""]
    except ValueError:
        ids = [-1]
    if not ids or any(not 0 <= i < len(names) for i in ids):
        raise ValueError(f"class ids from 0 to {len(names) - 1}, comma-separated")
    return [names[i] for i in ids]


def restore_from_url(names: list[str]) -> list[str]:
    """Once per browser session: the sidebar settings that the page's address carries (``st.query_params``,
    written by ``settings_to_url``), so a link or a reload restores them. A value that does not parse or lies
    outside its widget's range is not applied; the returned list names each (``steps=100000: ...``)."""
    state, params = st.session_state, st.query_params
    if state.get("url_restored"):
        return []
    state["url_restored"] = True
    refused = []
    for key in [*DEFAULTS, "classes"]:
        if key not in params:
            continue
        raw = params[key]
        try:
            if key == "classes":
                state["classes"], state["classes_of"] = _address_classes(raw, names), names
            else:
                state[key] = _address_value(key, raw)
        except ValueError as exc:
            refused.append(f"{key}={raw[:40]} (allowed: {exc})")
    return refused


def settings_to_url(names: list[str]) -> None:
    """Write the sidebar settings into the page's address (only those that differ from the defaults)."""
    state = st.session_state
    values = {k: ("1" if state[k] else "0") if isinstance(v, bool) else str(state[k])
              for k, v in DEFAULTS.items() if state.get(k) != v}
    if state.get("classes") != names:
        values["classes"] = ",".join(str(names.index(c)) for c in state.get("classes", []))
    if dict(st.query_params) != values:
        st.query_params.from_dict(values)


def refine_widgets(generator: bool) -> None:
    """The refinement of a generated set: a named preset and what may be changed of it. A refined set is made by a
    background job of the session (progress, cancel) and becomes a new run when it is done."""
    with st.expander("Refinement (runs in the background)", expanded=st.session_state.get("refine_preset") != "none"):
        st.selectbox("Refine the set", CHOICES["refine_preset"], key="refine_preset", disabled=not generator,
                     format_func=lambda p: f"{p} — {REFINE_HELP[p]}",
                     help="after sampling, move the images toward the real images' distribution in an embedding "
                          "(distribution matching); tdm: the teacher's features with an MMD term, the project's "
                          "best recipe; takes tens of seconds, in the background, then becomes a new run")
        off = not generator or st.session_state.get("refine_preset") == "none"
        st.slider("Refinement iterations", *RANGES["refine_iterations"], step=10, key="refine_iterations",
                  disabled=off, help="optimisation steps of the refinement (the preset: 150)")
        for key, label, help in (("refine_objective", "Objective", "mean: distance of mean embeddings; mmd: also "
                                  "their spread"),
                                 ("refine_embedding", "Embedding", "teacher: the teacher's features; random: a fresh "
                                  "random ConvNet each step"),
                                 ("refine_space", "Space", "latent: optimise the latents through the decoder; pixel: "
                                  "the images")):
            st.selectbox(label, CHOICES[key], key=key, disabled=off, help=f"{help} (preset: as the preset chooses)")


def refine_options(state) -> dict:
    """The refine options of ``core.config.distill_config`` from the sidebar (none when the refinement is off)."""
    if state.refine_preset == "none":
        return {}
    chosen = {k: state[k] for k in ("refine_objective", "refine_embedding", "refine_space") if state[k] != "preset"}
    return {"refine_preset": state.refine_preset, "refine": int(state.refine_iterations), **chosen}


def render(studio: Studio) -> tuple[DistillConfig | None, str | None]:
    names = list(studio.engine.latents.class_names)
    state = st.session_state
    refused = restore_from_url(names)
    if refused:   # the page frame shows them in its banner too
        state["address_refused"] = "; ".join(refused)
    keep_values({**DEFAULTS, "classes": names})
    if state.get("classes_of") != names:   # a new dataset: all its classes (an empty pick stays empty otherwise)
        state["classes"], state["classes_of"] = names, names
    state["classes"] = [c for c in state["classes"] if c in names]
    settings_to_url(names)
    with st.sidebar:
        st.caption(f"{len(studio.engine.latents):,} training latents "
                   f"{'×'.join(map(str, studio.engine.latents.latent_shape))} · {len(names)} classes"
                   + ("" if studio.teacher else " · no teacher for this data: latent scores only"))
        st.header("Distillation")
        if refused:
            st.warning(f"Not applied from the address: {'; '.join(refused)}.")
        st.toggle("Apply changes at once", key="auto_apply",
                  help="off: change several settings, then press Apply settings for one run (each run takes a "
                       "second or more)")
        top = st.empty()   # errors that no single widget owns appear here, without scrolling
        chosen = st.multiselect("Classes", names, key="classes", help="the classes to distil (at least one)")
        if not chosen:
            st.error("Pick at least one class.")
        st.number_input("IPC (images per class)", *RANGES["ipc"], step=1, key="ipc",
                        help="synthetic images per class (≥ 1, at most the class's training images)")
        ipc_error = st.empty()
        method = st.selectbox("Method", CHOICES["method"], key="method", format_func=lambda m: f"{m} — {METHOD_HELP[m]}",
                              help="how the synthetic images are made (DESIGN.md section 3)")
        flow, pgfm = method in FLOW_METHODS, method == "pgfm"
        generator = flow or method in DIFFUSION_METHODS
        with st.expander("PGFM guidance", expanded=pgfm):
            st.slider("Guidance λ", *RANGES["guidance"], step=0.05, key="guidance", disabled=not pgfm,
                      help="strength of the pull toward the assigned prototype (0 = unguided flow); higher = "
                           "samples land closer to their prototypes")
            st.selectbox("Schedule λ(t)", CHOICES["schedule"], key="schedule", disabled=not pgfm,
                         help="how λ varies inside the guidance window: constant, or decaying linearly / as a cosine")
            st.slider("Guidance starts at t", *RANGES["t_start"], step=0.05, key="t_start", disabled=not pgfm,
                      help="time at which guidance switches on (t = 0 noise, t = 1 data)")
            st.slider("Guidance stops at t", *RANGES["t_stop"], step=0.05, key="t_stop", disabled=not pgfm,
                      help="time after which the flow runs unguided (earlier = more diversity kept)")
            st.slider("Warm start t₀", *RANGES["t0"], step=0.05, key="t0", disabled=not pgfm,
                      help="start the ODE at t₀ from the prototype mixed with noise instead of pure noise (0 = off)")
            st.slider("Trust radius r (0 = none)", *RANGES["trust_radius"], step=0.05, key="trust_radius", disabled=not pgfm,
                      help="caps the guidance step at r latent RMS units")
            st.number_input("Prototypes per class (0 = IPC)", *RANGES["prototypes_per_class"], step=1, key="prototypes_per_class",
                            disabled=not pgfm, help="fewer prototypes than IPC: each gets several samples, as many as "
                                                    "its k-means cell's share of the class (0: one per sample)")
            st.slider("Target inside the cell", *RANGES["cell_offset"], step=0.05, key="cell_offset", disabled=not pgfm,
                      help="0: guide to the k-means centroid; 1: to a random real latent of the centroid's cell "
                           "(more diversity at high IPC); in between: the point that far along")
        with st.expander("Sampler", expanded=flow):
            st.selectbox("Solver", CHOICES["solver"], key="solver", disabled=not flow,
                         help="ODE integrator: euler (1 NFE per step), heun / midpoint (2), rk4 (4)")
            st.slider("Steps", *RANGES["steps"], key="steps", disabled=not flow,
                      help="ODE steps from noise to data; more = closer to the exact flow, slower")
            st.slider("CFG scale", *RANGES["cfg_scale"], step=0.25, key="cfg_scale", disabled=not generator,
                      help="classifier-free guidance of the flow or the diffusion model")
            st.slider("Diffusion DDIM steps", *RANGES["diffusion_steps"], key="diffusion_steps", disabled=not method.startswith("diffusion"),
                      help="denoising steps of the diffusion counterpart (1 NFE each)")
            st.selectbox("Model precision", CHOICES["dtype"], key="dtype", disabled=not generator,
                         help="precision of the generator's forward passes (the ODE state stays float32): bfloat16 "
                              "halves a step where the CPU has native bf16 (the default there); float32 is the "
                              "CLI's default, so pick it to get the CLI's images bit for bit")
        refine_widgets(generator)
        st.number_input("Seed", *RANGES["seed"], step=1, key="seed",
                        help="seeds k-means, the noise and the real picks: the same seed gives the same set")
        st.header("View")
        st.radio("Projection", CHOICES["projection"], horizontal=True, key="projection",
                 help="UMAP is fitted once per dataset and VAE (first time ~2 min); PCA is shown meanwhile.")
        if not chosen:
            return None, "pick at least one class"
        if int(state.ipc) < 1:
            ipc_error.error("IPC must be at least 1.")
            return None, "IPC must be at least 1"
        try:
            config = distill_config({
                "method": method, "ipc": int(state.ipc), "classes": tuple(names.index(c) for c in chosen),
                "seed": int(state.seed), "guidance": state.guidance, "schedule": state.schedule,
                "t_start": state.t_start, "t_stop": state.t_stop, "trust_radius": state.trust_radius or None,
                "t0": state.t0, "cell_offset": state.cell_offset, "prototypes_per_class": int(state.prototypes_per_class) or None,
                "solver": state.solver, "steps": int(state.steps),
                "cfg_scale": float(state.cfg_scale),
                "diffusion_steps": int(state.diffusion_steps), "dtype": state.dtype,
                **(refine_options(state) if generator else {})})
        except ValueError as exc:
            top.error(f"Not run: {exc}.")
            return None, str(exc)
        try:
            studio.engine.check(config)
        except ValueError as exc:   # the data cannot give this IPC / these classes
            ipc_error.error(f"Not run: {exc}.")
            return None, str(exc)
    return config, None
