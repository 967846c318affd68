"""Optimizer lab: one model trained with several optimizers on the same batches, curves side by side.

Run: python3 bench/bench_optim.py [--iters 2000] [--at 500,1000,2000] [--eval-batches 200] [--quick]

``compare_optimizers`` is the lab: it copies one initialised model once per
training config, feeds every copy the very same batches (one seeded generator
each, seeded alike), steps them in turn (one step each, round after round, so
a busy neighbour on a shared machine slows all alike) with the Trainer's
schedule and clipping, and scores each on the same fixed validation windows at
the given steps. It returns, per config, the curve of val loss against steps
and the mean ms per training step (evaluations excluded).

The run below is Muon against AdamW on the baby GPT (nanoGPT's CPU recipe:
gpt2 preset, 4 layers, 4 heads, 128 wide, block 64, batch 12, warmup 100,
cosine to a tenth, 2000 iterations) on tiny Shakespeare: AdamW at lr 1e-3
(the recipe), and Muon at ``--muon-lr`` (default 0.02 and 0.05) for the
hidden matrices with AdamW at 1e-3 for the rest. One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from typing import Any

import torch

from common import emit, log, machine, read_corpus

from lmcore.batches import as_source
from lmcore.data import get_batch, split_ids
from lmcore.models import ModelConfig, build_model, lm_loss
from lmcore.recipes import recipe
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig, lr_schedule, make_optimizer, score_windows

EVAL_BLOCK, EVAL_BATCH, EVAL_SEED = 64, 12, 42  # the windows bench_train.py and bench_equal_time.py score on


def val_loss(model: torch.nn.Module, ids: torch.Tensor, starts: torch.Tensor) -> float:
    """Mean loss over fixed windows: starts (n_batches, B), EVAL_BLOCK targets each."""
    source = as_source(ids)
    total, _, n = score_windows(model, (source.windows(b, EVAL_BLOCK + 1) for b in starts)).tolist()
    return total / n


class Run:
    """One copy of the model with its own optimizer; the Trainer's step (schedule, clipping) by hand."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, train_ids: torch.Tensor):
        self.model = model.train()
        self.cfg = cfg.validate()
        self.train_ids = train_ids
        self.optimizer = make_optimizer(model, cfg, torch.device("cpu"))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.gen = torch.Generator().manual_seed(cfg.seed)  # as the Trainer draws its batches
        self.steps = 0
        self.step_s: list[float] = []

    def step(self) -> float:
        t0 = time.perf_counter()
        lr = lr_schedule(self.steps, self.cfg)
        x, y = get_batch(self.train_ids, self.cfg.batch_size, self.model.config.block_size, generator=self.gen)
        loss = lm_loss(self.model(x), y)  # logits (B, T, V)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        loss_value, grad_norm = torch.stack([loss.detach(), norm]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            raise RuntimeError(f"the loss diverged at step {self.steps + 1} (lr {lr:.3g})")
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_s.append(time.perf_counter() - t0)
        self.steps += 1
        return loss_value


def compare_optimizers(
    model_cfg: ModelConfig,
    configs: dict[str, TrainConfig],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    eval_at: list[int],
    eval_batches: int = 200,
    init_seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Train one initial model with each config on the same batches; val loss at ``eval_at`` steps and ms/step.

    Every config must have the same ``max_iters`` and ``seed`` (the same
    schedule length and batches); they may differ in anything else.
    """
    if len({(c.max_iters, c.seed, c.batch_size) for c in configs.values()}) != 1:
        raise ValueError("the configs must share max_iters, seed and batch_size to see the same batches")
    torch.manual_seed(init_seed)
    model = build_model(model_cfg)
    runs = {name: Run(copy.deepcopy(model), cfg, train_ids) for name, cfg in configs.items()}
    eval_gen = torch.Generator().manual_seed(EVAL_SEED)
    starts = torch.randint(len(val_ids) - EVAL_BLOCK, (eval_batches, EVAL_BATCH), generator=eval_gen)
    curves: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    iters = next(iter(configs.values())).max_iters
    logged = time.perf_counter()
    for step in range(1, iters + 1):
        losses = {name: run.step() for name, run in runs.items()}
        if step in eval_at:
            for name, run in runs.items():
                curves[name].append({"step": step, "val_loss": round(val_loss(run.model, val_ids, starts), 4)})
            log(f"  step {step}: " + ", ".join(f"{n} {c[-1]['val_loss']:.4f}" for n, c in curves.items()))
        elif time.perf_counter() - logged > 15:
            logged = time.perf_counter()
            log(f"  step {step}: " + ", ".join(f"{n} {v:.3f}" for n, v in losses.items()))
    return {
        name: {
            "curve": curves[name],
            "ms_per_step": round(1e3 * sum(run.step_s) / len(run.step_s), 2),
            "median_ms_per_step": round(1e3 * statistics.median(run.step_s), 2),
        }
        for name, run in runs.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--at", default="500,1000,2000", help="steps at which to score every run")
    ap.add_argument("--eval-batches", type=int, default=200)
    ap.add_argument("--muon-lr", default="0.02,0.05", help="comma-separated Muon learning rates to run beside AdamW")
    ap.add_argument("--quick", action="store_true", help="200 iterations, 20 eval batches: a smoke test")
    args = ap.parse_args()
    text = read_corpus()
    if args.quick:
        args.iters, args.at, args.eval_batches = 200, "100,200", 20
    eval_at = sorted({int(s) for s in args.at.split(",")})
    torch.set_num_threads(1)

    tok = CharTokenizer.train(text)
    train_ids, val_ids = split_ids(torch.tensor(tok.encode(text), dtype=torch.long), 0.1)
    model_cfg, base = recipe("baby-gpt", tok.vocab_size)
    base = TrainConfig(**{**base.to_dict(), "max_iters": args.iters})
    configs = {"adamw": base}
    for lr in args.muon_lr.split(","):
        configs[f"muon {lr}"] = TrainConfig(**{**base.to_dict(), "optimizer": "muon", "muon_lr": float(lr)})
    log(f"baby GPT, {args.iters} iterations: {', '.join(configs)} on the same batches")
    runs = compare_optimizers(model_cfg, configs, train_ids, val_ids, eval_at, args.eval_batches)
    adamw_ms = runs["adamw"]["median_ms_per_step"]
    for name, r in runs.items():
        r["overhead_vs_adamw"] = round(r["median_ms_per_step"] / adamw_ms - 1, 3)
    emit({
        "benchmark": "optim",
        **machine(),
        "model": "baby-gpt (gpt2 4x128, block 64, batch 12)",
        "iters": args.iters,
        "eval": {"batches": args.eval_batches, "batch_size": EVAL_BATCH, "block": EVAL_BLOCK, "seed": EVAL_SEED},
        "runs": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()
