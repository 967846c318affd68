"""Background training jobs: real tiny runs in threads, polled as the app polls them."""

from __future__ import annotations

import math
import time

import pytest
import torch

from lmcore.checkpoint import load_checkpoint, read_metadata
from lmcore.checkpoint_names import optimizer_path
from lmcore.data import build_tokenizer, corpus_from_text, encode_corpus, split_ids
from lmcore.errors import ConfigError, TrainingError
from lmcore.jobs import FAILED, FINISHED, RUNNING, STOPPED, JobRegistry, RunSpec, TrainingJob
from lmcore.models import LanguageModel, ModelConfig
from lmcore.train import TrainConfig

WAIT_S = 120  # generous: the machine may be busy; tests never check timings


@pytest.fixture
def data(small_text):
    corpus = corpus_from_text(small_text, name="topics")
    tok = build_tokenizer("char", corpus.text)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    return tok, train_ids, val_ids


@pytest.fixture
def registry():
    reg = JobRegistry(max_concurrent=2)
    yield reg
    for job in reg.list():  # never leave a thread training after a test
        job.stop()
        job.wait(WAIT_S)


def tiny(tok, arch: str = "gpt2", **overrides) -> ModelConfig:
    sizes = dict(n_layer=1, n_head=2, n_embd=32, block_size=16) if arch in ("gpt2", "llama") else dict(block_size=16)
    return ModelConfig.preset(arch, vocab_size=tok.vocab_size, **{**sizes, **overrides})


def settings(**overrides) -> TrainConfig:
    values = dict(max_iters=30, batch_size=4, eval_interval=10, eval_iters=2, warmup_iters=5, lr=3e-3, device="cpu")
    return TrainConfig(**{**values, **overrides})


def start(reg: JobRegistry, data, tmp_path, name: str = "run", cfg=None, **train) -> TrainingJob:
    tok, train_ids, val_ids = data
    spec = RunSpec(name, cfg or tiny(tok), tok, train_ids, val_ids, settings(**train), data_info={"source": "topics"})
    return reg.start(spec, tmp_path)


def wait_for_steps(job: TrainingJob, n: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(job.events_since(0)) < n:
        assert job.is_alive, f"the run ended early: {job.status} {job.error}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def test_a_run_finishes_saves_and_reports(registry, data, tmp_path):
    job = start(registry, data, tmp_path, name="my run")
    assert job.wait(WAIT_S)
    assert job.status == FINISHED and job.error is None
    events = job.events_since(0)
    steps = [e.step for e in events if e.val_loss is None]
    assert steps == list(range(1, 31))
    evals = [e for e in events if e.val_loss is not None]
    assert [e.step for e in evals] == [10, 20, 30]
    assert all(isinstance(e.sample, str) for e in evals)
    assert evals[-1].val_loss < evals[0].val_loss  # it learned something
    assert job.events_since(len(events)) == []
    assert job.progress()["fraction"] == 1.0 and job.progress()["step"] == 30

    # Saved under the sanitised name, with its resume state beside it.
    assert job.name == "my_run" and job.checkpoint_path == (tmp_path / "my_run.safetensors").resolve()
    assert job.saved and job.saved_step == 30
    assert optimizer_path(job.checkpoint_path).exists()
    ckpt = load_checkpoint(job.checkpoint_path)
    assert ckpt.train_state["steps"] == 30
    assert ckpt.train_state["val_loss"] == pytest.approx(evals[-1].val_loss)
    assert ckpt.data_info["source"] == "topics"
    assert ckpt.tokenizer.to_dict() == data[0].to_dict()
    assert job.result["step"] == 30 and not job.result["stopped_early"]


def test_a_run_reports_bits_per_byte_of_its_validation_text(registry, data, tmp_path):
    job = start(registry, data, tmp_path, max_iters=10, eval_interval=10)
    assert job.wait(WAIT_S) and job.status == FINISHED, job.error
    tok, _, val_ids = data
    n_bytes = sum(len(tok.token_bytes(int(i))) for i in val_ids[1:])
    e = job.last_eval()
    assert e.val_bpb == pytest.approx(e.val_loss * (len(val_ids) - 1) / n_bytes / math.log(2), rel=1e-9)


def test_stop_ends_the_run_and_keeps_its_weights(registry, data, tmp_path):
    job = start(registry, data, tmp_path, max_iters=100_000, eval_interval=50_000)
    wait_for_steps(job, 5)
    assert job.status == RUNNING and job.is_alive
    job.stop()
    assert job.wait(WAIT_S)
    assert job.status == STOPPED and job.error is None
    last = job.last_event()
    assert 5 <= last.step < 100_000
    assert last.val_loss is not None  # a stopped run is evaluated once more, then saved
    assert read_metadata(job.checkpoint_path)["train"]["steps"] == last.step
    job.stop()  # stopping an ended run does nothing
    assert job.status == STOPPED


def test_two_runs_at_once_both_finish_as_they_would_alone(registry, data, tmp_path):
    tok = data[0]
    alone = start(registry, data, tmp_path / "alone", name="a", seed=7)
    assert alone.wait(WAIT_S) and alone.status == FINISHED

    a = start(registry, data, tmp_path, name="a", seed=7)
    b = start(registry, data, tmp_path, name="b", cfg=tiny(tok, "llama"), seed=8)
    assert a.wait(WAIT_S) and b.wait(WAIT_S)
    assert (a.status, b.status) == (FINISHED, FINISHED)
    assert a.checkpoint_path != b.checkpoint_path
    assert load_checkpoint(a.checkpoint_path).config.preset == "gpt2"
    assert load_checkpoint(b.checkpoint_path).config.preset == "llama"
    # Same seed and settings: the same losses, whatever ran beside it.
    assert [e.loss for e in a.events] == pytest.approx([e.loss for e in alone.events], rel=1e-4)
    assert a.result["val_loss"] == pytest.approx(alone.result["val_loss"], rel=1e-4)


def test_a_taken_name_gets_a_suffix(registry, data, tmp_path):
    first = start(registry, data, tmp_path, name="same", max_iters=5)
    assert first.wait(WAIT_S)
    second = start(registry, data, tmp_path, name="same", max_iters=5)
    assert second.wait(WAIT_S)
    assert first.name == "same" and second.name == "same-2"
    assert first.checkpoint_path.exists() and second.checkpoint_path.exists()


def test_runs_over_the_limit_are_refused(registry, data, tmp_path):
    registry.max_concurrent = 1
    long = start(registry, data, tmp_path, name="long", max_iters=100_000, eval_interval=50_000)
    with pytest.raises(TrainingError, match="limit is 1"):
        start(registry, data, tmp_path, name="refused")
    assert [j.name for j in registry.list()] == ["long"]
    long.stop()
    assert long.wait(WAIT_S)
    after = start(registry, data, tmp_path, name="after", max_iters=5)  # a slot is free again
    assert after.wait(WAIT_S) and after.status == FINISHED
    with pytest.raises(TrainingError):
        registry.max_concurrent = 0


def test_snapshot_while_training_is_a_separate_cpu_copy(registry, data, tmp_path):
    job = start(registry, data, tmp_path, max_iters=100_000, eval_interval=50_000)
    wait_for_steps(job, 3)
    snap = job.snapshot_model()
    assert isinstance(snap, LanguageModel) and not snap.training
    assert all(p.device.type == "cpu" for p in snap.parameters())
    before = {k: v.clone() for k, v in snap.state_dict().items()}
    seen = len(job.events_since(0))
    wait_for_steps(job, seen + 3)  # training goes on ...
    later = job.snapshot_model()
    assert all(torch.equal(before[k], v) for k, v in snap.state_dict().items())  # ... without touching the copy
    assert any(not torch.equal(before[k], v) for k, v in later.state_dict().items())
    with torch.no_grad():
        logits = snap(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, data[0].vocab_size)
    job.stop()
    assert job.wait(WAIT_S)
    final = job.snapshot_model()  # an ended run still hands out its model
    assert final.num_params() == snap.num_params()


def test_a_diverging_run_fails_with_the_message_and_keeps_its_last_good_checkpoint(registry, data, tmp_path):
    job = start(registry, data, tmp_path, lr=1e3, grad_clip=0.0, warmup_iters=0, eval_interval=2, max_iters=60)
    assert job.wait(WAIT_S)
    assert job.status == FAILED
    assert "learning rate" in job.error and "\n" not in job.error
    assert job.last_event().step < 60
    if job.saved:  # evaluated before it diverged: that checkpoint is intact
        ckpt = load_checkpoint(job.checkpoint_path)
        assert ckpt.train_state["steps"] == job.saved_step
        assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())


def test_data_too_short_for_the_context_fails_the_run_not_the_caller(registry, data, tmp_path):
    tok, train_ids, _ = data
    job = registry.start(RunSpec("short", tiny(tok), tok, train_ids, train_ids[:8], settings()), tmp_path)
    assert job.wait(WAIT_S)
    assert job.status == FAILED and "validation split" in job.error
    assert not job.saved and not job.checkpoint_path.exists()
    with pytest.raises(TrainingError, match="no model"):
        job.snapshot_model()


def test_settings_that_can_be_checked_at_once_raise_at_start(registry, data, tmp_path):
    tok, train_ids, val_ids = data
    with pytest.raises(ConfigError):
        registry.start(RunSpec("bad", tiny(tok, n_head=3), tok, train_ids, val_ids, settings()), tmp_path)
    with pytest.raises(ConfigError):
        registry.start(RunSpec("bad", tiny(tok), tok, train_ids, val_ids, settings(max_iters=0)), tmp_path)
    assert registry.list() == []


def test_resume_continues_exactly_where_a_stopped_run_left_off(registry, data, tmp_path):
    ITERS = 300  # long enough that a Stop after step 5 lands before the end, however fast the machine
    whole = start(registry, data, tmp_path / "whole", name="whole", max_iters=ITERS, eval_interval=1000)
    assert whole.wait(WAIT_S) and whole.status == FINISHED

    part = start(registry, data, tmp_path, name="part", max_iters=ITERS, eval_interval=1000)
    wait_for_steps(part, 5)
    part.stop()
    assert part.wait(WAIT_S) and part.status == STOPPED
    done = part.saved_step
    assert done is not None and done < ITERS

    tok, train_ids, val_ids = data
    spec = RunSpec(
        "part", part.model_config, tok, train_ids, val_ids, settings(max_iters=ITERS, eval_interval=1000),
        resume_from=part.checkpoint_path,
    )  # fmt: skip
    rest = registry.start(spec, tmp_path)
    assert rest.wait(WAIT_S) and rest.status == FINISHED, rest.error
    assert rest.checkpoint_path == part.checkpoint_path  # it continues the same file
    steps = [e.step for e in rest.events if e.val_loss is None]
    assert steps == list(range(done + 1, ITERS + 1))
    assert rest.result["val_loss"] == pytest.approx(whole.result["val_loss"], rel=1e-4)
    assert read_metadata(rest.checkpoint_path)["train"]["steps"] == ITERS
    assert math.isfinite(rest.result["val_loss"])


class _ExplodingIds(torch.Tensor):
    """Token ids that fail on indexing, as a bug deep inside training would."""

    def __getitem__(self, index):
        raise RuntimeError("boom\nsecond line")


def test_an_unexpected_error_fails_the_run_with_one_line_and_a_logged_traceback(registry, data, tmp_path, caplog):
    tok, train_ids, val_ids = data
    with caplog.at_level("ERROR", logger="lmcore.jobs"):
        spec = RunSpec("bug", tiny(tok), tok, train_ids.as_subclass(_ExplodingIds), val_ids, settings())
        job = registry.start(spec, tmp_path)
        assert job.wait(WAIT_S)
    assert job.status == FAILED
    assert job.error == "unexpected error: RuntimeError: boom second line"
    assert any(r.exc_info and "bug" in r.getMessage() for r in caplog.records)  # the traceback is in the log
    after = start(registry, data, tmp_path, name="after", max_iters=5)  # the registry carries on
    assert after.wait(WAIT_S) and after.status == FINISHED
