"""Session-state keys, defined once, and where the app keeps its files.

Every page reads and writes ``st.session_state`` through these names only.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORPUS = "corpus"  # lmcore.data.Corpus chosen on the data page
VAL_FRACTION = "val_fraction"  # float, the share of tokens kept for validation
TOKENIZER = "tokenizer"  # lmcore.tokenizers.Tokenizer built on the vocabulary page
MODEL_CONFIG = "model_config"  # lmcore.models.ModelConfig from the model page
ACTIVE_JOB = "active_job"  # id of this session's current training job (lmcore.jobs)
COMPARE_JOBS = "compare_jobs"  # ids of runs overlaid on the training charts
LOADED_CHECKPOINT = "loaded_checkpoint"  # path (str) of the checkpoint loaded into the session


def checkpoint_dir() -> Path:
    """Where checkpoints live: $PLAYGROUND_CHECKPOINT_DIR, else checkpoints/ in the project."""
    path = Path(os.environ.get("PLAYGROUND_CHECKPOINT_DIR") or ROOT / "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path
