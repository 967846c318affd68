"""Vocabulary page: turn text into token ids, and see what the tokens are."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st
import torch

from lmcore.data import DEFAULT_BPE_VOCAB, build_tokenizer, token_counts
from lmcore.viz import frequency_figure, token_length_figure
from ui import state as S
from ui.boundary import user_errors
from ui.figure import show_figure
from ui.flow import (
    PAGE_DATA,
    PAGE_MODEL,
    PREVIEW_TOKENS,
    encoded_split,
    prepared,
    require_corpus,
    require_tokenizer,
    set_tokenizer,
    tokenizer_is_current,
)
from ui.render import md, token_pieces, token_spans_html
from ui.shell import require_app
from ui.state import keep_default

KINDS = {"char": "Characters", "bpe": "Byte-level BPE"}
BPE_SIZES = S.BPE_SIZES
PROBE_CHARS = 240

require_app()

st.title("Vocabulary")
st.markdown(
    "A model cannot read letters; it reads numbers. The **tokenizer** cuts text into pieces (tokens) and gives "
    "each piece an id: one per character, or, with byte-level BPE, frequent runs of bytes merged into one "
    "token. Fewer, longer tokens mean shorter sequences, so the model sees more text per step, at the price "
    "of a larger vocabulary to learn."
)

corpus = require_corpus()
st.caption(f"Corpus: {md(corpus.name)}, {len(corpus.text):,} characters. Change it on the Data page.")
st.page_link(PAGE_DATA, label="Data page", icon=":material/arrow_back:")

shards = None
with user_errors(stop=False):
    shards = prepared()
if shards is not None:
    tok = require_tokenizer(announce=False)
    st.info(
        f"This corpus is a prepared folder: its vocabulary ({KINDS[tok.kind]}, {tok.vocab_size:,} tokens) was "
        "built by `python -m lmcore prepare` and its token ids are already on disk, so none is built here. "
        f"The counts below are of the first {PREVIEW_TOKENS:,} training tokens."
    )
    train_ids, val_ids = shards.train, shards.val
    ids = train_ids.windows(torch.zeros(1, dtype=torch.long), min(len(train_ids), PREVIEW_TOKENS))[0]
    n_tokens = len(train_ids) + len(val_ids)
else:
    tok = st.session_state.get(S.TOKENIZER)
    kind = st.radio(
        "Tokenizer",
        list(KINDS),
        format_func=KINDS.get,
        horizontal=True,
        key=keep_default(S.VOCAB_KIND, tok.kind if tok is not None else "char"),
        help="Characters: simple, small vocabulary, long sequences. BPE: learned merges, any Unicode text, shorter "
        "sequences.",
    )

    if kind == "char":
        if tok is None or tok.kind != "char" or not tokenizer_is_current():
            with user_errors():
                tok = build_tokenizer("char", corpus.text)
            set_tokenizer(tok)
        st.caption("One token per distinct character of the corpus, plus a start-of-document token.")
    else:
        size = st.select_slider(
            "Vocabulary size",
            options=BPE_SIZES,
            key=keep_default(S.VOCAB_SIZE, DEFAULT_BPE_VOCAB),
            help="256 byte tokens, one start-of-document token, and the rest learned merges.",
        )
        # The size asked for is remembered: a short text can run out of pairs and give fewer tokens.
        current_bpe = (
            tok is not None
            and tok.kind == "bpe"
            and tokenizer_is_current()
            and st.session_state.get(S.BPE_ASKED) == size
        )
        label = "Train BPE again" if current_bpe else "Train BPE"
        if st.button(label, type="primary" if not current_bpe else "secondary"):
            bar = st.progress(0.0, text="Learning merges…")

            def _progress(done: int, total: int) -> None:
                bar.progress(min(1.0, done / max(total, 1)), text=f"Learning merges: {done:,} of {total:,}")

            with user_errors():
                tok = build_tokenizer("bpe", corpus.text, vocab_size=int(size), progress=_progress)
            bar.empty()
            set_tokenizer(tok)
            st.session_state[S.BPE_ASKED] = size
            current_bpe = True
        if not current_bpe:
            st.info(
                f"Press **{label}** to learn {int(size) - 257:,} merges from the corpus (a few seconds for the "
                "built-in corpora). Until then the other pages use the vocabulary below."
                if tok is not None
                else f"Press **{label}** to learn the merges from the corpus."
            )
            if tok is None or not tokenizer_is_current():
                st.stop()

    with user_errors():
        ids, train_ids, val_ids = encoded_split(tok)
    n_tokens = len(ids)
counts = token_counts(ids, tok.vocab_size)
labels = [tok.token_str(i) for i in range(tok.vocab_size)]

st.subheader(f"{KINDS[tok.kind]}: {tok.vocab_size:,} tokens")
cols = st.columns(4)
cols[0].metric("Vocabulary size", f"{tok.vocab_size:,}")
cols[1].metric("Tokens in the corpus", f"{n_tokens:,}")
cols[2].metric("Characters per token", f"{len(corpus.text) / max(len(ids), 1):.2f}")
cols[3].metric("Tokens never used", f"{sum(1 for c in counts if c == 0):,}", help="Vocabulary entries that do not occur in the encoded corpus.")
st.caption(f"Training split: {len(train_ids):,} tokens · validation split: {len(val_ids):,} tokens.")

st.subheader("How often each token occurs")
c1, c2 = st.columns([3, 1])
top_n = c1.slider("Tokens shown", 10, 200, key=keep_default(S.VOCAB_TOP_N, 40), step=10)
log_y = c2.toggle("Log scale", key=keep_default(S.VOCAB_LOG, False))
show_figure(frequency_figure(labels, counts, top_n=top_n, log_y=log_y), key="vocab_freq")
st.caption("Spaces show as ␣, newlines as \\n, tabs as \\t; <|bos|> marks the start of a document.")

lengths = [len(tok.token_bytes(i)) for i in range(tok.vocab_size)]
if tok.kind == "bpe":
    st.subheader("How long the tokens are")
    weighted = st.toggle("Count tokens in the corpus instead of vocabulary entries", key=keep_default(S.VOCAB_BY_USE, False))
    show_figure(token_length_figure(lengths, counts if weighted else None), key="vocab_len")

st.subheader("The vocabulary")
total = max(sum(counts), 1)
table = pd.DataFrame(
    {
        "id": range(tok.vocab_size),
        "token": labels,
        "count": counts,
        "share": [100.0 * c / total for c in counts],
        "bytes": lengths,
    }
).sort_values(["count", "id"], ascending=[False, True])
st.dataframe(
    table,
    hide_index=True,
    height=320,
    column_config={
        "share": st.column_config.NumberColumn("share (%)", format="%.3f"),
        "bytes": st.column_config.NumberColumn("length (bytes)"),
    },
)
st.caption("Click a column title to sort by it.")

st.subheader("Token explorer")
default_probe = "\n".join(corpus.docs[:4]) if corpus.documents else corpus.text[:PROBE_CHARS]
if st.session_state.get(S.VOCAB_PROBE_FOR) != st.session_state.get(S.CORPUS_ID):
    # A new corpus: the explorer starts from its text (an old corpus's may hold characters this one lacks).
    st.session_state[S.VOCAB_PROBE] = st.session_state.setdefault(S.KEPT, {})[S.VOCAB_PROBE] = default_probe
    st.session_state[S.VOCAB_PROBE_FOR] = st.session_state.get(S.CORPUS_ID)
probe = st.text_area("Type any text to see how it is cut into tokens", key=keep_default(S.VOCAB_PROBE, default_probe), height=110)
with user_errors(stop=False):
    probe_ids = tok.encode(probe or "")
    st.markdown(token_spans_html(tok, token_pieces(tok, probe_ids)), unsafe_allow_html=True)
    st.caption(f"{len(probe or ''):,} characters → {len(probe_ids):,} tokens. Hover over a token to see its id.")

st.download_button(
    "Download the tokenizer (JSON)",
    data=json.dumps(tok.to_dict(), ensure_ascii=False, indent=1),
    file_name=f"tokenizer-{tok.kind}-{tok.vocab_size}.json",
    mime="application/json",
    icon=":material/download:",
)

st.page_link(PAGE_MODEL, label="Next: choose a model", icon=":material/arrow_forward:")
