"""Surprise: where a model is surprised by a text, what each layer already predicts, which tokens it finds alike."""

from __future__ import annotations

import streamlit as st

from lmcore import viz
from lmcore.errors import LMCoreError
from lmcore.interpret import embedding_map, logit_lens, token_losses
from ui import models, state
from ui.boundary import user_errors
from ui.figure import show_figure
from ui.shell import require_app

MAX_TOKENS = 512  # surprise is computed for at most this many tokens of the text
LENS_TOKENS = 24  # positions of one-character tokens a logit-lens heatmap shows legibly (half as many longer ones)
TEXTS = (
    "The value of the expression is returned when the function ends.",
    "def main(): return 0",
    "get_value",
    "name",
)

require_app()
st.title("Surprise")
st.write(
    "How surprised is the model by each token of a text? A token it expected costs few bits "
    "(1 bit: it was a coin flip between two guesses); one it did not expect costs many. "
    "Redder means more surprised; hover a token for the model's own top guesses. "
    "The logit lens shows what the model would predict if it stopped after each layer, "
    "and the embedding map which tokens it has learnt to treat alike."
)

choice = models.select_model(state.SURPRISE_MODEL_A)
if choice is None:
    models.no_model_yet("measure surprise with")
    st.stop()
with user_errors():
    model, tokenizer, data_info = models.load_choice(choice)

text = st.text_area(
    "Text",
    key=state.keep_default(state.SURPRISE_TEXT, models.default_prompt(tokenizer, data_info, TEXTS)),
    height=110,
    help="Any text the model's tokenizer can encode; the first token has nothing to predict it from.",
)
with user_errors():
    ids = models.encode_prompt(tokenizer, text, data_info)
if len(ids) < 2:
    st.info("Type a text of at least two tokens to see how surprised the model is by it.")
    st.stop()
if len(ids) > MAX_TOKENS:
    st.caption(f"The text has {len(ids)} tokens; only its first {MAX_TOKENS} are scored.")
    ids = ids[:MAX_TOKENS]
tokens = [tokenizer.token_str(i) for i in ids]


def show_surprise(model, tokenizer, ids: list[int], tokens: list[str]) -> None:
    result = token_losses(model, ids)
    summary = viz.surprise_summary(result)
    st.markdown(viz.surprise_html(tokens, result, tokenizer.token_str), unsafe_allow_html=True)
    st.caption(
        f"Mean surprise {summary['bits']:.2f} bits per token ({summary['nats']:.3f} nats, "
        f"perplexity {summary['perplexity']:.1f}); the true token was the top guess "
        f"{summary['top1']:.0%} of the time."
    )


def reads_text(text: str, avoid: str, tries: int = 8) -> str | None:
    """The first model choice other than ``avoid`` whose tokenizer reads ``text`` as two tokens or more."""
    for _, key in models.model_choices()[:tries]:
        if key == avoid:
            continue
        try:
            _, tok, info = models.load_choice(key)
            if len(models.encode_prompt(tok, text, info)) >= 2:
                return key
        except LMCoreError:
            continue
    return None


tab_surprise, tab_lens, tab_emb = st.tabs(["Surprise", "Logit lens", "Embedding map"])

with tab_surprise:
    compare = st.checkbox("Compare with a second model", key=state.keep_default(state.SURPRISE_COMPARE, False))
    if not compare:
        with user_errors(stop=False):
            show_surprise(model, tokenizer, ids, tokens)
    else:
        left, right = st.columns(2)
        with left:
            st.markdown(f"**{dict((k, t) for t, k in models.model_choices()).get(choice, choice)}**")
            with user_errors(stop=False):
                show_surprise(model, tokenizer, ids, tokens)
        with right:
            kept = st.session_state.setdefault(state.KEPT, {})
            if state.SURPRISE_MODEL_B not in st.session_state and state.SURPRISE_MODEL_B not in kept:
                readable = reads_text(text, avoid=choice)  # first time: a model whose vocabulary reads the text
                if readable is not None:
                    st.session_state[state.SURPRISE_MODEL_B] = readable
            other = models.select_model(state.SURPRISE_MODEL_B, label="Second model", avoid=choice)
            with user_errors(stop=False):
                model_b, tokenizer_b, info_b = models.load_choice(other)
                ids_b = models.encode_prompt(tokenizer_b, text, info_b)[:MAX_TOKENS]
                if len(ids_b) < 2:
                    st.info("The second model's tokenizer reads fewer than two tokens in this text.")
                else:
                    show_surprise(model_b, tokenizer_b, ids_b, [tokenizer_b.token_str(i) for i in ids_b])

with tab_lens:
    st.write(
        "Each row passes the residual stream after one layer through the model's final norm and "
        "output head: the cell writes the token it would predict next, its colour that token's probability. "
        "Read it from the top down: the top row reads the embedding alone (before any block), each row below "
        "adds one block, and the bottom row (after the last block) is the model's real prediction."
    )
    # Guesses stay legible in cells at most this many to a row: one-character tokens, or longer ones.
    fits = LENS_TOKENS if tokenizer.kind == "char" else LENS_TOKENS // 2
    available = min(len(ids), model.max_context or len(ids))  # positions the model reads in one pass
    limit = min(fits, available)
    start = 0
    if available > limit:
        start = st.slider("First position shown", 0, available - limit, 0, key="surprise.lens_start",
                          help=f"{limit} positions fit the width with their guesses legible.")  # fmt: skip
    if len(ids) > limit:
        beyond = f"; the model reads at most {available} at once" if available < len(ids) else ""
        st.caption(f"Showing positions {start} to {start + limit - 1} of {len(ids)}{beyond}.")
    with user_errors(stop=False):
        lens = logit_lens(model, ids[: start + limit])[:, start:]
        show_figure(
            viz.logit_lens_heatmap(lens, tokens[start : start + limit], tokenizer.token_str, title="logit lens"),
            key="surprise.lens", model=models.choice_name(choice), prompt=text,
        )

with tab_emb:
    st.write(
        "Every token's embedding vector, projected onto its two main directions (PCA). Tokens the "
        "model treats alike sit together; hover a point for its nearest neighbours by cosine similarity."
    )
    with user_errors(stop=False):
        emap = embedding_map(model, k=2)
        labels = [tokenizer.token_str(i) for i in range(model.config.vocab_size)]
        show_figure(viz.embedding_scatter(emap, labels, title="token embeddings"), key="surprise.emb",
                    model=models.choice_name(choice))
