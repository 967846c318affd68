"""Training page: start, watch, stop and resume training runs; compare them."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from lmcore.checkpoint import list_checkpoints
from lmcore.checkpoint_names import checkpoint_path, optimizer_path, sanitize_name
from lmcore.checkpoint_resume import resume_settings
from lmcore.batches import as_source
from lmcore.data import check_length
from lmcore.device import DEVICE_CHOICES, describe_device, resolve_device
from lmcore.errors import LMCoreError
from lmcore.finetune import chat_tokenizer, encode_example, lora_trainable_share, parse_examples
from lmcore.jobs import FAILED, FINISHED, MAX_RUNS_ENV, REGISTRY, RUNNING, STOPPED, RunSpec, TrainingJob
from lmcore.models import SIZES, ModelConfig, family_of
from lmcore.models.estimate import model_counts
from lmcore.recipes import INDUCTION_FORMED, INDUCTION_VOCAB, best_induction, recipe, train_settings
from lmcore.run import finetune_spec
from lmcore.settings import declared
from lmcore.tasks import list_tasks
from lmcore.train import TrainConfig
from lmcore.viz import loss_figure, metric_figure, series_from_events
from ui import ownership
from ui import state as S
from ui import urlstate
from ui.boundary import user_errors
from ui.figure import show_figure
from ui.flow import (
    ARCH_LABELS,
    PAGE_ATTENTION,
    PAGE_CHECKPOINTS,
    PAGE_GENERATION,
    PAGE_MODEL,
    encoded_split,
    leave_recipe,
    preset_config,
    require_corpus,
    require_model_config,
)
from ui.render import masked_example_html, md
from ui.runs import saved_runs_section
from ui.settings import page_config, train_key, train_widget, train_widgets
from ui.shell import require_app
from ui.state import checkpoint_dir, keep_default

REFRESH_S = 1.0
SETTING_NAMES = {train_key(n): d.setting.label.split(" (")[0].lower() for n, d in declared(TrainConfig).items()}
NOTE_S = 20.0  # how long the note that the user's settings came back stays
START_GUARD_S = 3.0  # a second press this soon after a start is taken for the same press
INDUCTION_RUN = "induction-head"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _devices() -> list[str]:
    """The device choices that work on this machine."""
    out = []
    for name in DEVICE_CHOICES:
        try:
            resolve_device(name)
        except LMCoreError:
            continue
        out.append(name)
    return out


def _job_label(job: TrainingJob) -> str:
    """A run's label in pickers; it never changes during the run (a picker keys on its labels)."""
    arch = job.model_config.preset or job.model_config.arch
    started = time.strftime("%H:%M:%S", time.localtime(job.started_at))
    return f"{job.name} · {arch} · started {started}"


def _train_config() -> TrainConfig:
    return page_config()  # every setting the page draws, read by its declaration (ui.settings)


def _data_info() -> dict:
    corpus = require_corpus()
    return {"documents": corpus.documents, "source": corpus.source or corpus.name, "name": corpus.name,
            "corpus_id": st.session_state.get(S.CORPUS_ID)}  # fmt: skip


def same_data(a: TrainingJob, b: TrainingJob) -> bool:
    """Whether two runs trained on the same corpus (read the same way): only those share the live charts by default."""
    x, y = a.data_info or {}, b.data_info or {}
    if x.get("corpus_id") and y.get("corpus_id"):
        return x["corpus_id"] == y["corpus_id"]
    keys = ("source", "name", "documents")
    return all(x.get(k) == y.get(k) for k in keys)


def _start(name: str, cfg: ModelConfig, tc: TrainConfig | None = None) -> None:
    tc = tc or _train_config()
    tok = st.session_state[S.TOKENIZER]
    _, train_ids, val_ids = encoded_split(tok)
    check_length(train_ids, cfg.block_size, "training split")
    check_length(val_ids, cfg.block_size, "validation split")
    info = {**_data_info(), "train_tokens": len(train_ids)}
    job = REGISTRY.start(RunSpec(name, cfg, tok, train_ids, val_ids, tc, data_info=info), checkpoint_dir())
    _follow(job)


def _press_start(token: int) -> None:
    """Start's callback: while a start is in flight, another press starts nothing.

    ``token`` is the count of starts when the pressed button was drawn: a press
    of a button drawn before the last start (the page had not yet redrawn it)
    is ignored, and so is a press within ``START_GUARD_S`` of the last start
    while that run is still going (the redrawn button hit by the same double press).
    """
    last = st.session_state.get(S.START_TIME)
    recent = last is not None and time.monotonic() - last < START_GUARD_S
    shown = ownership.active()
    if token != st.session_state.get(S.START_TOKEN, 0) or (recent and shown is not None and shown.is_alive):
        st.session_state[S.START_NOTE] = True
        return
    st.session_state[S.START_TOKEN] = token + 1
    st.session_state[S.START_TIME] = time.monotonic()
    cfg = st.session_state[S.MODEL_CONFIG]
    try:
        _start(str(_value(S.TRAIN_NAME) or "").strip() or default_run_name(cfg), cfg)
    except LMCoreError as e:
        st.session_state[S.START_ERROR] = str(e)
    # Counted again from when the run has started (its process may take a while to launch on a busy machine).
    st.session_state[S.START_TIME] = time.monotonic()


def _press_stop() -> None:
    """Stop's callback: it runs before the page's script, so no redraw in flight can lose the press."""
    job = ownership.active()
    if job is not None:
        job.stop()


def _name_typed() -> None:
    cfg = st.session_state.get(S.MODEL_CONFIG)
    st.session_state[S.NAME_FOR] = cfg.to_json() if cfg is not None else None


def _value(key: str):
    return st.session_state.get(key, st.session_state.get(S.KEPT, {}).get(key))


def default_run_name(cfg: ModelConfig) -> str:
    """A run name from the model: its family and size preset ("mamba-tiny"), else its shape ("llama-2x64-gqa")."""
    arch = cfg.preset or cfg.arch
    for size in SIZES:
        if cfg.preset and preset_config(cfg.preset, size, cfg.vocab_size) == cfg:
            return f"{arch}-{size.lower()}"
    return f"{arch}-{family_of(cfg.arch).run_shape(cfg)}"


def free_name(base: str) -> str:
    """The name a run called ``base`` gets: -2, -3 … added while a running run or a saved file has it."""
    folder = checkpoint_dir()
    taken = {j.checkpoint_path for j in REGISTRY.running()}
    name, k = base, 1
    while checkpoint_path(folder, name) in taken or checkpoint_path(folder, name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def _start_lab(name: str, cfg: ModelConfig) -> bool:
    """AdamW vs Muon: the same model, seed and batches trained with each, as two runs on one chart."""
    tc = _train_config()
    if REGISTRY.free_slots() < 2:
        st.error("The comparison trains two runs at once and the server allows fewer now: stop a run first.")
        return False
    for optimizer in ("adamw", "muon"):
        _start(f"{name}-{optimizer}", cfg, dataclasses.replace(tc, optimizer=optimizer))
    return True


def _follow(job: TrainingJob) -> None:
    """Show ``job``; the run shown before stays on the charts for comparison."""
    ownership.own(job)
    before = st.session_state.get(S.ACTIVE_JOB)
    if before and before != job.id and ownership.job(before) is not None:
        compare = st.session_state.get(S.COMPARE_JOBS, [])
        st.session_state[S.COMPARE_JOBS] = [before] + [i for i in compare if i != before]
    st.session_state[S.ACTIVE_JOB] = job.id


def _save_compare() -> None:
    # Runs the picker did not offer (on other data, hidden) stay chosen for when they are shown again.
    offered = st.session_state.get(S.OVERLAY_OFFERED, [])
    hidden = [i for i in st.session_state.get(S.COMPARE_JOBS, []) if i not in offered]
    st.session_state[S.COMPARE_JOBS] = list(st.session_state[S.OVERLAY_RUNS]) + hidden


def _resume(path, name: str) -> bool:
    """Continue the checkpoint at ``path`` (weights and optimizer state) up to the iterations set."""
    run = resume_settings(path, dataclasses.asdict(_train_config()))
    if run.train_config.max_iters <= run.steps:
        st.error(f"'{md(name)}' has already trained {run.steps:,} steps; set Iterations above {run.steps:,} to continue it.")
        return False
    _, train_ids, val_ids = encoded_split(run.tokenizer)
    check_length(val_ids, run.config.block_size, "validation split")
    spec = RunSpec(name, run.config, run.tokenizer, train_ids, val_ids, run.train_config, data_info=_data_info(),
                   resume_from=path)  # fmt: skip
    job = REGISTRY.start(spec, checkpoint_dir())
    _follow(job)
    return True


def _finetune(path, name: str) -> bool:
    """Start a new run from the weights of the checkpoint at ``path``, on the current corpus."""
    base = resume_settings(path)  # its model and vocabulary; the settings are this page's
    _, train_ids, val_ids = encoded_split(base.tokenizer)
    check_length(val_ids, base.config.block_size, "validation split")
    spec = RunSpec(f"{name}-finetuned", base.config, base.tokenizer, train_ids, val_ids, _train_config(),
                   data_info=_data_info(), init_from=path)  # fmt: skip
    job = REGISTRY.start(spec, checkpoint_dir())
    _follow(job)
    return True


FINETUNE_MODES = {"corpus": "the current corpus (more of the same)", "pairs": "prompt/response pairs (learn to answer)"}
PAIRS_SOURCES = {"task": "a ready-made task", "paste": "pasted JSONL", "upload": "a JSONL file"}
SHOWN_EXAMPLES = 3
BASE_TEXT_TOKENS = 20_000  # the base's own text kept for the forgetting curve (8 windows are measured)


def _pairs_text() -> tuple[str, str, str, str] | None:
    """The chosen pairs as (JSONL text, its source, its name, what an error calls it), or None while there are none."""
    source = st.radio("Examples", list(PAIRS_SOURCES), format_func=PAIRS_SOURCES.get, horizontal=True,
                      key="train_pairs_source")  # fmt: skip
    if source == "task":
        tasks = list_tasks()
        task = st.selectbox("Task", tasks, format_func=lambda t: f"{t.title} ({t.name})", key="train_pairs_task")
        st.caption(f"**What it teaches:** {task.teaches} {len(task.examples('train')):,} examples; the "
                   f"{len(task.examples('heldout')):,} held-out prompts (never trained on) are in "
                   f"`{task.path('heldout').name}`, for the chat view or `lmcore generate --chat --prompts-file`.")  # fmt: skip
        return task.text("train"), f"task:{task.name}", task.name, task.path("train").name
    if source == "paste":
        text = st.text_area("JSONL, one example a line", key="train_pairs_paste", height=150,
                            placeholder='{"prompt": "cat", "response": "CAT"}\n'
                            '{"messages": [{"role": "user", "content": "dog"}, {"role": "assistant", "content": "DOG"}]}')  # fmt: skip
        return (text, "pasted JSONL", "pasted", "the pasted text") if text.strip() else None
    up = st.file_uploader("JSONL file", type=["jsonl", "json", "txt"], key="train_pairs_upload")
    if up is None:
        return None
    try:
        return up.getvalue().decode("utf-8"), up.name, Path(up.name).stem, up.name
    except UnicodeDecodeError:
        st.error(f"{md(up.name)} is not UTF-8 text; save the file as UTF-8.")
        return None


def _pairs_section(base: dict) -> None:
    """Fine-tune ``base`` to answer: the examples, the trained tokens, full or LoRA, and Start."""
    st.markdown(
        "Each example becomes `<|user|>prompt<|end|><|assistant|>answer<|end|>`: special tokens added to the "
        "vocabulary, and the loss taken **only on the answer** (and its end token). The model learns to answer, "
        "not to write prompts."
    )
    got = _pairs_text()
    if got is None:
        st.caption("Choose a task, paste JSONL or upload a file: one JSON object a line, "
                   '`{"prompt": ..., "response": ...}` or `{"messages": [{"role": ..., "content": ...}, ...]}`.')  # fmt: skip
        return
    text, source, data_name, where = got
    add_chars = st.checkbox("Add characters the vocabulary lacks", key="train_pairs_add_chars",
                            help="A character vocabulary knows only the characters of its corpus; new ones get new "
                            "tokens (new rows of the embedding and the head), else they are refused.")  # fmt: skip
    try:
        examples = parse_examples(text, where)
        settings = resume_settings(base["path"])
        tok = chat_tokenizer(settings.tokenizer, examples, add_chars=add_chars)
    except LMCoreError as e:
        st.error(md(str(e)))
        return
    added = tok.vocab_size - settings.tokenizer.vocab_size
    st.caption(f"{len(examples):,} examples · the vocabulary grows by {added} token{'s' if added != 1 else ''} "
               f"({', '.join(md(x) for x in tok.extra[len(tok.extra) - added:]) if added else 'it has them'}) · "
               "trained tokens are highlighted:")  # fmt: skip
    for ex in examples[:SHOWN_EXAMPLES]:
        st.markdown(masked_example_html(tok, *encode_example(tok, ex)), unsafe_allow_html=True)
    c = st.columns([1, 1, 2])
    method = c[0].radio("Train", ["full", "lora"], format_func={"full": "all weights", "lora": "LoRA adapters"}.get,
                        key="train_pairs_method")  # fmt: skip
    rank = int(c[1].number_input("LoRA rank", 1, 256, value=8, step=1, key="train_pairs_rank",
                                 disabled=method != "lora",
                                 help="The size of the low-rank update B·A added to each attention and MLP "
                                 "projection (Mamba: its in and out projections)."))  # fmt: skip
    config = settings.config.replace(vocab_size=tok.vocab_size)
    if method == "lora":
        try:
            share = lora_trainable_share(config, rank, old_vocab=settings.config.vocab_size)
        except LMCoreError as e:
            st.error(md(str(e)))
            return
        c[2].caption(f"LoRA freezes every weight of the base and trains two small matrices per layer, and the "
                     f"rows of the added tokens: **{share:.2%}** of the weights train. The saved checkpoint has "
                     "them folded in.")  # fmt: skip
    else:
        c[2].caption("Every weight trains (**100%**): the most capacity, and the most to forget.")
    forgetting = st.checkbox("Measure what it forgets: the base's loss on the current corpus's validation text "
                             "at each evaluation", value=True, key="train_pairs_forget")  # fmt: skip
    st.caption("The iterations, learning rate and evaluation settings are the ones set above: 800 steps at "
               "1e-3 teach the baby GPT a ready-made task (LoRA: 4e-3). 10% of the examples validate.")  # fmt: skip
    if st.button("Fine-tune on these pairs", key="train_pairs_start", type="primary"):
        with user_errors(stop=False):
            if _finetune_pairs(base, examples, source, data_name, method, rank, add_chars, forgetting):
                st.rerun()


def _finetune_pairs(base: dict, examples: list, source: str, data_name: str, method: str, rank: int,
                    add_chars: bool, forgetting: bool) -> bool:  # fmt: skip
    """Start the fine-tuning run through the one run path (its own process, the live plots as for any run)."""
    base_ids = None
    if forgetting:
        try:
            _, _, val_ids = encoded_split(resume_settings(base["path"]).tokenizer)
            n = min(len(val_ids), BASE_TEXT_TOKENS)
            base_ids = as_source(val_ids).windows(torch.zeros(1, dtype=torch.long), n)[0].clone()
        except LMCoreError as e:
            st.warning(f"No forgetting curve: {md(str(e))}")
    spec = finetune_spec(f"{base['name']}-{data_name}", base["path"], examples, _train_config(),
                         lora={"rank": rank} if method == "lora" else None, add_chars=add_chars, base_val_ids=base_ids,
                         data_info={"source": source, "name": data_name, "documents": False})  # fmt: skip
    job = REGISTRY.start(spec, checkpoint_dir())
    _follow(job)
    return True


def _watch_induction() -> None:
    """The induction recipe's corpus, vocabulary and model, set up as a shared link would, and its run started."""
    if REGISTRY.free_slots() < 1:  # said before the session's corpus and model are replaced
        st.session_state[S.START_ERROR] = (
            "The recipe starts a run, and as many runs as the server allows are training: stop one first. "
            "Your corpus, vocabulary and model are as they were."
        )
        return
    model_cfg, tc = recipe("induction", INDUCTION_VOCAB)
    params = urlstate.recipe_params("builtin:induction", "char", model_cfg, tc)
    keys = [urlstate.TRAIN_FIELDS[n].key for n in params if n in urlstate.TRAIN_FIELDS]
    saved = st.session_state.get(S.RECIPE_SAVED)
    # The user's own settings, given back when they leave the recipe (kept from the first press).
    before = saved["before"] if saved is not None else {k: _value(k) for k in keys}
    skipped = urlstate.apply(params)
    if skipped:
        st.session_state[S.START_ERROR] = "Could not set up " + ", ".join(skipped) + " for the recipe."
        return
    st.session_state[S.RECIPE_SAVED] = {"corpus": st.session_state[S.CORPUS_ID], "before": before,
                                        "set": {k: _value(k) for k in keys}}  # fmt: skip
    try:
        tc = dataclasses.replace(tc, device=st.session_state[S.TRAIN_DEVICE])
        _start(free_name(INDUCTION_RUN), st.session_state[S.MODEL_CONFIG], tc)
    except LMCoreError as e:
        st.session_state[S.START_ERROR] = str(e)


def _why_saved(job: TrainingJob) -> str:
    """Why the checkpoint holds the weights of its step: the best validation point, or the last evaluation."""
    evals = [e for e in job.events_since(0) if e.val_loss is not None]
    at = next((e for e in evals if e.step == job.saved_step), None)
    loss = f" (validation loss {at.val_loss:.3f})" if at is not None else ""
    if job.keep != "best":
        return f"its last evaluation{loss}"
    later = [e for e in evals if e.step > job.saved_step]
    if later:
        return (f"its best validation point{loss}; the {len(later)} later evaluation{'s' if len(later) > 1 else ''}, "
                f"up to step {later[-1].step:,}, did worse, so the file keeps the best model")  # fmt: skip
    return f"its best validation point{loss}, the last evaluation (a run keeps its best model)"


def _show_picked() -> None:
    picked = ownership.job(st.session_state.get(S.SHOW_RUN))
    if picked is not None:
        st.session_state[S.ACTIVE_JOB] = picked.id


require_app()

st.title("Training")
REGISTRY.warm()  # the first run then starts at once
st.markdown(
    "Training shows the model batch after batch of text windows and nudges every parameter to make the true "
    "next token a little more likely. Watch two curves: the **training loss** (on text it learns from) and the "
    "**validation loss** (on text it never sees). While both fall, it is learning the language; when only the "
    "first one falls, it is memorising. Runs keep going when you switch pages or close the tab."
)

cfg = require_model_config()
tok = st.session_state[S.TOKENIZER]
corpus = require_corpus()
with user_errors():
    params = model_counts(cfg.validate())["params"]
st.caption(
    f"Model: {ARCH_LABELS.get(cfg.preset, cfg.arch)}, {params:,} parameters, context {cfg.block_size} · "
    f"Vocabulary: {tok.kind}, {tok.vocab_size:,} tokens · Corpus: {md(corpus.name)}"
)
st.page_link(PAGE_MODEL, label="Change the model", icon=":material/arrow_back:")

# ------------------------------------------------------------------ settings
st.subheader("Settings")
note = st.session_state.get(S.RECIPE_NOTE)
back = None
if note is not None and time.monotonic() - note[0] < NOTE_S:
    back = note[1]  # shown for a while: a run that ends redraws the page right after a press
else:
    st.session_state.pop(S.RECIPE_NOTE, None)
if back:
    st.info("You left the induction recipe: your own training settings are back ("
            + ", ".join(SETTING_NAMES.get(k, k) for k in back) + ").", icon=":material/undo:")  # fmt: skip
elif back is not None:
    st.caption("You left the induction recipe; the settings you changed since it set them stay as they are.")
if st.session_state.get(S.RECIPE_SAVED) is not None:
    r = st.columns([3, 1])
    r[0].info("These are the induction recipe's settings. Yours come back when you choose another corpus, "
              "or with the button beside.", icon=":material/science:")  # fmt: skip
    r[1].button("Back to my settings", key="train_recipe_back", on_click=leave_recipe, icon=":material/undo:",
                help="The training settings you had before the recipe.")  # fmt: skip
MAIN_SETTINGS = ("max_iters", "batch_size", "lr", "warmup_iters", "eval_interval", "eval_iters", "seed", "time_budget_s")
train_widgets(st, list(MAIN_SETTINGS))
OPTIMIZER_HELP = {
    "adamw": "AdamW: each weight takes a step scaled by its own running gradient statistics; the dependable default.",
    "muon": "Muon: the hidden layers' matrices step along their momentum made orthogonal (every direction moves "
    "alike), at the Muon rate; embeddings, head, norms and biases use AdamW.",
    "sgd": "SGD: every weight steps against its gradient with momentum; simple but slow for transformers "
    "(needs a rate near 0.5-1).",
}
c = st.columns([1, 1, 2])
optimizer = train_widget(c[0], "optimizer")
train_widget(c[1], "muon_lr", disabled=optimizer != "muon")
c[2].caption(OPTIMIZER_HELP[optimizer])
with st.expander("More settings: schedule, regularisation, precision"):  # every other declared setting
    drawn = {*MAIN_SETTINGS, "optimizer", "muon_lr", "device"}
    train_widgets(st, [n for n, d in declared(TrainConfig).items() if d.setting.widget and n not in drawn])
c = st.columns([1, 2, 1])
devices = _devices()
if st.session_state.get(S.TRAIN_DEVICE) not in devices:
    st.session_state[S.TRAIN_DEVICE] = "auto"
device_name = train_widget(c[0], "device", choices=devices)
auto_name = default_run_name(cfg)
if st.session_state.get(S.NAME_FOR) not in (None, cfg.to_json()) and _value(S.TRAIN_NAME):
    # The name was typed for another model: a new model gets its own name.
    st.session_state[S.TRAIN_NAME] = st.session_state.setdefault(S.KEPT, {})[S.TRAIN_NAME] = ""
    st.session_state[S.NAME_FOR] = None
    st.toast("The run name was typed for another model; this one gets its own.")
run_name = c[1].text_input(
    "Run name (the checkpoint's file name)",
    key=keep_default(S.TRAIN_NAME, ""),
    placeholder=auto_name,
    max_chars=100,
    on_change=_name_typed,
    help=f"Empty: named after the model ({auto_name}). A name already taken by a run or a saved file gets -2, -3 …",
)
# The operator's setting, shown, not changed here: one browser must not decide for everyone.
c[2].caption(f"Runs at once: **{REGISTRY.max_concurrent}**, the server's setting (start it with {MAX_RUNS_ENV}=N to "
             "change it); a new run must also fit in memory beside the runs already training.")  # fmt: skip
name = run_name.strip() or auto_name
try:
    base = sanitize_name(name)
    free = free_name(base)
    taken = f" ({base} is taken by another run or file)" if free != base else ""
    st.caption(
        f"Device: {describe_device(resolve_device(device_name))} · saved as `{free}.safetensors`{taken} "
        f"in `{checkpoint_dir()}`"
    )
except LMCoreError as e:
    st.error(md(str(e)))

# ------------------------------------------------------------------ buttons
job = ownership.active()
alive = job is not None and job.is_alive
b = st.columns([1, 1, 1, 3])
b[0].button("Start", type="primary", key="train_start", on_click=_press_start, args=(st.session_state.get(S.START_TOKEN, 0),),
            help="Start a new run with these settings; a run already going keeps going (up to the limit).")  # fmt: skip
error = st.session_state.pop(S.START_ERROR, None)
if error:
    st.error(error)
if st.session_state.pop(S.START_NOTE, None):
    st.toast("Start was pressed again while a run was starting: one run was started.")
b[1].button("Stop", disabled=not (alive and job.status == RUNNING), key="train_stop", on_click=_press_stop)
can_resume = job is not None and not alive and job.saved and job.checkpoint_path is not None and optimizer_path(job.checkpoint_path).exists()
if b[2].button("Resume", disabled=not can_resume, key="train_resume",
               help="Continue the shown run from its last checkpoint, optimizer state included, up to the iterations set."):  # fmt: skip
    with user_errors(stop=False):
        if _resume(job.checkpoint_path, job.name):
            st.rerun()
if b[3].button("AdamW vs Muon", icon=":material/compare_arrows:", key="train_lab",
               help="Start two runs of this model with the same seed and batches, one with each optimizer, "
               "overlaid on one chart."):  # fmt: skip
    with user_errors(stop=False):
        if _start_lab(name, cfg):
            st.rerun()

with st.expander("Recipe: watch an induction head form", icon=":material/science:", key="train_recipe_box"):
    st.markdown(
        "An **induction head** is how a transformer copies from its context: on seeing a token again, it looks at "
        "what followed that token last time and predicts the same. This recipe trains a 2-layer, 4-head model on "
        "random symbols where each segment is repeated twice (the built-in *induction* corpus), 3,000 steps, "
        "a few minutes on a CPU. The loss sits on a plateau (about 1,200 steps under the default seed, longer "
        "under some others), then drops as a head in layer 1 starts copying: watch its score climb on the "
        "Attention page, under *Head roles over training*. The page says so if a run ends before it forms. "
        "It replaces this session's corpus, vocabulary and model, and sets the training settings: "
        + ", ".join(train_settings("induction"))
        + ". Your own settings come back "
        "when you choose another corpus, or with **Back to my settings** above."
    )
    st.button("Set up and train", key="train_induction", on_click=_watch_induction, icon=":material/play_arrow:")
    if job is not None and job.name.startswith(INDUCTION_RUN):
        st.page_link(PAGE_ATTENTION, label="Watch its heads on the Attention page", icon=":material/grid_on:")

# ------------------------------------------------------------------ runs on this server
runs = REGISTRY.list()
with st.expander("Runs on this server", expanded=job is None and bool(runs)):
    if not runs:
        st.caption("No runs yet: press Start.")
    else:
        rows = []
        for r in runs:  # every visitor sees what trains; the controls are the starter's (ui.ownership)
            p, last = r.progress(), r.last_eval()
            rows.append(
                {
                    "run": r.name,
                    "architecture": r.model_config.preset or r.model_config.arch,
                    "status": r.status,
                    "steps": f"{p['step']:,} / {p['max_iters']:,}",
                    "val loss": None if last is None else round(last.val_loss, 4),
                    # bits per byte of the validation text: runs with different vocabularies compare by it
                    "val bits/byte": None if last is None or last.val_bpb is None else round(last.val_bpb, 4),
                    "started": time.strftime("%H:%M:%S", time.localtime(r.started_at)),
                    "device": r.device_name,
                    "yours": ownership.owns(r),
                }
            )
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        ids = [r.id for r in runs if ownership.owns(r)]
        # The picker mirrors the run shown; picking another one switches to it.
        st.session_state[S.SHOW_RUN] = job.id if job is not None and job.id in ids else None
        st.selectbox(
            "Show run",
            ids,
            format_func=lambda i: _job_label(REGISTRY.get(i)) if REGISTRY.get(i) else i,
            placeholder="Pick a run to follow",
            key=S.SHOW_RUN,
            on_change=_show_picked,
            help="The runs this browser started (or opened with a run's link); others' runs are theirs to control.",
        )
        control = urlstate.control_link()
        if control is not None and job is not None:
            st.caption(f"Anyone who opens this link can follow and stop **{md(job.name)}** (so can anyone who sees "
                       "your address bar, which holds the same key): share it only on purpose.")  # fmt: skip
            st.code(control, language=None, wrap_lines=True)

# Resume a checkpoint saved by an earlier server (or another session).
with st.expander("Continue a saved checkpoint", key="train_continue_box"):
    saved = [r for r in list_checkpoints(checkpoint_dir()) if r["error"] is None and optimizer_path(r["path"]).exists()]
    if not saved:
        st.caption("No checkpoint with a resume state yet; runs save one at every evaluation.")
    else:
        pick = st.selectbox(
            "Checkpoint",
            saved,
            format_func=lambda r: f"{r['name']} · {r['arch']} · {r['steps']} steps · val {r['val_loss'] or float('nan'):.3f}",
            key="train_resume_pick",
        )
        st.caption("Training continues on the current corpus with the checkpoint's own vocabulary and model.")
        if st.button("Resume this checkpoint", key="train_resume_saved"):
            with user_errors(stop=False):
                if _resume(pick["path"], pick["name"]):
                    st.rerun()

# Fine-tune: any readable checkpoint (an opened Hugging Face model, say) trained further on this corpus,
# or taught to answer: prompt/response pairs, the loss on the answers only, all weights or LoRA adapters.
with st.expander("Fine-tune a checkpoint", key="train_finetune_box"):
    usable = [r for r in list_checkpoints(checkpoint_dir()) if r["error"] is None]
    if not usable:
        st.caption("No checkpoint yet: train one, or open a Hugging Face model on the Checkpoints page.")
    else:
        base = st.selectbox(
            "Checkpoint to start from",
            usable,
            format_func=lambda r: f"{r['name']} · {r.get('preset') or r['arch']} · {r['params']:,} parameters",
            key="train_finetune_pick",
        )
        mode = st.radio("Train it on", list(FINETUNE_MODES), format_func=FINETUNE_MODES.get, horizontal=True,
                        key="train_finetune_mode")  # fmt: skip
        if mode == "corpus":
            st.caption(
                "A new run starts from its weights, with its own vocabulary and model, on the current corpus, using "
                "the iterations and learning rate set above; it is saved under a new name, the checkpoint stays as it is."
            )
            if st.button("Fine-tune on the current corpus", key="train_finetune_start"):
                with user_errors(stop=False):
                    if _finetune(base["path"], base["name"]):
                        st.rerun()
        else:
            _pairs_section(base)

# Runs as files: every run's log in the checkpoint folder, from any process.
saved_runs_section(checkpoint_dir())

job = ownership.active()
if job is None:
    st.info("No run to show yet. The defaults train a tiny model in well under a minute on a CPU: press **Start**.")
    st.stop()

# ------------------------------------------------------------------ live view
others = [r.id for r in ownership.mine() if r.id != job.id]
# Runs on other data are not overlaid unless asked for: their losses are not comparable.
other_data = [i for i in others if not same_data(REGISTRY.get(i), job)]
show_all = bool(other_data) and st.toggle(
    "Also offer runs trained on other data", key=keep_default(S.TRAIN_OVERLAY_ALL, False),
    help="A loss on another corpus or vocabulary measures another task; such runs are left off the charts by default.",
)  # fmt: skip
offered = others if show_all else [i for i in others if i not in other_data]
st.session_state[S.OVERLAY_OFFERED] = offered
chosen = st.session_state.get(S.COMPARE_JOBS, [])
st.session_state[S.OVERLAY_RUNS] = [i for i in chosen if i in offered]
compare = st.multiselect(
    "Overlay other runs",
    offered,
    format_func=lambda i: _job_label(REGISTRY.get(i)) if REGISTRY.get(i) else i,
    help="Compare architectures or settings on the same axes (runs on the same data).",
    key=S.OVERLAY_RUNS,
    on_change=_save_compare,
)
hidden = [REGISTRY.get(i).name for i in other_data if i not in offered]
if hidden:
    st.caption(
        f"Not offered, trained on other data than {md(job.name)}: " + ", ".join(md(n) for n in hidden[:8])
        + (f" and {len(hidden) - 8} more" if len(hidden) > 8 else "")
        + ". Switch on **Also offer runs trained on other data** to overlay them."
    )
x_axis = st.radio("Horizontal axis", ["step", "tokens"], horizontal=True, format_func={"step": "steps", "tokens": "tokens seen"}.get,
                  key=keep_default(S.TRAIN_X, "step"))  # fmt: skip


def live_view(job_id: str, compare_ids: list[str], x: str, was_alive: bool) -> None:
    """Status, progress, charts and the latest sample of one run; reruns itself while it trains."""
    job = REGISTRY.get(job_id)
    if job is None:
        st.warning("This run is no longer kept on the server.")
        return
    p = job.progress()
    head = f"**{md(job.name)}**: {job.status} · {md(job.device_name)}"
    st.markdown(head)
    eta = f" · about {_duration(p['eta_s'])} left" if job.is_alive and p["eta_s"] is not None else ""
    st.progress(p["fraction"], text=f"step {p['step']:,} of {p['max_iters']:,} · {_duration(p['elapsed_s'])} elapsed{eta}")
    train_tokens = job.data_info.get("train_tokens")

    if job.status == FAILED:
        st.error(md(job.error or "the run failed"))
        if job.saved:
            st.caption(f"The last good checkpoint (step {job.saved_step:,}) is kept in `{job.checkpoint_path.name}`.")
    elif job.status in (FINISHED, STOPPED) and job.saved:
        st.success(f"Saved to `{job.checkpoint_path.name}` at step {job.saved_step:,}: {_why_saved(job)}.",
                   icon=":material/save:")  # fmt: skip

    events = job.events_since(0)
    series = series_from_events(events)
    last, evals = (events[-1] if events else None), [e for e in events if e.val_loss is not None]
    best = best_induction(evals) if job.name.startswith(INDUCTION_RUN) else None
    if best is not None and not job.is_alive and job.status in (FINISHED, STOPPED) and best[0] < INDUCTION_FORMED:
        st.warning(
            f"This run ended before its induction head formed: the best induction score was {best[0]:.2f} "
            f"(at step {best[1]:,}; a head that copies scores over {INDUCTION_FORMED}). The phase change comes "
            "later for some seeds: raise **Iterations** and press **Resume** to continue this run.",
            icon=":material/hourglass_top:",
        )
    m = st.columns(5)
    m[0].metric("Training loss (batch)", "–" if not series["loss"] else f"{series['loss'][-1]:.3f}")
    if evals:
        change = 0.0 if len(evals) < 2 else evals[-1].val_loss - evals[-2].val_loss
        delta = f"{change:+.3f}" if round(change, 3) != 0 else None  # no red "+0.000"
        m[1].metric("Validation loss", f"{evals[-1].val_loss:.3f}", delta=delta, delta_color="inverse",
                    help=f"Perplexity {evals[-1].val_ppl:.1f}, next-token accuracy {evals[-1].val_acc:.1%}."
                    + ("" if evals[-1].val_bpb is None else f" {evals[-1].val_bpb:.3f} bits per byte of text: the "
                       "unit in which runs with different vocabularies compare."))  # fmt: skip
    else:
        m[1].metric("Validation loss", "–", help="Measured at the first evaluation.")
    overall = last.tokens_seen / last.elapsed_s if last is not None and last.elapsed_s else None
    m[2].metric(
        "Tokens / s while stepping",
        "–" if last is None else f"{last.tokens_per_s:,.0f}",
        help="Training speed over the recent steps; evaluations, samples and saving are not counted.",
    )
    m[3].metric("Tokens seen", "–" if last is None else f"{last.tokens_seen:,}")
    m[4].metric(
        "Passes over the data",
        "–" if last is None or not train_tokens else f"{last.tokens_seen / train_tokens:.2f}",
        help="Epochs: tokens seen over the tokens of the training split. Past one pass the model sees "
        "text it has seen before; watch the validation loss.",
    )

    if overall is not None:
        st.caption(
            f"Overall: {overall:,.0f} tokens / s (tokens seen over the {_duration(last.elapsed_s)} the run has "
            "taken, evaluations and saving included; the Saved runs table's figure)."
        )

    runs = {job.name: series}
    for cid in compare_ids:
        other = REGISTRY.get(cid)
        if other is not None and other.name not in runs:
            runs[other.name] = series_from_events(other.events_since(0))
    ft = job.data_info.get("finetune")
    if ft:
        how = f"LoRA adapters of rank {ft['lora_rank']}" if ft.get("lora_rank") else "all weights"
        st.caption(f"Fine-tuning {md(ft.get('base', '?'))} on {ft.get('train_examples', 0):,} examples "
                   f"({ft.get('val_examples', 0):,} validate) with {how}: {ft.get('trainable_share', 1.0):.2%} of "
                   "the weights train. The losses are taken on the answers' tokens only.")  # fmt: skip
    show_figure(loss_figure(runs, x=x), key="train_loss_chart")
    if any(math.isfinite(v) for v in series["base_val_loss"]):
        st.caption("Forgetting: the loss on the base model's own kind of text (the current corpus's validation "
                   "split) at each evaluation. It rises as the model trades what it knew for the task.")  # fmt: skip
        show_figure(metric_figure(runs, "base_val_loss", "loss on the base's text", x=x), key="train_forget_chart")
    q = st.columns(2)
    with q[0]:
        st.caption("Validation accuracy: how often the most likely next token is the right one")
        show_figure(metric_figure(runs, "val_acc", "next-token accuracy", x=x), key="train_acc_chart")
    with q[1]:
        st.caption("Validation perplexity: as if choosing among this many tokens")
        show_figure(metric_figure(runs, "val_ppl", "perplexity", x=x, log_y=True), key="train_ppl_chart")
    c = st.columns(3)
    with c[0]:
        st.caption("Learning rate")
        show_figure(metric_figure(runs, "lr", "learning rate", x=x), key="train_lr_chart")
    with c[1]:
        st.caption("Throughput while stepping (evaluations not counted)")
        show_figure(metric_figure(runs, "tokens_per_s", "tokens / s", x=x), key="train_tps_chart")
    with c[2]:
        st.caption("Gradient norm (before clipping)")
        show_figure(metric_figure(runs, "grad_norm", "gradient norm", x=x, log_y=True), key="train_gn_chart")

    samples = [e for e in evals if e.sample]
    if samples:
        what = "answers a held-out prompt" if ft else "writes"
        st.markdown(f"**What the model {what} at step {samples[-1].step:,}** (temperature 0.8)")
        st.code(samples[-1].sample, language=None, wrap_lines=True)
    if was_alive and not job.is_alive:
        st.rerun()  # it just ended: redraw the whole page once (buttons, no timer)


alive = job.is_alive
st.fragment(live_view, run_every=REFRESH_S if alive else None)(job.id, list(compare), x_axis, alive)

if not alive and job.saved:
    st.markdown("**Next:** look inside the model or make it write.")
    n = st.columns(3)
    n[0].page_link(PAGE_ATTENTION, label="Attention", icon=":material/grid_on:")
    n[1].page_link(PAGE_GENERATION, label="Generation", icon=":material/edit_note:")
    n[2].page_link(PAGE_CHECKPOINTS, label="Checkpoints", icon=":material/save:")

with st.expander("How it works: the AdamW update", key="train_how_box"):
    tc = job.train_config
    lr_now = job.events[-1].lr if job.events else tc.lr
    st.latex(
        r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad"
        r"\theta_t = \theta_{t-1} - \eta_t \Big(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda\,\theta_{t-1}\Big)"
    )
    st.latex(
        r"\eta_t = %.3g,\quad \beta_1 = %g,\quad \beta_2 = %g,\quad \lambda = %g"
        % (lr_now, tc.beta1, tc.beta2, tc.weight_decay)
    )
    st.caption(
        "g: the gradient of the loss; m and v: running averages of it and of its square (hats: corrected for "
        "starting at 0). Each weight moves by about the learning rate η, in the direction its recent gradients "
        f"agree on, and shrinks a little (weight decay λ). η now: the schedule's value at step "
        f"{job.events[-1].step if job.events else 0:,}."
    )
    note = family_of(job.model_config.arch).training_note
    if tc.optimizer != "adamw" or note:
        st.caption("This run differs: " + (note or f"its optimizer is {tc.optimizer}."))
