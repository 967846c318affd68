"""Model page: pick an architecture and its size, and see what it costs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lmcore.data import check_length
from lmcore.device import resolve_device
from lmcore.errors import ConfigError, LMCoreError
from lmcore.models import FIELDS, PRESETS, SIZES, ModelConfig, preset_family
from lmcore.models.estimate import check_fits, model_counts, params_by_part, training_memory
from lmcore.viz import model_diagram
from ui import state as S
from ui.boundary import user_errors
from ui.flow import (
    ARCH_CHOICES,
    ARCH_LABELS,
    DEFAULT_ARCH,
    DEFAULT_SIZE,
    PAGE_TRAINING,
    PAGE_VOCABULARY,
    encoded_split,
    preset_config,
    require_tokenizer,
    set_model_config,
)
from ui.settings import widget
from ui.shell import require_app
from ui.state import keep_default
from ui.urlstate import UNDRAWN_FIELDS



def _field_values(cfg: ModelConfig) -> dict:
    values = {f: getattr(cfg, f) for f in FIELDS}
    values["n_kv_head"] = cfg.kv_heads
    return values


def _set_fields(cfg: ModelConfig) -> None:
    kept = st.session_state.setdefault(S.KEPT, {})
    for f, v in _field_values(cfg).items():
        st.session_state[S.model_field(f)] = kept[S.model_field(f)] = v


def _training_batch() -> int:
    """The batch size the estimates and the memory check use: the Training page's (a widget key belongs to one page only)."""
    return int(st.session_state.get(S.KEPT, {}).get(S.TRAIN_BATCH, 16))


def _undrawn(saved: ModelConfig | None, arch: str) -> dict:
    """The fields the page does not draw (the address sets them): they stay while the architecture does."""
    return {f: getattr(saved, f) for f in UNDRAWN_FIELDS} if saved is not None and saved.preset == arch else {}


def _model_of(arch: str, values: dict) -> ModelConfig:
    """The model the fields' ``values`` describe, validated; ConfigError when training it would not fit in free memory.

    ``values`` is normalised in place: as many key/value heads as heads is plain multi-head attention.
    """
    if "n_kv_head" in values and values["n_kv_head"] == values.get("n_head"):
        values["n_kv_head"] = None
    cfg = ModelConfig.preset(arch, vocab_size=st.session_state[S.TOKENIZER].vocab_size, **values).validate()
    device = resolve_device(st.session_state.get(S.KEPT, {}).get(S.TRAIN_DEVICE, "auto"))
    check_fits(cfg, _training_batch(), device)  # refused before anything is built
    return cfg


def _commit() -> None:
    """A widget's callback: the model the fields now describe becomes the session's at once.

    Callbacks run before the page does, to the end; the page's own run may be cut short
    by the next click (another page, on a busy server), and the model must not be left
    behind with it. The page commits the same model again as it draws it.
    """
    arch = st.session_state[S.MODEL_ARCH]
    values = _undrawn(st.session_state.get(S.MODEL_CONFIG), arch)
    for f in preset_family(arch).fields:
        key = S.model_field(f.name)
        if key in st.session_state:
            values[f.name] = f.declared.from_widget(st.session_state[key])
    try:
        cfg = _model_of(arch, values)
    except LMCoreError:
        return  # the page says what is wrong when it draws
    set_model_config(cfg, redraw=False)


def _apply_preset() -> None:
    """Size changed: every field goes to that preset."""
    arch = st.session_state[S.MODEL_ARCH]
    size = st.session_state[S.MODEL_SIZE]
    _set_fields(preset_config(arch, size, st.session_state[S.TOKENIZER].vocab_size))
    _commit()


def _switch_arch() -> None:
    """Architecture changed: its preset, keeping the fields the two share (context length, and
    layers, width, heads and dropout within one family) where the new one accepts them."""
    arch = st.session_state[S.MODEL_ARCH]
    cfg = preset_config(arch, st.session_state[S.MODEL_SIZE], st.session_state[S.TOKENIZER].vocab_size)
    kept = st.session_state.get(S.KEPT, {})
    same = cfg.arch == st.session_state.get(S.FAMILY_DRAWN)
    shared = [f.name for f in preset_family(arch).fields if (not f.by_preset if same else f.name == "block_size")]
    carried = {f: kept[S.model_field(f)] for f in shared if S.model_field(f) in kept}
    if carried.get("n_kv_head") == carried.get("n_head", cfg.n_head):
        carried["n_kv_head"] = None
    try:
        cfg = cfg.replace(**carried).validate()
    except ConfigError:
        cfg = cfg.replace(block_size=carried.get("block_size", cfg.block_size))
    _set_fields(cfg)
    _commit()


def explain(error: ConfigError, arch: str, values: dict, vocab_size: int, ints: list[str]) -> str:
    """The config error in the words on screen, with one change that makes the whole model valid.

    The fields the error names (``error.fields``) are shown by their labels; the suggestion
    is the nearest value of one of them (of any whole-number field, when it names none of
    those) for which the whole config validates.
    """
    words = str(error).split("; ")[0].split(" ")
    for i, word in enumerate(words):
        name = word.strip("(),.:")
        if name in error.fields and name in FIELDS:
            words[i] = word.replace(name, FIELDS[name].label)
    message = " ".join(words)
    named = [f for f in error.fields if f in ints]
    for f in named or ints:
        lo, hi = FIELDS[f].limits
        for delta in range(1, 257):
            for v in (values[f] - delta, values[f] + delta) if named else (values[f] + delta, values[f] - delta):
                if not lo <= v <= hi:
                    continue
                trial = {**values, f: v}
                if trial.get("n_kv_head") == trial.get("n_head"):
                    trial["n_kv_head"] = None
                try:
                    ModelConfig.preset(arch, vocab_size=vocab_size, **trial).validate()
                except ConfigError:
                    continue
                return f"{message[0].upper()}{message[1:]}. Try {FIELDS[f].label} = {v}."
    return f"{message[0].upper()}{message[1:]}."


require_app()

st.title("Model")
st.markdown(
    "The model is the function that turns the tokens so far into a probability for every possible next token. "
    "Its **architecture** decides how earlier tokens can influence the prediction; its **size** decides how much "
    "it can learn, and how long training takes. Start tiny on a CPU: you can always come back for a bigger one."
)

tok = require_tokenizer()
st.caption(f"Vocabulary: {tok.kind}, {tok.vocab_size:,} tokens (it fixes the size of the input and output layers).")
st.page_link(PAGE_VOCABULARY, label="Vocabulary page", icon=":material/arrow_back:")

saved: ModelConfig | None = st.session_state.get(S.MODEL_CONFIG)
# The fields start from the session's model (or the default one) on the first visit.
start = saved if saved is not None else preset_config(DEFAULT_ARCH, DEFAULT_SIZE, tok.vocab_size)
start_values = _field_values(start)
keep_default(S.MODEL_ARCH, start.preset if start.preset in ARCH_CHOICES else DEFAULT_ARCH)

c1, c2 = st.columns([3, 2])
arch = c1.radio(
    "Architecture",
    ARCH_CHOICES,
    format_func=ARCH_LABELS.get,
    key=keep_default(S.MODEL_ARCH, DEFAULT_ARCH),
    on_change=_switch_arch,
)
size = c2.radio(
    "Size preset",
    list(SIZES),
    captions=list(SIZES.values()),
    key=keep_default(S.MODEL_SIZE, DEFAULT_SIZE),
    on_change=_apply_preset,
)
family = preset_family(arch)
st.info(family.presets[arch].note, icon=":material/lightbulb:")

st.session_state[S.FAMILY_DRAWN] = PRESETS[arch]["arch"]
values = _undrawn(saved, arch)
# Each field's widget from its declaration (lmcore.models.config), with the family's own label or limits:
# the whole numbers in the first rows, the rest below.
ints = [f.name for f in family.fields if f.kind == "int"]
for group in ([f for f in family.fields if f.kind == "int"], [f for f in family.fields if f.kind != "int"]):
    cols = st.columns(4) if group else []
    for k, f in enumerate(group):
        values[f.name] = widget(cols[k % 4], f.declared, S.model_field(f.name), first=start_values[f.name],
                                on_change=_commit)
batch = _training_batch()
try:
    cfg = _model_of(arch, values)
    facts = model_counts(cfg)
except ConfigError as e:
    st.error(explain(e, arch, values, tok.vocab_size, ints), icon=":material/error:")
    if saved is not None:
        st.caption("Until this is fixed, training uses the last valid model.")
    st.stop()
set_model_config(cfg)

with user_errors(stop=False):
    _, train_ids, val_ids = encoded_split(tok)
    check_length(val_ids, cfg.block_size, what="validation split")

st.subheader("What it costs")
c1, _ = st.columns([1, 3])
c1.caption(f"Estimates for a batch of {batch} sequences (set on the Training page).")
mem = training_memory(cfg, facts["params"], int(batch))
cols = st.columns(4)
cols[0].metric("Parameters", f"{facts['params']:,}", help=f"{facts['params_non_embedding']:,} outside the embeddings.")
cols[1].metric("Training memory (estimate)", f"{mem['total'] / 2**20:,.1f} MiB", help="Weights, gradients, AdamW state and activations, in fp32; a rough order of magnitude.")
cols[2].metric("FLOPs per token", f"{facts['flops_per_token']:,}", help="Forward and backward pass, at the full context length.")
cols[3].metric("FLOPs per step", f"{facts['flops_per_token'] * cfg.block_size * int(batch) / 1e9:,.2f} G", help="FLOPs per token × context length × batch size.")

with st.expander("How it works: parameter counts by layer"):
    parts = params_by_part(cfg)
    terms = " + ".join(f"{v:,}".replace(",", "{,}") for v in parts.values()) if len(parts) <= 8 else r"\dots"
    st.latex(r"N = \sum_{\text{parts}} N_\text{part} = %s = %s" % (terms, f"{sum(parts.values()):,}".replace(",", "{,}")))
    if family.params_formula is not None:
        st.latex(family.params_formula(cfg))
    st.dataframe(pd.DataFrame({"part": list(parts), "parameters": list(parts.values())}), hide_index=True)
    if family.params_note:
        st.caption(family.params_note)

left, right = st.columns([3, 2])
with left:
    st.subheader("Block structure")
    st.graphviz_chart(model_diagram(cfg))
with right:
    st.subheader("Where the memory goes")
    st.dataframe(
        pd.DataFrame(
            {
                "part": ["weights", "gradients", "AdamW state", "activations", "per-tensor overhead", "total"],
                "MiB": [mem[k] / 2**20 for k in ("weights", "gradients", "optimizer", "activations", "overhead", "total")],
            }
        ),
        hide_index=True,
        column_config={"MiB": st.column_config.NumberColumn(format="%.2f")},
    )
    st.caption(
        f"Weights, gradients and the two AdamW moments take 4 bytes per parameter each. Activations are those kept "
        f"for the backward pass for {int(batch)} sequences of {cfg.block_size} tokens, from a rule of thumb per "
        "architecture plus the logits. Real use is higher (temporary buffers, the framework) or lower (fused "
        "attention kernels): treat it as the right order of magnitude."
    )

st.page_link(PAGE_TRAINING, label="Next: train it", icon=":material/arrow_forward:")
