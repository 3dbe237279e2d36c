"""Export: the selection (ticked in the gallery or lassoed in the latent space) or the whole set, as a zip
download or into a folder on the server (ImageFolder PNGs + manifest.json + latents.safetensors)."""
import os
from pathlib import Path

import numpy as np
import streamlit as st

from core.data.visualize import image_grid
from core.pipeline.export import export_digest, export_imagefolder, export_zip_bytes, resolve_inside
from core.studio.data_root import redact
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
def _zip_of_content(digest: str, _dset, ids: tuple[int, ...] | None, _extra: dict) -> bytes:
    """Shared by every session, so keyed by what the zip holds (``digest``), never by a session's run number."""
    return export_zip_bytes(_dset, ids, extra=_extra)


def zip_download(run, ids: tuple[int, ...] | None) -> tuple[bytes, str]:
    """The zip and its file name; the name carries the start of the content's digest, so two different sets
    never download under one name (and the same set always does)."""
    extra = manifest_extra(run, ids)
    digest = export_digest(run.dset, ids, extra)
    name = f"distilled-{run.config.method}-ipc{run.config.ipc}-{digest[:8]}.zip"
    return _zip_of_content(digest, run.dset, ids, extra), name


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
data, file_name = zip_download(run, ids)
st.download_button("Download zip", data, file_name=file_name, mime="application/zip", type="primary",
                   key="download_zip")
st.subheader("Or write to a folder on the server")
folder = st.text_input("Folder inside the export root", file_name.removesuffix(".zip"), key="export_folder",
                       help="a relative name; the server's export root is $DISTILL_STUDIO_EXPORT_ROOT (default exports/)")
if st.button("Export to folder"):
    try:
        out = export_imagefolder(run.dset, resolve_inside(EXPORT_ROOT, folder, "the export root"), ids,
                                 extra=manifest_extra(run, ids))
        st.success(f"Wrote {count} images, manifest.json and latents.safetensors to {out.relative_to(EXPORT_ROOT.resolve())} "
                   "in the export root")
    except (ValueError, OSError) as exc:  # refused paths, and what the file system refuses (e.g. a 300-character name)
        st.error(redact(str(exc)))
