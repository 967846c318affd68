"""Limits on what a user can ask for: model sizes, flag values, names.

A config far past the machine's memory is refused from its estimate before
anything is built; counting parameters never allocates; every flag is
range-checked and argparse's errors are one line; names fit the file system
in bytes; NaN and infinity never enter a config.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from lmcore.checkpoint import load_checkpoint
from lmcore.checkpoint_names import MAX_NAME_BYTES, sanitize_name
from lmcore.cli import MAX_NEW_TOKENS, main
from lmcore.errors import ConfigError
from lmcore.jobs import FINISHED, JobRegistry, RunSpec
from lmcore.models import ModelConfig, build_model
from lmcore.models.estimate import MAX_PARAMS, OVERHEAD_PER_TENSOR, available_memory, check_fits, estimate_memory, model_counts
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",
}
TINY = ["--preset", "gpt2", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
FAST = ["--batch-size", "4", "--eval-iters", "1"]
HUGE = ["--n-layer", "1000000"]


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse's own errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def work(tmp_path, small_text, monkeypatch) -> Path:
    (tmp_path / "small.txt").write_text(small_text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------ counting and the estimate
@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba", "mamba2", "lstm", "bigram"])
def test_counting_on_the_meta_device_matches_the_built_model(preset):
    cfg = ModelConfig.preset(preset, vocab_size=50, n_layer=3, n_embd=32, n_head=4, n_kv_head=2, block_size=16)
    model = build_model(cfg)
    assert model_counts(cfg) == {
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(cfg.block_size),
    }


def test_a_million_layers_are_counted_without_building_them():
    cfg = ModelConfig.preset("gpt2", vocab_size=65, n_layer=1_000_000)
    one, two = model_counts(cfg.replace(n_layer=1)), model_counts(cfg.replace(n_layer=2))
    per_layer = two["params"] - one["params"]
    assert per_layer == 12 * 128 * 128 + 13 * 128  # attention and MLP weights, their biases, two LayerNorms
    assert model_counts(cfg)["params"] == one["params"] + 999_999 * per_layer


def test_a_model_over_free_memory_is_refused_with_the_estimate():
    cfg = ModelConfig.preset("gpt2", vocab_size=65, n_layer=48, n_embd=4096)
    est = estimate_memory(cfg, 16)
    assert est["total"] == est["weights"] * 4 + est["activations"] + est["overhead"]
    assert est["weights"] == 4 * est["params"] and est["overhead"] == (4 + 48 * 12) * OVERHEAD_PER_TENSOR  # wte, wpe, ln_f; 12 a block
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, 16, free=20_300_000_000)
    message = str(e.value)
    assert "\n" not in message and "needs about 182.3 GB to train" in message
    assert "20.3 GB free" in message and "fewer layers" in message
    small = ModelConfig.preset("gpt2", vocab_size=65)
    assert check_fits(small, 16, free=10**9)["params"] == model_counts(small)["params"]
    with pytest.raises(ConfigError, match="needs about"):
        check_fits(small, 10**6, free=10**9)  # the batch's activations count too


def test_the_parameter_ceiling_holds_whatever_the_memory():
    cfg = ModelConfig.preset("gpt2", vocab_size=65, n_layer=48, n_embd=4096)
    assert model_counts(cfg)["params"] > MAX_PARAMS
    with pytest.raises(ConfigError, match="limit of 2,000,000,000"):
        check_fits(cfg, 1, free=10**15)


def test_free_memory_is_read_from_the_system():
    free = available_memory("cpu")
    assert free is None or 0 < free < 2**50


# ------------------------------------------------------------------ config values
@pytest.mark.parametrize("field", ["rope_theta", "dropout", "mlp_ratio"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_in_a_config_are_refused(field, value):
    cfg = ModelConfig.preset("gpt2", vocab_size=65).replace(**{field: value})
    with pytest.raises(ConfigError, match=field):
        cfg.validate()


def test_a_nan_rope_theta_in_saved_json_is_refused():
    text = ModelConfig.preset("gpt2", vocab_size=65).to_json().replace('"rope_theta": 10000.0', '"rope_theta": NaN')
    cfg = ModelConfig.from_json(text)  # json reads NaN; validation must not let it through
    with pytest.raises(ConfigError, match="rope_theta must be a finite number"):
        cfg.validate()


def test_size_fields_have_a_ceiling():
    with pytest.raises(ConfigError, match="n_layer must be at most 1,048,576"):
        ModelConfig.preset("gpt2", vocab_size=65, n_layer=10**7).validate()
    with pytest.raises(ConfigError, match="vocab_size must be at most"):
        ModelConfig.preset("bigram", vocab_size=10**30).validate()


# ------------------------------------------------------------------ the command line
def test_a_huge_model_is_refused_in_one_line_within_a_second(work):
    # In a fresh process: the imports are start-up (seconds on a busy machine); main() is timed alone,
    # in CPU seconds (what building the model would cost; a busy machine stretches only the wall time).
    code = (
        "import resource, time, torch\n"
        "import lmcore.checkpoint, lmcore.data, lmcore.train\n"
        "from lmcore.cli import main\n"
        "t = time.process_time()\n"
        f"status = main({['train', '--data', 'small.txt', *HUGE, '--out', 'x.safetensors']!r})\n"
        "print(status, time.process_time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=ENV, capture_output=True, timeout=120)
    err = out.stderr.decode()
    status, seconds, peak_kb = out.stdout.decode().split()
    assert status == "2" and float(seconds) < 1.0, (seconds, err)
    assert err.count("\n") == 1 and err.startswith("error: this model needs about") and "free" in err, err
    assert int(peak_kb) < 2 * 2**20  # under 2 GB, torch included: nothing was built
    assert not (work / "x.safetensors").exists()



def test_a_huge_width_is_refused_with_the_estimate(capsys, work):
    status, out, err = run_main(capsys, "train", "--data", "small.txt", "--n-embd", "1000000", "--n-head", "1",
                                "--out", "x.safetensors")  # fmt: skip
    assert status == 2 and out == "" and err.count("\n") == 1 and "needs about" in err and "TB" in err, err


BAD_FLAGS = [
    (["train", "--preset", "gpt9"], "--preset: invalid choice 'gpt9' (choose from gpt2, llama, mamba, mamba2, lstm, bigram, ngram)"),
    (["train", "--keep", "middle"], "choose from best, last"),
    (["train", "--n-layer", "two"], "--n-layer: expected a whole number"),
    (["train", "--n-layer", "0"], "--n-layer: must be a whole number of at least 1, got 0"),
    (["train", "--seed", "1e23"], "--seed: expected a whole number from 0 to 4,294,967,295, got '1e23'"),
    (["train", "--seed", "100000000000000000000000"], "--seed: must be a whole number from 0 to 4,294,967,295"),
    (["train", "--dropout", "nan"], "--dropout: must be a finite number"),
    (["train", "--lr", "inf"], "--lr: must be a finite number"),
    (["train", "--batch-size", "-3"], "--batch-size"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["generate"], "the following arguments are required: --checkpoint"),
    (["generate", "--checkpoint", "x", "--max-new-tokens", "1000000000"], f"--max-new-tokens: must be a whole number from 0 to {MAX_NEW_TOKENS:,}"),
    (["eval", "--checkpoint", "x", "--data", "y", "--batch-size", "0"], "--batch-size"),
    (["fly"], "invalid choice 'fly' (choose from prepare, train, generate, finetune, eval, info, import, export, sae)"),
    ([], "the following arguments are required"),
]  # fmt: skip


@pytest.mark.parametrize("args, words", BAD_FLAGS, ids=[" ".join(a) or "nothing" for a, _ in BAD_FLAGS])
def test_argparse_errors_are_one_line_with_status_2(capsys, work, args, words):
    status, out, err = run_main(capsys, *args)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "usage" not in err, err
    assert words in err and err.rstrip().endswith("--help"), err


def test_the_generation_cap_is_allowed_and_one_more_is_not():
    from lmcore.cli import build_parser

    args = build_parser().parse_args(["generate", "--checkpoint", "x", "--max-new-tokens", str(MAX_NEW_TOKENS)])
    assert args.max_new_tokens == MAX_NEW_TOKENS == 100_000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--checkpoint", "x", "--max-new-tokens", str(MAX_NEW_TOKENS + 1)])


def test_vocab_size_with_the_char_tokenizer_is_refused(capsys, work):
    status, out, err = run_main(capsys, "train", "--data", "small.txt", "--vocab-size", "300", "--out", "x.safetensors")
    assert status == 2 and err.count("\n") == 1 and "--tokenizer bpe" in err, err
    assert not (work / "x.safetensors").exists()


def test_keep_last_is_remembered_on_resume(capsys, work, small_text):
    args = ["--data", "small.txt", *TINY, *FAST, "--eval-interval", "10", "--out", "m.safetensors"]
    status, _, err = run_main(capsys, "train", *args, "--max-iters", "20", "--keep", "last")
    assert status == 0, err
    # Resume on text the model cannot predict: every later validation loss is worse
    # than the best so far, so only "last" saves again.
    rng = random.Random(0)
    chars = sorted(set(small_text))
    (work / "noise.txt").write_text("".join(rng.choice(chars) for _ in range(6000)), encoding="utf-8")
    status, _, err = run_main(capsys, "train", "--resume", "m.safetensors", "--data", "noise.txt", "--max-iters", "40")
    assert status == 0, err
    ckpt = load_checkpoint(work / "m.safetensors")
    assert ckpt.train_state["steps"] == 40 and ckpt.data_info["keep"] == "last"


def test_an_out_name_too_long_for_the_file_system_is_refused_before_training(capsys, work):
    status, _, err = run_main(capsys, "train", "--data", "small.txt", *TINY, "--out", "名" * 100 + ".safetensors")
    assert status == 2 and err.count("\n") == 1 and "300 bytes" in err and f"at most {MAX_NAME_BYTES} bytes" in err
    assert "training" not in err
    name = "я" * (MAX_NAME_BYTES // 2)  # the most that fits, with the optimizer file and temporaries beside it
    status, _, err = run_main(capsys, "train", "--data", "small.txt", *TINY, *FAST, "--max-iters", "2",
                              "--eval-interval", "2", "--out", name + ".safetensors")  # fmt: skip
    assert status == 0, err
    assert (work / f"{name}.safetensors").is_file() and (work / f"{name}.optim.safetensors").is_file()


# ------------------------------------------------------------------ names
def test_names_are_capped_in_bytes_never_inside_a_character():
    for ch in ("名", "я", "\U00020000", "a"):  # 3, 2, 4 and 1 bytes
        stem = sanitize_name(ch * 100)
        assert len(stem.encode("utf-8")) <= MAX_NAME_BYTES and set(stem) == {ch}
    assert sanitize_name("名" * 100) == "名" * (MAX_NAME_BYTES // 3)
    assert sanitize_name("a" * 300) == "a" * 100


def test_a_long_non_latin_run_name_trains_and_saves(tmp_path, small_text):
    tok = CharTokenizer.train(small_text)
    ids = torch.tensor(tok.encode(small_text[:4000]))
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16)
    tc = TrainConfig(batch_size=4, max_iters=2, warmup_iters=0, eval_interval=2, eval_iters=1)
    registry = JobRegistry(max_concurrent=2)
    paths = []
    for _ in range(2):  # the second run of the same name gets a suffix, not a name too long
        job = registry.start(RunSpec("名前" * 50, cfg, tok, ids[:3000], ids[3000:], tc), tmp_path)
        assert job.wait(120) and job.status == FINISHED, job.error
        paths.append(job.checkpoint_path)
    assert paths[0].is_file() and paths[1].is_file() and paths[0] != paths[1]
    assert paths[1].stem.endswith("-2") and all(len(p.name.encode()) <= 255 for p in paths)


def test_the_job_registry_refuses_a_model_over_free_memory(tmp_path):
    tok = CharTokenizer.train("abc")
    ids = torch.tensor(tok.encode("abc" * 100))
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=48, n_embd=4096)
    with pytest.raises(ConfigError, match="to train"):
        JobRegistry().start(RunSpec("big", cfg, tok, ids, ids, TrainConfig()), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the app's error boundary
def _script_with_a_long_file_name() -> None:
    from pathlib import Path

    import streamlit as st

    from ui.boundary import user_errors

    with user_errors():
        Path(st.session_state["folder"], "名" * 100 + ".txt").write_text("x")
    st.write("not reached")


def test_the_error_boundary_shows_an_os_error_as_one_line(tmp_path, caplog):
    at = AppTest.from_function(_script_with_a_long_file_name, default_timeout=60)
    at.session_state["folder"] = str(tmp_path)
    with caplog.at_level("WARNING", logger="ui.boundary"):
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    (error,) = at.error
    assert "\n" not in error.value and "File name too long" in error.value and "名名" in error.value
    assert not [m for m in at.markdown if m.value == "not reached"]
    assert any(r.exc_info for r in caplog.records)  # the traceback goes to the log


def test_a_deep_narrow_model_counts_what_its_layers_cost_beyond_their_values():
    # A million one-wide layers: 0.75 GB of values and activations, but about 16 kB of objects per tensor.
    cfg = ModelConfig.preset("gpt2", vocab_size=65, n_layer=1_000_000, n_embd=1, n_head=1, block_size=2)
    est = estimate_memory(cfg, 1)
    assert est["total"] - est["overhead"] < 10**9 < 10**11 < est["overhead"]
    with pytest.raises(ConfigError, match="per-tensor overhead 196.6 GB"):
        check_fits(cfg, 1, free=8 * 10**9)
