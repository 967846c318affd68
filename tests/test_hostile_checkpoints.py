"""Hostile checkpoint files are refused fast and cheaply, listings survive them, and killed saves lose nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import hostile_files as hostile
import lmcore.checkpoint as ck
from lmcore.checkpoint import list_checkpoints, load_checkpoint, read_metadata, save_checkpoint
from lmcore.checkpoint_resume import load_resume_state
from lmcore.errors import CheckpointError
from lmcore.models import build_model
from lmcore.tokenizers import CharTokenizer
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
# A careless loader takes many seconds and gigabytes. The time bound is on CPU time, which
# a busy shared machine does not inflate; wall time gets a generous bound of its own.
FAST_S = 1.0
CHEAP_MB = 100


def refused_fast(path: Path, memory_mb: float = CHEAP_MB) -> str:
    """Load ``path`` in a fresh process: it must be refused in under FAST_S and memory_mb of RSS growth."""
    result = hostile.measure_load(path, ROOT, timeout_s=60, memory_cap_bytes=4 << 30)
    assert result["outcome"].startswith("refused: "), result
    assert result["cpu_seconds"] < FAST_S and result["seconds"] < 10 * FAST_S, result
    assert result["rss_growth_mb"] < memory_mb, result
    return result["outcome"]


def test_doubling_merges_are_refused_before_any_token_is_built(tmp_path):
    assert "tokenizer" in refused_fast(hostile.doubling_merges(tmp_path))


def test_aliases_cannot_fill_a_config_of_ten_thousand_layers(tmp_path):
    assert "ties more names than its 28 stored tensors" in refused_fast(hostile.alias_bomb(tmp_path))


def test_a_header_of_a_million_and_a_half_entries_is_refused_before_they_are_parsed(tmp_path):
    path = hostile.many_entries(tmp_path)
    assert path.stat().st_size > 80_000_000
    assert "more tensor entries than its config can need" in refused_fast(path, memory_mb=200)


@pytest.mark.parametrize("maker", [hostile.chained_merges, hostile.many_specials])
def test_long_merge_chains_and_many_special_tokens_are_refused(tmp_path, maker):
    path = maker(tmp_path)
    start = time.process_time()
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_checkpoint(path)
    assert time.process_time() - start < 3  # 4.5 s and 2 GB, or 5.4 s, without the limits


@pytest.mark.parametrize("field", hostile.METADATA_FIELDS)
@pytest.mark.parametrize("depth", [40, 100_000])
def test_nested_json_in_any_metadata_field_is_a_checkpoint_error(tmp_path, field, depth):
    path = hostile.nested(tmp_path, field, depth)
    for read in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointError, match="nested more than|more than it can need") as info:
            read(path)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["config", "train", "data"])
def test_a_five_thousand_digit_number_is_a_checkpoint_error(tmp_path, field):
    path = hostile.long_number(tmp_path, field)
    with pytest.raises(CheckpointError, match="5,000-character number"):
        load_checkpoint(path)


def test_info_says_one_line_about_a_hostile_file(tmp_path):
    path = hostile.nested(tmp_path, "train")
    run = run_lmcore("info", "--checkpoint", str(path), cwd=ROOT, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "nested more than" in run.stderr, run.stderr


def test_a_listing_with_hostile_files_still_lists_the_good_ones(tmp_path):
    for field in hostile.METADATA_FIELDS:
        hostile.nested(tmp_path, field).rename(tmp_path / f"bad-{field}.safetensors")
    hostile.long_number(tmp_path, "train")
    hostile.rewrite(tmp_path / "number-train-base.safetensors", tmp_path / "p.safetensors", params="9" * 5000)
    rows = {r["name"]: r for r in list_checkpoints(tmp_path)}
    bad = [f"bad-{f}" for f in hostile.METADATA_FIELDS] + ["number-train"]
    assert all(rows[name]["error"] and "\n" not in rows[name]["error"] for name in bad)
    good = [name for name in rows if name.endswith("-base")]
    assert len(good) == len(hostile.METADATA_FIELDS) + 1 and all(rows[n]["error"] is None for n in good)
    assert rows["p"]["params"] is None


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    start = time.perf_counter()
    for read in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointError, match="not a regular file"):
            read(fifo)
    assert time.perf_counter() - start < 10 * FAST_S  # without the check, open() waits for a writer for ever
    assert [r["name"] for r in list_checkpoints(tmp_path)] == []


# ---------------------------------------------------------------- killed saves


def _model_and_state(step: int):
    tok = CharTokenizer.train(hostile.TEXT)
    torch.manual_seed(step)
    model = build_model(hostile.tiny_config(tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.tensor([tok.encode("hello")])).sum().backward()
    opt.step()
    return model, tok, {"version": 1, "step": step, "optimizer": opt.state_dict()}


def _save(path: Path, step: int, prepared=None) -> None:
    model, tok, state = prepared or _model_and_state(step)
    save_checkpoint(path, model, tok, train_state={"steps": step}, optimizer=state)


def _assert_one_resumable_pair(path: Path, steps: set[int]) -> None:
    weights = load_checkpoint(path).train_state["steps"]
    state = load_resume_state(path)
    assert weights in steps and state is not None and state["step"] == weights


# (function, call number) at which the save dies: the optimizer written, the weights
# written, the weights renamed into place, the optimizer renamed into place.
KILL_POINTS = [("save_file", 1), ("save_file", 2), ("replace", 1), ("replace", 2)]


@pytest.mark.parametrize("where, nth", KILL_POINTS)
def test_a_save_killed_at_any_point_leaves_a_resumable_pair_and_no_temporaries(tmp_path, where, nth):
    path = tmp_path / "run.safetensors"
    _save(path, 1)
    prepared = _model_and_state(2)  # torch's thread pools must not be used after the fork
    pid = os.fork()
    if pid == 0:  # the child dies for good (no clean-up, no atexit) just before call `nth`
        try:
            calls = []
            real = ck.save_file if where == "save_file" else os.replace

            def dying(*args, **kwargs):
                calls.append(1)
                if len(calls) == nth:
                    os._exit(9)
                return real(*args, **kwargs)

            if where == "save_file":
                ck.save_file = dying
            else:
                os.replace = dying
            _save(path, 2, prepared)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    _assert_one_resumable_pair(path, {1, 2})
    _save(tmp_path / "other.safetensors", 3)  # the next save in the folder cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other.optim.safetensors", "other.safetensors", "run.optim.safetensors", "run.safetensors",
    ]  # fmt: skip
    _assert_one_resumable_pair(path, {1, 2})


@pytest.mark.parametrize("nth", [1, 2])
def test_a_save_that_fails_between_its_renames_leaves_a_resumable_pair(tmp_path, monkeypatch, nth):
    path = tmp_path / "run.safetensors"
    _save(path, 1)
    real, calls = os.replace, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise OSError(5, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CheckpointError, match="Input/output error"):
        _save(path, 2)
    monkeypatch.setattr(os, "replace", real)
    _assert_one_resumable_pair(path, {1, 2})
    list_checkpoints(tmp_path)  # a listing cleans up too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.optim.safetensors", "run.safetensors"]


def test_temporaries_of_a_live_writer_are_kept(tmp_path):
    live = tmp_path / f".run.safetensors.{os.getppid()}-{'0' * 32}.tmp"
    live.write_bytes(b"being written")
    list_checkpoints(tmp_path)
    assert live.exists()


# ---------------------------------------------------------------- --out


def test_out_of_a_folder_writes_inside_it(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(hostile.TEXT * 40, encoding="utf-8")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "gpt2.safetensors").write_bytes(b"kept")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out in (tmp_path / "models", str(tmp_path / "new") + "/"):
        run = run_lmcore("train", "--data", str(data), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                         "--block-size", "8", "--batch-size", "2", "--max-iters", "2", "--eval-interval", "2",
                         "--eval-iters", "1", "--device", "cpu", "--out", str(out), cwd=ROOT, env=env, text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert (tmp_path / "models" / "gpt2.safetensors").read_bytes() == b"kept"
    assert load_checkpoint(tmp_path / "models" / "gpt2-2.safetensors").config.n_layer == 1
    assert load_checkpoint(tmp_path / "new" / "gpt2.safetensors").config.n_layer == 1
    assert not (tmp_path / "models.safetensors").exists() and not (tmp_path / "new.safetensors").exists()


def test_huge_but_valid_metadata_is_refused_before_it_is_parsed_and_the_listing_survives(tmp_path):
    """A 'train' record of millions of empty objects took 19 s and 2.5 GB to list."""
    src = hostile.valid(tmp_path, "huge-base")
    huge = hostile.rewrite(src, tmp_path / "huge.safetensors", train="[" + ",".join(["{}"] * 3_000_000) + "]")
    start = time.process_time()
    rows = {r["name"]: r for r in list_checkpoints(tmp_path)}
    assert time.process_time() - start < 5
    assert "more than it can need" in rows["huge"]["error"] and rows["huge-base"]["error"] is None
    with pytest.raises(CheckpointError, match="more than it can need"):
        load_checkpoint(huge)


@pytest.mark.parametrize(
    "train, field",
    [
        ({"steps": 5, "val_loss": "low"}, "val_loss"),
        ({"steps": "many"}, "steps"),
        ({"steps": -3}, "steps"),
        ({"steps": 1, "history": "none"}, "history"),
        ({"steps": 1, "best_val_loss": [1.0]}, "best_val_loss"),
    ],
)
def test_a_training_record_of_the_wrong_types_is_listed_with_its_reason(tmp_path, train, field):
    import json

    src = hostile.valid(tmp_path, "typed-base")
    bad = hostile.rewrite(src, tmp_path / "typed.safetensors", train=json.dumps(train))
    rows = {r["name"]: r for r in list_checkpoints(tmp_path)}
    assert field in rows["typed"]["error"] and "\n" not in rows["typed"]["error"]
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(bad)


def test_a_params_metadata_that_is_not_a_count_is_listed_with_its_reason(tmp_path):
    src = hostile.valid(tmp_path, "params-base")
    hostile.rewrite(src, tmp_path / "params.safetensors", params="lots")
    rows = {r["name"]: r for r in list_checkpoints(tmp_path)}
    assert "'params'" in rows["params"]["error"]


def test_a_counting_model_cannot_pad_a_small_tokenizer_to_a_huge_vocabulary(tmp_path):
    """An n-gram's cost grows with its vocabulary and it has no weights to bound it by the file."""
    import json

    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import models as tk_models

    from lmcore.models import ModelConfig
    from lmcore.tokenizers import HFTokenizer

    fast = FastTokenizer(tk_models.WordLevel({"a": 0, "<|endoftext|>": 1}, unk_token="<|endoftext|>"))
    fast.add_special_tokens(["<|endoftext|>"])
    for vocab, ok in ((300_000, False), (64, True)):
        tok = HFTokenizer(fast.to_str(), vocab_size=vocab, bos_token="<|endoftext|>")
        model = build_model(ModelConfig.preset("ngram", vocab_size=vocab, ngram_n=2))
        model.fit_counts(torch.tensor([0, 1, 0, 0, 1]))
        path = save_checkpoint(tmp_path / f"ngram-{vocab}.safetensors", model, tok)
        assert path.stat().st_size < 100_000
        if ok:
            load_checkpoint(path)
        else:
            with pytest.raises(CheckpointError, match="cannot pad"):
                load_checkpoint(path)


@pytest.mark.parametrize("train", ['{"steps": 5, "val_loss": "low"}', '{"steps": "many", "val_loss": 1.5}'])
def test_pages_list_a_checkpoint_with_a_mistyped_record_and_go_on(tmp_path, monkeypatch, train):
    """Uploaded by one visitor, it once broke the Training page for everyone."""
    from streamlit.testing.v1 import AppTest

    src = hostile.valid(tmp_path, "fine")
    hostile.rewrite(src, tmp_path / "typed.safetensors", train=train, params="12x")
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    for page in ("views/training.py", "views/checkpoints.py", "views/generation.py", "views/attention.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    at.switch_page("views/checkpoints.py").run()
    at.selectbox(key="keep.checkpoints.selected").set_value("typed").run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error if "typed" in e.value and "training record" in e.value], at.error
