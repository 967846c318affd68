"""Trainer: schedule, config checks, determinism, exact resume, stop, time budget, NaN guard, learning."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from lmcore.checkpoint import CheckpointCallback, load_checkpoint
from lmcore.checkpoint_resume import load_resume_state
from lmcore.errors import ConfigError, DataError, TrainingError
from lmcore.models import ModelConfig, build_model
from lmcore.train import TrainConfig, Trainer, TrainEvent, evaluate_ids, lr_schedule, make_optimizer


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("gpt2", vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16, **overrides)
    return build_model(cfg)


def quick(**overrides) -> TrainConfig:
    base = dict(batch_size=4, max_iters=20, lr=3e-3, warmup_iters=3, eval_interval=10, eval_iters=2, seed=7)
    return TrainConfig(**{**base, **overrides})


class Recorder:
    def __init__(self):
        self.steps: list[TrainEvent] = []
        self.evals: list[TrainEvent] = []
        self.results: list[dict] = []
        self.started = 0

    def on_start(self, trainer):
        self.started += 1

    def on_step(self, event):
        self.steps.append(event)

    def on_eval(self, event):
        self.evals.append(event)

    def on_end(self, result):
        self.results.append(result)


# ---------------------------------------------------------------- schedule and config


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    lrs = [lr_schedule(s, cfg) for s in range(130)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[9] == pytest.approx(1e-3)  # the peak, at the end of warmup
    assert lrs[10] == pytest.approx(1e-3)
    decay = lrs[10:110]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # never rises after warmup
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: the cosine's midpoint
    assert lrs[109] == pytest.approx(1e-4, abs=1e-6)
    assert all(lr == pytest.approx(1e-4) for lr in lrs[110:])  # past max_iters: min_lr
    assert lr_schedule(60, cfg) == lrs[60]  # pure


def test_lr_schedule_defaults_min_lr_to_a_tenth_and_handles_no_warmup():
    cfg = TrainConfig(lr=2e-3, warmup_iters=0, max_iters=50)
    assert lr_schedule(0, cfg) == pytest.approx(2e-3)
    assert lr_schedule(10_000, cfg) == pytest.approx(2e-4)
    full = TrainConfig(lr=1e-3, warmup_iters=5, max_iters=5)  # warmup is the whole run
    assert [lr_schedule(s, full) for s in range(5)] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "learning rate"),
        (dict(lr=-1e-3), "learning rate"),
        (dict(lr=float("nan")), "lr"),
        (dict(eval_iters=0), "eval_iters"),
        (dict(eval_interval=0), "eval_interval"),
        (dict(max_iters=0), "max_iters"),
        (dict(warmup_iters=500, max_iters=100), "warmup_iters"),
        (dict(min_lr=1.0), "min_lr"),
        (dict(beta2=1.0), "beta2"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(time_budget_s=0), "time budget"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(device="tpu"), "device"),
        (dict(dtype="float8"), "dtype"),
    ],
)
def test_train_config_validate_names_the_bad_value(change, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**change).validate()


def test_train_config_round_trips_and_rejects_unknown_fields():
    cfg = TrainConfig(lr=5e-4, time_budget_s=3.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_weight_decay_applies_to_matrices_only_and_tied_weights_once(corpus):
    tok, _, _ = corpus
    model = tiny_model(tok.vocab_size)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.2), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))
    assert model.lm_head.weight is model.wte.weight  # the tied matrix, listed once


# ---------------------------------------------------------------- the loop


def test_callbacks_see_every_step_evals_at_intervals_and_the_end(corpus):
    tok, tr, va = corpus
    rec = Recorder()
    result = Trainer(tiny_model(tok.vocab_size), tr, va, quick(max_iters=25), callbacks=[rec]).fit()
    assert [e.step for e in rec.steps] == list(range(1, 26))
    assert [e.step for e in rec.evals] == [10, 20, 25]
    assert rec.started == 1 and rec.results == [result]
    assert all(e.val_loss is None for e in rec.steps)
    last = rec.evals[-1]
    assert last.val_loss == result["val_loss"] and last.val_ppl == pytest.approx(math.exp(last.val_loss))
    assert 0.0 <= last.val_acc <= 1.0
    assert rec.steps[-1].tokens_seen == result["tokens_seen"] == 25 * 4 * 16
    assert all(math.isfinite(e.grad_norm) and e.grad_norm > 0 for e in rec.steps)
    assert [e.lr for e in rec.steps] == [lr_schedule(s, quick(max_iters=25)) for s in range(25)]
    assert result["step"] == 25 and result["stopped_early"] is False
    assert set(result) >= {"train_loss", "val_loss", "val_ppl", "val_acc", "tokens_seen", "elapsed_s"}


def test_evaluation_uses_fixed_batches(corpus):
    tok, tr, va = corpus
    trainer = Trainer(tiny_model(tok.vocab_size), tr, va, quick())
    assert trainer.evaluate() == trainer.evaluate()
    other = Trainer(tiny_model(tok.vocab_size), tr, va, quick(seed=99))  # another training seed, same windows
    assert other.evaluate() == trainer.evaluate()


def test_same_seed_gives_identical_losses_and_another_seed_does_not(corpus):
    tok, tr, va = corpus

    def losses(seed, noise):
        rec = Recorder()
        model = tiny_model(tok.vocab_size, dropout=0.1)  # dropout makes the global generator matter too
        torch.manual_seed(noise)  # the global generator's state before fit() must not matter
        Trainer(model, tr, va, quick(seed=seed), callbacks=[rec]).fit()
        return [e.loss for e in rec.steps], [e.val_loss for e in rec.evals]

    first = losses(1, noise=100)
    assert losses(1, noise=200) == first
    assert losses(2, noise=100)[0] != first[0]


def test_resuming_a_split_run_gives_the_losses_of_an_uninterrupted_one(corpus, tmp_path):
    tok, tr, va = corpus
    cfg = quick(max_iters=20, eval_interval=5)
    whole = Recorder()
    Trainer(tiny_model(tok.vocab_size, dropout=0.1), tr, va, cfg, callbacks=[whole]).fit()

    class StopAt:
        def __init__(self, step):
            self.step, self.trainer = step, None

        def on_start(self, trainer):
            self.trainer = trainer

        def on_step(self, event):
            if event.step == self.step:
                self.trainer.stop()

    path = tmp_path / "half.safetensors"
    first = Recorder()
    saver = CheckpointCallback(path, tok, keep="last")
    result = Trainer(
        tiny_model(tok.vocab_size, dropout=0.1), tr, va, cfg, callbacks=[first, saver, StopAt(8)]
    ).fit()
    assert result["stopped_early"] and result["step"] == 8 and saver.saved_step == 8

    # A fresh process would do exactly this: weights and resume state from the files.
    ckpt = load_checkpoint(path)
    state = load_resume_state(path)
    assert state is not None and state["step"] == 8
    torch.manual_seed(12345)  # whatever the global generator holds now must not matter
    second = Recorder()
    trainer = Trainer(ckpt.model, tr, va, cfg, callbacks=[second])
    trainer.load_state_dict(state)
    trainer.fit()
    split = [e.loss for e in first.steps] + [e.loss for e in second.steps]
    assert [e.step for e in second.steps] == list(range(9, 21))
    assert split == [e.loss for e in whole.steps]
    assert second.evals[-1].val_loss == whole.evals[-1].val_loss


def test_stop_from_another_thread_ends_the_run_with_a_final_eval(corpus):
    tok, tr, va = corpus
    rec = Recorder()
    started = threading.Event()

    class Signal:
        def on_step(self, event):
            if event.step == 3:
                started.set()

    trainer = Trainer(tiny_model(tok.vocab_size), tr, va, quick(max_iters=10**6, eval_interval=10**6), callbacks=[rec, Signal()])
    out: list[dict] = []
    thread = threading.Thread(target=lambda: out.append(trainer.fit()))
    thread.start()
    assert started.wait(60)
    trainer.stop()
    thread.join(60)
    assert not thread.is_alive()
    (result,) = out
    assert result["stopped_early"] is True and 3 <= result["step"] < 10**6
    assert [e.step for e in rec.evals] == [result["step"]]  # the final evaluation
    assert not trainer.stop_requested  # cleared, so fit() can continue the run later


def test_time_budget_stops_the_run(corpus):
    tok, tr, va = corpus
    rec = Recorder()
    result = Trainer(
        tiny_model(tok.vocab_size), tr, va, quick(max_iters=10**6, eval_interval=10**6, time_budget_s=0.3), callbacks=[rec]
    ).fit()
    assert result["stopped_early"] is True and 0 < result["step"] < 10**6
    assert len(rec.evals) == 1 and math.isfinite(result["val_loss"])


def test_short_run_beats_the_unigram_loss(corpus):
    tok, tr, va = corpus
    counts = torch.bincount(tr, minlength=tok.vocab_size).double() + 1.0  # add-one smoothing
    unigram = float(-(counts / counts.sum()).log()[va].mean())
    cfg = TrainConfig(batch_size=16, max_iters=150, lr=3e-3, warmup_iters=10, eval_interval=150, eval_iters=10)
    result = Trainer(tiny_model(tok.vocab_size), tr, va, cfg).fit()
    assert result["val_loss"] < unigram - 0.2, (result["val_loss"], unigram)


# ---------------------------------------------------------------- failures


def test_nan_guard_raises_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    tok, tr, va = corpus
    path = tmp_path / "run.safetensors"
    model = tiny_model(tok.vocab_size)

    class Poison:
        def on_step(self, event):
            if event.step == 12:  # after the save at step 10
                with torch.no_grad():
                    model.wte.weight[0, 0] = float("inf")

    saver = CheckpointCallback(path, tok, keep="last")
    trainer = Trainer(model, tr, va, quick(max_iters=30, eval_interval=10), callbacks=[saver, Poison()])
    with pytest.raises(TrainingError, match=r"became nan at step 13; lower the learning rate") as info:
        trainer.fit()
    assert "\n" not in str(info.value)
    assert trainer.step == 12  # the bad step was never applied
    ckpt = load_checkpoint(path)
    assert ckpt.train_state["steps"] == 10
    assert all(torch.isfinite(t).all() for t in ckpt.model.state_dict().values())
    assert load_resume_state(path)["step"] == 10


def test_non_finite_gradients_are_caught_before_the_update(corpus):
    tok, tr, va = corpus
    model = tiny_model(tok.vocab_size)
    trainer = Trainer(model, tr, va, quick(lr=1e-3))
    # A huge gain leaves the loss finite but overflows the gradients' norm in float32.
    with torch.no_grad():
        model.ln_f.weight.fill_(1e25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match="gradient norm became inf at step 1"):
        trainer.fit()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_data_shorter_than_a_block_is_refused(corpus):
    tok, tr, va = corpus
    model = tiny_model(tok.vocab_size)
    with pytest.raises(DataError, match="validation split has 16 tokens"):
        Trainer(model, tr, va[:16], quick())
    with pytest.raises(DataError, match="training split"):
        Trainer(model, tr[:5], va, quick())
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        Trainer(model, tr + 1000, va, quick())
    with pytest.raises(DataError, match="1-D"):
        Trainer(model, tr.view(1, -1), va, quick())


def test_bf16_is_refused_off_cuda(corpus):
    tok, tr, va = corpus
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="bf16"):
        Trainer(tiny_model(tok.vocab_size), tr, va, quick(dtype="bfloat16"), device="cpu")


def test_checkpoint_callback_keeps_the_best_validation_loss(corpus, tmp_path):
    tok, tr, va = corpus
    path = tmp_path / "best.safetensors"
    model = tiny_model(tok.vocab_size)

    class Wreck:
        def on_eval(self, event):
            if event.step == 20:  # after the best save: make every later eval worse
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.5)

    rec = Recorder()
    saver = CheckpointCallback(path, tok, keep="best", data_info={"documents": False, "source": "test"})
    Trainer(model, tr, va, quick(max_iters=40, eval_interval=10, lr=1e-3), callbacks=[rec, saver, Wreck()]).fit()
    vals = {e.step: e.val_loss for e in rec.evals}
    assert vals[30] > vals[20] and vals[40] > vals[20]
    ckpt = load_checkpoint(path)
    assert ckpt.train_state["steps"] == saver.saved_step == 20
    assert ckpt.train_state["val_loss"] == pytest.approx(vals[20])
    assert ckpt.data_info == {"documents": False, "source": "test"}
    with pytest.raises(ConfigError):
        CheckpointCallback(path, tok, keep="first")


# ---------------------------------------------------------------- whole-text evaluation


def test_evaluate_ids_scores_every_token_once(corpus):
    tok, tr, _ = corpus
    model = tiny_model(tok.vocab_size).eval()
    ids = tr[:40]  # windows 0..16, 16..32 and a shorter tail 32..39
    out = evaluate_ids(model, ids, batch_size=1)
    with torch.no_grad():
        losses, hits = [], 0
        for a, b in ((0, 17), (16, 33), (32, 40)):
            w = ids[a:b][None]
            logits = model(w[:, :-1])
            losses.append(torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction="sum"))
            hits += int((logits[0].argmax(-1) == w[0, 1:]).sum())
    assert out["tokens"] == 39
    assert out["loss"] == pytest.approx(float(sum(losses)) / 39, rel=1e-5)
    assert out["accuracy"] == pytest.approx(hits / 39)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    with pytest.raises(DataError):
        evaluate_ids(model, ids[:1])


def test_bits_per_byte_of_a_char_model_on_ascii_is_the_loss_in_bits():
    from lmcore.tokenizers import BPETokenizer, CharTokenizer

    text = "the cat sat on the mat; the dog sat on the log. " * 8
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text))
    out = evaluate_ids(tiny_model(tok.vocab_size).eval(), ids, tokenizer=tok)
    assert out["bpb"] == pytest.approx(out["loss"] / math.log(2), rel=1e-12)
    assert "bpb" not in evaluate_ids(tiny_model(tok.vocab_size).eval(), ids)  # no tokenizer, no bytes to count
    # A BPE token holds several bytes, and a character may be several bytes: total bits / bytes of the text.
    text = "naïve café, déjà vu: the cat sat on the mat. " * 8
    bpe = BPETokenizer.train(text, vocab_size=280)
    ids = torch.tensor(bpe.encode(text))
    out = evaluate_ids(tiny_model(bpe.vocab_size).eval(), ids, tokenizer=bpe)
    n_bytes = len(text.encode("utf-8")) - len(bpe.token_bytes(int(ids[0])))  # the first token is not predicted
    assert n_bytes < len(ids) * 3
    assert out["bpb"] == pytest.approx(out["loss"] * (len(ids) - 1) / n_bytes / math.log(2), rel=1e-12)


def test_training_reports_val_bpb_in_its_events_history_run_log_and_summary(tmp_path):
    from lmcore.runlog import RunLogger, log_path, read_log, run_summary
    from lmcore.tokenizers import CharTokenizer
    from lmcore.train import BitsPerByteCallback

    text = "the cat sat on the mat; the dog sat on the log. " * 40  # ASCII: one byte per character
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text))
    tr, va = ids[:1600], ids[1600:]
    rec = Recorder()
    ckpt = tmp_path / "run.safetensors"
    callbacks = [BitsPerByteCallback(tok, va), rec, RunLogger(ckpt, {"source": "test"})]
    trainer = Trainer(tiny_model(tok.vocab_size), tr, va, quick(max_iters=4, eval_interval=2), callbacks=callbacks)
    trainer.fit()
    assert len(rec.evals) == 2  # steps 2 and 4
    for e in rec.evals:
        assert e.val_bpb == pytest.approx(e.val_loss / math.log(2), rel=1e-9)
    assert [h["val_bpb"] for h in trainer.history] == [e.val_bpb for e in rec.evals]
    logged = [r for r in read_log(log_path(ckpt)) if r.get("kind") == "eval"]
    assert [r["val_bpb"] for r in logged] == pytest.approx([e.val_bpb for e in rec.evals])
    best = min(rec.evals, key=lambda e: e.val_loss)
    assert run_summary(ckpt)["best_val_bpb"] == pytest.approx(best.val_bpb)


class FakeClock:
    """A clock that moves ``tick`` seconds each time it is read: a machine of a chosen speed."""

    def __init__(self, tick: float):
        self.tick, self.now = tick, 0.0

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("tick", [1.0, 0.125], ids=["slow", "fast"])  # exact in binary: no drift
def test_a_time_shaped_schedule_decays_to_min_lr_by_the_end_of_the_budget_at_any_speed(corpus, tick):
    tok, tr, va = corpus
    cfg = quick(max_iters=100_000, warmup_iters=5_000, eval_interval=100_000, time_budget_s=10.0, schedule="time",
                lr=1e-3, min_lr=1e-4)  # fmt: skip
    rec = Recorder()
    trainer = Trainer(tiny_model(tok.vocab_size), tr, va, cfg, callbacks=[rec])
    trainer.clock = FakeClock(tick)
    result = trainer.fit()
    lrs = [e.lr for e in rec.steps]
    assert result["stopped_early"] and len(lrs) == round(10 / tick) - 1  # the budget ends the run, not max_iters
    assert lrs[0] > 0 and max(lrs) == pytest.approx(1e-3, rel=0.02)  # warmed up to the peak (5% of the budget)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[lrs.index(max(lrs)) :], lrs[lrs.index(max(lrs)) + 1 :]))
    assert 1e-4 <= lrs[-1] <= 1e-4 + 0.03 * (1e-3 - 1e-4)  # decayed to the minimum by the budget's end
    # The same recipe counted in steps is cut off by the budget on the slow machine, its learning rate still high.
    steps_cfg = quick(max_iters=100, warmup_iters=5, eval_interval=100_000, time_budget_s=10.0, lr=1e-3, min_lr=1e-4)
    rec = Recorder()
    trainer = Trainer(tiny_model(tok.vocab_size), tr, va, steps_cfg, callbacks=[rec])
    trainer.clock = FakeClock(1.0)
    trainer.fit()
    assert len(rec.steps) == 9 and rec.steps[-1].lr > 5e-4


def test_a_time_shaped_schedule_needs_a_budget():
    with pytest.raises(ConfigError, match="needs a time budget"):
        TrainConfig(schedule="time").validate()
    with pytest.raises(ConfigError, match="unknown schedule"):
        TrainConfig(schedule="tokens").validate()
