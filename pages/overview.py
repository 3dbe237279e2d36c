"""Overview page: the embedded dataset and samples of the flow model. Thin: widgets -> core -> pictures."""
import numpy as np
import streamlit as st
import torch

from core.assets import ModelSpec, load_flow_for, load_vae
from core.data import load_fashion_mnist
from core.flow import sample_flow
from core.visualize import image_grid


@st.cache_resource(show_spinner="Loading Fashion-MNIST…")
def dataset(split: str):
    return load_fashion_mnist(split)


@st.cache_resource(show_spinner="Loading the embedded VAE and flow model…")
def models():
    spec = ModelSpec()
    vae = load_vae(spec)
    flow = load_flow_for(spec, vae.latent_shape(32), 10)
    return vae, flow


@st.cache_data(show_spinner="Sampling…", max_entries=32)
def generated_grid(classes: tuple[int, ...], per_class: int, steps: int, cfg: float, seed: int) -> np.ndarray:
    vae, flow = models()
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return image_grid(vae.decode(sample_flow(flow, labels, steps=steps, cfg_scale=cfg, seed=seed)), per_class)


st.title("Distill Studio")
st.caption("Generative dataset distillation in a VAE latent space — embedded default: Fashion-MNIST.")
train = dataset("train")
names = list(train.class_names)
with st.sidebar:
    st.header("Dataset")
    chosen = st.multiselect("Classes", names, default=names, key="classes")
    per_class = st.slider("Images per class", 1, 16, 8, key="per_class")
    st.header("Flow sampler")
    steps = st.slider("Euler steps", 1, 50, 10, key="steps")
    cfg = st.slider("CFG scale", 1.0, 6.0, 2.0, 0.5, key="cfg")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="seed")

if not chosen:
    st.info("Pick at least one class in the sidebar.")
    st.stop()
ids = [names.index(c) for c in chosen]
st.write(f"**{train.name}**: {len(train):,} images, {train.num_classes} classes, "
         f"{train.image_shape[0]}×{train.image_shape[1]}×{train.image_shape[2]} (padded 28→32), values in [-1, 1].")
left, right = st.columns(2)
with left:
    st.subheader("Real images")
    rng = np.random.default_rng(int(seed))
    picks = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), per_class, replace=False) for c in ids])
    st.image(image_grid(train.batch(picks), per_class), caption=", ".join(chosen), width="stretch", clamp=True)
with right:
    st.subheader("Flow-model samples")
    grid = generated_grid(tuple(ids), per_class, steps, float(cfg), int(seed))
    st.image(grid, caption=f"{steps} Euler steps, CFG {cfg}, seed {seed}", width="stretch", clamp=True)
