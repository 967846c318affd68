"""Run logs as hostile input: one validating reader, bad lines and files skipped with a reason, no page breaks.

A ``NAME.metrics.jsonl`` in the checkpoint folder can come from anyone who can
write there. Text, lists or 400-digit integers where numbers belong, nesting
thousands deep, a negative step, NaN, a line of megabytes, a FIFO named like
a log: the reader (``lmcore.runlog``) keeps the valid lines, says what it
skipped, never blocks, and the Training page's "Saved runs" shows the rest.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lmcore import runlog
from lmcore.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def good_records() -> list[dict]:
    return [
        {"kind": "start", "step": 0, "tokens": 0, "time": 0.0, "train_loss": None, "lr": 0.0, "arch": "gpt2",
         "params": 1000, "tokens_per_step": 64, "world_size": 1, "grad_accum": 1, "config": {"lr": 0.001},
         "source": "builtin:python-docs", "train_tokens": 6400},
        {"kind": "step", "step": 1, "tokens": 64, "time": 0.1, "train_loss": 4.0, "lr": 0.001, "grad_norm": 1.0,
         "tokens_per_s": 640.0},
        {"kind": "eval", "step": 1, "tokens": 64, "time": 0.2, "train_loss": 3.9, "lr": 0.001, "val_loss": 3.8,
         "val_ppl": 44.7, "val_acc": 0.1, "grad_norm": 1.0, "tokens_per_s": 320.0, "sample": "hello",
         "head_scores": {"induction": [[0.1, 0.2]]}},
        {"kind": "end", "step": 1, "tokens": 64, "time": 0.3, "train_loss": 3.9, "lr": 0.001, "val_loss": 3.8,
         "stopped_early": False, "early_stopped": False},
    ]  # fmt: skip


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# Each: a line an attacker writes into a log, and a word of the reason it is skipped.
BAD_LINES = {
    "text step": ('{"kind":"step","step":"ten","tokens":1}', "step"),
    "list step": ('{"kind":"step","step":[1,2],"tokens":1}', "step"),
    "negative step": ('{"kind":"step","step":-5,"tokens":1}', "step"),
    "400-digit step": ('{"kind":"step","step":' + "9" * 400 + "}", "step"),
    "400-digit tokens": ('{"kind":"step","step":2,"tokens":' + "9" * 400 + "}", "tokens"),
    "400-digit time": ('{"kind":"step","step":2,"time":' + "9" * 400 + "}", "time"),
    "text loss": ('{"kind":"step","step":2,"train_loss":"low"}', "train_loss"),
    "NaN loss": ('{"kind":"eval","step":2,"val_loss":NaN}', "val_loss"),
    "infinite rate": ('{"kind":"step","step":2,"tokens_per_s":1e999}', "tokens_per_s"),
    "bool step": ('{"kind":"step","step":true}', "step"),
    "dict sample": ('{"kind":"eval","step":2,"sample":{"a":1}}', "sample"),
    "deep nesting": ('{"kind":"step","step":2,"x":' + _deep(100_000) + "}", "nested"),
    "deep config": ('{"kind":"start","step":0,"config":' + '{"a":' * 50 + "1" + "}" * 50 + "}", "config"),
    "bad head scores": ('{"kind":"eval","step":2,"head_scores":{"induction":"lots"}}', "head_scores"),
    "no kind": ('{"step":2}', "kind"),
    "a list": ("[1,2,3]", "object"),
    "long line": ('{"kind":"step","step":2,"sample":"' + "x" * (2 << 20) + '"}', "longer"),
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_bad_line_is_skipped_with_its_reason_and_the_good_ones_kept(tmp_path: Path, name: str) -> None:
    line, word = BAD_LINES[name]
    good = good_records()
    log = tmp_path / "run.metrics.jsonl"
    lines = [json.dumps(r) for r in good[:2]] + [line] + [json.dumps(r) for r in good[2:]]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert runlog.read_log(log) == good
    follower = runlog.LogFollower(log)
    follower.poll()
    assert follower.records == good
    assert follower.problem is not None and "1 line(s) skipped" in follower.problem and word in follower.problem
    row = runlog.run_summary(tmp_path / "run.safetensors", follower.records)
    assert row["steps"] == 1 and row["best_val_loss"] == 3.8


def _in_thread(fn, timeout: float = 10.0):
    """fn() in a thread: its result, or a failure when it has not returned within ``timeout`` (it blocked)."""
    out: dict = {}

    def go() -> None:
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked"
    return out


@pytest.fixture
def fifo_log(tmp_path: Path):
    path = tmp_path / "trap.metrics.jsonl"
    os.mkfifo(path)
    yield path
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer: frees any reader stuck on the FIFO
    time.sleep(0.2)
    os.close(fd)


def test_a_fifo_named_like_a_log_never_blocks_a_reader(fifo_log: Path) -> None:
    out = _in_thread(lambda: runlog.read_log(fifo_log))
    assert isinstance(out.get("error"), CheckpointError) and "not a regular file" in str(out["error"])
    assert _in_thread(lambda: runlog.is_running(fifo_log, 1e9))["value"] is False
    follower = runlog.LogFollower(fifo_log)
    assert _in_thread(follower.poll)["value"] == []
    assert "not a regular file" in follower.problem
    (run,) = _in_thread(lambda: runlog.list_runs(fifo_log.parent))["value"]
    assert run["error"] == "its log is not a regular file"


def test_the_saved_runs_view_lists_bad_files_with_their_reason_and_never_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fifo_log: Path
) -> None:
    folder = fifo_log.parent
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    good = good_records()
    for name, (line, _) in BAD_LINES.items():
        lines = [json.dumps(r) for r in good[:2]] + [line] + [json.dumps(r) for r in good[2:]]
        (folder / f"{name.replace(' ', '-')}.metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "all-bad.metrics.jsonl").write_text("\n".join(line for line, _ in BAD_LINES.values()) + "\n")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/training.py").run()  # the page draws before any model: it fills in defaults
    assert not at.exception, [e.value for e in at.exception]
    assert any("trap" in c.value and "not a regular file" in c.value for c in at.caption)
    pick = at.multiselect(key="runs_pick")
    assert "trap" not in pick.options
    pick.set_value([o for o in pick.options]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    notes = [c.value for c in at.caption if "skipped" in c.value]
    assert len(notes) == len(BAD_LINES) + 1
    assert at.dataframe  # the comparison table of the readable parts
