"""Every command-line flag bounded by what it can mean: hostile values give one line and status 2.

The systematic sweep walks every typed flag of ``prepare``, ``train``, ``eval``
and ``generate`` through extreme values (huge, negative, not finite, past an
int32) in this process, each under a time guard: a value is either refused in
one line or does its (short) job. The cases that cost a machine its memory
before they were bounded run as real processes under a memory limit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
from pathlib import Path

import pytest

from lmcore.cli import build_parser, main
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
EXTREMES = ["-1", "1e308", "nan", "2147483647", "99999999999"]
GUARD_S = 120  # a case that runs longer was not bounded (the guard interrupts Python code only)
TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--block-size", "8"]
BASE = {
    "prepare": ["prepare", "--data", "small.txt", "--out", "shards", "--tokenizer", "bpe", "--vocab-size", "260"],
    "train": ["train", "--data", "small.txt", *TINY, "--batch-size", "2", "--max-iters", "2", "--eval-iters", "1",
              "--time-budget", "3", "--out", "m.safetensors"],
    "eval": ["eval", "--checkpoint", "ckpt.safetensors", "--data", "small.txt", "--max-tokens", "200"],
    "generate": ["generate", "--checkpoint", "ckpt.safetensors", "--max-new-tokens", "5"],
}  # fmt: skip


def _typed_flags() -> list[tuple[str, str]]:
    """(command, flag) for every flag that takes a number, read from the parser itself."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for command in BASE:
        for action in sub.choices[command]._actions:
            if action.option_strings and action.type is not None and action.type is not str and not action.choices:
                found.append((command, action.option_strings[0]))
    return found


FLAGS = _typed_flags()


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        i = args.index(flag)
        del args[i : i + 2]
    return [*args, f"{flag}={value}"]


class _TooLong(Exception):
    pass


def _guarded(capsys, args: list[str]) -> tuple[int, str, str]:
    def alarm(signum, frame):
        raise _TooLong(" ".join(args))

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(GUARD_S)
    try:
        try:
            status = main(args)
        except SystemExit as e:
            status = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    import pydoc_data.topics

    work = tmp_path_factory.mktemp("flags")
    topics = pydoc_data.topics.topics
    (work / "small.txt").write_text("\n".join(topics[k] for k in sorted(topics)[:6]), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(["train", "--data", "small.txt", *TINY, "--max-iters", "2", "--eval-iters", "1",
                     "--out", "ckpt.safetensors"]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    return work


@pytest.fixture
def here(work: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh folder holding the corpus and the checkpoint, as the current directory: cases leave files."""
    for name in ("small.txt", "ckpt.safetensors"):
        shutil.copy(work / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("command, flag", FLAGS, ids=[f"{c} {f}" for c, f in FLAGS])
def test_every_number_flag_holds_against_extreme_values(capsys, here, one_thread, command, flag):
    capsys.readouterr()
    for value in EXTREMES:
        args = _replace(BASE[command], flag, value)
        status, out, err = _guarded(capsys, args)
        assert status in (0, 2), (args, status, err)
        if status == 2:  # refused in one line, or (a run that went wrong) ended with one
            assert err.endswith("\n") and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, (
                args, err)


OUT_NAMES = ["a\\..\\..\\evil.safetensors", "con.safetensors", "x:y.safetensors", "bell\x07.safetensors"]


@pytest.mark.parametrize("name", OUT_NAMES)
def test_a_checkpoint_or_export_name_is_one_safe_component(capsys, here, name):
    for args in (["train", "--data", "small.txt", *TINY, "--max-iters", "1", "--out", name],
                 ["export", "--checkpoint", "ckpt.safetensors", "--out", name],
                 ["import", "nowhere", "--out", name]):  # fmt: skip
        status, _, err = _guarded(capsys, args)
        assert status == 2 and err.count("\n") == 1 and "one plain component" in err, (args, err)
    assert sorted(p.name for p in here.iterdir()) == ["ckpt.safetensors", "small.txt"]


MEMORY_CAP = 3 << 30  # the process's address space: a runaway allocation fails there, not the machine


CASES = {
    "a million one-wide layers": (["train", "--data", "small.txt", "--n-layer", "1000000", "--n-embd", "1",
                                   "--n-head", "1", "--block-size", "2", "--batch-size", "1", "--out", "m.safetensors"],
                                  "per-tensor overhead"),
    "grad-accum past int32": (["train", "--data", "small.txt", *TINY, "--grad-accum", "2147483647",
                               "--out", "m.safetensors"], "--grad-accum: must be a whole number from 1 to"),
    "bpe sample 1e308 MB": (["prepare", "--data", "small.txt", "--out", "s", "--tokenizer", "bpe",
                             "--bpe-sample-mb", "1e308"], "--bpe-sample-mb: must be more than 0 and at most 50"),
    "vocabulary 99999999999": (["prepare", "--data", "small.txt", "--out", "s", "--tokenizer", "bpe",
                                "--vocab-size", "99999999999"], "--vocab-size: must be a whole number from 1 to"),
    "a convolution of a million taps": (["train", "--data", "small.txt", "--preset", "mamba", "--n-layer", "1",
                                         "--n-embd", "8", "--d-conv", "1048576", "--max-iters", "1",
                                         "--out", "m.safetensors"], "d_conv (the convolution width) must be at most"),
    "a name with backslashes": (["train", "--data", "small.txt", *TINY, "--out", "a\\..\\..\\evil.safetensors"],
                                "one plain component"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_flags_that_cost_a_machine_are_one_line_in_a_real_process(here, case):
    args, words = CASES[case]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = run_lmcore(*args, cwd=here, env=env, text=True, address_space=MEMORY_CAP)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and words in run.stderr, run.stderr
    assert "MemoryError" not in run.stderr and sorted(p.name for p in here.iterdir()) == ["ckpt.safetensors", "small.txt"]


@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
def test_a_data_path_that_is_no_regular_file_is_one_line(capsys, here, source):
    # A FIFO blocks a reader until someone writes; /dev/zero never ends: either held a command for good.
    if source == "fifo":
        source = str(here / "fifo")
        os.mkfifo(source)
    for args in (["train", "--data", source, *TINY, "--max-iters", "1", "--out", "m.safetensors"],
                 ["prepare", "--data", source, "--out", "s"],
                 ["eval", "--checkpoint", "ckpt.safetensors", "--data", source]):  # fmt: skip
        status, _, err = _guarded(capsys, args)
        assert status == 2 and err.count("\n") == 1 and "is not a regular file" in err, (args, err)
