"""Which training runs this browser session may control.

A run belongs to the browser session that started it. Every run has a public
id (``job.id``: it names the run in this session's pickers and means nothing
to anyone else) and a secret key (``job.key``, 32 random hex digits). The
session keeps the keys of its runs (``state.OWNED_RUNS``); following a run,
stopping it, resuming it and overlaying it need its key. The page address
holds ``run=<key>``, so a reload, or a link the owner copies from the address
bar, or the one under "Runs on this server", with a warning) hands the
controls over; an id, a guessed key or an ended run's key opens nothing.
Other sessions see that a run exists and what it trains (name, model,
progress), not its controls.
"""

from __future__ import annotations

import streamlit as st

from lmcore.jobs import REGISTRY, TrainingJob
from ui import state as S


def _owned() -> dict[str, str]:
    return st.session_state.setdefault(S.OWNED_RUNS, {})


def own(job: TrainingJob) -> None:
    """Record that this session controls ``job`` (it started it, or opened its key)."""
    _owned()[job.id] = job.key


def owns(job: TrainingJob | None) -> bool:
    return job is not None and _owned().get(job.id) == job.key


def attach(key: str) -> bool:
    """Follow the run whose key this is; False (nothing changes) for anything else."""
    job = REGISTRY.by_key(key)
    if job is None:
        return False
    own(job)
    st.session_state[S.ACTIVE_JOB] = job.id
    return True


def mine() -> list[TrainingJob]:
    """The runs this session controls that the server still keeps, newest first."""
    return [j for j in REGISTRY.list() if owns(j)]


def job(job_id: str | None) -> TrainingJob | None:
    """The run with this id when this session controls it, else None."""
    found = REGISTRY.get(job_id)
    return found if owns(found) else None


def active() -> TrainingJob | None:
    """The run this session follows (``state.ACTIVE_JOB``), when it controls it."""
    return job(st.session_state.get(S.ACTIVE_JOB))


def address_key() -> str | None:
    """What the address holds for the followed run: its key (None when there is none)."""
    found = active()
    return found.key if found is not None else None
