"""Session-state keys, defined once, and where the app keeps its files.

Every page reads and writes ``st.session_state`` through these names only.
Widget values that must survive a page switch use keys that start with
``KEEP`` ("keep.") and get their default through ``keep_default`` (never
through ``value=``): see there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CORPUS = "corpus"  # lmcore.data.Corpus chosen on the data page
VAL_FRACTION = "val_fraction"  # float, the share of tokens kept for validation
TOKENIZER = "tokenizer"  # lmcore.tokenizers.Tokenizer built on the vocabulary page
MODEL_CONFIG = "model_config"  # lmcore.models.ModelConfig from the model page
ACTIVE_JOB = "active_job"  # id of this session's current training job (lmcore.jobs)
COMPARE_JOBS = "compare_jobs"  # ids of runs overlaid on the training charts
LOADED_CHECKPOINT = "loaded_checkpoint"  # path (str) of the checkpoint loaded into the session

# Bookkeeping that tells whether the objects above still belong together.
CORPUS_ID = "corpus_id"  # str: a fingerprint of the corpus in CORPUS (see ui.flow.corpus_id)
TOKENIZER_CORPUS_ID = "tokenizer_corpus_id"  # str: CORPUS_ID of the corpus TOKENIZER was built from
ENCODED = "encoded"  # (key, train_ids, val_ids): the corpus encoded with TOKENIZER, split
NAME_FOR = "train.name_for"  # str: the model config (JSON) the typed run name belongs to
PREPARED = "prepared"  # (CORPUS_ID, folder str): the corpus is a folder written by `lmcore prepare`
BPE_ASKED = "vocab_bpe_asked"  # int: the vocabulary size the session's BPE was trained for

KEEP = "keep."  # prefix of widget keys whose values survive page switches
IN_APP = "_in_app"  # True while app.py runs a page (see ui.flow.require_app)

DEFAULT_CORPUS = "python-docs"  # the built-in corpus a newcomer starts with
DEFAULT_VAL_FRACTION = 0.1


KEPT = "_kept"  # dict: the last value of every persistent widget (see keep_default)


def keep_default(key: str, value: Any) -> str:
    """Make widget ``key`` keep its value across page switches; returns ``key`` for ``key=``.

    Call it just before drawing the widget. Streamlit drops the state of a
    widget that a run does not draw (the user is on another page), so every
    draw also records the value in a plain session-state dict that Streamlit
    never touches, and a widget whose state was dropped gets it back from there.
    A value set in code (``st.session_state[key] = v`` in a callback, or before
    the widget is drawn) wins, as it does for any widget. ``value`` is the
    first value, used once.
    """
    import streamlit as st

    assert key.startswith(KEEP), f"persistent widget keys start with {KEEP!r}: {key}"
    kept = st.session_state.setdefault(KEPT, {})
    if key in st.session_state:
        kept[key] = st.session_state[key]  # drawn in the last run, or set in code: the live value
    elif key in kept:
        st.session_state[key] = kept[key]  # dropped while another page was shown: restore it
    else:
        st.session_state[key] = kept[key] = value
    return key


def data_dir() -> Path:
    """Where the data page looks for prepared folders: $PLAYGROUND_DATA_DIR, else data/ in the project."""
    return Path(os.environ.get("PLAYGROUND_DATA_DIR") or ROOT / "data")


def checkpoint_dir() -> Path:
    """Where checkpoints live: $PLAYGROUND_CHECKPOINT_DIR, else checkpoints/ in the project."""
    path = Path(os.environ.get("PLAYGROUND_CHECKPOINT_DIR") or ROOT / "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path
