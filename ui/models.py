"""Choosing and loading a model for the attention and generation pages.

A model comes from one of two places: a training run of this server (its
live weights, copied under the run's lock, so training goes on undisturbed)
or a saved checkpoint file. ``model_choices`` lists both under stable keys
("job:ID", "ckpt:PATH"); ``load_choice`` turns a key into
``(model, tokenizer, data_info)``, cached with ``st.cache_resource``: a
checkpoint by its path and modification time, a run by its step count.

Which model a page shows first follows what the user did last: a checkpoint
just loaded on the checkpoints page, else this session's current run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from lmcore.checkpoint import list_checkpoints, load_checkpoint
from lmcore.errors import CheckpointError, LMCoreError, TrainingError
from lmcore.jobs import FAILED, REGISTRY
from lmcore.sample import prompt_start
from ui import state
from ui.flow import PAGE_CHECKPOINTS, PAGE_TRAINING

JOB_PREFIX = "job:"
CKPT_PREFIX = "ckpt:"

# Prompts tried, in order, as the starting text for a plain-text model: the
# first one its tokenizer can encode is used.
_PROMPT_CANDIDATES = ("The ", "def ", "the ", "a", " ")


def _jobs() -> list[Any]:
    """Every run the server knows."""
    return list(REGISTRY.list())


def _job_step(job: Any) -> int:
    events = job.events
    return int(events[-1].step) if events else 0


def _checkpoints() -> list[dict[str, Any]]:
    return list_checkpoints(state.checkpoint_dir())


def _fmt_loss(value: Any) -> str:
    return f", val loss {float(value):.3f}" if isinstance(value, (int, float)) else ""


def model_choices() -> list[tuple[str, str]]:
    """(label, key) for every model a page can use: runs first, then saved files.

    This session's current run comes first, then its other runs, then the other
    runs saving into the checkpoint folder (another tab's, or this tab's before a
    reload). Runs that failed are left out, and so are checkpoint files that
    cannot be read (the checkpoints page lists those with their error).
    """
    active = st.session_state.get(state.ACTIVE_JOB)
    mine = set(st.session_state.get(state.COMPARE_JOBS) or ()) | {active}
    folder = state.checkpoint_dir().resolve()
    # Runs of this app are those saving into its checkpoint folder (several folders can
    # share one server process, as in tests); this session's own runs always count.
    jobs = [
        j
        for j in _jobs()
        if j.status != FAILED
        and (j.id in mine or (j.checkpoint_path is not None and Path(j.checkpoint_path).resolve().parent == folder))
    ]
    jobs.sort(key=lambda j: (j.id != active, j.id not in mine))  # stable: the registry's order otherwise
    choices = []
    # A run and the file it saves are one model: the run stands for both.
    run_files = {Path(j.checkpoint_path).resolve() for j in jobs if j.checkpoint_path is not None}
    for job in jobs:
        who = "Current run" if job.id == active else ("Your run" if job.id in mine else "Run")
        choices.append((f"{who}: {job.name} ({job.status}, step {_job_step(job)})", JOB_PREFIX + job.id))
    for info in _checkpoints():
        if info.get("error") or Path(info["path"]).resolve() in run_files:
            continue
        arch = info.get("preset") or info.get("arch") or "?"
        steps = info.get("steps")
        detail = f"{arch}" + (f", {steps} steps" if steps is not None else "") + _fmt_loss(info.get("val_loss"))
        choices.append((f"Saved: {info['name']} ({detail})", CKPT_PREFIX + str(info["path"])))
    return choices


def _key_of_file(path: str, keys: list[str]) -> str:
    """The choice for a checkpoint file: the run that saves it when that run is listed (it stands for the file)."""
    target = Path(path).resolve()
    for job in _jobs():
        if JOB_PREFIX + job.id in keys and job.checkpoint_path is not None and Path(job.checkpoint_path).resolve() == target:
            return JOB_PREFIX + job.id
    return CKPT_PREFIX + str(path)


def _default_key(keys: list[str]) -> str | None:
    """The checkpoint loaded into the session, else the current run, else the first choice."""
    loaded = st.session_state.get(state.LOADED_CHECKPOINT)
    if loaded and _key_of_file(str(loaded), keys) in keys:
        return _key_of_file(str(loaded), keys)
    active = st.session_state.get(state.ACTIVE_JOB)
    if active and JOB_PREFIX + str(active) in keys:
        return JOB_PREFIX + str(active)
    return keys[0] if keys else None


def select_model(widget_key: str, label: str = "Model", container: Any = None, avoid: str | None = None) -> str | None:
    """Draw a model picker and return the chosen key, or None when there is no model.

    The picker keeps the user's choice across page switches, but moves to a
    run the user has just started or a checkpoint just loaded into the session.
    ``avoid``: a key the first choice should differ from when there are others
    (the second of two pickers that compare models).
    """
    where = container if container is not None else st
    choices = model_choices()
    if not choices:
        return None
    labels = dict((key, text) for text, key in choices)
    keys = list(labels)
    kept = st.session_state.setdefault(state.KEPT, {})
    if widget_key not in st.session_state and widget_key in kept:
        st.session_state[widget_key] = kept[widget_key]  # dropped while another page was shown: the user's pick
    seen = st.session_state.setdefault(state.SEEN_DEFAULTS, {})
    now = (st.session_state.get(state.ACTIVE_JOB), st.session_state.get(state.LOADED_CHECKPOINT))
    before = seen.get(widget_key, now)
    seen[widget_key] = now
    wanted = None
    if now[1] and now[1] != before[1]:
        wanted = _key_of_file(str(now[1]), keys)  # a checkpoint was just loaded into the session
    elif now[0] and now[0] != before[0]:
        wanted = JOB_PREFIX + str(now[0])  # a new run was just started
    if wanted in keys and wanted != avoid:
        st.session_state[widget_key] = wanted
    elif st.session_state.get(widget_key) not in keys:
        default = _default_key(keys)
        if default == avoid:
            default = next((k for k in keys if k != avoid), default)
        st.session_state[widget_key] = default
    kept[widget_key] = st.session_state[widget_key]
    return where.selectbox(label, keys, format_func=lambda k: labels.get(k, k), key=widget_key)


def running_job(key: str) -> Any:
    """The run behind a choice while it is still training, else None (a saved file, a run that ended)."""
    if not key.startswith(JOB_PREFIX):
        return None
    job = REGISTRY.get(key[len(JOB_PREFIX) :])
    return job if job is not None and job.is_alive else None


def job_step(job: Any) -> int:
    """The last step a run reported."""
    return _job_step(job)


def choice_name(key: str) -> str:
    """A short name for a model choice, for titles and file names: the run's name or the file's stem."""
    if key.startswith(CKPT_PREFIX):
        return Path(key[len(CKPT_PREFIX) :]).stem
    if key.startswith(JOB_PREFIX):
        job = REGISTRY.get(key[len(JOB_PREFIX) :])
        return job.name if job is not None else key[len(JOB_PREFIX) :]
    return key


def load_choice(key: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, data_info) for a key from ``model_choices``.

    The model is in eval mode on the CPU and must not be changed: cached
    objects are shared by every session. Raises an LMCoreError subclass when
    the run or file is gone or unreadable.
    """
    if key.startswith(CKPT_PREFIX):
        path = Path(key[len(CKPT_PREFIX) :])
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            raise CheckpointError(f"the checkpoint {path.name} is gone; pick another model") from None
        return _load_checkpoint(str(path), mtime)
    if key.startswith(JOB_PREFIX):
        job = REGISTRY.get(key[len(JOB_PREFIX) :])
        if job is None:
            raise TrainingError("that training run is no longer known to the server; pick another model")
        model, tokenizer = _load_job(job.id, (job.status, _job_step(job), len(job.events)))
        return model, tokenizer, _job_data_info(job)
    raise CheckpointError(f"unknown model choice {key!r}; pick a model from the list")


@st.cache_resource(max_entries=8, show_spinner="Loading the checkpoint...")
def _load_checkpoint(path: str, mtime_ns: int) -> tuple[Any, Any, dict[str, Any]]:
    """One load per file version: the mtime in the key makes a rewritten file load again."""
    ckpt = load_checkpoint(path, device="cpu")
    return ckpt.model, ckpt.tokenizer, dict(ckpt.data_info or {})


@st.cache_resource(max_entries=4, show_spinner=False)
def _load_job(job_id: str, version: tuple) -> tuple[Any, Any]:
    """A CPU copy of a run's weights at one point of its training (``version``)."""
    job = REGISTRY.get(job_id)
    if job is None:
        raise TrainingError("that training run is no longer known to the server; pick another model")
    return job.snapshot_model(), job.tokenizer


def _job_data_info(job: Any) -> dict[str, Any]:
    info = getattr(job, "data_info", None)
    if info:
        return dict(info)
    # A run started in this session was trained on this session's corpus.
    corpus = st.session_state.get(state.CORPUS)
    if job.id == st.session_state.get(state.ACTIVE_JOB) and corpus is not None:
        return {"documents": bool(getattr(corpus, "documents", False))}
    return {"documents": False}


def is_documents(data_info: dict[str, Any] | None) -> bool:
    """Whether the model learnt separate documents (one per line, BOS between them)."""
    return bool((data_info or {}).get("documents", False))


def encode_prompt(tokenizer: Any, text: str, data_info: dict[str, Any] | None) -> list[int]:
    """Prompt ids as the model saw text in training.

    A documents-mode model's prompt (even an empty one) starts with BOS; a
    plain-text model starts with the text itself, and an empty prompt stays
    empty (the page asks for one). TokenizerError for characters the tokenizer cannot encode.
    """
    ids = tokenizer.encode(text) if text else []
    return prompt_start(ids, tokenizer.bos_id, is_documents(data_info), empty_at_bos=False)


def stop_ids(tokenizer: Any, data_info: dict[str, Any] | None) -> list[int] | None:
    """Generation of a documents-mode model ends at the next BOS: one document."""
    return [tokenizer.bos_id] if is_documents(data_info) else None


def default_prompt(tokenizer: Any, data_info: dict[str, Any] | None, candidates: tuple[str, ...] = ()) -> str:
    """A starting prompt this tokenizer can encode: the first of ``candidates`` that
    encodes, else empty for documents mode (start at BOS), else a short common one."""
    for text in candidates + (() if is_documents(data_info) else _PROMPT_CANDIDATES):
        try:
            tokenizer.encode(text)
        except LMCoreError:  # characters it never saw: try the next one
            continue
        return text
    return "" if is_documents(data_info) else tokenizer.decode([0])


PROMPT_CHARS = 40  # a corpus line used as a prompt is cut at a space near this length


def corpus_line() -> str | None:
    """The first line of the session's corpus with some text, cut short at a word: a prompt in its style."""
    corpus = st.session_state.get(state.CORPUS)
    if corpus is None:
        return None
    for line in corpus.text[:20_000].splitlines():
        line = line.strip()
        if len(line) >= 3:
            if len(line) > PROMPT_CHARS:
                cut = line.rfind(" ", 0, PROMPT_CHARS)
                line = line[: cut if cut > 0 else PROMPT_CHARS]
            return line
    return None


def prompt_default(widget_key: str, tokenizer: Any, data_info: dict[str, Any] | None, candidates: tuple[str, ...] = ()) -> str:
    """Key for a prompt box whose default is a line of the corpus in use (else ``candidates``).

    The box follows a new default (another corpus or model) until the user edits it.
    """
    line = corpus_line()
    first = (line,) if line and not is_documents(data_info) else ()
    default = default_prompt(tokenizer, data_info, first + candidates)
    given = st.session_state.setdefault(state.PROMPT_DEFAULTS, {})
    before = given.get(widget_key)
    given[widget_key] = default
    current = st.session_state.get(widget_key, st.session_state.get(state.KEPT, {}).get(widget_key))
    if before is not None and current == before and default != before:
        st.session_state[widget_key] = st.session_state.setdefault(state.KEPT, {})[widget_key] = default
    return state.keep_default(widget_key, default)


def no_model_yet(what: str) -> None:
    """The page's answer when nothing is trained or saved yet: what to do, with links."""
    st.info(f"There is no model to {what} yet. Train one on the training page, or load a saved one.")
    cols = st.columns(2)
    with cols[0]:
        st.page_link(PAGE_TRAINING, label="Train a model", icon=":material/model_training:")
    with cols[1]:
        st.page_link(PAGE_CHECKPOINTS, label="Saved checkpoints", icon=":material/save:")
