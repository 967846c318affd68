"""Corpus, vocabulary, training and model figures: the right traces with the right data."""

from __future__ import annotations

import math

import pytest

from lmcore.models import ModelConfig, build_model
from lmcore.models.estimate import training_memory
from lmcore.train import TrainEvent
from lmcore.viz import (
    MAX_POINTS,
    frequency_figure,
    loss_figure,
    metric_figure,
    model_diagram,
    series_from_events,
    thin,
    token_length_figure,
)


def event(step: int, loss: float, val: float | None = None, sample: str | None = None) -> TrainEvent:
    return TrainEvent(
        step=step, max_iters=100, loss=loss, lr=1e-3 * step, tokens_seen=64 * step, tokens_per_s=1000.0 + step,
        grad_norm=0.5, elapsed_s=0.1 * step, train_loss=None if val is None else loss, val_loss=val,
        val_ppl=None if val is None else math.exp(val), val_acc=None if val is None else 0.3, sample=sample,
    )  # fmt: skip


def test_frequency_figure_shows_the_top_tokens_most_frequent_first():
    labels = ["a", "b", "<b>", "␣", "c"]
    counts = [5, 50, 7, 50, 1]
    fig = frequency_figure(labels, counts, top_n=3)
    (bar,) = fig.data
    assert list(bar.y) == [50, 50, 7]  # ties: the smaller id first
    assert list(fig.layout.xaxis.ticktext) == ["b", "␣", "&lt;b&gt;"]  # markup is shown, never rendered
    assert [row[1] for row in bar.customdata] == [1, 3, 2]  # ids on hover
    assert bar.customdata[0][2] == pytest.approx(50 / 113)
    assert fig.layout.yaxis.type == "linear"
    assert frequency_figure(labels, counts, log_y=True).layout.yaxis.type == "log"
    assert len(frequency_figure(labels, counts, top_n=100).data[0].y) == 5
    with pytest.raises(ValueError):
        frequency_figure(labels, counts[:2])


def test_frequency_figure_keeps_tokens_that_print_alike_apart():
    fig = frequency_figure(["x", "x"], [3, 2], top_n=10)
    assert list(fig.data[0].x) == [0, 1] and list(fig.layout.xaxis.ticktext) == ["x", "x"]


def test_token_length_figure_counts_entries_or_corpus_tokens():
    lengths = [1, 1, 2, 3, 3, 3]
    fig = token_length_figure(lengths)
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[0].y) == [2, 1, 3]
    weighted = token_length_figure(lengths, counts=[10, 0, 5, 1, 1, 1])
    assert list(weighted.data[0].y) == [10, 5, 3]


def test_series_from_events_separates_steps_and_evals():
    events = [event(1, 4.0), event(2, 3.5), event(2, 3.4, val=3.6, sample="hi"), event(3, 3.0)]
    s = series_from_events(events)
    assert s["step"] == [1, 2, 3] and s["loss"] == [4.0, 3.5, 3.0]
    assert s["tokens"] == [64, 128, 192] and s["lr"] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert s["eval_step"] == [2] and s["val_loss"] == [3.6] and s["sample"] == ["hi"]
    assert s["val_ppl"] == [pytest.approx(math.exp(3.6))]


def test_thin_bounds_the_points_and_keeps_the_last():
    xs = list(range(10_001))
    tx, ty = thin(xs, xs, max_points=1000)
    assert len(tx) <= 1001 and tx[-1] == 10_000 and tx[0] == 0 and tx == ty
    assert thin([1, 2], [3, 4]) == ([1, 2], [3, 4])


def test_loss_figure_overlays_runs_with_train_and_validation_traces():
    run_a = series_from_events([event(1, 4.0), event(2, 3.0), event(2, 3.0, val=3.2), event(3, float("nan"))])
    run_b = series_from_events([event(1, 5.0), event(1, 5.0, val=4.9)])
    fig = loss_figure({"gpt2 <run>": run_a, "mamba": run_b})
    names = [t.name for t in fig.data]
    assert names == ["gpt2 &lt;run&gt;: train", "gpt2 &lt;run&gt;: validation", "mamba: train", "mamba: validation"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [4.0, 3.0]  # the NaN point is dropped
    assert list(fig.data[1].x) == [2] and list(fig.data[1].y) == [3.2]
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color  # one colour per run
    by_tokens = loss_figure({"a": run_a}, x="tokens")
    assert list(by_tokens.data[0].x) == [64, 128] and list(by_tokens.data[1].x) == [128]
    assert by_tokens.layout.xaxis.title.text == "tokens seen"
    with pytest.raises(ValueError):
        loss_figure({"a": run_a}, x="time")


def test_long_runs_are_thinned_in_the_charts():
    run = series_from_events([event(i, 1.0) for i in range(1, 5001)])
    fig = loss_figure({"long": run})
    assert len(fig.data[0].x) <= MAX_POINTS + 1 and fig.data[0].x[-1] == 5000


def test_metric_figure_draws_one_line_per_run():
    runs = {"a": series_from_events([event(1, 4.0), event(2, 3.0)]), "b": series_from_events([event(1, 4.0)])}
    fig = metric_figure(runs, "tokens_per_s", "tokens / s")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == [1001.0, 1002.0]
    assert fig.layout.showlegend is True
    assert metric_figure(runs, "grad_norm", "norm", log_y=True).layout.yaxis.type == "log"


def test_training_memory_adds_up_and_scales_with_the_batch():
    cfg = ModelConfig.preset("gpt2", vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64)
    n = build_model(cfg).num_params()
    small, big = training_memory(cfg, n, 8), training_memory(cfg, n, 16)
    assert small["weights"] == 4 * n and small["gradients"] == small["weights"]
    assert small["optimizer"] == 2 * small["weights"]
    assert small["total"] == sum(v for k, v in small.items() if k != "total")
    assert big["activations"] == 2 * small["activations"] and big["weights"] == small["weights"]
    bigram = ModelConfig.preset("bigram", vocab_size=65, block_size=64)
    assert training_memory(bigram, 65 * 65, 8)["activations"] == 2 * 8 * 64 * 65 * 4  # only the logits


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba", "mamba2", "lstm", "bigram"])
def test_model_diagram_is_a_dot_graph_of_the_config(preset):
    cfg = ModelConfig.preset(preset, vocab_size=99, block_size=32, n_layer=3)
    dot = model_diagram(cfg)
    assert dot.startswith("digraph model {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert dot.count('"') % 2 == 0  # every label is closed
    assert "99" in dot  # the vocabulary size appears (embedding / head / logits)
    expected = {
        "gpt2": ["× 3 layers", "LayerNorm", "GELU", "multi-head"],
        "llama": ["× 3 layers", "RMSNorm", "SwiGLU", "RoPE"],
        "mamba": ["× 3 layers", "selective scan", "state N = 16"],
        "mamba2": ["× 3 layers", "SSD: 16 heads × 16 channels", "state 16×64", "RMSNorm(y × SiLU(z))"],
        "lstm": ["× 3 layers", "LSTM layer"],
        "bigram": ["lookup table\\n99 × 99"],
    }[preset]
    for text in expected:
        assert text in dot
    if preset == "bigram":
        assert "cluster_block" not in dot


def test_the_ngram_diagram_shows_its_context_counts_and_smoothing_not_an_embedding():
    dot = model_diagram(ModelConfig.preset("ngram", vocab_size=99, ngram_n=4, add_k=0.5))
    for text in ["the previous 3 tokens", "count table", "add-k smoothing, k = 0.5", "k · 99"]:
        assert text in dot
    assert "embedding" not in dot and "output head" not in dot and "cluster_block" not in dot
    assert "no context (n = 1)" in model_diagram(ModelConfig.preset("ngram", vocab_size=99, ngram_n=1))


def test_model_diagram_names_the_attention_kind():
    cfg = ModelConfig.preset("llama", vocab_size=50, n_head=4, n_kv_head=1)
    assert "multi-query" in model_diagram(cfg)
    assert "grouped-query" in model_diagram(cfg.replace(n_kv_head=2))
