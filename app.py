"""Distill Studio — Streamlit entry point: ``streamlit run app.py`` (embedded default: Fashion-MNIST).

Navigation only. Every page starts with ``ui.frame.page_frame()`` (shared sidebar, current run) and
calls core/ for all computation.
"""
import streamlit as st

st.set_page_config(page_title="Distill Studio", layout="wide")
PAGES = [
    st.Page("pages/sampling.py", title="Sampling", icon="🖼️", default=True),
    st.Page("pages/latent_space.py", title="Latent space", icon="🗺️"),
    st.Page("pages/trajectories.py", title="Trajectories", icon="〰️"),
    st.Page("pages/coverage.py", title="Coverage", icon="🎯"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="🎓"),
    st.Page("pages/runs.py", title="Runs", icon="📋"),
    st.Page("pages/sweeps.py", title="Sweeps", icon="🎛️"),
    st.Page("pages/export.py", title="Export", icon="📦"),
    st.Page("pages/dataset.py", title="Dataset", icon="🗂️"),
]
st.navigation(PAGES).run()
