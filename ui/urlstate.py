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
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from lmcore.data import BUILTIN_CORPORA, DEFAULT_BPE_VOCAB, Corpus, build_tokenizer, corpus_from_text, default_cache_dir, load_corpus
from lmcore.errors import LMCoreError
from lmcore.models import FIELDS, SIZES, ModelConfig, preset_family
from lmcore.sample import SAMPLING_SETTINGS
from lmcore.settings import Declared, declared
from lmcore.train import TrainConfig
from ui import state as S
from ui.ownership import address_key
from ui.settings import sampling_key, train_key

STORE_CAP_BYTES = 200 * 1000 * 1000  # pasted and uploaded texts kept on the server, oldest dropped first

# Model fields the address carries: those the model page shows (their widget keys are
# state.model_field), then those it does not draw (RoPE's base, the norms' epsilon...).
UNDRAWN_FIELDS = tuple(n for n, d in declared(ModelConfig).items() if d.key and n not in FIELDS)
MODEL_FIELDS = tuple(FIELDS) + UNDRAWN_FIELDS


@dataclass(frozen=True)
class AddressField:
    """One setting the address carries: its widget key and the values it may take.

    kind: ``int`` or ``float`` (a finite number from ``low`` to ``high``),
    ``choice`` (one of ``choices``, compared as text), ``bool`` ("1" or "0")
    or ``str`` (at most ``high`` characters). The bounds are the widget's own:
    a value the widget could not show is refused before it reaches it.
    """

    key: str
    kind: str
    low: float = 0
    high: float = 0
    choices: tuple[Any, ...] = ()

    def parse(self, text: str) -> Any:
        """The value ``text`` names; ValueError with the reason (a few words) when it is not allowed."""
        if self.kind == "str":
            if len(text) > self.high:
                raise ValueError(f"longer than {int(self.high):,} characters")
            return text
        if self.kind == "bool":
            if text not in ("0", "1"):
                raise ValueError("must be 1 or 0")
            return text == "1"
        if self.kind == "choice":
            for c in self.choices:
                if text == str(c):
                    return c
            shown = ", ".join(str(c) for c in self.choices)
            raise ValueError(f"must be one of {shown}")
        try:
            if len(text) > 40:
                raise ValueError
            value = int(text) if self.kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"must be {'a whole number' if self.kind == 'int' else 'a number'}") from None
        if not (self.low <= value <= self.high and (self.kind == "int" or math.isfinite(value))):
            raise ValueError(f"must be from {_text(self.low)} to {_text(self.high)}")
        return value


def _declared(d: Declared, key: str) -> AddressField:
    """A declared config field's address rule (lmcore.settings): the bounds of its widget."""
    if d.page_kind in ("int", "float"):
        return AddressField(key, d.page_kind, *d.bounds)
    if d.kind == "choice":
        return AddressField(key, "choice", choices=d.setting.choices)
    return AddressField(key, d.kind, high=200)


# Training settings: address key -> rule, one per declared TrainConfig field (its widget's bounds),
# and the page's own: the run's name and the charts' axis.
TRAIN_FIELDS: dict[str, AddressField] = {
    **{d.key: _declared(d, train_key(n)) for n, d in declared(TrainConfig).items() if d.key},
    "name": AddressField(S.TRAIN_NAME, "str", high=100),
    "x": AddressField(S.TRAIN_X, "choice", choices=("step", "tokens")),
}
# The generation page's sampling settings the same way, one per declared setting (lmcore.sample),
# and the page's own: the prompt and the temperature explorer's temperature.
SAMPLING_FIELDS: dict[str, AddressField] = {
    "prompt": AddressField(S.GENERATION_PROMPT, "str", high=5000),
    **{d.key: _declared(d, sampling_key(n)) for n, d in SAMPLING_SETTINGS.items() if d.key},
    "etemp": _declared(SAMPLING_SETTINGS["temperature"], S.EXPLORER_TEMPERATURE),
}
# The rest of the address: corpus, vocabulary and model choices (checked the same way).
SETUP_FIELDS: dict[str, AddressField] = {
    "docs": AddressField(S.DATA_DOCUMENTS, "bool"),
    "val": AddressField(S.DATA_VAL, "float", 0.05, 0.5),
    "cname": AddressField("", "str", high=200),
    "tok": AddressField(S.VOCAB_KIND, "choice", choices=("char", "bpe")),
    "vocab": AddressField(S.VOCAB_SIZE, "choice", choices=S.BPE_SIZES),
    "size": AddressField(S.MODEL_SIZE, "choice", choices=tuple(SIZES)),
}
# Every address field with a rule, model fields included: the one table a hostile address is checked against.
ADDRESS_FIELDS: dict[str, AddressField] = (
    SETUP_FIELDS
    | {name: _declared(f.declared, S.model_field(name)) for name, f in FIELDS.items()}
    | {declared(ModelConfig)[n].key: _declared(declared(ModelConfig)[n], S.model_field(n)) for n in UNDRAWN_FIELDS}
    | TRAIN_FIELDS
    | SAMPLING_FIELDS
)


def _refusal(name: str, text: str, reason: str) -> str:
    shown = text if len(text) <= 24 else text[:21] + "…"
    return f"{name}={shown!r} ({reason})"


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
    for name, field in (TRAIN_FIELDS | SAMPLING_FIELDS).items():
        v = _value(field.key)
        if v is not None and v != "":
            out[name] = _text(v)
    run = address_key()
    if run:
        out["run"] = run  # the run's key: a reload keeps its controls (ui.ownership)
    return out


def _model_params(cfg: ModelConfig) -> dict[str, str]:
    values = {f: getattr(cfg, f) for f in MODEL_FIELDS}
    values["n_kv_head"] = cfg.kv_heads
    return {f: _text(v) for f, v in values.items() if v is not None}  # unset (dt_rank): the default


def recipe_params(corpus: str, tokenizer: str, model: ModelConfig, train: TrainConfig) -> dict[str, str]:
    """The address parameters of a setup: corpus source, tokenizer kind, model (a preset) and training settings.

    Every training setting the address carries, the device aside (this machine's choice).
    """
    shown = {d.key: d.to_widget(getattr(train, n)) for n, d in declared(TrainConfig).items() if d.key and n != "device"}
    return {"corpus": corpus, "tok": tokenizer, "arch": model.preset, **_model_params(model),
            **{k: _text(v) for k, v in shown.items() if v is not None}}  # fmt: skip


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
    params.pop("run", None)  # a run's key hands over its controls: only on purpose (control_link)
    base = (st.context.url or "").split("?")[0]
    travels = not params.get("corpus", "").startswith("text:")
    return f"{base}?{urlencode(params)}" if params else base, travels


def control_link() -> str | None:
    """The address with the followed run's key: whoever opens it can follow and stop that run."""
    params = current_params()
    if "run" not in params:
        return None
    base = (st.context.url or "").split("?")[0]
    return f"{base}?{urlencode(params)}"


# ------------------------------------------------------------------ restoring
_MISSING = object()


def _checked(params: dict[str, str], name: str, refused: list[str]) -> Any:
    """The allowed value of address field ``name``; ``_MISSING`` when absent or refused (added to ``refused``)."""
    if name not in params:
        return _MISSING
    try:
        return ADDRESS_FIELDS[name].parse(params[name])
    except ValueError as e:
        refused.append(_refusal(name, params[name], str(e)))
        return _MISSING


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
        from ui.render import md

        st.session_state[S.URL_NOTE] = md("Could not restore " + "; ".join(skipped) + " from the address.")


def apply(params: dict[str, str]) -> list[str]:
    """Set up what ``params`` name (corpus, vocabulary, model, settings, run); what could not be, in words.

    Every field is checked against its rule in ``ADDRESS_FIELDS`` before it
    reaches a widget or builds anything; a value outside it is left out and
    named in the answer, with what it may be.
    """
    skipped: list[str] = []
    refused: list[str] = []
    with st.spinner("Setting up the corpus, vocabulary and model…"):
        try:
            _restore_corpus(params, refused)
        except (LMCoreError, ValueError):
            skipped.append("the corpus")
        if S.CORPUS in st.session_state:
            try:
                _restore_tokenizer(params, refused)
            except (LMCoreError, ValueError):
                skipped.append("the vocabulary")
        if S.TOKENIZER in st.session_state:
            try:
                _restore_model(params, refused)
            except (LMCoreError, ValueError, TypeError):
                skipped.append("the model")
    for name, field in (TRAIN_FIELDS | SAMPLING_FIELDS).items():
        value = _checked(params, name, refused)
        if value is not _MISSING:
            _set(field.key, value)
    if params.get("name") and S.MODEL_CONFIG in st.session_state:
        st.session_state[S.NAME_FOR] = st.session_state[S.MODEL_CONFIG].to_json()  # the name belongs to this model
    run = params.get("run")
    if run:
        from ui.ownership import attach

        if not attach(run):
            skipped.append("the run (it has ended and is no longer kept, or this link does not open it)")
    return [*refused, *skipped]


def _restore_corpus(params: dict[str, str], refused: list[str]) -> None:
    from ui.flow import load_builtin, set_corpus, use_prepared

    ref = params.get("corpus", "")
    documents = _checked(params, "docs", refused) is True
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
        name = _checked(params, "cname", refused)
        name = name if isinstance(name, str) and name else "pasted text"
        set_corpus(corpus_from_text(text, name=name, documents=documents))
        if name == "pasted text":
            _set(S.DATA_SOURCE, "Paste text")
            _set(S.DATA_PASTE, text)
        else:
            _set(S.DATA_SOURCE, "Upload a file")
    elif ref:
        raise ValueError(f"unknown corpus {ref!r}")
    _set(S.DATA_DOCUMENTS, st.session_state[S.CORPUS].documents if S.CORPUS in st.session_state else documents)
    fraction = _checked(params, "val", refused)
    if fraction is not _MISSING:
        st.session_state[S.VAL_FRACTION] = fraction
        _set(S.DATA_VAL, fraction)


def _restore_tokenizer(params: dict[str, str], refused: list[str]) -> None:
    from ui.flow import set_tokenizer

    kind = _checked(params, "tok", refused)
    if kind is _MISSING or params.get("corpus", "").startswith("prepared:"):
        return  # a prepared folder brings its own vocabulary
    text = st.session_state[S.CORPUS].text
    if kind == "bpe":
        size = _checked(params, "vocab", refused) if "vocab" in params else DEFAULT_BPE_VOCAB
        if size is _MISSING:
            return  # a size the page does not offer is not trained
        set_tokenizer(build_tokenizer("bpe", text, vocab_size=size))
        st.session_state[S.BPE_ASKED] = size
        _set(S.VOCAB_SIZE, size)
    else:
        set_tokenizer(build_tokenizer("char", text))
    _set(S.VOCAB_KIND, kind)


def _restore_model(params: dict[str, str], refused: list[str]) -> None:
    from ui.flow import ARCH_CHOICES, set_model_config

    arch = params.get("arch")
    if arch not in ARCH_CHOICES:
        return
    base = ModelConfig.preset(arch)
    own = {f.name for f in preset_family(arch).fields} | set(UNDRAWN_FIELDS)
    fields = {}
    for f in MODEL_FIELDS:
        if f in params and f in own:
            value = _checked(params, f, refused)
            if value is not _MISSING:
                fields[f] = value
    if fields.get("n_kv_head") == fields.get("n_head", base.n_head):
        fields["n_kv_head"] = None
    vocab = st.session_state[S.TOKENIZER].vocab_size
    cfg = ModelConfig.preset(arch, vocab_size=vocab, **fields).validate()
    set_model_config(cfg)
    _set(S.MODEL_ARCH, arch)
    size = _checked(params, "size", refused)
    if size is not _MISSING:
        _set(S.MODEL_SIZE, size)
    for f in FIELDS:
        _set(S.model_field(f), cfg.kv_heads if f == "n_kv_head" else getattr(cfg, f))
