"""The sidebar shown on every page: the device, the active training run, and what is set up."""

from __future__ import annotations

import threading

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from lmcore.device import describe_device, resolve_device
from lmcore.errors import LMCoreError
from lmcore.jobs import FAILED, REGISTRY, TrainingJob
from lmcore.models.estimate import model_counts
from ui import state as S
from ui.flow import ARCH_LABELS, describe_corpus, show_setup_with, tokenizer_is_current
from ui.render import md
from ui import ownership
from ui.urlstate import share_link
from ui.urlstate import save as save_to_address


# The sidebar slot of the run in progress, per script thread (and checked per session).
_this_run = threading.local()


def _session_id() -> str | None:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


@st.cache_resource(show_spinner=False)
def _device_text() -> str:
    return describe_device(resolve_device("auto"))


def job_line(job: TrainingJob) -> str:
    """'running · step 120 / 300 · val 1.92' for captions."""
    p = job.progress()
    parts = [job.status, f"step {p['step']:,} / {p['max_iters']:,}"]
    last = job.last_eval()
    if last is not None and last.val_loss is not None:
        parts.append(f"val loss {last.val_loss:.3f}")
    return " · ".join(parts)


def _job_panel(job_id: str, was_alive: bool) -> None:
    job = REGISTRY.get(job_id)
    if job is None:
        return
    p = job.progress()
    cfg = job.model_config
    st.markdown(f"**Run:** {md(job.name)} · {ARCH_LABELS.get(cfg.preset, cfg.arch)}")
    st.progress(p["fraction"], text=job_line(job))
    if job.status == FAILED and job.error:
        st.caption(f"failed: {md(job.error)}")
    if was_alive and not job.is_alive:
        st.rerun()  # the run ended: redraw once without the timer


def render_sidebar() -> None:
    """Draw the device, the active run, and what is set up so far."""
    with st.sidebar:
        st.caption(f":material/memory: Device: {_device_text()}")
        note = st.session_state.pop(S.URL_NOTE, None)
        if note:
            st.warning(note)

        job = ownership.active()
        if job is not None:
            alive = job.is_alive
            st.fragment(_job_panel, run_every=2.0 if alive else None)(job.id, alive)
        others = [j for j in REGISTRY.list() if j.is_alive and (job is None or j.id != job.id)]
        if others:
            st.caption(f"{len(others)} other run(s) training on this server.")
        _this_run.slot = (_session_id(), st.empty())
        refresh_setup()


def _share_control() -> None:
    """The link that sets up this session in another browser, with what cannot travel in it."""
    link, travels = share_link()
    with st.popover(":material/link: Copy link", use_container_width=True):
        st.caption("Opens this corpus, vocabulary, model, training and sampling setup in a fresh browser.")
        st.code(link, language=None, wrap_lines=True)

        if not travels:
            st.warning(
                "A pasted or uploaded corpus cannot travel in a link: this link restores it on this server "
                "only while the server keeps the text. To share it anywhere, use a built-in corpus or load "
                "the text from a URL on the Data page."
            )


def refresh_setup() -> None:
    """(Re)draw "set up so far" in the sidebar of the current run.

    Drawn before the page runs, then again whenever the page changes the
    corpus, vocabulary or model (``ui.flow.show_setup_with``), so it is right
    even when the page stops early (st.stop) afterwards.
    """
    save_to_address()
    session, slot = getattr(_this_run, "slot", (None, None))
    if slot is None or session != _session_id():
        return
    with slot.container():
        st.markdown("**Set up so far**")
        lines = []
        corpus = st.session_state.get(S.CORPUS)
        lines.append(f"- Corpus: {describe_corpus(corpus)}" if corpus is not None else "- Corpus: not chosen yet")
        tok = st.session_state.get(S.TOKENIZER)
        if tok is None:
            lines.append("- Vocabulary: not built yet")
        else:
            stale = "" if tokenizer_is_current() else " (from an earlier corpus)"
            lines.append(f"- Vocabulary: {tok.kind}, {tok.vocab_size:,} tokens{stale}")
        cfg = st.session_state.get(S.MODEL_CONFIG)
        if cfg is None:
            lines.append("- Model: not chosen yet")
        else:
            try:
                params = f", {model_counts(cfg.validate())['params']:,} parameters"
            except LMCoreError:
                params = ""
            lines.append(f"- Model: {ARCH_LABELS.get(cfg.preset, cfg.arch)}{params}")
        st.markdown("\n".join(lines))
        _share_control()  # redrawn with the setup: the link follows every change


show_setup_with(refresh_setup)  # the pages' changes of corpus, vocabulary or model redraw it
