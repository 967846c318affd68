"""The shipped fine-tuning tasks: made by their generator, readable, split, and in the package."""

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from lmcore.errors import ConfigError
from lmcore.tasks import HERE, get_task, list_tasks, make_task, write_tasks

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_files_are_what_the_generator_makes(tmp_path):
    for task in list_tasks():
        made = make_task(task.name)
        for split in ("train", "heldout"):
            assert task.path(split).read_bytes() == made[split].encode("utf-8"), f"{task.name}.{split} drifted"
    # The generator is deterministic: writing again gives the same bytes, and no other file ships.
    written = write_tasks(tmp_path)
    assert {p.name for p in written} == {p.name for p in HERE.glob("*.jsonl")}
    for p in written:
        assert p.read_bytes() == (HERE / p.name).read_bytes()


def test_every_task_parses_says_what_it_teaches_and_holds_out_unseen_prompts():
    assert {t.name for t in list_tasks()} >= {"uppercase", "reverse", "capitals"}
    for task in list_tasks():
        train, heldout = task.examples("train"), task.examples("heldout")
        assert len(train) >= 50 and len(heldout) >= 20
        assert task.teaches.endswith(".") and task.title
        prompts = {ex[0]["content"] for ex in train}
        assert not prompts & {ex[0]["content"] for ex in heldout}
        assert all([m["role"] for m in ex] == ["user", "assistant"] for ex in train + heldout)


def test_an_unknown_task_or_split_is_one_clear_error():
    with pytest.raises(ConfigError, match="no shipped task named 'nope'; choose one of uppercase"):
        get_task("nope")
    with pytest.raises(ConfigError, match="train or heldout"):
        get_task("reverse").path("test")


def test_the_task_files_are_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in HERE.glob("*.jsonl"):
        assert any(fnmatch(path.name, g) for g in data["lmcore.tasks"])
