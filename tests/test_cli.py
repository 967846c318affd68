"""``python -m lmcore`` end to end: train, generate, eval, info and bad input.

The main paths run as real subprocesses (exit status, stdout and stderr as a
user sees them); the long list of bad inputs runs the same ``main()`` in this
process, which is many times faster, with a few of them repeated as processes.
"""

from __future__ import annotations

import builtins
import json
import keyword
import math
import os
import time
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmcore.cli import main
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",  # tiny models: one thread is fastest, and the machine is shared
    "PYTHONIOENCODING": "ascii",  # the output must not depend on the locale's encoding
}
TINY = ["--preset", "gpt2", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16"]
FAST = ["--batch-size", "8", "--eval-iters", "2"]


def lmcore(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_lmcore(*args, cwd=cwd, env=ENV, timeout=timeout)


def test_a_forked_command_line_answers_as_a_fresh_interpreter_does(work):
    # run_lmcore (tests/helpers.py) stands in for `python -m lmcore` in most tests: the same
    # exit status, stdout and stderr, byte for byte, for a success and for two refusals.
    for args in (["--help"], ["info", "--checkpoint", "missing.safetensors"],
                 ["train", "--preset", "gpt5", "--data", "small.txt"]):  # fmt: skip
        fresh = subprocess.run([sys.executable, "-m", "lmcore", *args], cwd=work, env=ENV, capture_output=True,
                               timeout=180)  # fmt: skip
        forked = lmcore(*args, cwd=work)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fresh.returncode == 2 and fresh.stderr.count(b"\n") == 1


def text_of(stream: bytes) -> str:
    return stream.decode("utf-8")


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The same command in this process (fast): (status, stdout, stderr)."""
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse's own errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def in_work_dir(work, monkeypatch):
    monkeypatch.chdir(work)  # relative paths in run_main resolve like those of the subprocesses


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    import pydoc_data.topics

    d = tmp_path_factory.mktemp("cli")
    topics = pydoc_data.topics.topics
    (d / "small.txt").write_text("\n".join(topics[k] for k in sorted(topics)[:12]), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def trained(work):
    out = lmcore("train", "--data", "small.txt", *TINY, *FAST, "--max-iters", "30", "--eval-interval", "10",
                 "--out", "model.safetensors", cwd=work)  # fmt: skip
    return out


def test_train_saves_a_checkpoint_and_reports_on_stderr(trained, work):
    assert trained.returncode == 0, text_of(trained.stderr)
    stderr = text_of(trained.stderr)
    assert "Traceback" not in stderr
    assert "step 10: train loss" in stderr and "step 30: train loss" in stderr and "tok/s" in stderr
    assert "val bpb" in stderr  # bits per byte at every evaluation
    lines = text_of(trained.stdout).splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["step"] == 30 and result["stopped_early"] is False
    assert result["checkpoint"] == "model.safetensors"
    assert (work / "model.safetensors").is_file() and (work / "model.optim.safetensors").is_file()


def test_a_cli_run_logs_a_text_sample_and_head_scores_at_each_eval_as_app_runs_do(trained, work):
    from lmcore import runlog

    assert trained.returncode == 0, text_of(trained.stderr)
    evals = runlog.evals(runlog.read_log(work / "model.safetensors"))
    assert [e["step"] for e in evals] == [10, 20, 30]
    text = (work / "small.txt").read_text(encoding="utf-8")
    for e in evals:
        assert isinstance(e.get("sample"), str) and len(e["sample"]) > 1 and set(e["sample"]) <= set(text)
        assert len(e["head_scores"]["previous_token"]) == 2  # one row per layer


def test_a_cli_run_and_an_app_run_with_one_seed_train_the_same_weights(work, capsys, tmp_path):
    """Both go through lmcore.run: the same settings and seed start from the same weights (and train alike)."""
    import torch

    from lmcore.checkpoint import load_checkpoint
    from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
    from lmcore.jobs import FINISHED, JobRegistry
    from lmcore.models import ModelConfig
    from lmcore.run import RunSpec
    from lmcore.train import TrainConfig

    status, _, err = run_main(capsys, "train", "--data", "small.txt", *TINY, *FAST, "--max-iters", "2", "--seed", "7",
                              "--device", "cpu", "--out", str(tmp_path / "cli.safetensors"))  # fmt: skip
    assert status == 0, err
    corpus = load_corpus(str(work / "small.txt"))
    tok = build_tokenizer("char", corpus.text)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16)
    tc = TrainConfig(batch_size=8, eval_iters=2, max_iters=2, warmup_iters=0, seed=7, device="cpu")
    job = JobRegistry(processes=False).start(RunSpec("app", cfg, tok, train_ids, val_ids, tc), tmp_path)
    assert job.wait(120) and job.status == FINISHED, job.error
    cli, app = load_checkpoint(tmp_path / "cli.safetensors").model, load_checkpoint(job.checkpoint_path).model
    for (name, a), b in zip(cli.state_dict().items(), app.state_dict().values()):
        assert torch.equal(a, b), name


def test_generate_prints_the_prompt_and_its_continuation_only(trained, work, capsys):
    args = ["generate", "--checkpoint", "model.safetensors", "--prompt", "The ", "--max-new-tokens", "40", "--seed", "3"]
    first = lmcore(*args, cwd=work)
    assert first.returncode == 0, text_of(first.stderr)
    assert first.stderr == b""
    out = text_of(first.stdout)
    assert out.startswith("The ") and 4 < len(out) <= 44  # one character per token (BOS prints nothing)
    assert set(out) <= set((work / "small.txt").read_text(encoding="utf-8"))
    assert run_main(capsys, *args) == (0, out, "")  # same seed, same text, in another process
    status, other, _ = run_main(capsys, *args[:-1], "4")
    assert status == 0 and other.startswith("The ") and other != out
    status, greedy, _ = run_main(capsys, *args, "--temperature", "0")
    assert status == 0 and greedy == run_main(capsys, *args[:-2], "--temperature", "0")[1]


def test_eval_prints_one_json_line(trained, work):
    out = lmcore("eval", "--checkpoint", "model.safetensors", "--data", "small.txt", cwd=work)
    assert out.returncode == 0, text_of(out.stderr)
    (line,) = text_of(out.stdout).splitlines()
    result = json.loads(line)
    assert set(result) == {"loss", "perplexity", "accuracy", "tokens", "bpb"}
    text = (work / "small.txt").read_text(encoding="utf-8")
    # a character model: nats per character x characters / bytes, in bits
    expected = result["loss"] * (len(text) - 1) / len(text[1:].encode("utf-8")) / math.log(2)
    assert result["bpb"] == pytest.approx(expected, rel=1e-9)
    assert result["tokens"] == len((work / "small.txt").read_text(encoding="utf-8")) - 1
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert 0 < result["loss"] < 5 and 0 <= result["accuracy"] <= 1


def test_info_prints_one_json_line(trained, work):
    out = lmcore("info", "--checkpoint", "model.safetensors", cwd=work)
    assert out.returncode == 0, text_of(out.stderr)
    (line,) = text_of(out.stdout).splitlines()
    info = json.loads(line)
    assert info["config"]["n_layer"] == 2 and info["config"]["preset"] == "gpt2"
    assert info["tokenizer"]["type"] == "char" and info["tokenizer"]["vocab_size"] == info["config"]["vocab_size"]
    assert info["train"]["steps"] == 30 and info["train"]["config"]["max_iters"] == 30
    assert info["data"]["documents"] is False and info["params"] > 0 and info["resumable"] is True


def test_resume_continues_the_run(trained, work, capsys):
    for name in ("model.safetensors", "model.optim.safetensors"):
        shutil.copy(work / name, work / name.replace("model", "again"))
    status, out, err = run_main(capsys, "train", "--resume", "again.safetensors", "--max-iters", "40")
    assert status == 0, err
    assert "from step 30" in err and json.loads(out)["step"] == 40
    info = json.loads(run_main(capsys, "info", "--checkpoint", "again.safetensors")[1])
    assert info["train"]["steps"] == 40 and [h["step"] for h in info["train"]["history"]] == [10, 20, 30, 40]
    status, _, err = run_main(capsys, "train", "--resume", "again.safetensors", "--n-layer", "3")
    assert status == 2 and "--resume" in err


def test_documents_mode_starts_and_stops_at_bos(work, capsys):
    names = sorted(set(keyword.kwlist) | {n for n in dir(builtins) if not n.startswith("_")})
    (work / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    status, _, err = run_main(capsys, "train", "--data", "names.txt", "--documents", *TINY, "--batch-size", "16",
                              "--eval-iters", "2", "--max-iters", "150", "--lr", "3e-3", "--out", "names.safetensors")  # fmt: skip
    assert status == 0, err
    info = json.loads(run_main(capsys, "info", "--checkpoint", "names.safetensors")[1])
    assert info["data"]["documents"] is True
    out = lmcore("generate", "--checkpoint", "names.safetensors", "--max-new-tokens", "60", cwd=work)
    assert out.returncode == 0, text_of(out.stderr)
    name = text_of(out.stdout)
    assert 0 < len(name) < 60 and "\n" not in name  # one document, ended by BOS
    for seed in ("1", "2"):
        status, name, _ = run_main(capsys, "generate", "--checkpoint", "names.safetensors", "--max-new-tokens", "60", "--seed", seed)
        assert status == 0 and 0 < len(name) < 60 and "\n" not in name
    status, prompted, _ = run_main(capsys, "generate", "--checkpoint", "names.safetensors", "--prompt", "is")
    assert status == 0 and prompted.startswith("is") and "\n" not in prompted


def test_ctrl_c_saves_and_exits_cleanly(work, capsys):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmcore", "train", "--data", "small.txt", *TINY, *FAST, "--max-iters", "1000000",
         "--eval-interval", "5", "--out", "interrupted.safetensors"],  # fmt: skip
        cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        seen = b""
        deadline = time.monotonic() + 120
        # Into a pipe the bar redraws every 10 s; an evaluation's line comes at once.
        while b"step 5: train loss" not in seen and time.monotonic() < deadline:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        assert b"%|" in seen and b"step 5: train loss" in seen, seen  # the bar is up and 5 steps are done
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (seen + rest).decode()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and "error: interrupted at step" in stderr
    status, out, _ = run_main(capsys, "info", "--checkpoint", "interrupted.safetensors")
    assert status == 0 and json.loads(out)["train"]["steps"] >= 1


def _bad_files(work: Path) -> None:
    (work / "empty.txt").write_bytes(b"")
    (work / "blank.txt").write_text("   \n\n ")
    (work / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (work / "latin1.txt").write_bytes("caf\xe9 au lait, s'il vous pla\xeet".encode("latin-1") * 20)
    (work / "short.txt").write_text("just a few words here")
    (work / "junk.safetensors").write_bytes(os.urandom(2048))
    (work / "unseen.txt").write_text("Ωμέγα ≈ 😀 " * 20, encoding="utf-8")
    (work / "a_dir").mkdir(exist_ok=True)


CKPT = ["--checkpoint", "model.safetensors"]
OUT = ["--out", "x.safetensors"]
BAD = [
    (["train", "--data", "missing.txt", *TINY, *OUT], "no such file"),
    (["train", "--data", "empty.txt", *TINY, *OUT], "empty"),
    (["train", "--data", "blank.txt", *TINY, *OUT], "whitespace"),
    (["train", "--data", "binary.bin", *TINY, *OUT], "binary"),
    (["train", "--data", "latin1.txt", *TINY, *OUT], "UTF-8"),
    (["train", "--data", "a_dir", *TINY, *OUT], "directory"),
    (["train", "--data", "short.txt", *TINY, *OUT], "needs at least 17"),
    (["train", "--data", "small.txt", *TINY, "--n-embd", "30", "--n-head", "4", *OUT], "divisible"),
    (["train", "--data", "small.txt", *TINY, "--n-layer", "0", *OUT], "--n-layer"),
    (["train", "--data", "small.txt", *TINY, "--lr", "-1", *OUT], "learning rate"),
    (["train", "--data", "small.txt", *TINY, "--warmup-iters", "50", "--max-iters", "10", *OUT], "warmup"),
    (["train", "--data", "small.txt", *TINY, "--val-fraction", "0", *OUT], "validation fraction"),
    (["train", "--data", "small.txt", *TINY], "--out"),
    (["train", "--resume", "junk.safetensors"], "not a valid safetensors"),
    (["generate", "--checkpoint", "junk.safetensors"], "not a valid safetensors"),
    (["generate", "--checkpoint", "nowhere.safetensors"], "no checkpoint"),
    (["generate", "--checkpoint", "small.txt"], "safetensors"),
    (["generate", *CKPT, "--prompt", "Ωμέγα"], "never seen"),
    (["generate", *CKPT, "--temperature", "-1"], "temperature"),
    (["generate", *CKPT, "--top-p", "0"], "top_p"),
    (["generate", *CKPT, "--top-k", "0"], "--top-k"),
    (["generate", *CKPT, "--max-new-tokens", "-5"], "max-new-tokens"),
    (["eval", *CKPT, "--data", "missing.txt"], "no such file"),
    (["eval", *CKPT, "--data", "unseen.txt"], "never seen"),
    (["info", "--checkpoint", "a_dir"], "directory"),
]


@pytest.mark.parametrize("args, words", BAD, ids=[f"{a[0]}-{w}" for a, w in BAD])
def test_bad_input_gives_one_error_line_and_status_2(trained, work, capsys, args, words):
    _bad_files(work)
    status, out, err = run_main(capsys, *args)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words.lower() in lines[0].lower(), lines[0]
    assert not (work / "x.safetensors").exists()


def test_bad_input_through_a_real_process_has_no_traceback(trained, work):
    _bad_files(work)
    for args, words in [BAD[14], BAD[17]]:  # a junk checkpoint, unseen characters in the prompt
        out = lmcore(*args, cwd=work)
        err = text_of(out.stderr)
        assert out.returncode == 2 and out.stdout == b"", (args, err)
        assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), (args, err)
        assert words.lower() in err.lower()
    unknown = lmcore("train", "--preset", "gpt5", "--data", "small.txt", *OUT, cwd=work)
    err = text_of(unknown.stderr)
    assert unknown.returncode == 2 and unknown.stdout == b"" and err.count("\n") == 1, err
    assert err.startswith("error: --preset: invalid choice 'gpt5' (choose from gpt2, llama, mamba, mamba2, lstm, bigram, ngram)")


@pytest.mark.parametrize(
    "args",
    [["train", "--preset", "gpt5", "--data", "small.txt", *OUT], ["train", "--no-such-flag"], ["generate"], ["fly"], []],
)
def test_bad_flags_are_one_line_argparse_errors(capsys, args):
    status, out, err = run_main(capsys, *args)
    assert status == 2 and out == "" and "usage:" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and err.rstrip().endswith("--help"), err


def test_a_time_shaped_schedule_runs_within_its_budget_and_needs_one(work, capsys, tmp_path):
    args = ["train", "--data", str(work / "small.txt"), *TINY, *FAST, "--max-iters", "100000", "--eval-interval",
            "100000", "--device", "cpu", "--schedule", "time"]  # fmt: skip
    status, _, err = run_main(capsys, *args, "--out", str(tmp_path / "no.safetensors"))
    assert status == 2 and err.count("\n") == 1 and "needs a time budget" in err
    status, out, err = run_main(capsys, *args, "--time-budget", "3", "--out", str(tmp_path / "t.safetensors"))
    assert status == 0, err
    result = json.loads(out)
    assert result["stopped_early"] and 0 < result["step"] < 100000  # the budget ended it
