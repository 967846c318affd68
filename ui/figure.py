"""Every chart of the app goes through here: shown with its model and prompt in the title,
downloadable as a standalone HTML file and, through the chart's camera button, as a PNG."""

from __future__ import annotations

import re
from typing import Any

import plotly.graph_objects as go
import streamlit as st

PROMPT_IN_TITLE = 40  # characters of the prompt written into a title


def describe(title: str, model: str = "", prompt: str = "") -> str:
    """The title with the model and the prompt that made the figure, e.g. 'logit lens · tiny-gpt · "Once"'."""
    parts = [title] if title else []
    if model:
        parts.append(model)
    if prompt:
        short = prompt if len(prompt) <= PROMPT_IN_TITLE else prompt[:PROMPT_IN_TITLE] + "…"
        parts.append('"' + short.replace("\n", "↵") + '"')
    return " · ".join(parts)


def file_stem(text: str) -> str:
    """A safe file name from a title: letters, digits, dashes and underscores only, at most 80 characters."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:80]
    return stem or "figure"


def figure_html(fig: go.Figure) -> str:
    """The figure as one standalone HTML file that works offline (plotly.js embedded)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def show_figure(fig: go.Figure, key: str, *, model: str = "", prompt: str = "", **kwargs: Any) -> Any:
    """Show ``fig`` with the model and prompt in its title, a PNG camera button and an HTML download.

    Extra keyword arguments go to st.plotly_chart (e.g. on_select); its return value is returned.
    """
    current = fig.layout.title.text or ""
    title = describe(current, model, prompt)
    if title:
        fig.update_layout(title=dict(text=title))
    stem = file_stem(title or key)
    config = {"toImageButtonOptions": {"filename": stem, "format": "png", "scale": 2}, "displaylogo": False}
    shown = st.plotly_chart(fig, key=key, config=config, **kwargs)
    st.download_button(
        "Download this chart (HTML)",
        data=lambda: figure_html(fig),  # built only when clicked: the file embeds plotly.js (~4 MB)
        file_name=f"{stem}.html",
        mime="text/html",
        key=f"{key}.html",
        on_click="ignore",
        help="A standalone page that opens offline. For a PNG, use the camera button above the chart.",
    )
    return shown
