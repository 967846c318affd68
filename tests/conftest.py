"""Shared fixtures: paths, the standard corpus, tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def shakespeare_text() -> str:
    if not SHAKESPEARE.exists():
        pytest.skip(f"the standard corpus {SHAKESPEARE} is not present on this machine")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture
def small_text() -> str:
    """A few KB of English with structure, always available (no network, no shared/)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics)[:12])
