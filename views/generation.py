"""Generation: sample text from a model, see the odds of every token, compare two models."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

import numpy as np
import streamlit as st

from lmcore import viz
from lmcore.errors import LMCoreError
from lmcore.finetune import chat_reply
from lmcore.interpret import NOVELTY_MIN_LEN, ngram_index, novelty
from lmcore.sample import SAMPLING_SETTINGS, SamplingConfig, generate, next_token_distribution, token_candidates
from lmcore.tokenizers import ChatTokenizer
from ui import models, settings, state
from ui.boundary import user_errors
from ui.figure import show_figure
from ui.shell import require_app
from ui.render import md, novelty_html

N_CANDIDATES = 10  # candidates kept per generated token
MAX_DOCS = 50  # documents one Generate click may write in documents mode
REFRESH_S = 0.05  # how often streamed text is redrawn: smooth, without a message per token

require_app()
st.title("Generation")
st.write(
    "A language model writes one token at a time: it turns everything so far into a probability "
    "for every token of its vocabulary, and one is drawn. Temperature, top-k and top-p reshape those "
    "odds before the draw; low temperatures play safe and repeat, high ones wander. Below you can "
    "watch the text arrive, see the candidates at any position, and compare two models on one prompt."
)

choice = models.select_model(state.GENERATION_MODEL)
if choice is None:
    models.no_model_yet("generate with")
    st.stop()
with user_errors():
    model, tokenizer, data_info = models.load_choice(choice)
labels = dict((key, text) for text, key in models.model_choices())
documents = models.is_documents(data_info)

prompt = st.text_area(
    "Prompt",
    key=models.prompt_default(state.GENERATION_PROMPT, tokenizer, data_info),
    height=90,
    help="The text the model continues. Characters its tokenizer never saw are reported, not guessed.",
)
n_docs = 1
if documents:
    st.caption(
        "This model learnt separate documents (one per line). An empty prompt starts a new document "
        "at the beginning-of-document token; generation stops at the end of the document."
    )
    n_docs = int(st.number_input("Documents per click", 1, MAX_DOCS, step=1, key=state.keep_default(state.GENERATION_N_DOCS, 5),
                                 help="Each Generate writes this many documents, with seeds seed, seed + 1, …"))  # fmt: skip

sampling = settings.sampling_widgets(st)  # temperature, top-k, top-p, seed, max new tokens: lmcore.sample
max_new = sampling["max_new_tokens"]


def sampling_config() -> SamplingConfig:
    return settings.sampling_config(sampling)


def stream(
    model: Any, tokenizer: Any, data_info: dict, prompt_ids: list[int], cfg: SamplingConfig
) -> Iterator[tuple[str, list[list[tuple[int, float, float]]], list[int]]]:
    """Yield (text so far, candidates, chosen ids) after every generated token.

    Candidates, per generated token: (id, the model's own probability, the
    probability it was drawn with) for the most likely few, and the drawn one.
    """
    ids: list[int] = []
    candidates: list[list[tuple[int, float, float]]] = []
    stop = models.stop_ids(tokenizer, data_info)  # the end of a document is a boundary, never yielded
    for event in generate(model, prompt_ids, max_new_tokens=int(max_new), sampling=cfg, stop_ids=stop):
        ids.append(int(event.token_id))
        candidates.append(token_candidates(event, N_CANDIDATES))
        yield tokenizer.decode(ids), candidates, ids


def show_text(where: Any, prompt_text: str, generated: str) -> None:
    """Prompt and continuation as plain text: never markdown, never HTML."""
    where.code(prompt_text + generated, language=None, wrap_lines=True)


def corpus_index(tokenizer: Any) -> tuple[str, np.ndarray] | None:
    """(corpus name, its n-gram index in this tokenizer's ids), built once per corpus and tokenizer."""
    corpus = st.session_state.get(state.CORPUS)
    if corpus is None:
        return None
    key = (st.session_state.get(state.CORPUS_ID), id(tokenizer))
    cached = st.session_state.get(state.NOVELTY_INDEX)
    if cached is None or cached[0] != key:
        try:
            index = ngram_index(tokenizer.encode(corpus.text), NOVELTY_MIN_LEN)
        except LMCoreError:
            index = None  # this model's tokenizer cannot read the corpus: another corpus's model
        cached = st.session_state[state.NOVELTY_INDEX] = (key, index)
    return (corpus.name, cached[1]) if cached[1] is not None else None


@st.cache_resource(max_entries=2, show_spinner=False)
def _corpus_docs(corpus_id: str | None, _corpus: Any) -> frozenset[str]:
    """The documents of a documents-mode corpus, stripped, for whole-document lookups (one set per corpus)."""
    return frozenset(d.strip() for d in _corpus.docs)


def memorised_or_new(tokenizer: Any, ids: list[int]) -> None:
    """The generated text with the spans found word for word in the training text marked."""
    st.subheader("Memorised or new?")
    found = corpus_index(tokenizer)
    if found is None:
        st.caption("Choose a corpus on the Data page that this model's tokenizer can read to see what it copied.")
        return
    name, index = found
    corpus = st.session_state.get(state.CORPUS)
    if documents and corpus is not None and corpus.documents:
        # A whole document is judged whole: is it one of the corpus's, word for word?
        doc = tokenizer.decode([i for i in ids if i != tokenizer.bos_id]).strip()
        known = doc in _corpus_docs(st.session_state.get(state.CORPUS_ID), corpus)
        st.markdown(f"`{md(doc)}` " + ("**is one of the documents of** " if known else "**is new**: not a document of ")
                    + md(name) + ".")  # fmt: skip
        if len(ids) < NOVELTY_MIN_LEN:
            st.caption(
                f"This document is {len(ids)} tokens long, shorter than the {NOVELTY_MIN_LEN}-token window used to "
                "find copied passages inside longer texts, so it is judged as a whole instead."
            )
            return
    blank = [i for i in set(ids) if not tokenizer.decode([i]).strip()]  # runs of spaces are in any text
    marks = novelty(ids, index, NOVELTY_MIN_LEN, filler_ids=blank)
    st.markdown(novelty_html(tokenizer, ids, marks.span), unsafe_allow_html=True)
    longest = max((e - s for s, e in marks.spans), default=0)
    st.caption(
        f"{marks.novel_share:.0%} of the generated tokens are new; highlighted spans of at least "
        f"{NOVELTY_MIN_LEN} tokens occur word for word in {md(name)} (longest: {longest} tokens). "
        "At temperature 0 a small model trained long on a small text recites it."
    )


CHAT_HISTORY = "generation.chat_history"  # per model: the conversation shown in the Chat tab


def chat_view() -> None:
    """Talk to a fine-tuned model: each message wrapped in its chat template, the answer up to its end token."""
    st.write(
        "This model was fine-tuned to answer. Your message is wrapped in its chat template "
        "(`<|user|>` message `<|end|><|assistant|>`) and the model writes until it produces its `<|end|>` token "
        "(or the max new tokens above). The sampling settings above apply: temperature 0 gives its most likely answer."
    )
    remember = st.toggle("Remember the conversation", key="generation.chat_remember",
                         help="Send the earlier turns with each message. A model fine-tuned on single prompt/response "
                         "pairs answers best without them.")  # fmt: skip
    chats = st.session_state.setdefault(CHAT_HISTORY, {})
    history = chats.setdefault(choice, [])
    box = st.container()
    asked = st.chat_input("Ask the model", key="generation.chat_input")
    if asked:
        with user_errors(stop=False):
            cfg = sampling_config()
            turns = (history if remember else []) + [{"role": "user", "content": asked}]
            answer = chat_reply(model, tokenizer, turns, int(max_new), cfg)
            history += [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]
    with box:
        if not history:
            st.caption("Type a message below.")
        for m in history:
            with st.chat_message(m["role"]):
                st.text(m["content"] if m["content"] else "(an empty answer: the end token came first)")
    if history and st.button("Clear the conversation", key="generation.chat_clear"):
        chats[choice] = []
        st.rerun()


is_chat = isinstance(tokenizer, ChatTokenizer)
tabs = st.tabs((["Chat"] if is_chat else []) + ["Generate", "Temperature explorer", "Compare two models"])
tab_gen, tab_temp, tab_cmp = tabs[-3:]
if is_chat:
    with tabs[0]:
        chat_view()

with tab_gen:
    clicked = st.button("Generate", type="primary", key="generation.go")
    out = st.empty()
    if clicked:
        cfg = prompt_ids = None
        with user_errors(stop=False):
            cfg = sampling_config()
            prompt_ids = models.encode_prompt(tokenizer, prompt, data_info)
        if cfg is not None and prompt_ids == []:
            st.info("Type a prompt first: this model learnt plain text, so it needs something to continue.")
        elif cfg is not None and prompt_ids:
            st.session_state.pop(state.GENERATION_RESULT, None)
            st.session_state.pop(state.GENERATION_POSITION, None)  # the new text may be shorter
            text, candidates, ids, last = "", [], [], 0.0
            with user_errors(stop=False):
                for text, candidates, ids in stream(model, tokenizer, data_info, prompt_ids, cfg):
                    if time.monotonic() - last > REFRESH_S:
                        show_text(out, prompt, text)
                        last = time.monotonic()
            more: list[str] = []
            with user_errors(stop=False):
                for k in range(1, n_docs):  # the other documents of this click, each with its own seed
                    cfg_k = dataclasses.replace(cfg, seed=cfg.seed + k)
                    ids_k = [int(e.token_id) for e in generate(model, prompt_ids, max_new_tokens=int(max_new),
                                                               sampling=cfg_k, stop_ids=models.stop_ids(tokenizer, data_info))]  # fmt: skip
                    more.append(prompt + tokenizer.decode(ids_k))
            st.session_state[state.GENERATION_RESULT] = dict(
                more=more,
                key=choice,
                model=labels.get(choice, choice),
                tokenizer=tokenizer,
                prompt=prompt,
                text=text,
                ids=list(ids),
                candidates=list(candidates),
                ended=documents and len(ids) < int(max_new),  # stopped at the next BOS
            )
    result = st.session_state.get(state.GENERATION_RESULT)
    if result is not None and result["key"] != choice:
        result = st.session_state[state.GENERATION_RESULT] = None  # written by the model picked before: not this one's text
    if result is None:
        out.caption("Press Generate to write text with the settings above.")
    else:
        show_text(out, result["prompt"], result["text"])
        n = len(result["ids"])
        ended = " (the document ended)" if result["ended"] else ""
        st.caption(f"{n} new token{'' if n == 1 else 's'}{ended} from {md(result['model'])}.")
        if result.get("more"):
            st.markdown(f"**{len(result['more'])} more documents** from the same click (each with the next seed):")
            st.code("\n".join(result["more"]), language=None, wrap_lines=True)
        if n:
            memorised_or_new(result["tokenizer"], result["ids"])
        if n:
            st.subheader("What else could have come?")
            st.write(
                "Pick a generated token to see the candidates the model weighed at that point; "
                "the one actually drawn is in red."
            )
            pos = st.slider("Generated token", 1, n, value=n, key=state.GENERATION_POSITION) if n > 1 else 1
            tok = result["tokenizer"]  # the generating model's, whatever is picked now
            chosen = result["ids"][pos - 1]
            top = result["candidates"][pos - 1]
            context = (result["prompt"] + tok.decode(result["ids"][: pos - 1]))[-80:]
            # One line: the text before the token (newlines shown as ↵), then the token in brackets.
            st.text(f"…{context.replace(chr(10), '↵')}⟦{tok.token_str(chosen)}⟧")
            show_figure(
                viz.candidates_figure(
                    [tok.token_str(c[0]) for c in top],
                    [c[1] for c in top],
                    chosen=[c[0] for c in top].index(chosen),
                    sampled=[c[2] for c in top],
                    title=f"token {pos}: what the model expected",
                ),
                key="generation.candidates", model=models.choice_name(result["key"]), prompt=result["prompt"],
            )
            st.caption(
                "Bars: the model's own probabilities. Diamonds: the odds it was drawn from after "
                "temperature, top-k and top-p. Red: the token actually drawn."
            )
            with st.expander("How it works: cross-entropy of this token"):
                p_model = next(c[1] for c in top if c[0] == chosen)
                st.latex(r"\ell = -\ln p_\theta(x_t \mid x_{<t})")
                st.latex(
                    r"\ell(\texttt{%s}) = -\ln %.4f = %.3f \text{ nats} = %.3f \text{ bits}"
                    % (viz.latex_text(tok.token_str(chosen)), p_model, -np.log(max(p_model, 1e-30)),
                       -np.log2(max(p_model, 1e-30)))
                )  # fmt: skip
                st.write(
                    "The loss the model was trained to lower is this number averaged over every token of the "
                    "training text: a token the model saw coming costs little, a surprise costs a lot."
                )

def softmax_with_temperature(reference: Any, probs: Any, vocab: list[str], t: float) -> None:
    """The sampling formula, filled with the model's logits for the top tokens at this position."""
    z = np.log(np.maximum(reference, 1e-30))
    z = z - z.max()  # logits up to a constant, which softmax ignores: the favourite at 0
    st.latex(r"p_i = \frac{\exp(z_i / T)}{\sum_{j=1}^{%d} \exp(z_j / T)}" % len(reference))
    st.write(
        f"z: the model's logits for the {len(reference)} tokens of its vocabulary, shifted so that the "
        f"favourite has 0. At T = {t:g} (T = 0 always takes the favourite):"
    )
    for i in np.argsort(-reference)[:3]:
        st.latex(
            r"\texttt{%s}:\; z = %.3f,\quad p = %.4f \text{ at } T = 1,\quad p = %.4f \text{ at } T = %g"
            % (viz.latex_text(vocab[i]), z[i], reference[i], probs[i], t)
        )


with tab_temp:
    st.write(
        "The model's real odds for the token that follows your prompt. Move the temperature: the "
        "grey bars are the model's own distribution (temperature 1), the orange ones what sampling "
        "would draw from. Near 0 all the mass goes to the favourite; above 1 the long tail gains."
    )

    @st.fragment
    def temperature_explorer() -> None:
        with user_errors(stop=False):
            prompt_ids = models.encode_prompt(tokenizer, prompt, data_info)
            if not prompt_ids:
                st.info("Type a prompt above to see what the model expects next.")
                return
            t = settings.widget(st, SAMPLING_SETTINGS["temperature"], state.EXPLORER_TEMPERATURE, first=1.0,
                                label="Temperature to explore",
                                help="Only for this chart: Generate uses the temperature above.")  # fmt: skip
            probs = next_token_distribution(model, prompt_ids, temperature=float(t)).numpy()
            reference = next_token_distribution(model, prompt_ids, temperature=1.0).numpy()
            vocab = [tokenizer.token_str(i) for i in range(len(reference))]
            show_figure(viz.temperature_figure(probs, reference, vocab, float(t)), key="generation.temperature_chart",
                        model=models.choice_name(choice), prompt=prompt)
            with st.expander("How it works"):
                softmax_with_temperature(reference, probs, vocab, float(t))

    temperature_explorer()

with tab_cmp:
    st.write(
        "The same prompt and sampling settings, given to two models: two architectures, or one model "
        "early and late in training. The text of each streams into its own column."
    )
    left, right = st.columns(2)
    key_a = models.select_model(state.COMPARE_MODEL_A, "Left model", container=left)
    key_b = models.select_model(state.COMPARE_MODEL_B, "Right model", container=right, avoid=key_a)
    both = st.button("Generate with both", key="generation.compare_go")
    left, right = st.columns(2)  # the texts go below the button
    sides = [(key_a, left, left.empty()), (key_b, right, right.empty())]
    if both:
        texts: list[str | None] = [None, None]
        streams: list[Any] = [None, None]
        for n, (key, col, _) in enumerate(sides):
            with col, user_errors(stop=False):
                m, tok, info = models.load_choice(key)
                ids = models.encode_prompt(tok, prompt, info)
                if not ids:
                    st.info("This model learnt plain text: type a prompt first.")
                    continue
                streams[n] = stream(m, tok, info, ids, sampling_config())
                texts[n] = ""
        last = 0.0
        with user_errors(stop=False):
            # Interleave the two streams, a token from each in turn, so both columns fill at once.
            for steps in zip_longest(*(s or iter(()) for s in streams)):
                for n, step in enumerate(steps):
                    if step is not None:
                        texts[n] = step[0]
                if time.monotonic() - last > REFRESH_S:
                    for n, (_, _, out) in enumerate(sides):
                        if texts[n] is not None:
                            show_text(out, prompt, texts[n])
                    last = time.monotonic()
        st.session_state[state.COMPARE_RESULT] = dict(prompt=prompt, keys=[key_a, key_b], texts=texts)
    pair = st.session_state.get(state.COMPARE_RESULT)
    for n, (key, _, out) in enumerate(sides):
        if pair and pair["keys"][n] == key and pair["texts"][n] is not None:
            show_text(out, pair["prompt"], pair["texts"][n])
