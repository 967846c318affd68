"""Plotly figures built from plain data (lists, dicts, numpy arrays, tensors): no Streamlit here.

Pages pass numbers in and get a ``plotly.graph_objects.Figure`` (or a DOT or
HTML string) back, so every figure can be tested without a browser. Plotly
reads a few HTML tags and entities in every label; ``plot_label`` is the one
escaper that makes text (tokens, prompts, run names) show literally.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmcore.interpret import HEAD_SCORE_KEYS, EmbeddingMap, TokenLosses
from lmcore.models import ModelConfig, family_of
from lmcore.sample import entropy, top_candidates


def plot_label(text: str) -> str:
    """A token or piece of text made safe for plotly labels.

    Plotly reads a small set of HTML tags (``<b>``, ``<br>``) and entities in
    every label and hover text; a prompt is never markup, so ``<``, ``>`` and
    ``&`` are escaped and plotly shows them literally.
    Example: plot_label("<b>") -> "&lt;b&gt;"
    """
    return html.escape(str(text), quote=False)


# --- corpus, vocabulary and training figures ---

RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")

# Charts thin long runs to at most this many points: the browser stays fast and
# a ten-minute run draws as quickly as a ten-second one.
MAX_POINTS = 1500


def frequency_figure(
    labels: Sequence[str],
    counts: Sequence[int],
    top_n: int = 40,
    log_y: bool = False,
    ids: Sequence[int] | None = None,
    title: str = "",
) -> go.Figure:
    """Bars of the ``top_n`` most frequent tokens, most frequent first.

    labels: printable token strings (``tok.token_str``), counts: how often each
    occurs in the corpus, ids: the token ids (default 0..V-1), shown on hover.
    Bars sit at positions 0..n-1 with the labels as tick text, so two tokens
    that print alike still get two bars. Ties keep the smaller id first.
    """
    if len(labels) != len(counts):
        raise ValueError("labels and counts must have one entry per token")
    ids = list(range(len(labels))) if ids is None else list(ids)
    order = sorted(range(len(counts)), key=lambda i: (-int(counts[i]), ids[i]))[: max(1, int(top_n))]
    shown = [plot_label(labels[i]) for i in order]
    values = [int(counts[i]) for i in order]
    total = sum(int(c) for c in counts) or 1
    fig = go.Figure(
        go.Bar(
            x=list(range(len(order))),
            y=values,
            customdata=[[shown[r], ids[i], values[r] / total] for r, i in enumerate(order)],
            hovertemplate="%{customdata[0]} (id %{customdata[1]})<br>count %{y:,}"
            "<br>share %{customdata[2]:.2%}<extra></extra>",
            marker_color=RUN_COLORS[0],
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=list(range(len(order))),
        ticktext=shown,
        # Single characters fit upright; longer tokens are turned so they do not overlap.
        tickangle=0 if max((len(t) for t in shown), default=0) <= 2 or len(order) <= 12 else -60,
        title="token",
    )
    fig.update_yaxes(title="count (log scale)" if log_y else "count", type="log" if log_y else "linear")
    if log_y:
        fig.update_yaxes(**log_ticks(values))
    fig.update_layout(
        title=plot_label(title) or None, height=380, margin=dict(l=10, r=10, t=40 if title else 10, b=10), bargap=0.15
    )
    return fig


def token_length_figure(lengths: Sequence[int], counts: Sequence[int] | None = None, unit: str = "bytes") -> go.Figure:
    """Histogram of token lengths: how many vocabulary entries (or, with ``counts``,
    how many corpus tokens) span 1, 2, 3, ... ``unit``.

    lengths: one length per vocabulary entry; counts: optional weight per entry.
    """
    weights = [1] * len(lengths) if counts is None else [int(c) for c in counts]
    if len(weights) != len(lengths):
        raise ValueError("lengths and counts must have one entry per token")
    hist: dict[int, int] = {}
    for n, w in zip(lengths, weights):
        hist[int(n)] = hist.get(int(n), 0) + w
    xs = sorted(hist)
    what = "tokens in the corpus" if counts is not None else "vocabulary entries"
    fig = go.Figure(
        go.Bar(
            x=xs,
            y=[hist[x] for x in xs],
            marker_color=RUN_COLORS[1],
            hovertemplate=f"%{{x}} {unit}: %{{y:,}} {what}<extra></extra>",
        )
    )
    fig.update_xaxes(title=f"token length ({unit})", dtick=1)
    fig.update_yaxes(title=what)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), bargap=0.1)
    return fig


# The chart columns of a run: per step, then per evaluation.
SERIES_KEYS = (
    "step", "tokens", "loss", "lr", "tokens_per_s", "grad_norm", "elapsed_s",
    "eval_step", "eval_tokens", "train_loss", "val_loss", "val_ppl", "val_acc", "sample", "base_val_loss",
)  # fmt: skip


def series_from_events(events: Iterable[Any]) -> dict[str, list]:
    """Columns for the training charts from ``TrainEvent``s (any objects with their fields).

    Step rows come from every event without a validation loss; eval rows from
    those with one. Keys: step, tokens, loss, lr, tokens_per_s, grad_norm,
    elapsed_s (per step) and eval_step, eval_tokens, train_loss, val_loss,
    val_ppl, val_acc, sample (per eval).
    """
    out: dict[str, list] = {k: [] for k in SERIES_KEYS}
    for e in events:
        if e.val_loss is None:
            out["step"].append(e.step)
            out["tokens"].append(e.tokens_seen)
            out["loss"].append(e.loss)
            out["lr"].append(e.lr)
            out["tokens_per_s"].append(e.tokens_per_s)
            out["grad_norm"].append(e.grad_norm)
            out["elapsed_s"].append(e.elapsed_s)
        else:
            out["eval_step"].append(e.step)
            out["eval_tokens"].append(e.tokens_seen)
            out["train_loss"].append(e.train_loss)
            out["val_loss"].append(e.val_loss)
            out["val_ppl"].append(e.val_ppl)
            out["val_acc"].append(e.val_acc)
            out["sample"].append(e.sample)
            base = getattr(e, "base_val_loss", None)  # a fine-tuning run's loss on its base's text
            out["base_val_loss"].append(math.nan if base is None else base)
    return out


def thin(xs: Sequence[float], ys: Sequence[float], max_points: int = MAX_POINTS) -> tuple[list, list]:
    """Every k-th point so that at most ``max_points`` remain; the last point is always kept.

    Lists give lists; numpy arrays give arrays.
    """
    n = len(xs)
    if n <= max_points:
        return (xs, ys) if isinstance(xs, np.ndarray) else (list(xs), list(ys))
    k = math.ceil(n / max_points)
    idx = list(range(0, n, k))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    if isinstance(xs, np.ndarray):
        return xs[idx], np.asarray(ys)[idx]
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _finite(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays without the points whose value is missing, NaN or infinite.

    Arrays, not lists: plotly checks a list element by element, which made a
    chart of a long run take a tenth of a second to build.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray([np.nan if v is None else v for v in ys], dtype=float)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def log_ticks(values: Iterable[float]) -> dict[str, Any]:
    """Tick settings for a log axis over ``values`` that read as plain numbers.

    Plotly's own log ticks label the digits between powers of ten ("2, 5, 100, 2, 5"
    or "2, 3, ... 9, 1"); these are 1, 10, 100 ... when the values span two decades
    or more, else 1, 2, 5, 10, 20 ..., each written out in full (0.5, 1, 2, 1e+04).
    """
    v = np.asarray([x for x in values if x is not None and x > 0 and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {}
    lo, hi = math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))
    span = math.log10(v.max() / v.min())
    if span < 0.4:  # within a factor of 2.5 there is no room for 1-2-5: plain numbers from plotly
        return dict(tickformat=".3~g")
    steps = (1.0,) if span >= 2 else (1.0, 2.0, 5.0)
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps]  # plotly shows those in range
    return dict(tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


def _axis_title(x: str) -> str:
    return "tokens seen" if x == "tokens" else "step"


def loss_figure(runs: Mapping[str, Mapping[str, list]], x: str = "step", log_y: bool = False) -> go.Figure:
    """Training loss (every step, faint) and validation loss (each eval, with markers) per run.

    runs: run name -> ``series_from_events`` columns; x: "step" or "tokens".
    Each run keeps one colour; comparing runs overlays them on shared axes.
    """
    if x not in ("step", "tokens"):
        raise ValueError(f"x must be 'step' or 'tokens', got {x!r}")
    fig = go.Figure()
    for n, (name, s) in enumerate(runs.items()):
        color = RUN_COLORS[n % len(RUN_COLORS)]
        label = plot_label(name)
        xs, ys = thin(*_finite(s[x], s["loss"]))
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", name=f"{label}: train", line=dict(color=color, width=1), opacity=0.45,
                legendgroup=label,
                hovertemplate=f"{label}<br>{_axis_title(x)} %{{x:,}}<br>train loss %{{y:.4f}}<extra></extra>",
            )
        )  # fmt: skip
        ex, ey = _finite(s["eval_tokens" if x == "tokens" else "eval_step"], s["val_loss"])
        fig.add_trace(
            go.Scatter(
                x=ex, y=ey, mode="lines+markers", name=f"{label}: validation", line=dict(color=color, width=2.5),
                marker=dict(size=7), legendgroup=label,
                hovertemplate=f"{label}<br>{_axis_title(x)} %{{x:,}}<br>validation loss %{{y:.4f}}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(title=_axis_title(x))
    fig.update_yaxes(title="loss (nats per token)", type="log" if log_y else "linear")
    fig.update_layout(
        height=380,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        uirevision="loss",  # keeps zoom and hidden traces while the chart refreshes
    )
    return fig


EVAL_KEYS = ("train_loss", "val_loss", "val_ppl", "val_acc", "base_val_loss")  # series columns measured at evaluations


def metric_figure(
    runs: Mapping[str, Mapping[str, list]], key: str, y_title: str, x: str = "step", log_y: bool = False
) -> go.Figure:
    """One metric per run: per step (``lr``, ``tokens_per_s``, ``grad_norm``) as lines, or per
    evaluation (``val_acc``, ``val_ppl``) as lines with markers."""
    per_eval = key in EVAL_KEYS
    fig = go.Figure()
    for n, (name, s) in enumerate(runs.items()):
        label = plot_label(name)
        xs, ys = _finite(s[("eval_tokens" if x == "tokens" else "eval_step") if per_eval else x], s[key])
        if not per_eval:
            xs, ys = thin(xs, ys)
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers" if per_eval else "lines", name=label,
                line=dict(color=RUN_COLORS[n % len(RUN_COLORS)], width=1.5),
                hovertemplate=f"{label}<br>{_axis_title(x)} %{{x:,}}<br>{plot_label(y_title)} %{{y:.4g}}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_xaxes(title=_axis_title(x))
    fig.update_yaxes(title=plot_label(y_title), type="log" if log_y else "linear")
    if log_y:
        fig.update_yaxes(**log_ticks(y for trace in fig.data for y in trace.y))
    fig.update_layout(
        height=260,
        margin=dict(l=10, r=10, t=10, b=10),
        showlegend=len(runs) > 1,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        uirevision=key,
    )
    return fig


# --- model structure (a config in, DOT out) ---


def _dot(s: str) -> str:
    """A DOT double-quoted string body: backslashes and quotes escaped, newlines as \\n."""
    return str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def model_diagram(config: ModelConfig) -> str:
    """A Graphviz DOT description of the model's block structure, built from its config.

    The parts come from the config's family (``Family.diagram``), so it works
    for a config that has not been built yet. The repeated block is drawn once,
    inside a box labelled with how many times it repeats.
    """
    c = config
    parts = family_of(c.arch).diagram(c)
    emb, blk, head, io = "#dbeafe", "#fde68a", "#e9d5ff", "#e5e7eb"
    nodes = [("tokens", f"token ids\n(B, T)  T ≤ {c.block_size}", io), (*parts.embed, emb)]  # (id, label, fill colour)
    nodes += [(nid, label, blk) for nid, label in parts.steps]
    block = [(nid, label, blk) for nid, label in parts.block]
    skips = parts.residuals  # residual connections inside the block (from, to)
    tail: list[tuple[str, str, str]] = []
    if parts.final_norm:
        tail.append(("nf", f"final {parts.final_norm}", head))
    if parts.head:
        tied = " (shares the embedding)" if c.tie_weights else ""
        tail.append(("head", f"output head{tied}\n{c.n_embd} → {c.vocab_size}", head))
    tail.append(("logits", f"next-token logits\n(B, T, {c.vocab_size})", io))

    lines = [
        "digraph model {",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.25];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, margin="0.15,0.06"];',
        '  edge [color="#6b7280", arrowsize=0.7];',
    ]
    for nid, label, fill in nodes:
        lines.append(f'  {nid} [label="{_dot(label)}", fillcolor="{fill}"];')
    order = [n[0] for n in nodes]
    if block:
        times = f"× {c.n_layer} layer" + ("s" if c.n_layer != 1 else "")
        lines.append("  subgraph cluster_block {")
        lines.append(f'    label="{_dot(times)}"; labeljust=r; style="rounded,dashed"; color="#9ca3af"; fontsize=11;')
        lines.append('    in [label="", shape=point, width=0.06];')
        for nid, label, fill in block:
            shape = ', shape=circle, width=0.3, fixedsize=true' if label == "+" else ""
            lines.append(f'    {nid} [label="{_dot(label)}", fillcolor="{fill}"{shape}];')
        lines.append("  }")
        order += ["in"] + [b[0] for b in block]
    for nid, label, fill in tail:
        lines.append(f'  {nid} [label="{_dot(label)}", fillcolor="{fill}"];')
    order += [t[0] for t in tail]
    for a, b in zip(order, order[1:]):
        lines.append(f"  {a} -> {b};")
    for a, b in skips:
        lines.append(f'  {a} -> {b} [style=dashed, constraint=false, label=" residual", fontsize=9];')
    lines.append("}")
    return "\n".join(lines)


# --- attention and generation figures ---

# Above this many tokens, axis labels get a smaller font so they stay legible.
_DENSE_TOKENS = 40
# "token i attends to token j: weight" on hover; customdata holds the two token strings.
ATTENDS_HOVER = "token #%{y} %{customdata[0]} attends to token #%{x} %{customdata[1]}: %{z:.3f}<extra></extra>"
GRID_WIDTH_PX = 720  # the width an all-heads grid gets on the page
GRID_TICK_PX = 11  # room one token's tick label needs on a grid panel


def _causal(weights: np.ndarray) -> np.ndarray:
    """Copy of (..., T, T) weights with the future (above the diagonal) blanked out."""
    z = np.array(weights, dtype=float)
    rows, cols = np.triu_indices(z.shape[-1], 1)
    z[..., rows, cols] = np.nan
    return z


def _color_args(z: np.ndarray) -> dict:
    """Colour scale: sequential from 0 for softmax weights; diverging around 0 when
    some values are negative (Mamba's implicit maps are not probabilities)."""
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if lo < 0.0:
        bound = max(abs(lo), abs(hi)) or 1.0
        return dict(colorscale="RdBu_r", zmin=-bound, zmax=bound, zmid=0.0)
    return dict(colorscale="Blues", zmin=0.0, zmax=max(hi, 1e-9))


def _hover_tokens(tokens: Sequence[str]) -> np.ndarray:
    """(T, T, 2) strings: the query token and the key token of every cell."""
    labels = [plot_label(t) for t in tokens]
    t = len(labels)
    custom = np.empty((t, t, 2), dtype=object)
    for i in range(t):
        for j in range(t):
            custom[i, j, 0] = labels[i]
            custom[i, j, 1] = labels[j]
    return custom


def attention_heatmap(
    weights: np.ndarray, tokens: Sequence[str], title: str = "", highlight: int | None = None
) -> go.Figure:
    """One attention map: row i (query) shows how token i spreads over tokens 0..i (keys).

    weights: (T, T) array, tokens: T printable token strings (``tok.token_str``).
    Positions are the axis values and tokens only their tick labels, so a token
    that occurs twice keeps two rows. Hovering a cell reads "token i attends to
    token j: weight"; ``highlight`` frames row i and dims the others.
    """
    z = _causal(weights)
    t = len(tokens)
    if z.shape != (t, t):
        raise ValueError(f"weights of shape {z.shape} do not match {t} tokens")
    ticks = dict(
        tickmode="array",
        tickvals=list(range(t)),
        ticktext=[plot_label(s) for s in tokens],
        tickfont=dict(size=9 if t > _DENSE_TOKENS else 12),
    )
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(t)),
            y=list(range(t)),
            customdata=_hover_tokens(tokens),
            hovertemplate=ATTENDS_HOVER,
            hoverongaps=False,
            colorbar=dict(title="weight"),
            **_color_args(z),
        )
    )
    if highlight is not None and 0 <= highlight < t:
        for y0, y1 in ((-0.5, highlight - 0.5), (highlight + 0.5, t - 0.5)):  # dim every other row
            if y1 > y0:
                fig.add_shape(type="rect", x0=-0.5, x1=t - 0.5, y0=y0, y1=y1, fillcolor="white", opacity=0.6,
                              line_width=0, layer="above")  # fmt: skip
        fig.add_shape(type="rect", x0=-0.5, x1=t - 0.5, y0=highlight - 0.5, y1=highlight + 0.5,
                      line=dict(color="#dc2626", width=2), layer="above")  # fmt: skip
    fig.update_xaxes(title="key: the token looked at", tickangle=-60, showgrid=False, zeroline=False, **ticks)
    fig.update_yaxes(title="query: the token looking", autorange="reversed", showgrid=False, zeroline=False, **ticks)
    side = min(760, 260 + 18 * t)
    fig.update_layout(
        title=plot_label(title) or None,
        height=side,
        margin=dict(l=10, r=10, t=50 if title else 20, b=10),
        plot_bgcolor="white",
    )
    return fig


def attention_average_heatmap(layer_maps: np.ndarray, tokens: Sequence[str], layer: int, unit: str = "head") -> go.Figure:
    """The mean over one layer's heads (or Mamba's channel groups): (H, T, T) -> a heatmap."""
    maps = np.asarray(layer_maps, dtype=float)
    n = maps.shape[0]
    return attention_heatmap(maps.mean(axis=0), tokens, title=f"layer {layer}: average over {n} {unit}s")


def attention_grid(
    maps: np.ndarray, tokens: Sequence[str], unit: str = "head", layers: Sequence[int] | None = None
) -> go.Figure:
    """Overview of many maps at once: one small heatmap per (layer, head).

    maps: (L, H, T, T); ``layers`` picks the rows shown (all by default). Every
    panel shares one colour scale, so strong and weak heads compare at a glance.
    """
    maps = np.asarray(maps, dtype=float)
    n_layer, n_head, t, _ = maps.shape
    rows = list(range(n_layer)) if layers is None else list(layers)
    titles = [f"layer {layer} · {unit} {h}" for layer in rows for h in range(n_head)]
    fig = make_subplots(
        rows=len(rows),
        cols=n_head,
        subplot_titles=titles,
        horizontal_spacing=min(0.04, 1.0 / max(n_head, 2) / 4),
        vertical_spacing=min(0.08, 1.0 / max(len(rows), 2) / 3),
    )
    z_all = _causal(maps[rows])
    colors = _color_args(z_all)
    custom = _hover_tokens(tokens)
    for r, layer in enumerate(rows):
        for h in range(n_head):
            fig.add_trace(
                go.Heatmap(
                    z=z_all[r, h],
                    customdata=custom,
                    coloraxis="coloraxis",
                    hovertemplate=f"layer {layer} · {unit} {h}<br>" + ATTENDS_HOVER,
                    hoverongaps=False,
                ),
                row=r + 1,
                col=h + 1,
            )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed", showgrid=False, zeroline=False)
    if t * GRID_TICK_PX <= GRID_WIDTH_PX / n_head:  # token labels where they fit: keys below, queries on the left
        ticks = dict(tickmode="array", tickvals=list(range(t)), ticktext=[plot_label(s) for s in tokens],
                     tickfont=dict(size=9))  # fmt: skip
        fig.update_xaxes(showticklabels=True, tickangle=-60, row=len(rows), **ticks)
        fig.update_yaxes(showticklabels=True, col=1, **ticks)
    fig.update_annotations(font_size=11)
    scale = {k: v for k, v in colors.items() if k != "zmid"}
    fig.update_layout(
        coloraxis=dict(
            colorscale=scale["colorscale"], cmin=scale["zmin"], cmax=scale["zmax"], colorbar=dict(title="weight")
        ),
        height=max(260, 170 * len(rows) + 60),
        margin=dict(l=10, r=10, t=40, b=10),
        plot_bgcolor="white",
    )
    return fig


def candidates_figure(
    labels: Sequence[str],
    probs: Sequence[float],
    chosen: int | None = None,
    title: str = "",
    sampled: Sequence[float] | None = None,
) -> go.Figure:
    """Horizontal bars of the candidates for one position, most likely on top.

    probs: the model's own probability of each candidate (bars); ``sampled``,
    if given, the probability after temperature/top-k/top-p, drawn as markers.
    ``chosen`` is the index (into labels) of the token the sampler actually
    drew; its bar is highlighted. Labels are printable token strings.
    """
    labels = [plot_label(s) for s in labels]
    probs = [float(p) for p in probs]
    colors = ["#d62728" if i == chosen else "#1f77b4" for i in range(len(labels))]
    names = [f"{i + 1}. {s}" for i, s in enumerate(labels)]  # the rank keeps equal labels apart
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            name="the model's probability",
            marker_color=colors,
            showlegend=False,  # a legend swatch takes the first bar's colour, which changes with the drawn token
            text=[f"{p:.1%}" for p in probs],
            textposition="inside",
            insidetextanchor="start",  # at the bar's root, clear of the markers near its end
            hovertemplate="%{y}<br>model's probability %{x:.4f}<extra></extra>",
        )
    )
    top = max(probs + [1e-9])
    if sampled is not None:
        sampled = [float(p) for p in sampled]
        top = max([top] + sampled)
        fig.add_trace(
            go.Scatter(
                x=sampled,
                y=names,
                mode="markers",
                name="after temperature, top-k, top-p",
                marker=dict(symbol="diamond", size=11, color="#ff7f0e", line=dict(width=1, color="black")),
                hovertemplate="%{y}<br>drawn with probability %{x:.4f}<extra></extra>",
            )
        )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="probability", range=[0, top * 1.15], tickformat=".0%")
    fig.update_layout(
        title=plot_label(title) or None,
        height=max(220, 28 * len(labels) + 110),
        margin=dict(l=10, r=10, t=50 if title else 20, b=10),
        showlegend=sampled is not None,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
    )
    return fig


def temperature_figure(
    probs: np.ndarray,
    reference: np.ndarray,
    vocab_labels: Sequence[str],
    temperature: float,
    k: int = 15,
) -> go.Figure:
    """The next-token distribution at ``temperature`` beside the model's own (T = 1).

    probs, reference: (V,) probability vectors. The k tokens shown are the top k
    of the reference, so bars stay in place while the temperature slider moves:
    a low temperature piles the mass onto the first bar, a high one flattens them.
    """
    probs = np.asarray(probs, dtype=float).ravel()
    reference = np.asarray(reference, dtype=float).ravel()
    if probs.shape != reference.shape or probs.size != len(vocab_labels):
        raise ValueError("probs, reference and vocab_labels must all have one entry per token")
    top = [i for i, _ in top_candidates(reference, k)]
    names = [f"{r + 1}. {plot_label(vocab_labels[i])}" for r, i in enumerate(top)]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=names,
            y=reference[top],
            name="temperature 1 (the model's own)",
            marker_color="rgba(120,120,120,0.35)",
            hovertemplate="%{x}<br>at temperature 1: %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=probs[top],
            name=f"temperature {temperature:g}",
            marker_color="#ff7f0e",
            hovertemplate=f"%{{x}}<br>at temperature {temperature:g}: %{{y:.4f}}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category", tickangle=-45)
    fig.update_yaxes(title="probability", range=[0, 1.02], tickformat=".0%")
    fig.update_layout(
        barmode="overlay",
        bargap=0.25,
        title=(
            f"next token at temperature {temperature:g}: entropy {entropy(probs):.2f} nats "
            f"(model's own: {entropy(reference):.2f})"
        ),
        height=380,
        margin=dict(l=10, r=10, t=60, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    return fig


# --- looking inside a model: surprise, logit lens, embeddings, head scores ---

# Surprise (bits) at which a token's background is fully red; 0 bits is white.
SURPRISE_FULL_BITS = 8.0


def surprise_html(tokens: Sequence[str], result: TokenLosses, token_str: Callable[[int], str]) -> str:
    """The text as HTML, each predicted token on a background as red as its surprise in bits.

    tokens: the T token strings of the text (the first one has no prediction);
    hovering a token shows its surprise, rank, probability and the top candidates.
    """
    bits = result.bits.tolist()
    spans = [f'<span title="first token: nothing to predict it from">{html.escape(tokens[0])}</span>']
    for i, tok in enumerate(tokens[1:]):
        shade = min(1.0, bits[i] / SURPRISE_FULL_BITS)
        cands = ", ".join(
            f"{token_str(int(t))!r} {float(p):.0%}" for t, p in zip(result.top_ids[i], result.top_probs[i])
        )
        tip = (
            f"{bits[i]:.2f} bits (p = {float(result.probs[i]):.3f}, rank {int(result.ranks[i])}); "
            f"the model expected: {cands}"
        )
        style = f"background: rgba(220, 40, 40, {shade:.2f}); border-radius: 2px"
        spans.append(f'<span title="{html.escape(tip)}" style="{style}">{html.escape(tok)}</span>')
    body = "".join(spans)
    return f'<div style="white-space: pre-wrap; font-family: monospace; line-height: 1.7">{body}</div>'


LENS_CELL_CHARS = 4  # a predicted token longer than this is cut (with …) inside its cell; the hover has it whole
LENS_FONT_SIZE = 13


def logit_lens_heatmap(lens: torch.Tensor, tokens: Sequence[str], token_str: Callable[[int], str], title: str = "") -> go.Figure:
    """Layers x positions: each cell writes the top next-token guess, coloured by its probability.

    lens: (L+1, T, V) log-probabilities from ``interpret.logit_lens``. The rows
    read from the top down as the text flows through the model: the embedding
    first, then each block; the bottom row, after the last block, is the
    model's own output (its real prediction). Positions: as many as the caller
    passes; on a page's width about 24 one-character guesses stay legible, or
    12 of up to ``LENS_CELL_CHARS`` characters.
    """
    probs = lens.exp()
    top_p, top_i = probs.max(-1)  # (L+1, T)
    layers, T = top_p.shape
    guesses = [[token_str(int(i)) for i in row] for row in top_i]
    cut = [[g if len(g) <= LENS_CELL_CHARS else g[: LENS_CELL_CHARS - 1] + "…" for g in row] for row in guesses]
    rows = ["embedding"] + [f"after block {i}" for i in range(layers - 1)]
    rows[-1] += " = output"
    fig = go.Figure(
        go.Heatmap(
            z=top_p.numpy(),
            x=list(range(T)),
            y=rows,
            text=[[plot_label(g) for g in row] for row in cut],
            texttemplate="%{text}",
            textfont=dict(size=LENS_FONT_SIZE),
            customdata=np.array(
                [[[plot_label(t), plot_label(g)] for t, g in zip(tokens, row)] for row in guesses], dtype=object
            ),
            hovertemplate="%{y}, after #%{x} %{customdata[0]}: guesses %{customdata[1]} (p = %{z:.2f})<extra></extra>",
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar=dict(title="p(top)"),
            xgap=1,
            ygap=1,
        )
    )
    fig.update_xaxes(
        title="position: the token just read",
        tickmode="array",
        tickvals=list(range(T)),
        ticktext=[plot_label(t) for t in tokens],
        tickangle=0 if max((len(t) for t in tokens), default=0) <= 2 else -60,
        tickfont=dict(size=LENS_FONT_SIZE),
    )
    fig.update_yaxes(autorange="reversed")  # the embedding on top, the output at the bottom
    fig.update_layout(title=plot_label(title) or None, height=170 + 46 * layers, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def token_kind(s: str) -> str:
    """letter, digit, space, punctuation or other, by the first character of a token's printable form.

    ``token_str`` shows a space as ␣ and a newline or tab as \\n or \\t; <|...|> marks a special token.
    """
    if not s or (s.startswith("<|") and s.endswith("|>")):
        return "other"
    if s[0] == "␣" or s.startswith(("\\n", "\\t", "\\r")):
        return "space"
    c = s[0]
    if c.isalpha():
        return "letter"
    if c.isdigit():
        return "digit"
    if c.isspace():
        return "space"
    if c.isprintable():
        return "punctuation"
    return "other"


def embedding_scatter(emap: EmbeddingMap, labels: Sequence[str], title: str = "", n_neighbours: int = 3) -> go.Figure:
    """The tokens at their first two PCA coordinates, coloured by kind; hover lists the nearest neighbours."""
    coords = emap.coords.numpy()
    kinds = [token_kind(s) for s in labels]
    fig = go.Figure()
    for kind in ("letter", "digit", "space", "punctuation", "other"):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        hover = [
            f"{plot_label(repr(labels[i]))}<br>nearest: "
            + ", ".join(f"{plot_label(repr(labels[j]))} {c:.2f}" for j, c in emap.neighbours(i, n_neighbours))
            for i in idx
        ]
        fig.add_trace(
            go.Scatter(
                x=coords[idx, 0],
                y=coords[idx, 1] if coords.shape[1] > 1 else np.zeros(len(idx)),
                mode="markers+text",
                text=[plot_label(labels[i]) for i in idx],
                textposition="top center",
                hovertext=hover,
                hoverinfo="text",
                name=kind,
            )
        )
    ev = [f"{100 * float(v):.1f}%" for v in emap.explained]
    fig.update_xaxes(title=f"PC 1 ({ev[0]} of the variance)")
    fig.update_yaxes(title=f"PC 2 ({ev[1]} of the variance)" if len(ev) > 1 else "")
    fig.update_layout(title=plot_label(title) or None, height=560, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def head_score_history(history: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(step, {score name: (L, H) array}) for each evaluation record that carries head scores."""
    points = []
    for record in history:
        scores = record.get("head_scores") if isinstance(record, dict) else getattr(record, "head_scores", None)
        step = record.get("step") if isinstance(record, dict) else getattr(record, "step", None)
        if scores and step is not None:
            points.append((int(step), {k: np.asarray(scores[k], dtype=float) for k in HEAD_SCORE_KEYS}))
    return points


def head_score_figure(points: Sequence[tuple[int, dict[str, np.ndarray]]], score: str = "induction", unit: str = "head") -> go.Figure:
    """One line per layer and head: the chosen score over training steps (from ``head_score_history``)."""
    if score not in HEAD_SCORE_KEYS:
        raise ValueError(f"unknown head score {score!r}")
    steps = [s for s, _ in points]
    fig = go.Figure()
    if points:
        L, H = points[0][1][score].shape
        for layer in range(L):
            for head in range(H):
                fig.add_trace(
                    go.Scatter(
                        x=steps,
                        y=[p[score][layer, head] for _, p in points],
                        mode="lines+markers",
                        name=f"L{layer} {unit[0].upper()}{head}",
                        customdata=[[layer, head]] * len(steps),
                        hovertemplate=f"layer {layer} · {unit} {head}<br>step %{{x}}: %{{y:.2f}}<extra></extra>",
                    )
                )
    fig.update_xaxes(title="step")
    fig.update_yaxes(title=f"{score.replace('_', '-')} score", range=[0, 1.02])
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10))
    return fig


_LATEX_SPECIAL = {c: "\\" + c for c in "#$%&_{}"} | {"\\": r"\textbackslash{}", "^": r"\^{}", "~": r"\~{}", " ": "␣"}


def latex_text(s: str) -> str:
    """Token text made safe inside a LaTeX text command (special characters escaped, spaces shown as ␣)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in s)


def surprise_summary(result: TokenLosses) -> dict[str, float]:
    """Mean surprise in bits and nats, perplexity, and the share of tokens that were the top guess."""
    mean = result.mean
    return {
        "bits": mean / math.log(2),
        "nats": mean,
        "perplexity": math.exp(mean) if mean < 700 else math.inf,
        "top1": float((result.ranks == 1).float().mean()),
    }


# --- interventions: ablation, patching, attribution (lmcore.intervene) ---

# Loss change (nats) at which a token's background is fully coloured.
LOSS_CHANGE_FULL_NATS = 3.0


def loss_change_html(
    tokens: Sequence[str],
    change: Sequence[float],
    before: Sequence[float],
    after: Sequence[float],
    top_before: Sequence[Sequence[tuple[int, float]]],
    top_after: Sequence[Sequence[tuple[int, float]]],
    token_str: Callable[[int], str],
) -> str:
    """The text as HTML, each predicted token red where an intervention raised its loss, blue where it lowered it.

    Index i of the sequences is about tokens[i + 1]; hovering a token shows
    its loss before and after and the model's top guesses both ways.
    """
    spans = [f'<span title="first token: nothing to predict it from">{html.escape(tokens[0])}</span>']
    for i, tok in enumerate(tokens[1:]):
        d = float(change[i])
        shade = min(1.0, abs(d) / LOSS_CHANGE_FULL_NATS)
        rgb = "220, 40, 40" if d > 0 else "40, 90, 220"
        guesses = lambda top: ", ".join(f"{token_str(int(t))!r} {float(p):.0%}" for t, p in top)  # noqa: E731
        tip = (
            f"loss {float(before[i]):.2f} -> {float(after[i]):.2f} nats ({d:+.2f}); "
            f"before: {guesses(top_before[i])}; after: {guesses(top_after[i])}"
        )
        style = f"background: rgba({rgb}, {shade:.2f}); border-radius: 2px"
        spans.append(f'<span title="{html.escape(tip)}" style="{style}">{html.escape(tok)}</span>')
    body = "".join(spans)
    return f'<div style="white-space: pre-wrap; font-family: monospace; line-height: 1.7">{body}</div>'


def intervention_heatmap(
    table: np.ndarray | torch.Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str = "",
    value: str = "value",
    x_title: str = "",
    diverging: bool = True,
) -> go.Figure:
    """A (rows, columns) table of an intervention's effect (patching or ablation), one cell per part.

    Diverging colours around 0 (red up, blue down) unless ``diverging`` is False.
    Columns are positions or heads; their labels are shown as they are (escaped).
    """
    z = np.asarray(table, dtype=float)
    if z.shape != (len(rows), len(columns)):
        raise ValueError(f"a table of shape {z.shape} does not match {len(rows)} rows and {len(columns)} columns")
    finite = z[np.isfinite(z)]
    if diverging:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        colors = dict(colorscale="RdBu_r", zmin=-(bound or 1.0), zmax=bound or 1.0, zmid=0.0)
    else:
        colors = _color_args(z)
    labels = [plot_label(c) for c in columns]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(len(columns))),
            y=list(rows),
            customdata=np.array([labels] * len(rows), dtype=object),
            hovertemplate=f"%{{y}}, %{{customdata}}: {value} %{{z:.3f}}<extra></extra>",
            hoverongaps=False,
            colorbar=dict(title=value),
            **colors,
        )
    )
    fig.update_xaxes(title=x_title, tickmode="array", tickvals=list(range(len(columns))), ticktext=labels,
                     tickangle=-60 if len(columns) > 12 else 0, showgrid=False)  # fmt: skip
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_layout(title=plot_label(title) or None, height=140 + 34 * len(rows),
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10), plot_bgcolor="white")  # fmt: skip
    return fig


def attribution_figure(parts: Mapping[str, float], title: str = "") -> go.Figure:
    """Direct logit attribution as bars: what each part wrote toward the chosen token's logit."""
    names = list(parts)
    values = [float(parts[n]) for n in names]
    fig = go.Figure(
        go.Bar(
            x=[plot_label(n) for n in names],
            y=values,
            marker_color=["#dc2626" if v > 0 else "#2563eb" for v in values],
            hovertemplate="%{x}: %{y:+.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(title="contribution to the logit", zeroline=True)
    fig.update_layout(title=plot_label(title) or None, height=340, margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    return fig
