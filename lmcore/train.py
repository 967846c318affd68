"""Training: TrainConfig, the events callbacks receive, and the Trainer.

Progress is reported through callbacks (``on_step``, ``on_eval``), never by
printing: the CLI's callback prints, the app's job stores events for polling,
tests append them to a list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float | None = None  # cosine decays to this; None = lr / 10
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = off
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    time_budget_s: float | None = None
    device: str = "auto"
    compile: bool = False
    dtype: str = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere


@dataclass(frozen=True)
class TrainEvent:
    """What a callback is told after a step (and, with val_loss set, after an eval)."""

    step: int  # optimizer steps done so far (1-based after the first step)
    max_iters: int
    loss: float  # training loss of this step's batch
    lr: float
    tokens_seen: int
    tokens_per_s: float  # throughput of the recent steps
    grad_norm: float
    elapsed_s: float
    train_loss: float | None = None  # mean over the fixed eval batches, at evals only
    val_loss: float | None = None
    val_ppl: float | None = None
    val_acc: float | None = None
    sample: str | None = None  # a short generated text, when a callback asks for one
