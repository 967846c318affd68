"""Optimizers (AdamW, Muon, SGD) and the transformer switches (QK-norm, ReLU squared)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lmcore.checkpoint import CheckpointCallback, load_checkpoint, save_checkpoint
from lmcore.checkpoint_resume import load_resume_state
from lmcore.errors import CheckpointError, ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer
from lmcore.train import (
    Float32Muon,
    Optimizers,
    TrainConfig,
    Trainer,
    hidden_matrices,
    lr_schedule,
    make_optimizer,
)
from tests.helpers import ROOT, run_lmcore


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(vocab_size: int, preset: str = "gpt2", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    base = dict(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16)
    return build_model(ModelConfig.preset(preset, **{**base, **overrides}))


class Losses:
    def __init__(self):
        self.steps, self.evals = [], []

    def on_step(self, event):
        self.steps.append(event.loss)

    def on_eval(self, event):
        self.evals.append(event.val_loss)


class StopAt:
    def __init__(self, step):
        self.step, self.trainer = step, None

    def on_start(self, trainer):
        self.trainer = trainer

    def on_step(self, event):
        if event.step == self.step:
            self.trainer.stop()


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "optimizer, preset, lr, weight_decay, margin",
    # SGD learns slowly (a transformer with GPT-2's small initial weights hardly moves in
    # 150 steps); the Mamba learns with it at a high rate, without weight decay: SGD adds
    # the decay to the gradient, so at lr 1 AdamW's 0.1 would shrink every weight by a
    # tenth a step and hold the loss near the unigram's. So set, it ends about 0.85 below.
    [("adamw", "gpt2", 3e-3, 0.1, 0.2), ("muon", "gpt2", 3e-3, 0.1, 0.2), ("sgd", "mamba", 1.0, 0.0, 0.5)],
    ids=["adamw", "muon", "sgd"],
)
def test_each_optimizer_trains_below_the_unigram_loss(corpus, optimizer, preset, lr, weight_decay, margin):
    tok, tr, va = corpus
    counts = torch.bincount(tr, minlength=tok.vocab_size).double() + 1.0
    unigram = float(-(counts / counts.sum()).log()[va].mean())
    cfg = TrainConfig(batch_size=16, max_iters=150, lr=lr, warmup_iters=10, eval_interval=150, eval_iters=10,
                      optimizer=optimizer, weight_decay=weight_decay)  # fmt: skip
    result = Trainer(tiny(tok.vocab_size, preset), tr, va, cfg).fit()
    assert result["val_loss"] < unigram - margin, (optimizer, result["val_loss"], unigram)


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba"])
def test_muon_takes_exactly_the_hidden_matrices(preset):
    model = tiny(40, preset, tie_weights=False)
    opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05), torch.device("cpu"))
    assert isinstance(opt, Optimizers)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Float32Muon) and isinstance(adamw, torch.optim.AdamW)  # torch.optim.Muon on CUDA
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    if preset == "mamba":
        hidden = {n for n in named if n.endswith(("in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight"))}
        head, embedding = model.head.weight, model.embedding.weight
        assert id(model.layers[0].mixer.A_log) in in_adamw and id(model.layers[0].mixer.conv1d.weight) in in_adamw
    else:
        hidden = {n for n in named if n.endswith(("c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight"))}
        head, embedding = model.lm_head.weight, model.wte.weight
    assert in_muon == {id(named[n]) for n in hidden}
    assert all(named[n].dim() == 2 for n in hidden)
    assert id(head) in in_adamw and id(embedding) in in_adamw
    # Every parameter exactly once, in one of the two.
    assert not in_muon & in_adamw and in_muon | in_adamw == {id(p) for p in model.parameters()}
    # Muon runs at its own rate, scaled by the same schedule as the rest.
    assert [g["lr_scale"] for g in opt.param_groups] == [pytest.approx(50.0), 1.0, 1.0]


def test_muon_without_hidden_matrices_is_plain_adamw():
    model = build_model(ModelConfig.preset("bigram", vocab_size=30))
    opt = make_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert hidden_matrices(model) == []


def test_the_schedule_sets_every_groups_rate(corpus):
    tok, tr, va = corpus
    cfg = TrainConfig(batch_size=2, max_iters=4, lr=1e-3, muon_lr=0.02, warmup_iters=2, eval_interval=4,
                      eval_iters=1, optimizer="muon")  # fmt: skip
    trainer = Trainer(tiny(tok.vocab_size), tr, va, cfg)
    trainer.fit()
    muon, decay, no_decay = trainer.optimizer.param_groups
    # The last step's rate, for AdamW, and Muon's scaled by muon_lr / lr.
    last = lr_schedule(3, cfg)
    assert last == pytest.approx(5.5e-4) and decay["lr"] == no_decay["lr"] == last
    assert muon["lr"] == pytest.approx(last * 20)


@pytest.mark.parametrize("optimizer", ["muon", "sgd"])
def test_resume_with_muon_or_sgd_is_exact(corpus, tmp_path, optimizer):
    tok, tr, va = corpus
    cfg = TrainConfig(batch_size=4, max_iters=12, lr=3e-3, warmup_iters=3, eval_interval=4, eval_iters=2, seed=7,
                      optimizer=optimizer)  # fmt: skip
    whole = Losses()
    Trainer(tiny(tok.vocab_size, dropout=0.1), tr, va, cfg, callbacks=[whole]).fit()

    path = tmp_path / "half.safetensors"
    first = Losses()
    trainer = Trainer(tiny(tok.vocab_size, dropout=0.1), tr, va, cfg, callbacks=[first, StopAt(8)])
    trainer.fit()
    save_checkpoint(path, trainer.model, tok, optimizer=trainer.state_dict())

    ckpt = load_checkpoint(path)
    state = load_resume_state(path)
    torch.manual_seed(999)
    second = Losses()
    resumed = Trainer(ckpt.model, tr, va, cfg, callbacks=[second])
    resumed.load_state_dict(state)
    resumed.fit()
    assert first.steps + second.steps == whole.steps
    assert second.evals[-1] == whole.evals[-1]


def test_resuming_with_another_optimizer_is_refused_clearly(corpus, tmp_path):
    tok, tr, va = corpus
    cfg = TrainConfig(batch_size=2, max_iters=3, warmup_iters=1, eval_interval=3, eval_iters=1, optimizer="muon")
    path = tmp_path / "m.safetensors"
    Trainer(tiny(tok.vocab_size), tr, va, cfg, callbacks=[CheckpointCallback(path, tok)]).fit()
    trainer = Trainer(load_checkpoint(path).model, tr, va, TrainConfig(**{**cfg.to_dict(), "optimizer": "adamw"}))
    with pytest.raises(CheckpointError, match="trained with muon"):
        trainer.load_state_dict(load_resume_state(path))


@pytest.mark.parametrize("change, words", [({"optimizer": "lion"}, "unknown optimizer"), ({"muon_lr": 0.0}, "Muon")])
def test_bad_optimizer_settings_are_refused(change, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**change).validate()


# ---------------------------------------------------------------- transformer switches


@pytest.mark.parametrize("switch", [{"qk_norm": True}, {"mlp": "relu2"}], ids=["qk_norm", "relu2"])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_switches_change_the_function_and_round_trip(tmp_path, switch, preset):
    tok = CharTokenizer.train("abcdefghij klmnop")
    idx = torch.randint(tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    plain = tiny(tok.vocab_size, preset, **({"mlp": "gelu"} if "mlp" in switch else {})).eval()
    model = tiny(tok.vocab_size, preset, **switch).eval()
    # Same seed, same weights where they overlap; the switch alone changes the outputs.
    with torch.no_grad():
        if "qk_norm" in switch:
            model.load_state_dict(plain.state_dict(), strict=False)
            for block in model.h:  # a gain that is not all ones, so the saved file is checked
                block.attn.q_norm.weight.data.uniform_(0.5, 1.5)
        else:
            model.load_state_dict(plain.state_dict())
        assert not torch.allclose(model(idx), plain(idx), atol=1e-4)
        path = save_checkpoint(tmp_path / "m.safetensors", model, tok)
        back = load_checkpoint(path).model.eval()
        assert back.config == model.config and all(getattr(back.config, k) == v for k, v in switch.items())
        assert torch.equal(back(idx), model(idx))
        # The cached generation path agrees with the full forward, token by token and prefilled.
        full = model(idx)
        cache = model.init_cache(2)
        stepped = torch.cat([model.step(idx[:, t : t + 1], cache)[0] for t in range(16)], dim=1)
        torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-4)
        prefill, _ = model.step(idx, model.init_cache(2))
        torch.testing.assert_close(prefill, full, atol=1e-5, rtol=1e-4)
        _, maps = model.reference_forward(idx)
        torch.testing.assert_close(model.reference_forward(idx)[0], full, atol=1e-5, rtol=1e-4)
        assert maps.shape == (2, 2, 2, 16, 16)


def test_defaults_keep_old_checkpoints_identical():
    cfg = ModelConfig()
    assert cfg.qk_norm is False and cfg.mlp == "gelu"
    old = {k: v for k, v in cfg.to_dict().items() if k != "qk_norm"}  # a config saved before the field existed
    assert ModelConfig.from_dict(old) == cfg
    names = set(dict(tiny(20).named_parameters()))
    assert not any("q_norm" in n or "k_norm" in n for n in names)


def test_unknown_mlp_names_the_choices():
    with pytest.raises(ConfigError, match="relu2"):
        ModelConfig.preset("gpt2", mlp="relu3").validate()


# ---------------------------------------------------------------- GPU benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no CUDA")
def test_bench_gpu_without_cuda_exits_with_one_clear_line():
    run = subprocess.run([sys.executable, "bench/bench_gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0  # `make bench` goes on to the CPU benchmarks
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "CUDA" in lines[0] and "Traceback" not in run.stderr
    assert run.stdout == ""


# ---------------------------------------------------------------- command line and app


def test_cli_trains_with_muon_and_the_switches_then_refuses_another_optimizer_on_resume(tmp_path, small_text):
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    out = tmp_path / "m.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = run_lmcore(
        "train", "--data", str(data), "--n-layer", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--device", "cpu", "--optimizer", "muon",
        "--muon-lr", "0.05", "--qk-norm", "--mlp", "relu2", "--out", str(out), cwd=ROOT, env=env, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.config.qk_norm and ckpt.config.mlp == "relu2"
    saved = ckpt.train_state["config"]
    assert saved["optimizer"] == "muon" and saved["muon_lr"] == 0.05
    run = run_lmcore("train", "--resume", str(out), "--max-iters", "6", "--optimizer", "adamw", cwd=ROOT, env=env,
                     text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == ["error: the run was trained with muon, not adamw; "
                                               "resume it with optimizer muon or train from the weights only"]  # fmt: skip


def test_training_page_starts_a_run_with_the_chosen_optimizer(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from lmcore.jobs import FINISHED, REGISTRY

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/training.py").run()
    assert not at.exception
    assert at.number_input(key="keep.train.muon_lr").disabled
    at.selectbox(key="keep.train.optimizer").select("muon").run()
    assert "orthogonal" in " ".join(c.value for c in at.caption)
    assert not at.number_input(key="keep.train.muon_lr").disabled
    at.number_input(key="keep.train.iters").set_value(20)
    at.number_input(key="keep.train.muon_lr").set_value(0.03).run()
    before = {job.id for job in REGISTRY.list()}
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    jobs = [job for job in REGISTRY.list() if job.id not in before]
    try:
        assert len(jobs) == 1 and jobs[0].train_config.optimizer == "muon" and jobs[0].train_config.muon_lr == 0.03
        assert jobs[0].wait(120) and jobs[0].status == FINISHED
    finally:
        for job in jobs:
            job.stop()
            job.wait(120)


def test_float32_muon_makes_torchs_muon_update():
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 16), (16, 64)]  # tall, square, wide
    ours = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours, opt_theirs = Float32Muon(ours, lr=0.02), torch.optim.Muon(theirs, lr=0.02)
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b, s in zip(ours, theirs, start):
        moved = float((b.detach() - s).norm())
        assert moved > 0.01  # a real update, and the same one up to torch's bf16 rounding
        assert float((a.detach() - b.detach()).norm()) < 0.05 * moved  # measured: 1.5%
    # The same state: torch's Muon resumes from ours.
    opt_theirs.load_state_dict(opt_ours.state_dict())


def test_training_page_starts_adamw_vs_muon_as_two_overlaid_runs(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from lmcore.jobs import REGISTRY
    from ui import state as S

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/training.py").run()
    at.number_input(key="keep.train.iters").set_value(20).run()
    before = {job.id for job in REGISTRY.list()}
    at.button(key="train_lab").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    jobs = [job for job in REGISTRY.list() if job.id not in before]
    try:
        assert sorted(job.train_config.optimizer for job in jobs) == ["adamw", "muon"]
        assert len({job.train_config.seed for job in jobs}) == 1
        shown, overlaid = at.session_state[S.ACTIVE_JOB], at.session_state[S.COMPARE_JOBS]
        assert {shown, *overlaid} >= {job.id for job in jobs}
    finally:
        for job in jobs:
            job.stop()
            job.wait(120)
