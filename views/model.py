"""Model page: pick an architecture and its size, and see what it costs."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from lmcore.data import check_length
from lmcore.device import resolve_device
from lmcore.errors import ConfigError
from lmcore.models import ModelConfig
from lmcore.models.estimate import check_fits, model_counts, params_by_part
from lmcore.viz import memory_estimate, model_diagram
from ui import state as S
from ui.boundary import user_errors
from ui.flow import (
    ARCH_CHOICES,
    ARCH_LABELS,
    DEFAULT_ARCH,
    DEFAULT_SIZE,
    PAGE_TRAINING,
    PAGE_VOCABULARY,
    SIZES,
    SIZE_HELP,
    encoded_split,
    preset_config,
    require_tokenizer,
    set_model_config,
)
from ui.shell import require_app
from ui.state import keep_default

ARCH_NOTES = {
    "gpt2": "The GPT-2 recipe: learned positions, LayerNorm, GELU MLP, biases. Every token looks back at every "
    "earlier one through attention.",
    "llama": "The LLaMA recipe: rotary positions (RoPE), RMSNorm, SwiGLU MLP, no biases; grouped-query attention "
    "when there are fewer key/value heads than heads.",
    "mamba": "A selective state-space model: instead of attention, each layer carries a fixed-size state along "
    "the sequence and decides, token by token, what to keep. Cost grows linearly with length.",
    "lstm": "A recurrent network: a hidden state and a memory cell updated one token at a time, the classic "
    "before transformers.",
    "bigram": "The baseline: the next token depends only on the current one (a lookup table). Any real model "
    "must beat it.",
    "ngram": "A counting table: the next token from the previous n-1, with add-k smoothing. Training is one "
    "pass that counts; on a names list a 3-gram beats a small transformer.",
}
FAMILY_FIELDS = {
    "transformer": ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "dropout", "norm", "pos", "mlp", "bias", "tie_weights"),
    "mamba": ("n_layer", "n_embd", "block_size", "d_state", "d_conv", "expand", "tie_weights"),
    "lstm": ("n_layer", "n_embd", "block_size", "dropout"),
    "bigram": ("block_size",),
    "ngram": ("ngram_n", "add_k", "block_size"),
}
ALL_FIELDS = sorted({f for fields in FAMILY_FIELDS.values() for f in fields})
LABELS = {
    "n_layer": ("Layers", "How many blocks are stacked."),
    "n_head": ("Attention heads", "Each head learns its own pattern of which earlier tokens to look at."),
    "n_kv_head": ("Key/value heads", "Equal to the heads: multi-head attention; 1: multi-query; in between: grouped-query."),
    "n_embd": ("Width", "The size of each token's vector (for the LSTM, its hidden size)."),
    "block_size": ("Context length", "How many tokens the model sees at once during training."),
    "dropout": ("Dropout", "Randomly zeroes activations while training; helps against overfitting on small data."),
    "norm": ("Normalisation", "LayerNorm centres and scales; RMSNorm only scales."),
    "pos": ("Positions", "Learned position vectors, or rotary embeddings (RoPE) applied inside attention."),
    "mlp": ("MLP", "GELU, or the gated SwiGLU."),
    "bias": ("Biases", "Bias terms in linear layers and norms."),
    "tie_weights": ("Tie embedding and output", "Use the token embedding matrix as the output layer too."),
    "d_state": ("State size (N)", "Numbers each channel remembers along the sequence."),
    "d_conv": ("Convolution width", "The short causal convolution before the scan."),
    "expand": ("Expansion (E)", "Inner width = E × width."),
    "ngram_n": ("Order (n)", "The next token is looked up from the previous n - 1 tokens (1 to 5)."),
    "add_k": ("Smoothing (k)", "Added to every count, so tokens never seen after a context keep a small chance."),
}
CHOICES = {"norm": ("layernorm", "rmsnorm"), "pos": ("learned", "rope"), "mlp": ("gelu", "swiglu")}
LIMITS = {"n_layer": (1, 48), "n_head": (1, 64), "n_kv_head": (1, 64), "n_embd": (8, 4096), "block_size": (2, 4096),
          "d_state": (1, 256), "d_conv": (1, 16), "expand": (1, 8), "ngram_n": (1, 5)}  # fmt: skip
# Fields an architecture switch keeps within one family (the context length is kept across families).
SHARED_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "dropout", "tie_weights")


def _field_values(cfg: ModelConfig) -> dict:
    values = {f: getattr(cfg, f) for f in ALL_FIELDS}
    values["n_kv_head"] = cfg.kv_heads
    return values


def _set_fields(cfg: ModelConfig) -> None:
    kept = st.session_state.setdefault(S.KEPT, {})
    for f, v in _field_values(cfg).items():
        st.session_state[S.model_field(f)] = kept[S.model_field(f)] = v


def _apply_preset() -> None:
    """Size changed: every field goes to that preset."""
    arch = st.session_state[S.MODEL_ARCH]
    size = st.session_state[S.MODEL_SIZE]
    _set_fields(preset_config(arch, size, st.session_state[S.TOKENIZER].vocab_size))


def _switch_arch() -> None:
    """Architecture changed: its preset, keeping the fields the two share (context length, and
    layers, width, heads and dropout within one family) where the new one accepts them."""
    arch = st.session_state[S.MODEL_ARCH]
    cfg = preset_config(arch, st.session_state[S.MODEL_SIZE], st.session_state[S.TOKENIZER].vocab_size)
    kept = st.session_state.get(S.KEPT, {})
    shared = SHARED_FIELDS if cfg.arch == st.session_state.get(S.FAMILY_DRAWN) else ("block_size",)
    carried = {f: kept[S.model_field(f)] for f in shared if f in FAMILY_FIELDS[cfg.arch] and S.model_field(f) in kept}
    if carried.get("n_kv_head") == carried.get("n_head", cfg.n_head):
        carried["n_kv_head"] = None
    try:
        cfg = cfg.replace(**carried).validate()
    except ConfigError:
        cfg = cfg.replace(block_size=carried.get("block_size", cfg.block_size))
    _set_fields(cfg)


def explain(error: ConfigError, arch: str, values: dict, vocab_size: int, ints: list[str]) -> str:
    """The config error in the words on screen, with one change that makes the whole model valid.

    Internal names become the field labels; the suggestion is the nearest value of one
    field (those the message names first) for which the whole config validates.
    """
    message = str(error).split("; ")[0]
    named = [f for f in ints if re.search(rf"\b{f}\b", message)]
    for f in sorted(LABELS, key=len, reverse=True):
        message = re.sub(rf"\b{f}\b", LABELS[f][0], message)
    for f in named + [f for f in ints if f not in named]:
        lo, hi = LIMITS[f]
        for delta in range(1, 257):
            for v in (values[f] - delta, values[f] + delta) if f in named else (values[f] + delta, values[f] - delta):
                if not lo <= v <= hi:
                    continue
                trial = {**values, f: v}
                if trial.get("n_kv_head") == trial.get("n_head"):
                    trial["n_kv_head"] = None
                try:
                    ModelConfig.preset(arch, vocab_size=vocab_size, **trial).validate()
                except ConfigError:
                    continue
                return f"{message[0].upper()}{message[1:]}. Try {LABELS[f][0]} = {v}."
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
    captions=[SIZE_HELP[s] for s in SIZES],
    key=keep_default(S.MODEL_SIZE, DEFAULT_SIZE),
    on_change=_apply_preset,
)
st.info(ARCH_NOTES[arch], icon=":material/lightbulb:")

family = ModelConfig.preset(arch).arch
st.session_state[S.FAMILY_DRAWN] = family
fields = FAMILY_FIELDS[family]
values: dict = {}
ints = [f for f in fields if f not in CHOICES and f not in ("dropout", "bias", "tie_weights", "add_k")]
cols = st.columns(4)
for k, f in enumerate(ints):
    label, help_text = LABELS[f]
    lo, hi = LIMITS[f]
    values[f] = int(cols[k % 4].number_input(label, min_value=lo, max_value=hi, step=1, key=keep_default(S.model_field(f), start_values[f]), help=help_text))
others = [f for f in fields if f not in ints]
if others:
    cols = st.columns(4)
    for k, f in enumerate(others):
        label, help_text = LABELS[f]
        col = cols[k % 4]
        if f in CHOICES:
            values[f] = col.selectbox(label, CHOICES[f], key=keep_default(S.model_field(f), start_values[f]), help=help_text)
        elif f == "add_k":
            values[f] = float(col.number_input(label, min_value=0.001, max_value=10.0, step=0.05, format="%.3f", key=keep_default(S.model_field("add_k"), start_values[f]), help=help_text))
        elif f == "dropout":
            values[f] = float(col.slider(label, 0.0, 0.5, step=0.05, key=keep_default(S.model_field("dropout"), start_values[f]), help=help_text))
        else:
            values[f] = bool(col.checkbox(label, key=keep_default(S.model_field(f), start_values[f]), help=help_text))
if "n_kv_head" in values and values["n_kv_head"] == values.get("n_head"):
    values["n_kv_head"] = None  # as many key/value heads as heads: plain multi-head attention

# The batch size and device are Training-page settings (a widget key belongs to one
# page only); the estimates and the memory check use their current values.
kept = st.session_state.get(S.KEPT, {})
batch = int(kept.get(S.TRAIN_BATCH, 16))
try:
    cfg = ModelConfig.preset(arch, vocab_size=tok.vocab_size, **values).validate()
    # Refused before anything is built when training it would not fit in free memory.
    check_fits(cfg, batch, resolve_device(kept.get(S.TRAIN_DEVICE, "auto")))
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
mem = memory_estimate(cfg, facts["params"], int(batch))
cols = st.columns(4)
cols[0].metric("Parameters", f"{facts['params']:,}", help=f"{facts['params_non_embedding']:,} outside the embeddings.")
cols[1].metric("Training memory (estimate)", f"{mem['total'] / 2**20:,.1f} MiB", help="Weights, gradients, AdamW state and activations, in fp32; a rough order of magnitude.")
cols[2].metric("FLOPs per token", f"{facts['flops_per_token']:,}", help="Forward and backward pass, at the full context length.")
cols[3].metric("FLOPs per step", f"{facts['flops_per_token'] * cfg.block_size * int(batch) / 1e9:,.2f} G", help="FLOPs per token × context length × batch size.")

with st.expander("How it works: parameter counts by layer"):
    parts = params_by_part(cfg)
    terms = " + ".join(f"{v:,}".replace(",", "{,}") for v in parts.values()) if len(parts) <= 8 else r"\dots"
    st.latex(r"N = \sum_{\text{parts}} N_\text{part} = %s = %s" % (terms, f"{sum(parts.values()):,}".replace(",", "{,}")))
    if cfg.arch == "transformer":
        d = cfg.n_embd
        st.latex(
            r"N_\text{block} \approx 12\,d^2 = 12 \cdot %d^2 = %s \quad(\text{attention } 4d^2,\ \text{MLP } 8d^2)"
            % (d, f"{12 * d * d:,}".replace(",", "{,}"))
        )
    st.dataframe(pd.DataFrame({"part": list(parts), "parameters": list(parts.values())}), hide_index=True)
    if cfg.arch == "ngram":
        st.caption("An n-gram has no weights until it counts the training text: its tables grow with the data.")

left, right = st.columns([3, 2])
with left:
    st.subheader("Block structure")
    st.graphviz_chart(model_diagram(cfg))
with right:
    st.subheader("Where the memory goes")
    st.dataframe(
        pd.DataFrame(
            {
                "part": ["weights", "gradients", "AdamW state", "activations", "total"],
                "MiB": [mem[k] / 2**20 for k in ("weights", "gradients", "optimizer", "activations", "total")],
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
