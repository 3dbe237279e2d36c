"""Streamlit glue of the app: shared resources, session state and the sidebar. All computation is in core/."""
