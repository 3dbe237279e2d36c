"""Distill Studio — Streamlit entry point: ``streamlit run app.py`` (embedded default: Fashion-MNIST).

Navigation only; each view lives in pages/ and calls core/ for all computation.
"""
import streamlit as st

st.set_page_config(page_title="Distill Studio", layout="wide")
navigation = st.navigation([st.Page("pages/overview.py", title="Overview", default=True)])
navigation.run()
