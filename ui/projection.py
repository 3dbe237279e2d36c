"""2-D projections of the latent space for the app: PCA at once, UMAP fitted once per process in the
background (and cached on disk per dataset + VAE), so pages show PCA until UMAP is ready."""
from __future__ import annotations

import os

import numpy as np
import streamlit as st

from core.config import cache_dir
from core.studio.jobs import BackgroundJob
from core.studio.projection import Projection, ProjectionConfig, fit_projection, load_or_fit_projection
from core.studio.session import Run, Studio

METHODS = ("PCA", "UMAP")


def _key(studio: Studio) -> str:
    latents = studio.engine.latents
    return f"{latents.dataset_fingerprint[:12]}-{latents.vae_fingerprint[:12]}"


@st.cache_resource(show_spinner="Fitting PCA…")
def _pca(_studio: Studio, key: str) -> Projection:
    latents = _studio.engine.latents
    return fit_projection(latents.latents, latents.labels, ProjectionConfig(method="pca"))


@st.cache_resource(show_spinner=False)
def _umap_job(_studio: Studio, key: str) -> BackgroundJob:
    latents = _studio.engine.latents
    cache_file = cache_dir() / "projections" / f"umap-{key}.safetensors"
    return BackgroundJob(lambda progress: load_or_fit_projection(latents.latents, latents.labels,
                                                                 ProjectionConfig(method="umap"), cache_file, progress),
                         name="umap-fit")


def umap_job(studio: Studio) -> BackgroundJob:
    return _umap_job(studio, _key(studio))


def autostart_umap(studio: Studio) -> None:
    """Start fitting UMAP when the server starts (unless DISTILL_STUDIO_UMAP_AUTOSTART=0, as in tests)."""
    if os.environ.get("DISTILL_STUDIO_UMAP_AUTOSTART", "1") != "0":
        umap_job(studio).start()


def get_projection(studio: Studio, method: str) -> tuple[Projection, str | None]:
    """The projection to draw and, while UMAP is not ready, a note saying so (PCA is drawn instead)."""
    if method == "UMAP":
        job = umap_job(studio).start()
        if job.done and job.error is None:
            return job.result, None
        if job.error is not None:
            return _pca(studio, _key(studio)), f"UMAP failed ({job.error}); showing PCA."
        return (_pca(studio, _key(studio)),
                f"UMAP is being fitted ({job.message}, {job.elapsed:.0f} s so far); showing PCA meanwhile.")
    return _pca(studio, _key(studio)), None


def run_points(projection: Projection, run: Run) -> tuple[np.ndarray, np.ndarray | None]:
    """2-D coordinates of the run's synthetic latents and of their prototypes (None without prototypes)."""
    synth = projection.transform(run.dset.latents)
    protos = None if run.dset.prototypes is None else projection.transform(run.dset.prototypes)
    return synth, protos
