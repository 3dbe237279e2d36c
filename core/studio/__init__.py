"""What the app needs without Streamlit: session, jobs, projection, figures, selection."""
