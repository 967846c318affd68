"""Figures for looking inside a model: surprise-coloured text, logit lens, embedding map, head scores.

Plain data in (tensors, lists, the results of ``lmcore.interpret``), a plotly
figure or an HTML string out; no Streamlit here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from lmcore.interpret import HEAD_SCORE_KEYS, EmbeddingMap, TokenLosses
from lmcore.viz import plot_label

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


def logit_lens_heatmap(lens: torch.Tensor, tokens: Sequence[str], token_str: Callable[[int], str], title: str = "") -> go.Figure:
    """Layers x positions: each cell writes the top next-token guess, coloured by its probability.

    lens: (L+1, T, V) log-probabilities from ``interpret.logit_lens``.
    """
    probs = lens.exp()
    top_p, top_i = probs.max(-1)  # (L+1, T)
    layers, T = top_p.shape
    text = [[plot_label(token_str(int(i))) for i in row] for row in top_i]
    rows = ["embedding"] + [f"after block {i}" for i in range(layers - 1)]
    fig = go.Figure(
        go.Heatmap(
            z=top_p.numpy(),
            x=list(range(T)),
            y=rows,
            text=text,
            texttemplate="%{text}",
            customdata=np.array([[plot_label(t) for t in tokens]] * layers),
            hovertemplate="%{y}, after #%{x} %{customdata}: guesses %{text} (p = %{z:.2f})<extra></extra>",
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar=dict(title="p(top)"),
        )
    )
    fig.update_xaxes(
        title="position: the token just read",
        tickmode="array",
        tickvals=list(range(T)),
        ticktext=[plot_label(t) for t in tokens],
        tickangle=-60,
    )
    fig.update_layout(title=plot_label(title) or None, height=160 + 40 * layers, margin=dict(l=10, r=10, t=40, b=10))
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
            f"{html.escape(repr(labels[i]))}<br>nearest: "
            + ", ".join(f"{html.escape(repr(labels[j]))} {c:.2f}" for j, c in emap.neighbours(i, n_neighbours))
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
