"""Keeping a view and sharing a setup: chart downloads, the copy-link control and novelty marking in the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_app_views import open_page
from tests.test_surprise_page import folder  # noqa: F401  (the module fixture with a tiny model and a 3-gram)
from ui.figure import describe, figure_html, file_stem


@pytest.fixture
def ckpt_dir(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    return folder


def test_every_chart_has_an_html_download_and_a_png_button_named_after_model_and_prompt(ckpt_dir: Path) -> None:
    at = open_page("pages/attention.py")
    shown = list(at.get("plotly_chart"))
    assert shown
    downloads = [b for b in at.get("download_button") if b.proto.label == "Download this chart (HTML)"]
    assert len(downloads) == len(shown)
    prompt = at.text_input(key="keep.attention.prompt").value
    for chart in shown:
        spec = json.loads(chart.proto.spec)
        title = spec["layout"]["title"]["text"]
        assert "tiny" in title
        options = json.loads(chart.proto.config)["toImageButtonOptions"]
        assert options["format"] == "png" and options["filename"] == file_stem(title)
    one = json.loads(shown[0].proto.spec)["layout"]["title"]["text"]
    assert describe("", "", prompt[:10]).strip('"')[:5] in one


def test_the_html_file_stands_alone_and_carries_the_title() -> None:
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout=dict(title=dict(text=describe("lens", "tiny", "Once upon"))))
    page = figure_html(fig)
    assert "<html>" in page[:40] and 'lens · tiny · \\"Once upon\\"' in page
    assert '<script src="https://cdn' not in page and len(page) > 1_000_000  # plotly.js is embedded: it opens offline
    assert file_stem('lens · tiny · "Once upon"') == "lens-tiny-Once-upon"
