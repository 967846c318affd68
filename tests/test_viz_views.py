"""The attention and generation figures carry the data they are given, readably and safely."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from lmcore import viz
from lmcore.sample import entropy, top_candidates


def causal_maps(n_layer: int, n_head: int, t: int, seed: int = 0) -> np.ndarray:
    """Random row-stochastic causal maps (L, H, T, T), like a transformer's softmax weights."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_layer, n_head, t, t))
    scores[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_plot_label_escapes_markup() -> None:
    assert viz.plot_label("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    assert viz.plot_label("plain") == "plain"


def test_heatmap_holds_weights_and_tokens_on_both_axes() -> None:
    tokens = ["T", "h", "e", "␣", "e"]  # "e" twice: both rows must stay
    w = causal_maps(1, 1, 5)[0, 0]
    fig = viz.attention_heatmap(w, tokens, title="layer 0 · head 1")
    (trace,) = fig.data
    z = np.array(trace.z, dtype=float)
    assert z.shape == (5, 5)
    lower = np.tril_indices(5)
    np.testing.assert_allclose(z[lower], w[lower])
    assert np.isnan(z[np.triu_indices(5, 1)]).all()  # the future is blank, not zero
    assert list(fig.layout.xaxis.ticktext) == tokens
    assert list(fig.layout.yaxis.ticktext) == tokens
    assert list(fig.layout.xaxis.tickvals) == [0, 1, 2, 3, 4]
    assert fig.layout.yaxis.autorange == "reversed"  # first token on top
    assert fig.layout.title.text == "layer 0 · head 1"
    assert trace.customdata[4][1][0] == "e" and trace.customdata[4][1][1] == "h"


def test_heatmap_escapes_html_in_tokens() -> None:
    tokens = ["<", "b", ">", "<|bos|>"]
    fig = viz.attention_heatmap(causal_maps(1, 1, 4)[0, 0], tokens)
    assert list(fig.layout.xaxis.ticktext) == ["&lt;", "b", "&gt;", "&lt;|bos|&gt;"]
    assert "<b>" not in str(fig.data[0].customdata.tolist())


def test_heatmap_rejects_mismatched_tokens() -> None:
    with pytest.raises(ValueError):
        viz.attention_heatmap(np.eye(3), ["a", "b"])


def test_signed_maps_get_a_diverging_scale_centred_on_zero() -> None:
    w = np.tril(np.array([[1.0, 0, 0], [-2.0, 0.5, 0], [0.3, -0.1, 1.5]]))
    (trace,) = viz.attention_heatmap(w, ["a", "b", "c"]).data
    assert trace.zmid == 0.0 and trace.zmin == -2.0 and trace.zmax == 2.0
    (soft,) = viz.attention_heatmap(causal_maps(1, 1, 3)[0, 0], ["a", "b", "c"]).data
    assert soft.zmin == 0.0 and soft.zmid is None


def test_average_heatmap_is_the_mean_over_heads() -> None:
    maps = causal_maps(2, 3, 6)
    fig = viz.attention_average_heatmap(maps[1], list("abcdef"), layer=1, unit="channel group")
    z = np.array(fig.data[0].z, dtype=float)
    lower = np.tril_indices(6)
    np.testing.assert_allclose(z[lower], maps[1].mean(axis=0)[lower])
    np.testing.assert_allclose(np.nansum(z, axis=1), 1.0)  # rows of a mean of softmaxes still sum to 1
    assert "average over 3 channel groups" in fig.layout.title.text


def test_grid_has_one_panel_per_layer_and_head() -> None:
    maps = causal_maps(2, 3, 4)
    fig = viz.attention_grid(maps, list("abcd"), unit="head")
    assert len(fig.data) == 6
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"layer {l} · head {h}" for l in range(2) for h in range(3)]
    z = np.array(fig.data[5].z, dtype=float)  # layer 1, head 2
    np.testing.assert_allclose(z[np.tril_indices(4)], maps[1, 2][np.tril_indices(4)])
    assert all(t.coloraxis == "coloraxis" for t in fig.data)  # one shared scale


def test_grid_can_show_chosen_layers_only() -> None:
    maps = causal_maps(4, 2, 3)
    fig = viz.attention_grid(maps, list("abc"), layers=[2])
    assert len(fig.data) == 2
    assert [a.text for a in fig.layout.annotations] == ["layer 2 · head 0", "layer 2 · head 1"]
    np.testing.assert_allclose(np.array(fig.data[1].z, dtype=float)[2], maps[2, 1][2])


def test_top_candidates_are_sorted_and_deterministic() -> None:
    p = np.array([0.1, 0.3, 0.05, 0.3, 0.25])
    assert top_candidates(p, 3) == [(1, 0.3), (3, 0.3), (4, 0.25)]
    assert len(top_candidates(p, 50)) == 5
    assert top_candidates(p, 0) == []


def test_candidates_figure_highlights_the_drawn_token() -> None:
    fig = viz.candidates_figure(["a", "<i>", "a"], [0.5, 0.3, 0.2], chosen=1, title="position 3")
    (bar,) = fig.data
    assert isinstance(bar, go.Bar)
    assert list(bar.x) == [0.5, 0.3, 0.2]
    assert list(bar.y) == ["1. a", "2. &lt;i&gt;", "3. a"]  # ranks keep equal tokens apart
    assert len(set(bar.marker.color)) == 2 and bar.marker.color[1] != bar.marker.color[0]
    assert list(bar.text) == ["50.0%", "30.0%", "20.0%"]
    assert not fig.layout.showlegend


def test_candidates_figure_marks_the_sampled_probabilities() -> None:
    fig = viz.candidates_figure(["a", "b"], [0.6, 0.4], chosen=0, sampled=[1.0, 0.0])
    bar, marks = fig.data
    assert isinstance(marks, go.Scatter)
    assert list(marks.x) == [1.0, 0.0] and list(marks.y) == list(bar.y)
    assert fig.layout.xaxis.range[1] >= 1.0  # the axis reaches the largest value shown


def test_entropy() -> None:
    assert entropy([1.0, 0.0, 0.0]) == 0.0
    assert f"{entropy([1.0, 0.0]):.2f}" == "0.00"  # not "-0.00"
    assert entropy([0.25] * 4) == pytest.approx(np.log(4))


def test_temperature_figure_keeps_the_reference_order() -> None:
    ref = np.array([0.05, 0.6, 0.1, 0.25])
    cold = ref ** 4 / (ref ** 4).sum()
    labels = ["a", "b", "c", "d"]
    fig = viz.temperature_figure(cold, ref, labels, temperature=0.25, k=3)
    ghost, now = fig.data
    assert list(ghost.x) == ["1. b", "2. d", "3. c"] == list(now.x)
    np.testing.assert_allclose(ghost.y, [0.6, 0.25, 0.1])
    np.testing.assert_allclose(now.y, cold[[1, 3, 2]])
    assert "0.25" in now.name
    assert f"{entropy(cold):.2f}" in fig.layout.title.text


def test_temperature_figure_checks_lengths() -> None:
    with pytest.raises(ValueError):
        viz.temperature_figure(np.ones(3) / 3, np.ones(3) / 3, ["a", "b"], 1.0)
