"""Data page: choose the text the model learns from, look at it, and split it."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import streamlit as st

from lmcore.data import BUILTIN_CORPORA, MAX_CORPUS_BYTES, Corpus, corpus_from_text, corpus_stats, load_corpus
from lmcore.errors import LMCoreError
from ui import state as S
from ui.boundary import user_errors
from ui.flow import (
    PAGE_VOCABULARY,
    describe_corpus,
    load_builtin,
    prepared,
    prepared_folders,
    require_corpus,
    set_corpus,
    use_prepared,
)
from ui.render import md
from ui.shell import require_app
from ui.state import data_dir, keep_default

SOURCES = ("Built-in", "Upload a file", "Paste text", "From a URL", "Prepared folder")
DOCUMENT_CORPORA = ("python-names",)  # built-in corpora that are lists of documents
PREVIEW_CHARS = 3000
PREVIEW_DOCS = 40
MAX_MB = MAX_CORPUS_BYTES / 1e6
# The address box reaches public addresses only: a browser user must not reach what only
# this server can (its own services, its local network). The server's operator may allow it.
ALLOW_LOCAL_URLS = os.environ.get("LMCORE_ALLOW_LOCAL_URLS") == "1"

require_app()

st.title("Data")
st.markdown(
    "A language model learns one thing: to predict the next piece of text from the text before it. "
    "Everything it will ever know comes from the **corpus** you choose here, so its style, vocabulary "
    "and mistakes all start on this page. A built-in corpus is already selected, so you can go straight on."
)

current = require_corpus()


def _on_builtin_change() -> None:
    # A list of names is read one document per line; prose and code as one stream.
    name = st.session_state[S.DATA_BUILTIN]
    st.session_state[S.DATA_DOCUMENTS] = name in DOCUMENT_CORPORA
    # The corpus becomes the session's here, in the callback (which runs to its end before
    # anything else): a click on another page could cut this page's own run short.
    with contextlib.suppress(LMCoreError):  # the page says what is wrong when it draws
        if set_corpus(load_builtin(name, st.session_state[S.DATA_DOCUMENTS]), redraw=False):
            st.session_state[_CORPUS_TOAST] = name


_CORPUS_TOAST = "data_corpus_set"  # the corpus a callback set, for the page's toast


@st.cache_data(show_spinner=False, max_entries=16)
def _stats(cid: str, _corpus: Corpus) -> dict[str, int]:
    return corpus_stats(_corpus)


source = st.radio("Where the text comes from", SOURCES, horizontal=True, key=keep_default(S.DATA_SOURCE, SOURCES[0]))
keep_default(S.DATA_DOCUMENTS, current.documents)
new: Corpus | None = None

if source == "Built-in":
    names = list(BUILTIN_CORPORA)
    name = st.selectbox(
        "Built-in corpus",
        names,
        key=keep_default(S.DATA_BUILTIN, current.name if current.name in names else S.DEFAULT_CORPUS),
        format_func=lambda n: f"{n}: {BUILTIN_CORPORA[n]}",
        on_change=_on_builtin_change,
        help="These ship with Python itself: no download needed.",
    )
    with user_errors(stop=False):
        new = load_builtin(name, st.session_state[S.DATA_DOCUMENTS])

elif source == "Upload a file":
    upload = st.file_uploader(
        f"A plain-text file (UTF-8, up to {MAX_MB:.0f} MB)",
        type=["txt"],
        key="data_upload",
        help="Any UTF-8 .txt file: a book, your notes, a list of names (one per line, with documents mode on).",
    )
    if upload is not None and st.session_state.get(S.UPLOAD_ID) != upload.file_id:
        with user_errors(stop=False):
            new = corpus_from_text(upload.getvalue(), name=upload.name, documents=st.session_state[S.DATA_DOCUMENTS])
            st.session_state[S.UPLOAD_ID] = upload.file_id

elif source == "Paste text":
    pasted = st.text_area("Paste or type text", key=keep_default(S.DATA_PASTE, ""), height=200, placeholder="Some text to learn from…")
    if st.button("Use this text", type="primary"):
        with user_errors(stop=False):
            new = corpus_from_text(pasted or "", name="pasted text", documents=st.session_state[S.DATA_DOCUMENTS])

elif source == "Prepared folder":
    st.caption(
        f"A folder written by `python -m lmcore prepare --out DIR` (train.bin, val.bin, meta.json) under "
        f"`{md(str(data_dir()))}` on this server. Training reads it from disk in batches, so it may be far larger "
        "than memory; its vocabulary and split come with it."
    )
    folders = prepared_folders()
    picked = st.selectbox("Prepared folders", folders, index=None, key="data_prepared_pick",
                          placeholder="Choose a folder" if folders else "None found: prepare one there first")  # fmt: skip
    typed = st.text_input("Or its path under that folder", key="data_prepared_path", placeholder="tinystories")
    if st.button("Use this folder", type="primary", key="data_prepared_use"):
        with user_errors(stop=False):
            use_prepared(typed or picked or "")
            st.toast(f"Corpus set: the prepared folder {md(st.session_state[S.CORPUS].name)}", icon=":material/check:")

else:
    url = st.text_input("Address of a plain-text file", key=keep_default(S.DATA_URL, ""), placeholder="https://example.org/book.txt")
    st.caption(
        f"Downloaded once and kept in a local cache; up to {MAX_MB:.0f} MB of UTF-8 text"
        + ("." if ALLOW_LOCAL_URLS else " from a public web address.")
    )
    if st.button("Fetch", type="primary"):
        with st.spinner("Downloading…"), user_errors(stop=False):
            new = load_corpus(
                url or "",
                documents=st.session_state[S.DATA_DOCUMENTS],
                allow_local=False,
                allow_local_urls=ALLOW_LOCAL_URLS,
            )

shards = None
with user_errors(stop=False):  # a folder removed since: say so, and let another source be chosen
    shards = prepared()
documents = False if shards is not None else st.toggle(
    "Documents mode: one document per line",
    key=keep_default(S.DATA_DOCUMENTS, current.documents),
    help="For lists of short texts (names, titles): each line becomes one document, separated by a special "
    "start token, and generation stops at the end of a document.",
)

if (new is not None and set_corpus(new)) or st.session_state.pop(_CORPUS_TOAST, None):
    st.toast(f"Corpus set: {md(st.session_state[S.CORPUS].name)}", icon=":material/check:")
corpus = st.session_state[S.CORPUS]
if corpus.documents != documents:
    corpus = dataclasses.replace(corpus, documents=documents)
    set_corpus(corpus)

st.subheader("The corpus in use")
if shards is not None:
    meta = shards.meta
    st.markdown(f"The prepared folder **{md(corpus.name)}** (`{md(corpus.source)}`), from {md(str(meta.get('source', '?')))}.")
    cols = st.columns(4)
    cols[0].metric("Training tokens", f"{len(shards.train):,}")
    cols[1].metric("Validation tokens", f"{len(shards.val):,}")
    cols[2].metric("Text", f"{meta.get('bytes', 0) / 1e6:,.1f} MB")
    cols[3].metric("Vocabulary", f"{shards.tokenizer.vocab_size:,} ({shards.tokenizer.kind})")
    st.subheader("Preview")
    st.caption(f"The first {len(corpus.text):,} characters of the training split, decoded from its tokens.")
    st.code(corpus.text[:PREVIEW_CHARS], language=None, wrap_lines=True, height=300)
    st.markdown(
        "The split into training and validation tokens was made by `prepare`; training reads batches from "
        "these files through numpy.memmap, so the run's memory does not grow with the data."
    )
    st.page_link(PAGE_VOCABULARY, label="Next: the vocabulary it was prepared with", icon=":material/arrow_forward:")
    st.stop()
st.markdown(describe_corpus(corpus))
stats = _stats(st.session_state[S.CORPUS_ID], corpus)
cols = st.columns(5)
cols[0].metric("Characters", f"{stats['characters']:,}")
cols[1].metric("Lines", f"{stats['lines']:,}")
cols[2].metric("Unique characters", f"{stats['unique_chars']:,}")
cols[3].metric("Words", f"{stats['words']:,}")
cols[4].metric("Documents", f"{stats['documents']:,}", help="One per line in documents mode, else the whole text is one.")

st.subheader("Preview")
if corpus.documents:
    docs = corpus.docs
    st.caption(f"The first {min(PREVIEW_DOCS, len(docs))} of {len(docs):,} documents, one per line.")
    st.code("\n".join(docs[:PREVIEW_DOCS]), language=None, height=300)
else:
    shown = corpus.text[:PREVIEW_CHARS]
    more = f" of {len(corpus.text):,}" if len(corpus.text) > PREVIEW_CHARS else ""
    st.caption(f"The first {len(shown):,}{more} characters, exactly as the model will see them.")
    st.code(shown, language=None, wrap_lines=True, height=300)

st.subheader("Training and validation split")
fraction = st.slider(
    "Share kept for validation",
    min_value=0.05,
    max_value=0.5,
    step=0.05,
    key=keep_default(S.DATA_VAL, S.DEFAULT_VAL_FRACTION),
    format="%.2f",
    help="The model never trains on this part; its loss there tells whether it learned the language or "
    "memorised the training text.",
)
st.session_state[S.VAL_FRACTION] = float(fraction)
n_val = int(len(corpus.text) * fraction)
st.markdown(
    f"The model trains on the first **{1 - fraction:.0%}** (about {len(corpus.text) - n_val:,} characters) and is "
    f"checked on the last **{fraction:.0%}** (about {n_val:,} characters). The split is made on tokens, after the "
    "next step, always at the same place, so runs can be compared."
)

st.page_link(PAGE_VOCABULARY, label="Next: build the vocabulary", icon=":material/arrow_forward:")
