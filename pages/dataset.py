"""Dataset: what the embedded default holds, with real images per class."""
import numpy as np
import streamlit as st

from core.visualize import image_grid
from ui.frame import page_frame

studio, _ = page_frame()
data = studio.engine.dataset
st.title("Dataset")
st.write(f"**{data.name}**: {len(data):,} training images, {data.num_classes} classes, "
         f"{'×'.join(map(str, data.image_shape))} (padded 28→32), values in [-1, 1]; latents "
         f"{'×'.join(map(str, studio.engine.latents.latent_shape))} from the shipped VAE.")
per_class = st.slider("Images per class", 4, 24, 12, key="dataset_per_class")
rng = np.random.default_rng(int(st.session_state.get("seed", 0)))
counts = np.bincount(data.labels, minlength=data.num_classes)
for c, name in enumerate(data.class_names):
    picks = rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False)
    st.image(image_grid(data.batch(picks), per_class), caption=f"{name} ({counts[c]:,} images)", width="stretch",
             clamp=True)
