"""Export: the selection (ticked in the gallery or lassoed in the latent space) or the whole set, as a zip
download or into a folder on the server (ImageFolder PNGs + manifest.json + latents.safetensors)."""
import os
from pathlib import Path

import numpy as np
import streamlit as st

from core.data.visualize import image_grid
from core.pipeline.export import export_imagefolder, export_zip_bytes, resolve_inside
from ui import state
from ui.frame import page_frame
from ui.widgets import require_run

EXPORT_ROOT = Path(os.environ.get("DISTILL_STUDIO_EXPORT_ROOT", "exports")).resolve()


def manifest_extra(run, ids: tuple[int, ...] | None) -> dict:
    """The run id and the run's metrics, named as the whole set's when only a selection is exported."""
    failed = run.wait_for_scores()   # the manifest carries every score, the deferred ones included
    whole = ids is None or len(ids) == len(run.dset)
    extra = {"run": run.run_id, ("metrics" if whole else "whole_set_metrics"): run.metrics}
    return {**extra, "scores_failed": str(failed)} if failed is not None else extra


@st.cache_data(show_spinner="Packing the zip…", max_entries=8)
def zip_bytes(_run, run_id: int, ids: tuple[int, ...] | None) -> bytes:
    return export_zip_bytes(_run.dset, ids, extra=manifest_extra(_run, ids))


studio, _ = page_frame()
run = require_run()
selected = state.selected_ids()
st.title("Export")
what = st.radio("Export", ("selection", "whole set"), horizontal=True, key="export_what",
                index=0 if selected else 1)
ids = tuple(selected) if what == "selection" else None
count = len(ids) if ids is not None else len(run.dset)
if count == 0:
    st.info("Nothing selected: tick images on the Sampling page or lasso them on the Latent space page, "
            "or export the whole set.")
    st.stop()
st.write(f"**{count}** images of run {run.run_id} ({run.config.method}, IPC {run.config.ipc}).")
preview = np.asarray(ids if ids is not None else range(len(run.dset)))[:40]
st.image(image_grid(run.dset.images[preview], 20), width="stretch", clamp=True,
         caption="preview (first 40)" if count > 40 else "preview")
name = f"distilled-{run.config.method}-ipc{run.config.ipc}-run{run.run_id}"
st.download_button("Download zip", zip_bytes(run, run.run_id, ids), file_name=f"{name}.zip",
                   mime="application/zip", type="primary", key="download_zip")
st.subheader("Or write to a folder on the server")
folder = st.text_input(f"Folder inside {EXPORT_ROOT}", name, key="export_folder")
if st.button("Export to folder"):
    try:
        out = export_imagefolder(run.dset, resolve_inside(EXPORT_ROOT, folder), ids, extra=manifest_extra(run, ids))
        st.success(f"Wrote {count} images, manifest.json and latents.safetensors to {out}")
    except (ValueError, OSError) as exc:  # refused paths, and what the file system refuses (e.g. a 300-character name)
        st.error(str(exc))
