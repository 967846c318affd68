"""What one server allows all its visitors together: runs at once (the operator's setting) and their memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmcore.errors import ConfigError
from lmcore.jobs import DEFAULT_MAX_RUNS, JobRegistry, max_runs_from_env
from lmcore.models.estimate import available_memory, estimate_memory
from tests.test_jobs import data, settings, start, tiny, wait_for_steps  # noqa: F401  (fixtures and helpers)

ROOT = Path(__file__).resolve().parents[1]


def test_runs_at_once_is_the_operators_environment_setting() -> None:
    env = {**os.environ, "LMCORE_MAX_RUNS": "3"}
    out = subprocess.run([sys.executable, "-c", "from lmcore.jobs import REGISTRY; print(REGISTRY.max_concurrent)"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 3


@pytest.mark.parametrize("value,expected", [(None, DEFAULT_MAX_RUNS), ("1", 1), ("12", 12), ("0", DEFAULT_MAX_RUNS),
                                            ("-4", DEFAULT_MAX_RUNS), ("8x", DEFAULT_MAX_RUNS), ("99999", DEFAULT_MAX_RUNS),
                                            ("9" * 400, DEFAULT_MAX_RUNS)])  # fmt: skip
def test_a_bad_setting_falls_back_to_the_default(value, expected, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMCORE_MAX_RUNS", raising=False)
    if value is not None:
        monkeypatch.setenv("LMCORE_MAX_RUNS", value)
    assert max_runs_from_env() == expected


def test_the_fit_check_counts_the_runs_already_training(data, tmp_path: Path) -> None:  # noqa: F811
    reg = JobRegistry(max_concurrent=4)
    first = start(reg, data, tmp_path, "first", max_iters=100_000, eval_interval=100_000)
    try:
        wait_for_steps(first, 1)
        assert first.memory_estimate == estimate_memory(tiny(data[0]), 4)["total"] > 0
        # Alone, another tiny run fits; beside a run estimated at all the memory free now, it does not.
        first.memory_estimate = available_memory("cpu")
        with pytest.raises(ConfigError) as refused:
            start(reg, data, tmp_path, "second")
        message = str(refused.value)
        assert "already training" in message and "\n" not in message
        assert [j.name for j in reg.running()] == ["first"]
        first.memory_estimate = 0
        second = start(reg, data, tmp_path, "second", max_iters=5)
        assert second.wait(120)
    finally:
        for job in reg.list():
            job.stop()
            job.wait(120)
