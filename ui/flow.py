"""The journey's prerequisites: what each page needs from the steps before it.

A page calls ``require_corpus()``, ``require_tokenizer()`` or
``require_model_config()`` and gets the session's object, or a sensible default
(the built-in python-docs corpus, a character vocabulary, a tiny gpt2) with a
note and a link to the page where it can be changed. So a newcomer can click
straight through, and no page fails because an earlier one was skipped.

A corpus may also be a folder written by ``python -m lmcore prepare`` on the
server's disk: its tokenizer is the session's and its splits are read through
numpy.memmap, never loaded whole (``use_prepared``, ``prepared``).

Also here: the corpus encoded with the tokenizer and split (computed once per
corpus, tokenizer and split), the architectures the model page offers, and the
fingerprints that tell whether the objects in the session still belong together.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import streamlit as st
import torch

from lmcore.data import Corpus, TokenSource, build_tokenizer, encode_corpus, load_corpus, split_ids
from lmcore.errors import DataError
from lmcore.models import PRESETS, ModelConfig, preset_config, preset_family
from lmcore.shards import Prepared, is_prepared, load_prepared
from lmcore.tokenizers import Tokenizer
from ui import state as S
from ui.boundary import user_errors
from ui.render import md

# Page files, for st.page_link; app.py gives them titles and icons.
PAGE_DATA = "views/data.py"
PAGE_VOCABULARY = "views/vocabulary.py"
PAGE_MODEL = "views/model.py"
PAGE_TRAINING = "views/training.py"
PAGE_ATTENTION = "views/attention.py"
PAGE_GENERATION = "views/generation.py"
PAGE_SURPRISE = "views/surprise.py"
PAGE_CHECKPOINTS = "views/checkpoints.py"

# The architectures a user picks from (every family's presets) and their names on screen.
ARCH_CHOICES = tuple(PRESETS)
ARCH_LABELS = {name: preset_family(name).presets[name].label for name in PRESETS}
DEFAULT_ARCH = "gpt2"
DEFAULT_SIZE = "tiny"


# ------------------------------------------------------------------ fingerprints
def corpus_id(corpus: Corpus) -> str:
    """A short fingerprint of a corpus: its text and how it is read."""
    h = hashlib.sha1(corpus.text.encode("utf-8", errors="surrogatepass"))
    h.update(f"\0{corpus.documents}".encode())
    return h.hexdigest()[:16]


def tokenizer_id(tok: Tokenizer) -> str:
    """A short fingerprint of a tokenizer's vocabulary."""
    return hashlib.sha1(json.dumps(tok.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def set_corpus(corpus: Corpus, redraw: bool = True) -> bool:
    """Make ``corpus`` the session's corpus; False when it is the one already there.

    ``redraw=False`` from a widget's callback: the page has not drawn its sidebar yet (it will, with this).
    """
    cid = corpus_id(corpus)
    if st.session_state.get(S.CORPUS_ID) == cid:
        return False
    st.session_state[S.CORPUS] = corpus
    st.session_state[S.CORPUS_ID] = cid
    recipe = st.session_state.get(S.RECIPE_SAVED)
    if recipe is not None and recipe["corpus"] != cid:
        leave_recipe()  # another corpus: the recipe's training settings do not follow it
    if redraw:
        _redraw_setup()
    return True


def leave_recipe() -> list[str]:
    """Give back the training settings a recipe replaced; the keys given back.

    A setting the user changed since the recipe set it stays as it is. A
    short note for the training page says what came back.
    """
    recipe = st.session_state.pop(S.RECIPE_SAVED, None)
    if recipe is None:
        return []
    kept = st.session_state.setdefault(S.KEPT, {})
    back = []
    for key, before in recipe["before"].items():
        now = st.session_state.get(key, kept.get(key))
        if now != recipe["set"].get(key):
            continue  # changed by the user after the recipe: theirs
        if before is None:  # never set before the recipe: the page's default
            st.session_state.pop(key, None)
            kept.pop(key, None)
        else:
            st.session_state[key] = kept[key] = before
        back.append(key)
    st.session_state[S.RECIPE_NOTE] = (time.monotonic(), back)
    return back


def set_tokenizer(tok: Tokenizer) -> None:
    """Make ``tok`` the session's tokenizer, built from the session's current corpus."""
    st.session_state[S.TOKENIZER] = tok
    st.session_state[S.TOKENIZER_CORPUS_ID] = st.session_state.get(S.CORPUS_ID)
    _redraw_setup()


def set_model_config(cfg: ModelConfig, redraw: bool = True) -> None:
    """Make ``cfg`` (validated) the session's model config.

    ``redraw=False`` from a widget's callback: the page has not drawn its sidebar yet (it will, with this).
    """
    changed = st.session_state.get(S.MODEL_CONFIG) != cfg
    st.session_state[S.MODEL_CONFIG] = cfg
    if changed and redraw:
        _redraw_setup()


# Redraws the summary of what is set up; ui.sidebar (which imports this module) installs it.
_redraw_setup: Callable[[], None] = lambda: None


def show_setup_with(redraw: Callable[[], None]) -> None:
    """Call ``redraw`` whenever a page changes the corpus, vocabulary or model."""
    global _redraw_setup
    _redraw_setup = redraw


@st.cache_resource(show_spinner="Loading the built-in corpus…", max_entries=8)
def load_builtin(name: str, documents: bool = False) -> Corpus:
    """A built-in corpus, shared by every session (it is read-only)."""
    return load_corpus(f"builtin:{name}", documents=documents)


PREVIEW_TOKENS = 20_000  # of a prepared folder, decoded: what the pages show and probe as "the corpus"


def prepared_folders() -> list[str]:
    """The prepared folders under the data directory (and the directory itself), as paths relative to it."""
    root = S.data_dir()
    if not root.is_dir():
        return []
    found = [p for p in [root, *root.iterdir(), *root.glob("*/*")] if is_prepared(p)]
    return sorted(str(p.relative_to(root)) for p in found)


def use_prepared(folder: str) -> Corpus:
    """Make the prepared folder ``folder`` (under the data directory) the session's corpus and tokenizer.

    The corpus holds the first ``PREVIEW_TOKENS`` tokens of the training split,
    decoded (for previews and probes); training reads the splits from disk.
    DataError when the folder is outside the data directory or not from ``prepare``.
    """
    root = S.data_dir().resolve()
    if not folder.strip():
        raise DataError(f"choose a prepared folder, or type its path under {root}")
    path = (root / folder.strip()).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"only folders under {root} are read; prepare the data there (or set PLAYGROUND_DATA_DIR)")
    data = load_prepared(path)
    first = data.train.windows(torch.zeros(1, dtype=torch.long), min(len(data.train), PREVIEW_TOKENS))[0]
    corpus = Corpus(name=path.name or str(path), text=data.tokenizer.decode(first.tolist()), source=str(path))
    set_corpus(corpus)
    st.session_state[S.PREPARED] = (st.session_state[S.CORPUS_ID], str(path))
    set_tokenizer(data.tokenizer)
    return corpus


def prepared() -> Prepared | None:
    """The prepared folder the session's corpus comes from, or None for a text corpus.

    DataError when the folder was removed or damaged since it was chosen.
    """
    chosen = st.session_state.get(S.PREPARED)
    if chosen is None or chosen[0] != st.session_state.get(S.CORPUS_ID):
        return None
    return load_prepared(chosen[1])


# ------------------------------------------------------------------ prerequisites
def require_corpus() -> Corpus:
    """The session's corpus; loads the default built-in one on first use."""
    if S.CORPUS not in st.session_state:
        with user_errors():
            set_corpus(load_builtin(S.DEFAULT_CORPUS, False))
    return st.session_state[S.CORPUS]


def tokenizer_is_current() -> bool:
    """Whether the session's tokenizer was built from the session's current corpus."""
    return (
        st.session_state.get(S.TOKENIZER) is not None
        and st.session_state.get(S.TOKENIZER_CORPUS_ID) == st.session_state.get(S.CORPUS_ID)
    )


def require_tokenizer(announce: bool = True) -> Tokenizer:
    """The session's tokenizer, built from the current corpus.

    With none yet, or a character vocabulary from an earlier corpus, a character
    vocabulary is built on the spot (it takes a moment). A BPE vocabulary from an
    earlier corpus is not retrained behind the user's back: the page says so,
    links to the vocabulary page, and stops.
    """
    corpus = require_corpus()
    with user_errors():
        data = prepared()
    if data is not None:  # the folder's own vocabulary: its ids are on disk
        tok = st.session_state.get(S.TOKENIZER)
        if tok is None or not tokenizer_is_current() or tok.to_dict() != data.tokenizer.to_dict():
            set_tokenizer(data.tokenizer)
        return st.session_state[S.TOKENIZER]
    tok = st.session_state.get(S.TOKENIZER)
    if tok is not None and tokenizer_is_current():
        return tok
    if tok is not None and tok.kind != "char":
        st.warning(
            "The vocabulary was trained on a different corpus than the one now chosen. "
            "Train it again for this corpus before going on."
        )
        st.page_link(PAGE_VOCABULARY, label="Rebuild the vocabulary", icon=":material/arrow_forward:")
        st.stop()
    with user_errors():
        tok = build_tokenizer("char", corpus.text)
    set_tokenizer(tok)
    if announce:
        st.info(
            f"Using a character vocabulary ({tok.vocab_size} tokens) built from the corpus "
            f"'{md(corpus.name)}'. You can choose byte-level BPE instead on the Vocabulary page."
        )
    return tok


def require_model_config(announce: bool = True) -> ModelConfig:
    """The session's model config, sized to the current vocabulary; a tiny gpt2 by default."""
    tok = require_tokenizer(announce=announce)
    cfg = st.session_state.get(S.MODEL_CONFIG)
    if cfg is None:
        cfg = preset_config(DEFAULT_ARCH, DEFAULT_SIZE, tok.vocab_size)
        if announce:
            st.info("Using a tiny GPT-2 model. You can pick another architecture or size on the Model page.")
    elif cfg.vocab_size != tok.vocab_size:
        cfg = cfg.replace(vocab_size=tok.vocab_size)  # the vocabulary decides the embedding size
    set_model_config(cfg)
    return cfg


def val_fraction() -> float:
    return float(st.session_state.get(S.VAL_FRACTION, S.DEFAULT_VAL_FRACTION))


def encoded_split(
    tok: Tokenizer | None = None,
) -> tuple[torch.Tensor | TokenSource, torch.Tensor | TokenSource, torch.Tensor | TokenSource]:
    """(all ids, train ids, val ids) of the session's corpus under ``tok`` (default: the session's).

    Encoding a large corpus with BPE takes a few seconds, so the result is kept
    in the session until the corpus, the tokenizer or the split changes. A
    prepared folder gives its memmapped splits (all ids: the training split).
    Raises DataError / TokenizerError (the caller shows them).
    """
    corpus = require_corpus()
    tok = tok if tok is not None else require_tokenizer()
    data = prepared()
    if data is not None:
        if tok.to_dict() != data.tokenizer.to_dict():
            raise DataError(f"{corpus.name} was prepared with its own vocabulary; use it (Vocabulary page)")
        return data.train, data.train, data.val
    key = (st.session_state.get(S.CORPUS_ID), tokenizer_id(tok), val_fraction())
    cached = st.session_state.get(S.ENCODED)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2], cached[3]
    with st.spinner("Encoding the corpus…"):
        ids = encode_corpus(tok, corpus)  # (N,)
    train_ids, val_ids = split_ids(ids, val_fraction())
    st.session_state[S.ENCODED] = (key, ids, train_ids, val_ids)
    return ids, train_ids, val_ids


def describe_corpus(corpus: Corpus) -> str:
    """'python-docs (465,123 characters)' for markdown captions (the name escaped)."""
    mode = ", one document per line" if corpus.documents else ""
    return f"{md(corpus.name)} ({len(corpus.text):,} characters{mode})"
