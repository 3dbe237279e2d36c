"""Dataset: what the current data holds, with real images per class."""
import numpy as np
import streamlit as st

from core.data.visualize import image_grid
from core.errors import DistillError
from ui.frame import page_frame

studio, _ = page_frame()
data = studio.engine.dataset
st.title("Dataset")
st.write(f"**{data.name}**: {len(data):,} training images, {data.num_classes} classes, "
         f"{'×'.join(map(str, data.image_shape))}, values in [-1, 1]; latents "
         f"{'×'.join(map(str, studio.engine.latents.latent_shape))}.")
per_class = st.slider("Images per class", 4, 24, 12, key="dataset_per_class")
rng = np.random.default_rng(int(st.session_state.get("seed", 0)))
counts = np.bincount(data.labels, minlength=data.num_classes)
try:
    for c, name in enumerate(data.class_names):
        picks = np.sort(rng.choice(np.flatnonzero(data.labels == c), min(per_class, int(counts[c])), replace=False))
        st.image(image_grid(data.batch(picks), per_class), caption=f"{name} ({counts[c]:,} images)", width="stretch",
                 clamp=True)
except (DistillError, OSError, ValueError) as exc:
    st.info(f"The real images are not readable here: {exc}")
