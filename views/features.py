"""Features: train a sparse autoencoder on a model's activations and read its features."""

from __future__ import annotations

import html
from pathlib import Path

import streamlit as st
import torch

from lmcore import sae as S
from lmcore.checkpoint_names import sae_files, sae_path
from lmcore.data import encode_corpus, load_corpus
from lmcore.errors import LMCoreError
from lmcore.hooks import hook_names
from lmcore.jobs import REGISTRY
from lmcore.sample import SAMPLING_SETTINGS
from ui import models, state
from ui.boundary import user_errors
from ui.settings import sampling_config, sampling_key, widget
from ui.shell import require_app

MODEL_KEY = state.KEEP + "features.model"
RESULT = "features.result"  # {model choice: (settings, sae, evaluation, activations, logit effects)}
DEFAULT_TEXT = "builtin:python-docs"
TOP = 8  # contexts shown per feature
STEER_PROMPT = state.KEEP + "features.steer_prompt"
SAVED_FLASH = "features.saved_flash"


def context_html(tok, ctx: S.Context) -> str:
    """A context's tokens, each shaded by the feature's activation on it (the peak framed)."""
    top = max(ctx.acts) or 1.0
    spans = []
    for i, (t, a) in enumerate(zip(ctx.tokens, ctx.acts)):
        body = html.escape(tok.decode([t])).replace("\n", "&#8629;") or "&#9251;"
        frame = "outline:1px solid #b45309;" if i == ctx.peak else ""
        spans.append(
            f'<span title="{a:.3f}" style="background:rgba(245, 140, 20, {a / top:.2f});{frame}'
            f'border-radius:2px;white-space:pre;">{body}</span>'
        )
    return '<div style="font-family:monospace;line-height:1.8;">' + "".join(spans) + "</div>"


def saved_file(choice: str, model) -> Path | None:
    """The checkpoint file that holds exactly ``model``'s weights: a saved model, or a finished run's file."""
    if choice.startswith(models.CKPT_PREFIX):
        return Path(choice[len(models.CKPT_PREFIX) :])
    job = REGISTRY.get(choice[len(models.JOB_PREFIX) :]) if choice.startswith(models.JOB_PREFIX) else None
    path = getattr(job, "checkpoint_path", None)
    if job is None or job.is_alive or path is None or not Path(path).is_file():
        return None
    try:
        saved = models.load_choice(models.CKPT_PREFIX + str(path))[0]
    except LMCoreError:
        return None
    return Path(path) if S.model_fingerprint(saved) == S.model_fingerprint(model) else None


require_app()
st.title("Features")
st.write(
    "Attention maps show where a model looks, not what it represents. A sparse autoencoder splits one "
    "layer's activations into many features, of which only a few (k) are active on each token: each feature "
    "is a direction in the residual stream, and the texts on which it fires most tell what it stands for "
    "(inside a word, after a newline, a closing bracket). Train one on your model here, then read its features."
)

choice = models.select_model(MODEL_KEY)
if choice is None:
    models.no_model_yet("read the features of")
    st.stop()
with user_errors():
    model, tokenizer, data_info = models.load_choice(choice)

points = [n for n in hook_names(model) if not n.endswith("hook_pattern")]
with user_errors():
    default = S.default_hook(model)
cols = st.columns(4)
hook = cols[0].selectbox("Hook point", points, index=points.index(default), key="features.hook")
n_features = cols[1].selectbox("Features", [128, 256, 512, 1024, 2048], index=3, key="features.n")
k = cols[2].slider("Active per token (k)", 1, 64, 16, key="features.k")
max_tokens = cols[3].number_input("Tokens to train on", 1_000, 2_000_000, 200_000, step=10_000, key="features.tokens")
recorded = str(data_info.get("source") or "")
usable = recorded.startswith("builtin:") or recorded.startswith(("http://", "https://"))  # the app reads no local paths
source = st.text_input("Text (builtin:NAME or a web address)", recorded if usable else DEFAULT_TEXT, key="features.text")

results = st.session_state.setdefault(RESULT, {})
settings = (hook, n_features, k, int(max_tokens), source)
home = saved_file(choice, model)  # where this model's autoencoders are saved, if it has a file


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """The text's token ids: (training part, the held-out last tenth (at most 20k tokens))."""
    ids = encode_corpus(tokenizer, load_corpus(source, documents=bool(data_info.get("documents")), allow_local=False))
    held = min(20_000, len(ids) // 10)
    return ids[: len(ids) - held][: int(max_tokens)], ids[len(ids) - held :]


def read(sae: S.SparseAutoencoder, eval_ids: torch.Tensor) -> tuple:
    """(evaluation, activations, logit effects) of ``sae`` on the held-out ids."""
    evaluation = S.evaluate_sae(model, sae, eval_ids)
    acts = S.feature_activations(model, sae, eval_ids)
    effects = S.logit_effects(model, sae) if sae.d_in == model.config.n_embd else None
    return evaluation, acts, effects


if st.button("Train the autoencoder", type="primary", key="features.train"):
    with user_errors():
        if k > n_features:
            st.error("k must be at most the number of features")
            st.stop()
        train_ids, eval_ids = held_out()
        bar = st.progress(0.0, text="Training the autoencoder…")
        sae = S.train_sae(
            model, train_ids, hook=hook, n_features=n_features, k=k,
            progress=lambda done, total: bar.progress(done / total, text=f"{done:,} of {total:,} tokens"),
        )  # fmt: skip
        bar.empty()
        results[choice] = (settings, sae, *read(sae, eval_ids))

files = sae_files(home) if home is not None else []
if files:
    c1, c2 = st.columns([3, 1])
    chosen = c1.selectbox("Or load one saved beside the model", [str(f) for f in files],
                          format_func=lambda f: Path(f).name, key="features.saved")  # fmt: skip
    if c2.button("Load", key="features.load"):
        with user_errors():
            sae = S.SparseAutoencoder.load(chosen, model)
            results[choice] = (("file", chosen), sae, *read(sae, held_out()[1]))

if choice not in results:
    st.info("Choose a hook point and press **Train the autoencoder**: a small model takes a minute or two.")
    st.stop()
trained_settings, sae, evaluation, acts, effects = results[choice]
if trained_settings[0] == "file":
    st.caption(f"Loaded from {Path(trained_settings[1]).name}.")
elif trained_settings != settings:
    st.caption("These features come from the last training; press the button to train with the settings above.")
if home is None:
    st.caption("Save the model on the Training page to keep its autoencoders beside it.")
elif trained_settings[0] != "file":
    target = sae_path(home, f"{sae.hook}-{sae.n_features}-k{sae.k}")
    if st.button(f"Save as {target.name}", key="features.save", help="Beside the model's checkpoint; the "
                 "Checkpoints page lists, downloads and deletes it with the model."):  # fmt: skip
        with user_errors():
            sae.save(target)
            results[choice] = (("file", str(target)), sae, evaluation, acts, effects)
            st.session_state[SAVED_FLASH] = f"Saved {target.name} beside the model."
            st.rerun()
flash = st.session_state.pop(SAVED_FLASH, None)
if flash:
    st.success(flash)

m = st.columns(4)
m[0].metric("Cross-entropy recovered", f"{evaluation['ce_recovered']:.1%}")
m[1].metric("Explained variance", f"{evaluation['explained_variance']:.1%}")
m[2].metric("L0 (active per token)", f"{evaluation['l0']:.1f}")
m[3].metric("Dead features", f"{evaluation['dead_fraction']:.1%}")
st.caption(
    f"On {evaluation['tokens']:,} held-out tokens at {evaluation['hook']}: loss {evaluation['ce_clean']:.3f} clean, "
    f"{evaluation['ce_sae']:.3f} with the autoencoder spliced in, {evaluation['ce_zero']:.3f} with the activation zeroed."
)

density = acts.density()
alive = [int(f) for f in density.argsort(descending=True) if density[f] > 0]
rows = []
for f in alive:
    top = acts.top_contexts(f, n=1, before=0, after=0)
    rows.append(
        {
            "feature": f,
            "density": float(density[f]),
            "same token share": acts.same_token_share(f, TOP),
            "top token": tokenizer.decode([top[0].tokens[0]]) if top else "",
        }
    )
st.subheader("Features")
st.dataframe(rows, hide_index=True, key="features.table", height=260)
if not alive:
    st.stop()
feature = st.selectbox("Feature", alive, key="features.feature", format_func=lambda f: f"feature {f}")
left, right = st.columns([3, 1])
with left:
    st.markdown(f"**Top contexts** (density {float(density[feature]):.2%})")
    for ctx in acts.top_contexts(feature, n=TOP, before=24, after=4):
        st.markdown(context_html(tokenizer, ctx), unsafe_allow_html=True)
with right:
    if effects is not None:
        up, down = S.top_tokens(effects[feature], n=8)
        st.markdown("**Pushes up**")
        st.table([{"token": repr(tokenizer.decode([t])), "logit": round(v, 3)} for t, v in up])
        st.markdown("**Pushes down**")
        st.table([{"token": repr(tokenizer.decode([t])), "logit": round(v, 3)} for t, v in down])

# ------------------------------------------------------------------ search
st.subheader("Search features")
by_token, by_text = st.tabs(["By a token", "By a text"])
with by_token:
    typed = st.text_input("A token (as the tokenizer writes it)", key="features.search_token")
    if typed:
        with user_errors(stop=False):
            tokens = tokenizer.encode(typed)
            if len(tokens) != 1:
                st.warning(f"That is {len(tokens)} tokens for this tokenizer; type one token.")
            else:
                found = acts.token_features(tokens[0], n=10)
                if not found:
                    st.info("That token does not occur in the held-out text the features were read on.")
                else:
                    st.caption("The features most active on this token in the held-out text, strongest first.")
                    st.dataframe(
                        [{"feature": s.feature, "mean activation": round(s.mean, 3), "fires on it": f"{s.share:.0%}",
                          "of its firings here": f"{s.precision:.0%}"} for s in found],
                        hide_index=True, key="features.token_table",
                    )  # fmt: skip
with by_text:
    asked = st.text_area("Which features fire here?", key="features.search_text", height=80)
    if asked.strip():
        with user_errors(stop=False):
            here = S.feature_activations(model, sae, models.encode_prompt(tokenizer, asked, data_info), max_tokens=4096)
            st.markdown("**Top features over the text** (total activation)")
            st.dataframe(
                [{"feature": s.feature, "total": round(s.total, 3), "tokens": s.count} for s in here.top_features(10)],
                hide_index=True, key="features.text_top",
            )  # fmt: skip
            st.markdown("**On each token** (strongest first)")
            st.dataframe(
                [{"token": repr(tokenizer.decode([int(t)])),
                  "features": ", ".join(f"{f} ({v:.2f})" for f, v in here.features_at(i)[:5])}
                 for i, t in enumerate(here.tokens)],
                hide_index=True, key="features.text_tokens",
            )  # fmt: skip

# ------------------------------------------------------------------ steer
st.subheader(f"Steer by feature {feature}")
st.write(
    "Add the feature's direction (unit length) times the strength to the activation at "
    f"{sae.hook} on every token while the model writes: the text on the right is what the model writes when "
    "told that the feature is on. Both texts are drawn with the same seed, so any difference comes from the push."
)
peak = max((c.value for c in acts.top_contexts(feature, n=1)), default=0.0)
cols = st.columns(3)
strength = cols[0].slider("Strength", -100.0, 100.0, 20.0, 1.0, key="features.steer_strength",
                          help=f"Feature {feature}'s top activation in the held-out text is {peak:.2f}.")  # fmt: skip
# The app's sampling settings (the Generation page's too, and the page address's): lmcore.sample's declarations.
steer_sampling = {n: widget(cols[i], SAMPLING_SETTINGS[n], sampling_key(n))
                  for i, n in ((1, "seed"), (2, "temperature"))}  # fmt: skip
prompt = st.text_input("Prompt", key=models.prompt_default(STEER_PROMPT, tokenizer, data_info))
STEERED = "features.steered"
if st.button("Generate", key="features.steer"):
    with user_errors():
        prompt_ids = models.encode_prompt(tokenizer, prompt, data_info) or [tokenizer.bos_id]
        sampling = sampling_config(steer_sampling)
        stops = models.stop_ids(tokenizer, data_info)
        texts = [
            tokenizer.decode(S.steered_generate(model, sae, prompt_ids, feature, a, 80, sampling, stops))
            for a in (0.0, strength)
        ]
        st.session_state[STEERED] = (choice, feature, strength, prompt, texts)
steered = st.session_state.get(STEERED)
if steered and steered[0] == choice:
    _, f, a, p, (plain, pushed) = steered
    c1, c2 = st.columns(2)
    c1.markdown("**Plain**")
    c1.code(p + plain, language=None)
    c2.markdown(f"**Steered** (feature {f}, strength {a:+g})")
    c2.code(p + pushed, language=None)
