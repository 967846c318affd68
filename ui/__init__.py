"""Streamlit-only glue shared by the pages: session-state keys, the error boundary, cached loaders."""
