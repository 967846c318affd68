"""Named training recipes: a model preset with its overrides, and the training settings to go with it.

``recipe(name, vocab_size)`` returns a validated ``(ModelConfig, TrainConfig)``
pair, ready for ``build_model`` and ``Trainer``; ``recipe_tokenizer(name,
text)`` trains the tokenizer the recipe was measured with (by character, or
``cpu-best-bpe``'s byte-level BPE) on the training text::

    tok = recipe_tokenizer("cpu-best", train_text)
    model_cfg, train_cfg = recipe("cpu-best", tok.vocab_size)
    trainer = Trainer(build_model(model_cfg), train_ids, val_ids, train_cfg)

- ``baby-gpt``: nanoGPT's CPU "baby GPT" on tiny Shakespeare (gpt2 preset,
  4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0, lr 1e-3, warmup
  100, cosine to 1e-4, 2000 iterations; 0.80M parameters at a vocabulary of 66).
- ``cpu-best``: the best recipe found for the same wall-clock time on a 2-core
  CPU: a Mamba of 3 layers, 192 wide, d_state 8 (0.74M parameters), lr 4e-3
  (bench/bench_equal_time.py compares it with the baby GPT side by side). It
  states a time budget, not a step count: ``time_budget_s`` is the baby GPT's
  training time on the reference machine (``BABY_GPT_SECONDS``, evaluations
  included when the Trainer runs it), and ``schedule="time"`` makes warmup
  (the first 5%) and the cosine follow the elapsed share of it, so on a
  machine at half the speed the run does half the steps and still ends its
  decay inside the budget; ``max_iters`` is only a cap. To give it the baby
  GPT's time on another machine, measure that and set ``time_budget_s``.
- ``cpu-best-bpe``: a Mamba-2 (state-space duality) of 3 layers, 192 wide,
  state 16, 6 SSM heads of 64 channels, on a byte-level BPE of 1,024 tokens
  trained on the training text (0.89M parameters with its embedding), AdamW
  at 6e-3 decaying to 0 by the time budget's end, weight decay 0.3, in
  cpu-best's time budget. Each token is about 2.4 characters of tiny
  Shakespeare, so every step sees more text over a longer context for about
  the same time: in the baby GPT's time it reaches 2.16 bits per byte
  there (1.4985 nats per character, three runs) against cpu-best's 2.33.
  On a text of 1 MB the BPE runs overfit (their training text scores about
  0.4 bits per byte better than held-out text), hence the weight decay. It is not ``cpu-best``
  because that holds only on a large enough text: the run goes over the
  training tokens more often (about 2.8 times on tiny Shakespeare's 1 MB, about 6
  times on python-docs' 0.47 MB, where it ends at 1.85 bits per byte and
  cpu-best's 1.76 stays ahead; bench/RESULTS.md).
  Compare it with other runs in bits per byte, not in loss per token.
- ``induction``: watching an induction head form (Olsson et al. 2022): a
  2-layer, 4-head, 64-wide gpt2-preset model (learned positions) trained on
  random tokens, each segment repeated twice (``induction_data``); segment
  lengths vary (6-20) so that no fixed look-back distance predicts the
  repeat, and ``interpret``'s head-score probe uses a length (25) never seen
  in training. Its data, not a corpus, comes with it: ``INDUCTION_VOCAB``
  tokens. The loss sits on a plateau (about 1,200 steps under seed 1337,
  longer under other seeds), then drops as a layer-1 head starts copying: at
  1,500 steps (seed 1337) its induction score on the probe is about 0.7 and
  the loss on the probe's repeated half well under log V; a 1-layer model of
  the same width does not get there (bench/RESULTS.md). The recipe trains
  3,000 steps, to leave room for a later phase change; ``best_induction``
  tells whether a run's head formed (``INDUCTION_FORMED``).
  What made it work: a vocabulary of 256 (few repeats inside a segment, so
  the copy is unambiguous), learned positions (with rotary ones the model
  learns to copy by distance from the separator instead), batch 64 at a
  constant lr of 3e-3, no weight decay, no dropout.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from lmcore.data import INDUCTION_SEGMENTS, INDUCTION_VOCAB, build_tokenizer, repeated_random_tokens
from lmcore.errors import ConfigError
from lmcore.models.config import ModelConfig
from lmcore.tokenizers import Tokenizer
from lmcore.train import TrainConfig

# The baby GPT's 2,000 training steps on the reference machine (a quiet shared 2-core x86-64
# VM, one torch thread: 47 ms a step in bench/bench_equal_time.py, bench/RESULTS.md). A recipe
# meant for the baby GPT's wall-clock time states this budget; bench_equal_time.py replaces it
# with the baby GPT's time measured in the same run.
BABY_GPT_SECONDS = 94.0

# A head "has formed" once its induction score on the probe reaches this; before
# the phase change the best head scores under 0.1 (bench/RESULTS.md).
INDUCTION_FORMED = 0.3

RECIPES: dict[str, dict[str, Any]] = {
    "baby-gpt": {
        "description": "nanoGPT's CPU baby GPT: gpt2, 4 layers x 128, block 64, batch 12, 2000 iterations",
        "preset": "gpt2",
        "model": dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        "tokenizer": dict(kind="char"),
        "train": dict(batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1,
                      beta1=0.9, beta2=0.99, grad_clip=1.0),  # fmt: skip
    },
    "cpu-best": {
        "description": "mamba, 3 layers x 192, d_state 8, lr 4e-3: best in the baby GPT's time on a 2-core CPU",
        "preset": "mamba",
        # Wide and shallow with a small state: per token the scan costs about
        # n_layer x expand x n_embd x d_state, the matmuls about the parameter count, so
        # d_state 8 (not 16) leaves the time to weights and steps at the same size.
        "model": dict(block_size=64, n_layer=3, n_embd=192, d_state=8, d_conv=4, expand=2),
        "tokenizer": dict(kind="char"),
        # Mamba takes a higher learning rate than the transformer, and a short warmup.
        # A time budget, not a step count: the baby GPT's training time on the reference
        # machine; warmup (the first 5% of it) and the cosine follow the elapsed share of it,
        # so a slower machine does fewer steps but still ends its decay inside the budget.
        # max_iters is only a cap, far beyond what fits (about 1,100 steps on the reference machine).
        "train": dict(batch_size=12, max_iters=20_000, lr=4e-3, min_lr=4e-4, warmup_iters=1000, weight_decay=0.1,
                      beta1=0.9, beta2=0.99, grad_clip=1.0, schedule="time",
                      time_budget_s=BABY_GPT_SECONDS),  # fmt: skip
    },
    "cpu-best-bpe": {
        "description": "mamba2, 3 layers x 192, state 16, on a byte-level BPE of 1024, lr 6e-3 to 0, weight decay 0.3; "
        "best in bits per byte in the baby GPT's time on a corpus of 1 MB or more",
        "preset": "mamba2",
        # 6 SSM heads of 64 channels and a state of 16 cost less per step than the preset's 24 heads
        # of 16 with a state of 64 at this block size; 0.89M parameters with the 1,024-token embedding.
        "model": dict(block_size=64, n_layer=3, n_embd=192, d_state=16, ssm_head_dim=64, d_conv=4, expand=2),
        # About 2.4 characters a token: a block of 64 tokens holds some 150 characters.
        "tokenizer": dict(kind="bpe", vocab_size=1024),
        # The run goes over the training tokens twice or more, so it overfits: weight decay 0.3, and
        # the cosine ends at 0.
        "train": dict(batch_size=12, max_iters=20_000, lr=6e-3, min_lr=0.0, warmup_iters=1000, weight_decay=0.3,
                      beta1=0.9, beta2=0.99, grad_clip=1.0, schedule="time",
                      time_budget_s=BABY_GPT_SECONDS),  # fmt: skip
    },
    "induction": {
        "description": "watch an induction head form: gpt2, 2 layers x 4 heads x 64, "
        "random tokens repeated twice, 3000 steps",
        "preset": "gpt2",
        "model": dict(block_size=64, n_layer=2, n_head=4, n_embd=64, pos="learned", dropout=0.0),
        # No weight decay (it pulls the small attention weights back while a head forms) and
        # a constant lr: the head forms late (after ~1200 steps under seed 1337, later under
        # others), when a cosine would have decayed it. 3000 steps leave room for a late one.
        "train": dict(batch_size=64, max_iters=3000, lr=3e-3, min_lr=3e-3, warmup_iters=50, weight_decay=0.0,
                      beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=100, eval_iters=4),  # fmt: skip
    },
}


def induction_data(n_tokens: int = 400_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation streams for the induction recipe (the validation stream a tenth as long)."""
    lo, hi = INDUCTION_SEGMENTS
    return (
        repeated_random_tokens(n_tokens, INDUCTION_VOCAB, lo, hi, seed=seed),
        repeated_random_tokens(max(n_tokens // 10, 200), INDUCTION_VOCAB, lo, hi, seed=seed + 1),
    )


def best_induction(events: Iterable[Any]) -> tuple[float, int] | None:
    """(the best induction score of any head, its step) over a run's evaluations; None without head scores.

    ``events`` are ``TrainEvent``s (or anything with ``step`` and ``head_scores``).
    Below ``INDUCTION_FORMED`` the run ended before its induction head formed.
    """
    best: tuple[float, int] | None = None
    for e in events:
        rows = (getattr(e, "head_scores", None) or {}).get("induction")
        if not rows:
            continue
        score = max(max(row) for row in rows)
        if best is None or score > best[0]:
            best = (score, e.step)
    return best


def recipe(name: str, vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of recipe ``name`` for a vocabulary of ``vocab_size``, validated."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    spec = copy.deepcopy(RECIPES[name])
    model_cfg = ModelConfig.preset(spec["preset"], vocab_size=vocab_size, **spec["model"]).validate()
    train_cfg = TrainConfig(**spec["train"]).validate()
    return model_cfg, train_cfg


def recipe_tokenizer(name: str, text: str) -> Tokenizer:
    """The tokenizer recipe ``name`` was measured with, trained on ``text`` (the training text).

    ``cpu-best-bpe`` is a byte-level BPE of 1,024 tokens, ``baby-gpt`` and
    ``cpu-best`` go by character; give ``recipe`` the tokenizer's
    ``vocab_size``. The ``induction`` recipe comes with its own tokens
    (``induction_data``), not a tokenizer.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    spec = RECIPES[name].get("tokenizer")
    if spec is None:
        raise ConfigError(f"the {name} recipe comes with its own data, not a tokenizer; use induction_data()")
    return build_tokenizer(spec["kind"], text, vocab_size=spec.get("vocab_size"))


def train_settings(name: str) -> list[str]:
    """The training settings recipe ``name`` sets, in words ("1,500 iterations", "batch 64", ...)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    tc = TrainConfig(**RECIPES[name]["train"])
    timed = tc.schedule == "time" and tc.time_budget_s is not None
    if timed:
        out = [f"a time budget of {tc.time_budget_s:g} s (at most {tc.max_iters:,} iterations)"]
    else:
        out = [f"{tc.max_iters:,} iterations"]
    out += [f"batch {tc.batch_size}", f"learning rate {tc.lr:g}"]
    if timed:
        out.append(f"warm-up over the first {tc.warmup_iters / tc.max_iters:.0%} of the budget")
    else:
        out.append(f"{tc.warmup_iters} warm-up steps")
    out.append(f"an evaluation every {tc.eval_interval} steps on {tc.eval_iters} batches")
    out.append(f"seed {tc.seed}")
    if tc.min_lr == tc.lr:
        out.append("a constant learning rate")
    else:
        out.append(f"a cosine decay to {tc.min_lr:g}" + (" by the budget's end" if timed else ""))
    out.append(f"weight decay {tc.weight_decay:g}")
    return out
