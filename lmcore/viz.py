"""Plotly figures built from plain data (lists, dicts, numpy arrays): no Streamlit here.

Pages pass numbers in and get a ``plotly.graph_objects.Figure`` back, so every
figure can be tested without a browser.
"""

from __future__ import annotations

import plotly.graph_objects as go  # noqa: F401

# --- corpus, vocabulary and training figures ---


# --- attention and generation figures ---
