"""Intervene: switch parts of a model off, patch activations from one text into another, steer it, attribute a prediction."""

from __future__ import annotations

import streamlit as st

from lmcore import intervene as iv
from lmcore import viz
from lmcore.data import load_corpus
from lmcore.hooks import layer_names
from ui import models, state
from ui.boundary import user_errors
from ui.figure import show_figure
from ui.render import md
from ui.shell import require_app

MAX_TOKENS = 96  # longer texts keep their first this many tokens
# Above this many parameters a sweep (one forward per head, or per layer and position) takes
# long enough on a CPU that it waits for a click instead of running on every change.
SWEEP_FREE_PARAMS = 5_000_000
MIN_GAP_NATS = 0.1  # below this clean-corrupted gap the patching charts show raw loss changes, not shares
TEXTS = ("The value of the expression is returned when the function ends.", "def main(): return 0", "get_value", "name")
STEER_A = "def \nreturn \nimport "
STEER_B = "The \nIt was \nIn the "
PAIRS = ("Repeated sequence vs shuffled first half", "Name swap (python-names)", "Your own two texts")


@st.cache_data(show_spinner=False)
def stdlib_names() -> list[str]:
    return load_corpus("builtin:python-names").text.splitlines()


require_app()
st.title("Intervene")
st.write(
    "The other pages watch a model; this one changes it and measures the result. A picture shows what a part "
    "of the model correlates with: a head that attends to the token after an earlier copy *looks like* an "
    "induction head. An intervention tests what the part *does*: switch the head off and the copy fails (or "
    "does not), restore one activation from a clean run inside a corrupted one and the answer comes back (or "
    "does not), add a direction to the residual stream and the text changes. A cause, not a correlation: "
    "if removing a part leaves the loss unchanged, the model did not need it for this text, however its "
    "attention looks."
)

choice = models.select_model(state.INTERVENE_MODEL)
if choice is None:
    models.no_model_yet("intervene on")
    st.stop()
with user_errors():
    model, tokenizer, data_info = models.load_choice(choice)
name = models.choice_name(choice)
has_heads = bool(layer_names(model, "attn.hook_z"))
has_channels = bool(layer_names(model, "mixer.hook_y"))
n_layer = model.config.n_layer
heavy = model.num_params() > SWEEP_FREE_PARAMS


def sweep_wanted(key: str, what: str) -> bool:
    """Small models sweep on every change; a big one waits until the box is ticked."""
    return not heavy or st.checkbox(f"Run {what} (one forward pass per row: slow for a model this size)", key=key)


# A Mamba-2's channels come in heads of ssm_head_dim, each with one decay (the Attention page's maps).
ssm_head_dim = model.config.ssm_head_dim if model.config.arch == "mamba2" else 0
if has_channels:
    st.info(
        ("This is a Mamba-2: it has no attention heads; its heads are state-space heads of "
         f"{ssm_head_dim} channels with one decay each, whose exact maps the Attention page shows. "
         if ssm_head_dim else "This is a Mamba: it has no attention heads. ")
        + "Each layer carries a fixed-size state along the text, so the past reaches a token only through "
        "that state. Here you switch off whole layers (the mixer's write into the residual stream) or single "
        "scan channels; patching works on the residual stream and restores everything the state will carry "
        "from that position on; steering adds to the stream the same way."
    )  # fmt: skip
elif not has_heads:
    st.info(
        f"This model ({model.config.arch}) has no attention heads or Mamba channels to switch off; patching and "
        "steering work on its hidden state between layers where it has one."
    )

tab_ablate, tab_patch, tab_steer, tab_attr = st.tabs(["Switch off", "Patch", "Steer", "Attribute"])

# ------------------------------------------------------------------ switch off
with tab_ablate:
    text = st.text_area(
        "Text",
        key=models.prompt_default(state.INTERVENE_TEXT, tokenizer, data_info, TEXTS),
        height=90,
        help="The model reads this text; the colours show how the loss on each token changes.",
    )

    def use_repeated() -> None:
        clean, _, _ = iv.repeated_pair(model.config.vocab_size, min(25, (model.max_context or 50) // 2),
                                       seed=len(text), avoid=[tokenizer.bos_id])  # fmt: skip
        st.session_state[state.INTERVENE_TEXT] = tokenizer.decode(clean)

    st.button("Use a repeated random sequence", on_click=use_repeated, key="intervene.repeat",
              help="Random tokens, then the same tokens again: the text an induction head predicts.")  # fmt: skip
    ids = []
    with user_errors(stop=False):
        ids = models.encode_prompt(tokenizer, text, data_info)[:MAX_TOKENS]
    if len(ids) < 2:
        st.info("Type a text of at least two tokens.")
    elif not (has_heads or has_channels):
        st.info("Nothing here to switch off in this architecture.")
    else:
        tokens = [tokenizer.token_str(i) for i in ids]
        mode = st.radio("Replace the output with", ["zero", "mean"], horizontal=True, key="intervene.mode",
                        format_func=lambda m: "zero" if m == "zero" else "its mean over this text")  # fmt: skip
        heads, channels, layers = [], [], []
        if has_heads:
            st.markdown("**Heads to switch off** (click to toggle)")
            for layer in range(n_layer):
                picked = st.pills(f"layer {layer}", list(range(model.config.n_head)), selection_mode="multi",
                                  key=f"intervene.heads.{layer}", format_func=lambda h: f"head {h}")  # fmt: skip
                heads += [(layer, h) for h in picked or []]
        else:
            layers = st.pills("Layers to switch off", list(range(n_layer)), selection_mode="multi",
                              key="intervene.layers", format_func=lambda i: f"layer {i}") or []  # fmt: skip
            width = model.config.d_inner
            channel_labels = [(layer, c) for layer in range(n_layer) for c in range(width)]
            channels = st.multiselect(
                "Scan channels to switch off", channel_labels, key="intervene.channels",
                format_func=lambda lc: f"layer {lc[0]} · channel {lc[1]}"
                + (f" (head {lc[1] // ssm_head_dim})" if ssm_head_dim else ""),
            )  # fmt: skip
        with user_errors(stop=False):
            effect = iv.ablation_effect(model, ids, heads=heads, channels=channels, layers=layers, mode=mode)
            st.markdown(
                viz.loss_change_html(tokens, effect.change.tolist(), effect.before.tolist(), effect.after.tolist(),
                                     effect.top_before, effect.top_after, tokenizer.token_str),
                unsafe_allow_html=True,
            )  # fmt: skip
            if heads or channels or layers:
                st.caption(
                    f"Mean loss {float(effect.before.mean()):.3f} → {float(effect.after.mean()):.3f} nats per token. "
                    "Red: the token got harder to predict; blue: easier. Hover a token for its top guesses."
                )
                worst = int(effect.change.argmax())
                at = st.selectbox("Top candidates for the token", range(len(ids) - 1), index=worst,
                                  key="intervene.position", format_func=lambda i: f"#{i + 1} {tokens[i + 1]}")  # fmt: skip
                rows = [
                    {"before": f"{tokenizer.token_str(a)!r} {pa:.0%}", "after": f"{tokenizer.token_str(b)!r} {pb:.0%}"}
                    for (a, pa), (b, pb) in zip(effect.top_before[at], effect.top_after[at])
                ]
                st.table(rows)
            else:
                st.caption("Nothing is switched off yet: pick heads or layers above. All tokens are white.")
        st.markdown("**Every unit alone**: the mean loss change over this text when only that one is switched off.")
        if sweep_wanted("intervene.sweep_on", "the sweep over every unit"):
            unit = "head" if has_heads else "layer"
            table = iv.ablation_table(model, ids, unit=unit, mode=mode)
            columns = [f"head {h}" for h in range(table.shape[1])] if has_heads else ["whole layer"]
            show_figure(
                viz.intervention_heatmap(table.numpy(), [f"layer {i}" for i in range(n_layer)], columns,
                                         title=f"loss change when one {unit} is switched off ({mode})",
                                         value="Δ loss (nats)"),
                key="intervene.sweep", model=name, prompt=text,
            )  # fmt: skip

# ------------------------------------------------------------------ patch
with tab_patch:
    st.write(
        "Run a **corrupted** text, and restore one activation from a **clean** text of the same length: "
        "where restoring it brings the clean answer back, that activation carries what the difference is about. "
        "1 = fully restored, 0 = no effect."
    )
    pair = st.radio("Pair", PAIRS, key="intervene.pair")
    seed = st.number_input("Seed", 0, 10_000, 0, key="intervene.pair_seed", help="Which random pair.")
    clean_ids = corrupted_ids = positions = None
    with user_errors(stop=False):
        if pair == PAIRS[0]:
            length = min(25, (model.max_context or 50) // 2)
            clean_ids, corrupted_ids, positions = iv.repeated_pair(model.config.vocab_size, length, int(seed),
                                                                   avoid=[tokenizer.bos_id])  # fmt: skip
            st.caption(
                f"{length} random tokens, then the same again; the corrupted text shuffles the first copy. "
                "The metric is the loss on the second copy: copying what followed each token before works only "
                "in the clean text."
            )
        elif pair == PAIRS[1]:
            clean_ids, corrupted_ids, positions, (a, b) = iv.swap_pair(tokenizer.encode, stdlib_names(), seed=int(seed))
            st.caption(f"Clean: {md(a)} ↵ {md(a)}; corrupted: {md(b)} ↵ {md(a)}. The metric is the loss on the second name.")
        else:
            left, right = st.columns(2)
            clean_text = left.text_input("Clean text", "def f(x): return x", key="intervene.clean")
            corrupt_text = right.text_input("Corrupted text", "def g(y): return y", key="intervene.corrupt")
            clean_ids = models.encode_prompt(tokenizer, clean_text, data_info)[:MAX_TOKENS]
            corrupted_ids = models.encode_prompt(tokenizer, corrupt_text, data_info)[:MAX_TOKENS]
            if len(clean_ids) != len(corrupted_ids) or len(clean_ids) < 2:
                st.info(f"The texts have {len(clean_ids)} and {len(corrupted_ids)} tokens: patching needs two "
                        "texts of the same length, at least two tokens each.")  # fmt: skip
                clean_ids = None
            else:
                positions = [len(clean_ids) - 2]
                st.caption("The metric is the loss on the clean text's last token.")
    if clean_ids is not None and sweep_wanted("intervene.patch_on", "the patching sweeps"):
        with user_errors(stop=False):
            metric = iv.loss_metric(clean_ids, positions)
            tokens = [tokenizer.token_str(i) for i in corrupted_ids]
            result = iv.patch_residual(model, clean_ids, corrupted_ids, metric)
            st.caption(f"Loss on the measured tokens: clean {result.clean:.3f}, corrupted {result.corrupted:.3f} nats.")
            # With no gap between the two runs a share restored is noise divided by nearly nothing.
            shares = abs(result.clean - result.corrupted) >= MIN_GAP_NATS
            if not shares:
                st.caption(
                    "This model scores both texts almost the same, so there is little to restore: the charts show "
                    "the loss change from the corrupted run in nats instead of a share (a trained model shows more)."
                )
            value = "restored" if shares else "Δ loss (nats)"
            streams = [f"into layer {i}" for i in range(result.table.shape[0])]
            show_figure(
                viz.intervention_heatmap((result.restored if shares else result.change).numpy(), streams, tokens,
                                         title="residual stream restored", value=value,
                                         x_title="position (corrupted token)"),
                key="intervene.patch_resid", model=name,
            )  # fmt: skip
            if has_heads:
                heads_result = iv.patch_heads(model, clean_ids, corrupted_ids, metric)
                show_figure(
                    viz.intervention_heatmap((heads_result.restored if shares else heads_result.change).numpy(),
                                             [f"layer {i}" for i in range(n_layer)],
                                             [f"head {h}" for h in range(model.config.n_head)],
                                             title="one head's output restored (all positions)", value=value),
                    key="intervene.patch_heads", model=name,
                )  # fmt: skip
            elif has_channels:
                st.caption("A Mamba has no heads to patch one by one: the residual stream above is its patching view.")

# ------------------------------------------------------------------ steer
with tab_steer:
    st.write(
        "A direction in the residual stream: the mean stream over prompts of set A minus that over set B, "
        "at one layer. Added to every position while the model generates, scaled by the slider (0: the plain "
        "model). Both columns decode greedily, so any difference comes from the push."
    )
    left, right = st.columns(2)
    set_a = left.text_area("Set A (one prompt a line)", STEER_A, key="intervene.steer_a", height=100)
    set_b = right.text_area("Set B (one prompt a line)", STEER_B, key="intervene.steer_b", height=100)
    layer = st.selectbox("Layer", range(n_layer), index=min(1, n_layer - 1), key="intervene.steer_layer")
    scale = st.slider("Scale", -20.0, 20.0, 4.0, 0.5, key="intervene.steer_scale")
    prompt = st.text_input("Prompt", key=models.prompt_default(state.INTERVENE_STEER_PROMPT, tokenizer, data_info, TEXTS))
    with user_errors(stop=False):
        enc = lambda s: models.encode_prompt(tokenizer, s, data_info)  # noqa: E731
        a = [enc(line) for line in set_a.splitlines() if line.strip()]
        b = [enc(line) for line in set_b.splitlines() if line.strip()]
        direction = iv.mean_difference(model, a, b, layer)
        prompt_ids = enc(prompt) or [tokenizer.bos_id]
        plain = iv.steered_generate(model, prompt_ids, direction, layer, 0.0, max_new_tokens=60)
        pushed = iv.steered_generate(model, prompt_ids, direction, layer, scale, max_new_tokens=60)
        st.caption(f"The direction's length is {float(direction.norm()):.2f}.")
        c1, c2 = st.columns(2)
        c1.markdown("**Plain**")
        c1.code(prompt + tokenizer.decode(plain), language=None)
        c2.markdown(f"**Steered** (scale {scale:+g})")
        c2.code(prompt + tokenizer.decode(pushed), language=None)

# ------------------------------------------------------------------ attribute
with tab_attr:
    st.write(
        "Direct logit attribution: the final residual stream is a sum of what the embedding, every head and "
        "every MLP (or Mamba mixer) wrote into it. With the final norm's scale held fixed, the chosen token's "
        "logit splits exactly into one share per part. It measures the direct path only: a head that works "
        "through later layers shows up there, not here."
    )
    ids = []
    with user_errors(stop=False):
        ids = models.encode_prompt(tokenizer, st.session_state.get(state.INTERVENE_TEXT, ""), data_info)[:MAX_TOKENS]
    if not ids:
        st.info("Type a text on the first tab.")
    else:
        tokens = [tokenizer.token_str(i) for i in ids]
        pos = st.selectbox("Prediction after", range(len(ids)), index=len(ids) - 1, key="intervene.attr_pos",
                           format_func=lambda i: f"#{i} {tokens[i]}")  # fmt: skip
        with user_errors(stop=False):
            candidates = iv.top_next_tokens(model, ids, pos, k=10)
            token = st.selectbox("Token", [t for t, _ in candidates], key="intervene.attr_token",
                                 format_func=lambda t: f"{tokenizer.token_str(t)!r} ({dict(candidates)[t]:.0%})")  # fmt: skip
            attr = iv.logit_attribution(model, ids[: pos + 1], token, position=pos)
            parts = {"embedding": attr.embed}
            for label, values in (("MLP", attr.mlps), ("mixer", attr.mixers)):
                if values is not None:
                    parts.update({f"{label} {i}": float(v) for i, v in enumerate(values)})
            if attr.heads is not None:
                parts.update({f"heads of layer {i}": float(v) for i, v in enumerate(attr.heads.sum(1))})
            parts["biases"] = attr.rest
            label = repr(tokenizer.token_str(token))
            show_figure(viz.attribution_figure(parts, title=f"logit of {label}: {attr.logit:.2f}"),
                        key="intervene.attr", model=name)  # fmt: skip
            if attr.heads is not None:
                show_figure(
                    viz.intervention_heatmap(attr.heads.numpy(), [f"layer {i}" for i in range(n_layer)],
                                             [f"head {h}" for h in range(model.config.n_head)],
                                             title=f"each head's direct contribution to {label}", value="logit"),
                    key="intervene.attr_heads", model=name,
                )  # fmt: skip
