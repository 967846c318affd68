"""Attention: where each token of a prompt looks, per layer and head."""

from __future__ import annotations

import math

import streamlit as st

from lmcore import viz
from lmcore.interpret import HEAD_SCORE_KEYS
from ui import inside, models, state
from ui.boundary import user_errors
from ui.figure import show_figure
from ui.render import md
from ui.shell import require_app

# Beyond this many tokens a heatmap stops being readable; longer prompts keep their end.
MAX_SHOWN_TOKENS = 96
# Up to this many panels the overview grid shows every layer; above it, one layer.
MAX_GRID_PANELS = 48

# Starting prompts, tried in order: the first the model's tokenizer can encode is used.
ATTENTION_PROMPTS = ("The value of x is returned.", "def main(): return 0", "get_value", "name")

FOLLOW_S = 3.0  # how often the page checks a run in progress for a new evaluation


def _pick_head() -> None:
    """A click on the head-score chart: the "One head" tab's selectors move to that layer and head."""
    event = st.session_state.get("attention.scores")
    points = (event.get("selection", {}).get("points") if event else None) or []
    if points and points[0].get("customdata"):
        layer, head = (int(v) for v in points[0]["customdata"])
        st.session_state["attention.layer"], st.session_state["attention.head"] = layer, head


def _follow_run(job_id: str, evals_seen: int) -> None:
    """While the chosen run trains, redraw the page when it has a new evaluation (new weights and head scores)."""
    from lmcore.jobs import REGISTRY

    job = REGISTRY.get(job_id)
    if job is None:
        return
    if sum(1 for e in job.events_since(0) if e.is_eval) != evals_seen or not job.is_alive:
        st.rerun()


require_app()
st.title("Attention")
st.write(
    "A transformer decides what each token should pay attention to among the tokens before it. "
    "These heatmaps show those weights for a prompt you type: each row is a token, and its "
    "colours say how much of its attention went to each earlier token. Heads that look at the "
    "previous token, at the start of a word or at a matching bracket are how the model learns structure."
)

choice = models.select_model(state.ATTENTION_MODEL)
if choice is None:
    models.no_model_yet("look inside")
    st.stop()

with user_errors():
    model, tokenizer, data_info = models.load_choice(choice)
name = models.choice_name(choice)
run = models.running_job(choice)
if run is not None:
    evals_seen = sum(1 for e in run.events_since(0) if e.is_eval)
    st.caption(f"{md(run.name)} is training (step {models.job_step(run):,}): the page redraws at each of its evaluations.")
    st.fragment(_follow_run, run_every=FOLLOW_S)(run.id, evals_seen)

family = model.family  # which attention views apply: "attention", "implicit attention" or none
if family.attention is None:
    st.info(
        f"Attention maps are not available for this architecture ({model.config.arch}): it mixes "
        "information between tokens without attention weights. Pick a transformer or Mamba model."
    )
    st.stop()

unit = family.attention_unit
prompt = st.text_input(
    "Prompt",
    key=models.prompt_default(state.ATTENTION_PROMPT, tokenizer, data_info, ATTENTION_PROMPTS),
    help="Characters the tokenizer never saw in training are reported, not guessed.",
)

with user_errors():
    ids = models.encode_prompt(tokenizer, prompt, data_info)
if not ids:
    st.info("Type a prompt to see where its tokens look.")
    st.stop()

limit = min(MAX_SHOWN_TOKENS, model.max_context or MAX_SHOWN_TOKENS)
if len(ids) > limit:
    reason = "the model's context" if model.max_context and model.max_context <= MAX_SHOWN_TOKENS else "what a heatmap can show"
    st.caption(f"The prompt has {len(ids)} tokens, more than {reason} ({limit}); only its last {limit} are shown.")
    ids = ids[-limit:]

tokens = [tokenizer.token_str(i) for i in ids]
with user_errors():
    maps = model.attention_maps_for(ids)  # (L, H, T, T)
n_layer, n_head = maps.shape[0], maps.shape[1]
st.caption(f"{len(ids)} token{'' if len(ids) == 1 else 's'}, {n_layer} layers × {n_head} {unit}s.")
if family.attention == "implicit attention":
    signed = (
        " They are not probabilities: negative values mean a contribution of the opposite sign."
        if maps.min() < 0
        else " They are magnitudes, not probabilities: a row need not add up to 1."
    )
    st.caption(
        f"This model has no attention heads; these are its implicit attention maps, one per {unit}: "
        f"how much each earlier token contributes to a token's output through the state-space recurrence.{signed}"
    )
if family.attention_note:
    st.caption(family.attention_note)

tab_one, tab_grid, tab_avg = st.tabs([f"One {unit}", f"All {unit}s", f"Average over {unit}s"])

with tab_one:
    left, right = st.columns(2)
    layer = left.selectbox("Layer", range(n_layer), key="attention.layer")
    head = right.selectbox(unit.capitalize(), range(n_head), key="attention.head")
    focus = st.selectbox(
        "Highlight what one token attends to", [None, *range(len(tokens))], key="attention.focus",
        format_func=lambda i: "no token (hover a cell instead)" if i is None else f"#{i} {tokens[i]}",
    )  # fmt: skip
    show_figure(
        viz.attention_heatmap(maps[layer, head], tokens, title=f"layer {layer} · {unit} {head}", highlight=focus),
        key="attention.one", model=name, prompt=prompt,
    )
    if focus is not None:
        row = maps[layer, head][focus, : focus + 1]
        top = sorted(range(len(row)), key=lambda j: -float(row[j]))[:3]
        st.caption(f"Token #{focus} attends most to " + ", ".join(f"#{j} {md(tokens[j])} ({float(row[j]):.2f})" for j in top) + ".")

with tab_grid:
    if n_layer * n_head <= MAX_GRID_PANELS:
        grid_layers = None
    else:
        grid_layer = st.selectbox("Layer", range(n_layer), key="attention.grid_layer")
        grid_layers = [grid_layer]
        st.caption(f"{n_layer * n_head} maps are too many for one view; showing one layer at a time.")
    show_figure(viz.attention_grid(maps, tokens, unit=unit, layers=grid_layers), key="attention.grid", model=name, prompt=prompt)

with tab_avg:
    avg_layer = st.selectbox("Layer", range(n_layer), key="attention.avg_layer")
    show_figure(viz.attention_average_heatmap(maps[avg_layer], tokens, avg_layer, unit=unit), key="attention.avg",
                model=name, prompt=prompt)

st.subheader(f"{unit.capitalize()} roles over training")
points = viz.head_score_history(inside.training_history(choice))
if not points:
    st.caption(
        f"No {unit} scores were recorded for this model: runs of this app and of the command line "
        "measure them at every evaluation."
    )
else:
    st.write(
        f"At every evaluation the trainer measured each {unit} on a probe of random tokens repeated twice: "
        "how much attention goes to the previous token, to the first token (a resting place), and, in the "
        "repeated half, to the token that followed the current one last time (an induction head: the "
        "mechanism behind copying from context). Click a point to see that map for your prompt."
    )
    score = st.radio("Score", HEAD_SCORE_KEYS, horizontal=True, key="attention.score",
                     format_func=lambda k: k.replace("_", "-"))  # fmt: skip
    chart, beside = st.columns([3, 2])
    with chart:
        picked = show_figure(
            viz.head_score_figure(points, score, unit), key="attention.scores", model=name,
            on_select=_pick_head, selection_mode="points",
        )
    chosen = (picked.selection.points if picked else None) or []
    with beside:  # beside the chart, where the click was: not below it
        if chosen and chosen[0].get("customdata"):
            p_layer, p_head = (int(v) for v in chosen[0]["customdata"])
            show_figure(
                viz.attention_heatmap(maps[p_layer, p_head], tokens, title=f"layer {p_layer} · {unit} {p_head}"),
                key="attention.picked", model=name, prompt=prompt,
            )
            st.caption(f"The **One {unit}** tab shows it too, with a token to highlight.")
        else:
            st.caption(f"Click a point of the chart: that {unit}'s map for your prompt appears here.")

if family.attention == "attention":
    with st.expander("How it works"):
        d = model.config.head_dim
        st.latex(r"\mathrm{head}(X) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}} + M\right) V,"
                 r"\quad Q = X W_Q,\; K = X W_K,\; V = X W_V,\quad d = %d,\; \sqrt{d} = %.3f" % (d, math.sqrt(d)))  # fmt: skip
        row = maps[layer, head, -1, : len(ids)]
        top = row.argsort()[::-1][:3]
        st.write(
            f"M hides the future (−∞ above the diagonal). In layer {layer}, {unit} {head}, the last token "
            f"{tokens[-1]!r} spreads its attention over the {len(ids)} tokens so far; its largest weights:"
        )
        for j in top:
            st.latex(r"a_{%d,%d} = %.3f \quad (\texttt{%s})" % (len(ids) - 1, j, row[j], viz.latex_text(tokens[j])))
