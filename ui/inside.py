"""What the pages that look inside a model need besides the model: its training history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmcore import runlog
from lmcore.checkpoint import read_metadata
from lmcore.errors import LMCoreError
from ui import models


def training_history(key: str) -> list[Any]:
    """The evaluation records of the chosen model's training: a run's eval events, or a checkpoint's history.

    Empty when there is none (a file saved without one, or a run gone).
    """
    if key.startswith(models.JOB_PREFIX):
        from lmcore.jobs import REGISTRY

        job = REGISTRY.get(key[len(models.JOB_PREFIX) :])
        return [e for e in job.events_since(0) if e.is_eval] if job is not None else []
    if key.startswith(models.CKPT_PREFIX):
        path = Path(key[len(models.CKPT_PREFIX) :])
        try:
            train = read_metadata(path).get("train") or {}
            # The run's log, when there is one, is as new as the last evaluation (a run still
            # training in another process saves its checkpoint less often than it logs).
            logged = runlog.evals(runlog.read_log(path))
        except LMCoreError:
            return []
        history = train.get("history") if isinstance(train, dict) else None
        saved = list(history) if isinstance(history, list) else []
        return logged if len(logged) > len(saved) else saved
    return []
