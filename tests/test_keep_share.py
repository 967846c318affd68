"""Keeping a view and sharing a setup: chart downloads, the copy-link control and novelty marking in the app."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
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
    at = open_page("views/attention.py")
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


class _Tags(HTMLParser):
    """The start tags of a page, in order, with each script's source address or text."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.script_srcs: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.started.append(tag)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
            self.script_srcs += [v or "" for k, v in attrs if k == "src"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def test_the_html_file_stands_alone_and_carries_the_title() -> None:
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout=dict(title=dict(text=describe("lens", "tiny", "Once upon"))))
    page = figure_html(fig)
    tags = _Tags()
    tags.feed(page)
    # A whole document (html, head, body) whatever plotly's layout of it (a doctype or none).
    assert tags.started[0] == "html" and {"head", "body"} <= set(tags.started)
    # The title travels in the figure's JSON (however plotly escapes it).
    titles = [json.loads(m) for m in re.findall(r'"title":\s*\{"text":\s*("(?:[^"\\]|\\.)*")', page)]
    assert titles == [describe("lens", "tiny", "Once upon")] == ['lens · tiny · "Once upon"']
    # plotly.js is embedded, not fetched: the file opens offline.
    assert tags.script_srcs == [] and max(map(len, tags.scripts)) > 1_000_000
    assert file_stem('lens · tiny · "Once upon"') == "lens-tiny-Once-upon"


def test_prompt_and_sampling_travel_in_the_link_to_a_fresh_session(ckpt_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.test_app_views import APP

    at = open_page("views/generation.py")
    at.text_area(key="keep.generation.prompt").set_value("Return the").run()
    at.slider(key="keep.generation.temperature").set_value(0.35).run()
    at.number_input(key="keep.generation.top_k").set_value(7).run()
    address = dict(at.query_params)
    assert address["prompt"] == "Return the" and address["temp"] == "0.35" and address["top_k"] == "7"
    (link,) = [c.value for c in at.sidebar.code]
    assert "prompt=Return+the" in link and "temp=0.35" in link and "run=" not in link

    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.query_params.update(address)
    fresh = open_page("views/generation.py", fresh.run())
    assert fresh.text_area(key="keep.generation.prompt").value == "Return the"
    assert fresh.slider(key="keep.generation.temperature").value == 0.35
    assert fresh.number_input(key="keep.generation.top_k").value == 7


def test_the_copy_link_says_a_pasted_corpus_cannot_travel() -> None:
    at = open_page("views/data.py")
    assert not any("cannot travel" in w.value for w in at.sidebar.warning)
    at.radio[0].set_value("Paste text").run()
    at.text_area(key="keep.data.paste").set_value("a pasted text that lives on this server only\n" * 20)
    at.button[0].click().run()
    (link,) = [c.value for c in at.sidebar.code]
    assert "corpus=text%3A" in link
    assert any("cannot travel" in w.value and "URL" in w.value for w in at.sidebar.warning)


def test_generated_text_marks_what_it_copied_from_the_corpus(ckpt_dir: Path) -> None:
    import pydoc_data.topics

    from lmcore.data import corpus_from_text
    from ui import state

    topics = pydoc_data.topics.topics
    text = "\n".join(topics[k] for k in sorted(topics)[:12])  # the text the fixture's 3-gram counted
    at = open_page("views/generation.py")
    at.selectbox(key="keep.generation.model").set_value("ckpt:" + str(ckpt_dir / "table.safetensors")).run()
    at.session_state[state.CORPUS] = corpus_from_text(text, name="table text")
    at.session_state[state.CORPUS_ID] = "table-text"
    at.text_area(key="keep.generation.prompt").set_value(text[:20])
    at.slider(key="keep.generation.temperature").set_value(0.0)
    at.number_input(key="keep.generation.max_new_tokens").set_value(60).run()
    at.button(key="generation.go").click().run()
    assert not at.exception
    marked = [m.value for m in at.markdown if "verbatim in the training text" in m.value]
    assert marked and "background:#fecaca" in marked[0]
    assert any("of the generated tokens are new" in c.value and "table text" in c.value for c in at.caption)


def test_an_attention_map_highlights_what_a_chosen_token_attends_to(ckpt_dir: Path) -> None:
    at = open_page("views/attention.py")
    at.selectbox(key="attention.focus").set_value(3).run()
    assert not at.exception
    one = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "attends to token" in one["data"][0]["hovertemplate"]
    assert any(s.get("line", {}).get("color") == "#dc2626" for s in one["layout"]["shapes"])
    assert any(c.value.startswith("Token #3 attends most to") for c in at.caption)
    grid = json.loads(at.get("plotly_chart")[1].proto.spec)  # the prompt is short: its tokens label the grid
    assert any(ax.get("showticklabels") and ax.get("ticktext") for k, ax in grid["layout"].items() if k.startswith("xaxis"))
