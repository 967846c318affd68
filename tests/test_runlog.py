"""Runs as files: the log every run writes, read back after a crash, followed live, compared, deleted.

Real tiny training runs (in this process and as ``python -m lmcore train``
subprocesses), real files in tmp_path, and the training page through AppTest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from lmcore import runlog
from lmcore.checkpoint import CheckpointCallback, delete_checkpoint, load_checkpoint, read_metadata
from lmcore.data import build_tokenizer
from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",
}
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--device", "cpu"]  # fmt: skip


def lmcore(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmcore", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli_train(data: Path, out: Path, *args: str) -> subprocess.Popen:
    return lmcore("train", "--data", str(data), *TINY, "--out", str(out), *args)


def finished(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


@pytest.fixture
def corpus(tmp_path: Path, english_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(english_text[:20_000], encoding="utf-8")
    return path


def test_a_run_writes_its_log_and_a_resumed_run_appends(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "run.safetensors"
    finished(cli_train(corpus, out, "--max-iters", "6", "--eval-interval", "3", "--keep", "last"))
    lines = runlog.log_path(out).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["kind"] for r in records] == ["start"] + ["step"] * 3 + ["eval"] + ["step"] * 3 + ["eval", "end"]
    for r in records:
        assert {"step", "tokens", "time", "train_loss", "lr"} <= set(r)
    evals = runlog.evals(records)
    assert [e["step"] for e in evals] == [3, 6] and all("val_acc" in e and "tokens_per_s" in e for e in evals)
    for e in evals:  # head scores per score, layer (1) and head (2), as the attention page charts them
        assert set(e["head_scores"]) == {"previous_token", "first_token", "induction"}
        assert all(len(v) == 1 and len(v[0]) == 2 for v in e["head_scores"].values())
    assert records[-1]["tokens"] == 6 * 4 * 16
    assert evals[-1]["val_loss"] == pytest.approx(read_metadata(out)["train"]["val_loss"])

    finished(lmcore("train", "--resume", str(out), "--max-iters", "8", "--eval-interval", "2", "--device", "cpu"))
    again = runlog.read_log(out)
    assert again[: len(records)] == records  # appended, nothing rewritten
    assert [r["step"] for r in again if r["kind"] == "eval"] == [3, 6, 8]
    assert again[len(records)]["kind"] == "start" and again[len(records)]["step"] == 6


def test_a_resume_from_an_earlier_step_drops_the_abandoned_lines() -> None:
    steps = [{"kind": "step", "step": s, "train_loss": 1.0} for s in range(1, 6)]
    restart = {"kind": "start", "step": 3}
    resolved = runlog.resolve([{"kind": "start", "step": 0}, *steps, restart, {"kind": "step", "step": 4}])
    assert [(r["kind"], r["step"]) for r in resolved] == [
        ("start", 0), ("step", 1), ("step", 2), ("step", 3), ("start", 3), ("step", 4)
    ]  # fmt: skip


def test_a_torn_last_line_is_ignored_and_a_follower_reads_only_whole_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.metrics.jsonl"
    logger = runlog.RunLogger(tmp_path / "x.safetensors")
    logger.write({"kind": "step", "step": 1, "tokens": 8, "time": 0.1, "train_loss": 2.0, "lr": 1e-3})
    follower = runlog.LogFollower(log)
    assert [r["step"] for r in follower.poll()] == [1]
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"kind": "step", "step": 2, "tokens": 16, "ti')  # a crash mid-write
    assert [r["step"] for r in runlog.read_log(log)] == [1]
    assert follower.poll() == []
    with open(log, "a", encoding="utf-8") as f:
        f.write('me": 0.2, "train_loss": 1.9, "lr": 0.001}\n')
    assert [r["step"] for r in follower.poll()] == [2]
    assert [r["step"] for r in follower.records] == [1, 2]
    # A writer that finds a torn line starts on a new one, so its own lines stay whole.
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"kind": "st')
    logger.close()
    logger.write({"kind": "step", "step": 3, "tokens": 24, "time": 0.3, "train_loss": 1.8, "lr": 1e-3})
    assert [r["step"] for r in runlog.read_log(log)] == [1, 2, 3]


def test_a_run_killed_with_sigkill_leaves_a_log_and_a_checkpoint_that_load(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "killed.safetensors"
    proc = cli_train(corpus, out, "--max-iters", "100000", "--eval-interval", "5", "--keep", "last")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if out.exists() and len(runlog.evals(runlog.read_log(out))) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        else:
            pytest.fail("no evaluation was logged in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    data = runlog.log_path(out).read_bytes()
    records = runlog.read_log(out)
    whole = data[: data.rfind(b"\n") + 1].splitlines()
    assert len(records) == len(whole) and records[-1] == json.loads(whole[-1])
    ckpt = load_checkpoint(out)
    assert ckpt.train_state["steps"] in [e["step"] for e in runlog.evals(records)]


def _tiny_run(tmp_path: Path, text: str, name: str, preset: str, steps: int) -> tuple[Path, dict]:
    tok = build_tokenizer("char", text)
    ids = torch.tensor(tok.encode(text))
    cfg = ModelConfig.preset(preset, vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_embd=16)
    torch.manual_seed(0)
    out = tmp_path / f"{name}.safetensors"
    tc = TrainConfig(batch_size=4, max_iters=steps, eval_interval=4, eval_iters=2, warmup_iters=2, device="cpu")
    trainer = Trainer(
        build_model(cfg), ids[:9000], ids[9000:], tc,
        callbacks=[CheckpointCallback(out, tok, keep="best"), runlog.RunLogger(out)],
    )  # fmt: skip
    return out, trainer.fit() | {"params": trainer.model.num_params(), "history": trainer.history}


def test_the_comparison_table_shows_the_figures_of_two_real_runs(tmp_path: Path, english_text: str) -> None:
    text = english_text[:10_000]
    a, ra = _tiny_run(tmp_path, text, "a-gpt", "gpt2", 8)
    b, rb = _tiny_run(tmp_path, text, "b-llama", "llama", 12)
    rows = {r["run"]: r for r in runlog.compare_runs([a, b])}
    for path, result, arch, steps in ((a, ra, "gpt2", 8), (b, rb, "llama", 12)):
        row = rows[path.name.removesuffix(".safetensors")]
        assert row["arch"] == arch and row["params"] == result["params"]
        assert row["steps"] == steps and row["tokens"] == steps * 4 * 16
        assert row["final_val_loss"] == pytest.approx(result["val_loss"])
        assert row["best_val_loss"] == pytest.approx(result["best_val_loss"])
        best = min(result["history"], key=lambda h: h["val_loss"])
        assert row["best_step"] == best["step"]
        assert row["val_acc"] == pytest.approx(result["val_acc"])
        assert row["wall_time_s"] == pytest.approx(result["elapsed_s"], abs=0.01)
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["wall_time_s"])


def test_memorising_is_noticed_when_val_rises_while_train_falls() -> None:
    def ev(step: int, train: float, val: float) -> dict:
        return {"kind": "eval", "step": step, "train_loss": train, "val_loss": val}

    learning = [ev(1, 3.0, 3.1), ev(2, 2.5, 2.6), ev(3, 2.2, 2.3)]
    assert runlog.memorising(learning) is None
    memorising = [ev(150, 2.0, 1.98), ev(500, 1.2, 2.6), ev(1000, 0.4, 3.52)]
    note = runlog.memorising(memorising)
    assert note == {"best_step": 150, "best_val": 1.98, "last_step": 1000, "last_val": 3.52,
                    "train_at_best": 2.0, "last_train": 0.4}  # fmt: skip
    both_rise = [ev(1, 2.0, 2.0), ev(2, 2.5, 2.6), ev(3, 3.0, 3.5)]  # diverging, not memorising
    assert runlog.memorising(both_rise) is None


def test_deleting_a_run_removes_its_files_and_nothing_else(tmp_path: Path, english_text: str) -> None:
    text = english_text[:10_000]
    a, _ = _tiny_run(tmp_path, text, "one", "gpt2", 4)
    b, _ = _tiny_run(tmp_path, text, "two", "gpt2", 4)
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    before = set(os.listdir(tmp_path))
    mine = {"one.safetensors", "one.optim.safetensors", "one.metrics.jsonl"}
    assert mine | {"two.safetensors", "two.optim.safetensors", "two.metrics.jsonl"} <= before
    delete_checkpoint(a)
    assert set(os.listdir(tmp_path)) == before - mine
    assert [r["name"] for r in runlog.list_runs(tmp_path)] == ["two"]


def test_patience_stops_a_run_whose_validation_loss_stops_improving() -> None:
    # Training on "ab" pairs while validating on "aa" pairs: every step makes validation worse.
    train, val = torch.tensor([0, 1] * 200), torch.tensor([0, 0] * 200)
    cfg = ModelConfig.preset("bigram", vocab_size=2, block_size=8)
    tc = TrainConfig(batch_size=4, max_iters=200, lr=0.1, warmup_iters=0, eval_interval=2, eval_iters=1, patience=2)
    result = Trainer(build_model(cfg), train, val, tc, device="cpu").fit()
    assert result["early_stopped"] and result["stopped_early"]
    assert result["step"] < 20
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig(patience=0).validate()


def test_the_training_page_lists_and_overlays_a_run_the_cli_writes(tmp_path: Path, corpus: Path, monkeypatch) -> None:
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    finished(cli_train(corpus, folder / "from-cli.safetensors", "--max-iters", "6", "--eval-interval", "3"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/training.py").run()
    assert not at.exception
    pick = at.multiselect(key="runs_pick")
    assert pick.options == ["from-cli"]
    pick.set_value(["from-cli"]).run()
    assert not at.exception
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in figure["data"]]
    assert names == ["from-cli: train", "from-cli: validation", "from-cli: best val"]
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["from-cli"] and list(table["steps"]) == [6]
    start = runlog.read_log(folder / "from-cli.safetensors")[0]
    assert list(table["passes over the data"]) == [pytest.approx(6 * 4 * 16 / start["train_tokens"])]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    axes = [c["layout"]["yaxis"]["title"]["text"] for c in charts[1:]]
    assert axes == ["next-token accuracy", "perplexity"]
    assert all(c["data"][0]["name"] == "from-cli" for c in charts[1:])
