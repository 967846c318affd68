"""The session's settings in the page address, so a reload (or a bookmark) restores them.

After every run ``save()`` writes what the user set up into ``st.query_params``:
the corpus (a built-in name, a web address, or the content hash of a pasted or
uploaded text kept by ``store_text``), documents mode and split, the tokenizer
kind and size, the architecture, size and fields of the model, the training
settings, the generation page's prompt and sampling, and the id of the run this
browser follows. On the first run of a new browser session ``restore()`` reads
them back before the page draws, rebuilding the corpus, vocabulary and model and
re-attaching to the run while the server still knows it. ``share_link()`` is the
same address without the run, for the sidebar's "Copy link". Anything that no longer fits (a text that was
evicted, a field out of range) is skipped with a note, never an error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from lmcore.data import BUILTIN_CORPORA, Corpus, build_tokenizer, corpus_from_text, default_cache_dir, load_corpus
from lmcore.errors import LMCoreError
from lmcore.models import FIELDS, SIZES, ModelConfig
from lmcore.train import TrainConfig
from ui import state as S

STORE_CAP_BYTES = 200 * 1000 * 1000  # pasted and uploaded texts kept on the server, oldest dropped first

# Model fields that the model page shows, with their widget keys (state.model_field).
MODEL_FIELDS = tuple(FIELDS)
# Training settings: address key -> (widget key, type).
TRAIN_FIELDS: dict[str, tuple[str, type]] = {
    "iters": (S.TRAIN_ITERS, int),
    "batch": (S.TRAIN_BATCH, int),
    "lr": (S.TRAIN_LR, float),
    "warmup": (S.TRAIN_WARMUP, int),
    "eval": (S.TRAIN_EVAL, int),
    "eval_iters": (S.TRAIN_EVAL_ITERS, int),
    "seed": (S.TRAIN_SEED, int),
    "budget": (S.TRAIN_BUDGET, int),
    "device": (S.TRAIN_DEVICE, str),
    "name": (S.TRAIN_NAME, str),
}
# The generation page's prompt and sampling settings, the same way.
SAMPLING_FIELDS: dict[str, tuple[str, type]] = {
    "prompt": (S.GENERATION_PROMPT, str),
    "temp": (S.GENERATION_TEMPERATURE, float),
    "top_k": (S.GENERATION_TOP_K, int),
    "top_p": (S.GENERATION_TOP_P, float),
    "new": (S.GENERATION_MAX_NEW, int),
    "gseed": (S.GENERATION_SEED, int),
}


# ------------------------------------------------------------------ the text store
def store_dir() -> Path:
    """Where pasted and uploaded corpora are kept: ``corpora/`` in lmcore's cache folder."""
    return default_cache_dir() / "corpora"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


def store_text(text: str) -> str | None:
    """Keep ``text`` on the server under its content hash; returns the hash (None if it cannot be written).

    The folder holds at most ``STORE_CAP_BYTES``: the texts used longest ago go first.
    """
    key = text_hash(text)
    folder = store_dir()
    path = folder / f"{key}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.utime(path)  # used now: evicted last
            return key
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8", errors="surrogatepass")
        os.replace(tmp, path)
        files = sorted(folder.glob("*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for p in files:
            total += p.stat().st_size
            if total > STORE_CAP_BYTES and p != path:
                p.unlink(missing_ok=True)
    except OSError:
        return None  # an unwritable cache costs the restore after a reload, nothing more
    return key


def stored_text(key: str) -> str | None:
    if not key.isalnum():
        return None
    try:
        return (store_dir() / f"{key}.txt").read_text(encoding="utf-8", errors="surrogatepass")
    except OSError:
        return None


# ------------------------------------------------------------------ reading the session
def _value(key: str) -> Any:
    """A persistent widget's value: live, else the last one drawn."""
    if key in st.session_state:
        return st.session_state[key]
    return st.session_state.get(S.KEPT, {}).get(key)


def _set(key: str, value: Any) -> None:
    """Give persistent widget ``key`` this value before it is drawn."""
    st.session_state[key] = value
    st.session_state.setdefault(S.KEPT, {})[key] = value


def corpus_ref(corpus: Corpus) -> dict[str, str]:
    """How the address names a corpus: built-in, web address, or stored text."""
    if corpus.source.startswith("builtin:") and corpus.name in BUILTIN_CORPORA:
        return {"corpus": corpus.source}
    if corpus.source.startswith(("http://", "https://")):
        return {"corpus": "url:" + corpus.source}
    cid = st.session_state.get(S.CORPUS_ID)
    chosen = st.session_state.get(S.PREPARED)
    if chosen is not None and chosen[0] == cid:  # a folder on the server: named by its path under the data folder
        return {"corpus": "prepared:" + str(Path(chosen[1]).relative_to(S.data_dir().resolve()))}
    stored = st.session_state.get(S.URL_STORED)
    if stored is None or stored[0] != cid:  # hash and write each text once per session
        stored = st.session_state[S.URL_STORED] = (cid, store_text(corpus.text))
    if stored[1] is None:
        return {}
    return {"corpus": "text:" + stored[1], "cname": corpus.name}


def current_params() -> dict[str, str]:
    """The session's settings as address parameters (strings)."""
    out: dict[str, str] = {}
    corpus = st.session_state.get(S.CORPUS)
    if corpus is not None:
        out.update(corpus_ref(corpus))
        if corpus.documents:
            out["docs"] = "1"
    if S.VAL_FRACTION in st.session_state:
        out["val"] = f"{float(st.session_state[S.VAL_FRACTION]):g}"
    tok = st.session_state.get(S.TOKENIZER)
    if tok is not None:
        out["tok"] = tok.kind
        if tok.kind == "bpe" and st.session_state.get(S.BPE_ASKED):
            out["vocab"] = str(int(st.session_state[S.BPE_ASKED]))
    cfg = st.session_state.get(S.MODEL_CONFIG)
    if cfg is not None and cfg.preset:
        out["arch"] = cfg.preset
        size = _value(S.MODEL_SIZE)
        if size:
            out["size"] = str(size)
        out.update(_model_params(cfg))
    for name, (key, _) in (TRAIN_FIELDS | SAMPLING_FIELDS).items():
        v = _value(key)
        if v is not None and v != "":
            out[name] = _text(v)
    run = st.session_state.get(S.ACTIVE_JOB)
    if run:
        out["run"] = str(run)
    return out


def _model_params(cfg: ModelConfig) -> dict[str, str]:
    values = {f: getattr(cfg, f) for f in MODEL_FIELDS}
    values["n_kv_head"] = cfg.kv_heads
    return {f: _text(v) for f, v in values.items()}


def recipe_params(corpus: str, tokenizer: str, model: ModelConfig, train: TrainConfig) -> dict[str, str]:
    """The address parameters of a setup: corpus source, tokenizer kind, model (a preset) and training settings."""
    shown = {"iters": train.max_iters, "batch": train.batch_size, "lr": train.lr, "warmup": train.warmup_iters,
             "eval": train.eval_interval, "eval_iters": train.eval_iters, "seed": train.seed}  # fmt: skip
    return {"corpus": corpus, "tok": tokenizer, "arch": model.preset, **_model_params(model),
            **{k: _text(v) for k, v in shown.items()}}  # fmt: skip


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def save() -> None:
    """Write the session's settings into the address (only when they changed).

    Called at the start and end of every run and whenever the corpus, vocabulary,
    model or run changes (a page run on its own has no end to hook into).
    """
    if not st.session_state.get(S.URL_RESTORED):
        return
    wanted = current_params()
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def share_link() -> tuple[str, bool]:
    """(the address that sets up this session elsewhere, whether its corpus travels with it).

    A built-in corpus or one from a web address travels; a pasted or uploaded
    text is kept on this server only, so the link restores it here alone.
    """
    params = current_params()
    params.pop("run", None)  # a run lives in one server's memory
    base = (st.context.url or "").split("?")[0]
    travels = not params.get("corpus", "").startswith("text:")
    return f"{base}?{urlencode(params)}" if params else base, travels


# ------------------------------------------------------------------ restoring
def _parse(text: str, kind: type) -> Any:
    if kind is bool:
        return text == "1"
    return kind(text)


def restore() -> None:
    """On a new browser session, set up what the address names; once per session."""
    if st.session_state.get(S.URL_RESTORED):
        return
    st.session_state[S.URL_RESTORED] = True
    params = st.query_params.to_dict()
    if not params:
        return
    skipped = apply(params)
    if skipped:
        st.session_state[S.URL_NOTE] = "Could not restore " + ", ".join(skipped) + " from the address."


def apply(params: dict[str, str]) -> list[str]:
    """Set up what ``params`` name (corpus, vocabulary, model, settings, run); what could not be, in words."""
    skipped: list[str] = []
    with st.spinner("Setting up the corpus, vocabulary and model…"):
        try:
            _restore_corpus(params)
        except (LMCoreError, ValueError):
            skipped.append("the corpus")
        if S.CORPUS in st.session_state:
            try:
                _restore_tokenizer(params)
            except (LMCoreError, ValueError):
                skipped.append("the vocabulary")
        if S.TOKENIZER in st.session_state:
            try:
                _restore_model(params)
            except (LMCoreError, ValueError, TypeError):
                skipped.append("the model")
    for name, (key, kind) in (TRAIN_FIELDS | SAMPLING_FIELDS).items():
        if name in params:
            try:
                _set(key, _parse(params[name], kind))
            except ValueError:
                skipped.append(f"the setting {name}")
    if params.get("name") and S.MODEL_CONFIG in st.session_state:
        st.session_state[S.NAME_FOR] = st.session_state[S.MODEL_CONFIG].to_json()  # the name belongs to this model
    from lmcore.jobs import REGISTRY

    run = params.get("run")
    if run and REGISTRY.get(run) is not None:
        st.session_state[S.ACTIVE_JOB] = run
    elif run:
        skipped.append("the run (the server no longer knows it)")
    return skipped


def _restore_corpus(params: dict[str, str]) -> None:
    from ui.flow import load_builtin, set_corpus, use_prepared

    ref = params.get("corpus", "")
    documents = params.get("docs") == "1"
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        set_corpus(load_builtin(name, documents))
        _set(S.DATA_SOURCE, "Built-in")
        _set(S.DATA_BUILTIN, name)
    elif ref.startswith("url:"):
        address = ref.removeprefix("url:")
        set_corpus(load_corpus(address, documents=documents, allow_local=False))  # read from the download cache
        _set(S.DATA_SOURCE, "From a URL")
        _set(S.DATA_URL, address)
    elif ref.startswith("prepared:"):
        use_prepared(ref.removeprefix("prepared:"))
        _set(S.DATA_SOURCE, "Prepared folder")
    elif ref.startswith("text:"):
        text = stored_text(ref.removeprefix("text:"))
        if text is None:
            raise ValueError("the stored text is gone")
        name = params.get("cname") or "pasted text"
        set_corpus(corpus_from_text(text, name=name, documents=documents))
        if name == "pasted text":
            _set(S.DATA_SOURCE, "Paste text")
            _set(S.DATA_PASTE, text)
        else:
            _set(S.DATA_SOURCE, "Upload a file")
    elif ref:
        raise ValueError(f"unknown corpus {ref!r}")
    _set(S.DATA_DOCUMENTS, st.session_state[S.CORPUS].documents if S.CORPUS in st.session_state else documents)
    if "val" in params:
        fraction = float(params["val"])
        if 0.05 <= fraction <= 0.5:
            st.session_state[S.VAL_FRACTION] = fraction
            _set(S.DATA_VAL, fraction)


def _restore_tokenizer(params: dict[str, str]) -> None:
    from ui.flow import set_tokenizer

    kind = params.get("tok")
    if kind not in ("char", "bpe") or params.get("corpus", "").startswith("prepared:"):
        return  # a prepared folder brings its own vocabulary
    text = st.session_state[S.CORPUS].text
    if kind == "bpe":
        size = int(params.get("vocab", "0"))
        set_tokenizer(build_tokenizer("bpe", text, vocab_size=size))
        st.session_state[S.BPE_ASKED] = size
        _set(S.VOCAB_SIZE, size)
    else:
        set_tokenizer(build_tokenizer("char", text))
    _set(S.VOCAB_KIND, kind)


def _restore_model(params: dict[str, str]) -> None:
    from ui.flow import ARCH_CHOICES, set_model_config

    arch = params.get("arch")
    if arch not in ARCH_CHOICES:
        return
    base = ModelConfig.preset(arch)
    fields = {}
    for f in MODEL_FIELDS:
        if f in params:
            default = getattr(base, f)
            fields[f] = _parse(params[f], type(default) if default is not None else int)
    if fields.get("n_kv_head") == fields.get("n_head", base.n_head):
        fields["n_kv_head"] = None
    vocab = st.session_state[S.TOKENIZER].vocab_size
    cfg = ModelConfig.preset(arch, vocab_size=vocab, **fields).validate()
    set_model_config(cfg)
    _set(S.MODEL_ARCH, arch)
    if params.get("size") in SIZES:
        _set(S.MODEL_SIZE, params["size"])
    for f in MODEL_FIELDS:
        _set(S.model_field(f), cfg.kv_heads if f == "n_kv_head" else getattr(cfg, f))
