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
ACTIVE_JOB = "active_job"  # id of this session's current training job (lmcore.jobs); always one it owns
OWNED_RUNS = "_owned_runs"  # {job id: job key}: the runs this session started or was handed (ui.ownership)
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

# The pages' widgets and bookkeeping. Widgets whose values survive page switches start with KEEP.
# Data page
DATA_SOURCE = KEEP + "data.source"
DATA_BUILTIN = KEEP + "data.builtin"
DATA_DOCUMENTS = KEEP + "data.documents"
DATA_PASTE = KEEP + "data.paste"
DATA_URL = KEEP + "data.url"
DATA_VAL = KEEP + "data.val"
UPLOAD_ID = "data_upload_id"  # the file_id of the upload already turned into the corpus
# Vocabulary page
VOCAB_KIND = KEEP + "vocab.kind"
VOCAB_SIZE = KEEP + "vocab.size"
VOCAB_TOP_N = KEEP + "vocab.topn"
VOCAB_LOG = KEEP + "vocab.log"
VOCAB_BY_USE = KEEP + "vocab.lenw"
VOCAB_PROBE = KEEP + "vocab.probe"
BPE_SIZES = (260, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)  # the BPE vocabulary sizes the page offers
VOCAB_PROBE_FOR = "vocab.probe_for"  # CORPUS_ID of the corpus the token explorer's text was taken from
# Model page: the architecture, the size preset and every field (``model_field``)
MODEL_ARCH = KEEP + "model.arch"
MODEL_SIZE = KEEP + "model.size"
FAMILY_DRAWN = "model.family_drawn"  # the family whose fields the page drew last
# Training page
TRAIN_ITERS = KEEP + "train.iters"
TRAIN_BATCH = KEEP + "train.batch"
TRAIN_LR = KEEP + "train.lr"
TRAIN_WARMUP = KEEP + "train.warmup"
TRAIN_EVAL = KEEP + "train.eval"
TRAIN_EVAL_ITERS = KEEP + "train.eval_iters"
TRAIN_SEED = KEEP + "train.seed"
TRAIN_BUDGET = KEEP + "train.budget"
TRAIN_OPTIMIZER = KEEP + "train.optimizer"
TRAIN_MUON_LR = KEEP + "train.muon_lr"
TRAIN_DEVICE = KEEP + "train.device"
TRAIN_NAME = KEEP + "train.name"
TRAIN_X = KEEP + "train.x"
RECIPE_SAVED = "train.recipe_saved"  # while a recipe's settings are in use: {"corpus": its CORPUS_ID, "before": {key: value}, "set": {key: value}}
RECIPE_NOTE = "train.recipe_note"  # (time.monotonic(), keys given back): the training page says so for a while
SHOW_RUN = "train_show"  # widget: the run followed (mirrors ACTIVE_JOB)
OVERLAY_RUNS = "train_compare"  # widget: the runs overlaid (mirrors COMPARE_JOBS)
OVERLAY_OFFERED = "train.overlay_offered"  # ids the overlay picker offered last (runs on the same data, or all)
TRAIN_OVERLAY_ALL = KEEP + "train.overlay_all"  # toggle: offer runs trained on other data for the overlay too
START_TOKEN = "train.start_token"  # int: starts made by this session (see the page's _press_start)
START_ERROR = "train.start_error"  # a start's error message, shown once
START_TIME = "train.start_time"  # time.monotonic() of this session's last start
START_NOTE = "train.start_note"  # True once a press was ignored because a start was in flight
SAVED_RUNS_PICK = "runs_pick"  # widget: names of the saved runs shown (ui.runs)
RUN_FOLLOWERS = "_run_followers"  # log path (str) -> runlog.LogFollower (ui.runs)
# Attention, generation and surprise pages (model pickers: ui.models)
ATTENTION_MODEL = KEEP + "attention.model"
ATTENTION_PROMPT = KEEP + "attention.prompt"
GENERATION_MODEL = KEEP + "generation.model"
COMPARE_MODEL_A = KEEP + "generation.compare_a"
COMPARE_MODEL_B = KEEP + "generation.compare_b"
GENERATION_PROMPT = KEEP + "generation.prompt"
GENERATION_TEMPERATURE = KEEP + "generation.temperature"
GENERATION_TOP_K = KEEP + "generation.top_k"
GENERATION_TOP_P = KEEP + "generation.top_p"
GENERATION_MAX_NEW = KEEP + "generation.max_new_tokens"
GENERATION_SEED = KEEP + "generation.seed"
GENERATION_N_DOCS = KEEP + "generation.n_docs"  # documents written per Generate click (documents-mode models)
EXPLORER_TEMPERATURE = KEEP + "generation.explorer_temperature"
GENERATION_POSITION = "generation.position"  # widget: the generated token whose candidates are shown
GENERATION_RESULT = "generation.result"  # the last generation: text and, per token, the top candidates
COMPARE_RESULT = "generation.compare_result"  # the last side-by-side pair
NOVELTY_INDEX = "generation.novelty_index"  # (corpus and tokenizer, n-gram index of the corpus)
SURPRISE_TEXT = KEEP + "surprise.text"
SURPRISE_MODEL_A = KEEP + "surprise.model_a"
SURPRISE_MODEL_B = KEEP + "surprise.model_b"
SURPRISE_COMPARE = KEEP + "surprise.compare"
# Intervene page
INTERVENE_MODEL = KEEP + "intervene.model"
INTERVENE_TEXT = KEEP + "intervene.text"
INTERVENE_STEER_PROMPT = KEEP + "intervene.steer_prompt"
SEEN_DEFAULTS = "models.seen_defaults"  # {picker key: (active job, loaded checkpoint) it last followed}
PROMPT_DEFAULTS = "models.prompt_defaults"  # {prompt box key: the default prompt it was given last}
# Checkpoints page
CHECKPOINT_SELECTED = KEEP + "checkpoints.selected"
HF_SOURCE = "checkpoints.hf.source"  # widget: the hub id or folder to open (kept across page switches by hand)
CHECKPOINT_SELECT_NEXT = "checkpoints.select_next"  # a name to select on the next run (set after an upload)
CHECKPOINTS_FLASH = "checkpoints.flash"  # (kind, message) shown once after an action that reruns the page
UPLOADS_CHECKED = "checkpoints.checked"  # {upload file_id: None if it is a valid checkpoint, else the reason}
# The page address (ui.urlstate)
URL_RESTORED = "_url_restored"  # set once the address was read for this browser session
URL_STORED = "_url_stored"  # (corpus id, hash) of the session's corpus once kept in the store
URL_NOTE = "_url_note"  # a line saying what could not be restored, shown once by the sidebar

DEFAULT_CORPUS = "python-docs"  # the built-in corpus a newcomer starts with
DEFAULT_VAL_FRACTION = 0.1


KEPT = "_kept"  # dict: the last value of every persistent widget (see keep_default)


def model_field(name: str) -> str:
    """The persistent widget key of the model page's field ``name`` ("keep.model.n_layer")."""
    return KEEP + "model." + name


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
