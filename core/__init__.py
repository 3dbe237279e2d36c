"""Distill Studio core: generative dataset distillation in a VAE latent space (no Streamlit here)."""

__version__ = "0.1.0"
