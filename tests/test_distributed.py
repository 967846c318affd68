"""Training past one process: torchrun with gloo ranks equals one process with gradient accumulation.

A real ``torch.distributed.run`` launch of two CPU ranks (one thread each)
trains a few steps, stops, and resumes under torchrun; one process with
``--grad-accum 2`` sees the same global batches, so every step's loss agrees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmcore import runlog
from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.train import TrainConfig, Trainer
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "OMP_NUM_THREADS": "1",
}
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "2", "--eval-iters", "2", "--device", "cpu", "--keep", "last"]  # fmt: skip


def run(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks == 1:
        done = run_lmcore("train", *args, cwd=ROOT, env=ENV, text=True)
    else:
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd = [sys.executable, *launch, "-m", "lmcore", "train", *args]
        done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def step_losses(checkpoint: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in runlog.read_log(checkpoint) if r["kind"] == "step"}


def test_two_gloo_ranks_equal_one_process_accumulating_two_micro_batches_and_resume(tmp_path: Path, small_text: str) -> None:
    data = tmp_path / "corpus.txt"
    data.write_text(small_text, encoding="utf-8")
    ddp, single = tmp_path / "ddp.safetensors", tmp_path / "single.safetensors"
    first = run("--data", str(data), *TINY, "--max-iters", "4", "--warmup-iters", "1", "--out", str(ddp), ranks=2)
    assert "x 2 processes = 128 tokens per step" in first.stderr
    assert first.stderr.count("effective batch") == 1  # rank 0 alone prints
    resumed = run("--resume", str(ddp), "--max-iters", "6", "--eval-interval", "2", "--device", "cpu", ranks=2)
    assert "from step 4" in resumed.stderr
    # The same in one process: the same two parts (the schedule follows max_iters of each part).
    alone = run("--data", str(data), *TINY, "--max-iters", "4", "--warmup-iters", "1", "--grad-accum", "2",
                "--out", str(single))  # fmt: skip
    assert "x 2 accumulation x 1 processes = 128 tokens per step" in alone.stderr
    run("--resume", str(single), "--max-iters", "6", "--eval-interval", "2", "--device", "cpu")
    a, b = step_losses(ddp), step_losses(single)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-3), step
    val = {r["step"]: r["val_loss"] for r in runlog.evals(runlog.read_log(ddp))}
    val_alone = {r["step"]: r["val_loss"] for r in runlog.evals(runlog.read_log(single))}
    assert sorted(val) == [2, 4, 6] and all(val[s] == pytest.approx(val_alone[s], abs=1e-3) for s in val)


def test_accumulation_sees_the_batch_of_the_same_size_and_matches_one_big_batch(english_text: str) -> None:
    ids = torch.tensor([ord(c) % 64 for c in english_text[:5000]])
    cfg = ModelConfig.preset("gpt2", vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)

    def losses(batch: int, accum: int) -> list[float]:
        torch.manual_seed(0)
        tc = TrainConfig(batch_size=batch, grad_accum=accum, max_iters=3, warmup_iters=0, eval_interval=3, eval_iters=1)
        seen: list[float] = []

        class Losses:
            def on_step(self, e) -> None:
                seen.append(e.loss)

        trainer = Trainer(build_model(cfg), ids[:4500], ids[4500:], tc, callbacks=[Losses()], device="cpu")
        assert trainer.tokens_per_step == batch * accum * 16
        trainer.fit()
        return seen

    # 2 micro-batches of 4 windows are the 8 windows of one draw, split in two.
    assert losses(4, 2) == pytest.approx(losses(8, 1), abs=1e-5)
    with pytest.raises(ConfigError, match="grad_accum"):
        TrainConfig(grad_accum=0).validate()


def test_leaving_the_group_first_frees_a_ddp_wrapper_that_a_reference_cycle_keeps(tmp_path: Path) -> None:
    # A wrapper in a cycle outlives the run until a collection: left to the interpreter's exit, gloo's
    # threads went down after Python's and aborted a torchrun rank at times. shutdown() collects first.
    import gc
    import weakref

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lmcore import distributed

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    gc.disable()  # no automatic collection may free it before shutdown() does
    try:
        holder: dict = {}
        holder["self"] = holder  # the cycle
        holder["ddp"] = DistributedDataParallel(torch.nn.Linear(4, 2))
        holder["ddp"](torch.randn(3, 4)).sum().backward()  # the reducer holds gloo work
        wrapper = weakref.ref(holder["ddp"])
        del holder
        assert wrapper() is not None
        distributed.shutdown()
        assert wrapper() is None and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
