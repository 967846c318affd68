"""Equal compute: the baby-GPT recipe against other models trained for the same wall-clock time.

Run: python3 bench/bench_equal_time.py [--budget-s S] [--quick] [--runs baseline,gpt2,llama,cpu-best]

The baseline is nanoGPT's CPU "baby GPT" recipe (``recipe("baby-gpt")``: gpt2
preset, 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0, lr 1e-3,
warmup 100, cosine to 1e-4, 2000 iterations) on tiny Shakespeare with the
character tokenizer and a 90/10 split, trained by ``lmcore.train.Trainer``
exactly as a user would run it. Every other run gets the same training time:
- ``gpt2``: the same gpt2 model and hyper-parameters, cosine over the time budget;
- ``llama``: the llama preset (RMSNorm, RoPE, SwiGLU, no biases) of the same
  shape and hyper-parameters, cosine over the time budget;
- ``cpu-best``: the playground's best CPU recipe (``recipe("cpu-best")``),
  its time-shaped schedule over this run's budget;
- ``cpu-best-bpe``: the best recipe on a byte-level BPE of 1,024 tokens
  (``recipe("cpu-best-bpe")``, a Mamba-2), the BPE trained on the training
  part: compare it with the others in ``val_bpb``;
- ``mamba``: the Mamba-1 that was cpu-best before Mamba-2 (3 x 192, d_state
  8, lr 4e-3, warmup 50 steps), cosine over the time budget;
- ``mamba-muon``: that Mamba trained with Muon (muon_lr 0.02) on its
  hidden matrices and AdamW on the rest;
- ``llama-muon``: the llama of the baby GPT's shape with a ReLU squared MLP
  and QK-norm, Muon (muon_lr 0.05) and AdamW at lr 3e-3;
- ``mamba2``, ``mamba2-lr8e-3``, ``mamba2-s16``: Mamba-2 at the Mamba's
  3 x 192 with 6 heads of 64 channels, state 32 at lr 4e-3 and 8e-3, state
  16 at lr 6e-3, under the Trainer's time-shaped schedule (``schedule="time"``).

Fairness on a shared, noisy machine: all runs live in one process and take
turns step by step. After each baseline step (a ``Trainer`` callback), the
contenders step, always the one with the least training time first, until each
has trained as long as the baseline so far. A busy neighbour therefore slows
every run alike, and at the end every run has trained for the baseline's
measured training time (``--budget-s`` fixes the budget instead). Only the time
inside training steps counts: batch, forward, backward, clipping, the AdamW
update; evaluations are excluded for every run. A step that takes more than
``STALL_FACTOR`` times its run's recent median was stalled by the machine, not
slowed by the model, and is charged at that cap (``wall_s`` and
``stalled_steps`` in the report show the uncapped figures).

Time-based schedule: the contenders cannot know how many steps fit in the
budget, so their learning rate warms up linearly over the recipe's
``warmup_iters`` steps and then follows a cosine from ``lr`` to ``min_lr`` over
the fraction of the budget spent (the budget is the baseline's projected time
while it is still running). A contender whose config says ``schedule="time"``
(a recipe stated as a time budget, as ``cpu-best`` is) follows the Trainer's own
``lr_schedule`` instead, with its ``time_budget_s`` replaced by this budget. The baseline keeps its 2000-iteration schedule.
The step itself is the Trainer's (same batches from a generator seeded with the
recipe's seed, AdamW with decay on matrices, clipping at 1, loss read back).

Scoring: every model is scored on the same ``--eval-batches`` fixed validation
windows (batches of 12 windows of 65 tokens, seeded 42, as bench_train.py
draws them): each model predicts the same 64 target tokens per window from the
same context of up to 64 tokens, whatever block size it was trained with.
A run on another tokenizer than characters (``cpu-best-bpe``) draws its windows
the same way from its own tokens of the same validation text, so its
``val_loss`` is in other units: every run also reports ``val_bpb``, bits per
byte over a full pass of the validation text (``full_pass``).
One JSON object on stdout; progress on stderr.

Run time: every run trains for the baseline's time (about 60 s on a quiet
2-core machine), so the default four runs take about 4.5 minutes; ``--runs
baseline,cpu-best`` takes about half that, ``--quick`` (a 200-iteration
baseline) about 30 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections import deque
from typing import Any

import torch

from common import CORPUS, emit, log, machine, read_corpus
from lmcore.batches import as_source
from lmcore.data import get_batch
from lmcore.models import ModelConfig, build_model, lm_loss
from lmcore.recipes import RECIPES, recipe
from lmcore.tokenizers import BPETokenizer, CharTokenizer, Tokenizer
from lmcore.train import (
    TrainConfig, Trainer, lr_schedule, make_optimizer, score_windows, token_byte_lengths,
)

EVAL_BLOCK, EVAL_BATCH, EVAL_SEED = 64, 12, 42  # the baseline's windows, as bench_train.py scores them
REFERENCE_VAL_LOSS = 1.886  # nanoGPT's baby GPT after 2000 iterations on this machine
TARGET_VAL_LOSS = 1.75
RUNS = ("baseline", "gpt2", "llama", "cpu-best", "mamba-muon", "llama-muon", "mamba", "mamba2", "mamba2-lr8e-3",
        "mamba2-s16", "cpu-best-bpe")
RECIPE_RUNS = ("cpu-best", "cpu-best-bpe")  # trained on their recipe's own tokenizer
STALL_FACTOR = 4.0


# ----------------------------------------------------------------------------------------------
# Time keeping: every run's training-step time, with stalls capped.


class StepClock:
    """Sums a run's step times; a step slower than STALL_FACTOR x the run's recent median is charged at that cap.

    On a shared machine a step is sometimes stalled for seconds by a neighbour
    (or the whole machine): that time says nothing about the model, and
    charging it to whichever run happened to be stepping would hand the others
    free training time. ``wall_s`` keeps the uncapped sum for the report.
    """

    def __init__(self) -> None:
        self.train_s = 0.0  # charged time, the budget is measured in it
        self.wall_s = 0.0
        self.capped_steps = 0
        self.recent: deque[float] = deque(maxlen=64)

    @property
    def typical_step_s(self) -> float:
        return statistics.median(self.recent) if self.recent else 0.0

    def charge(self, dt: float) -> None:
        cap = STALL_FACTOR * self.typical_step_s if len(self.recent) >= 16 else math.inf
        if dt > cap:
            self.capped_steps += 1
        self.recent.append(dt)
        self.train_s += min(dt, cap)
        self.wall_s += dt


# ----------------------------------------------------------------------------------------------
# The contenders: the Trainer's step, with a cosine over the time budget.


class TimedRun:
    """Trains a model for a time budget with warmup (in steps) then a cosine over the budget's time."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, train_ids: torch.Tensor):
        torch.manual_seed(0)
        self.model = build_model(model_cfg).train()
        self.cfg = train_cfg.validate()
        self.block_size = model_cfg.block_size
        self.train_ids = train_ids
        self.optimizer = make_optimizer(self.model, train_cfg, torch.device("cpu"))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.gen = torch.Generator().manual_seed(train_cfg.seed)  # as the Trainer draws its batches
        self.clock = StepClock()
        self.steps = 0
        self.warmup_end_s: float | None = None if train_cfg.warmup_iters else 0.0
        self.loss = math.nan

    @property
    def train_s(self) -> float:
        return self.clock.train_s

    def lr(self, budget_s: float) -> float:
        cfg = self.cfg
        if cfg.schedule == "time":  # the Trainer's own time-shaped schedule, over this run's budget
            return lr_schedule(self.steps, dataclasses.replace(cfg, time_budget_s=budget_s), self.train_s)
        if self.steps < cfg.warmup_iters:
            return cfg.lr * (self.steps + 1) / cfg.warmup_iters
        if self.warmup_end_s is None:
            self.warmup_end_s = self.train_s
        span = max(budget_s - self.warmup_end_s, 1e-9)
        progress = min(1.0, (self.train_s - self.warmup_end_s) / span)  # 0 .. 1
        return cfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.final_lr)

    def wants_step(self, target_s: float) -> bool:
        """Whether one more step brings this run closer to ``target_s`` than stopping (half-step rule)."""
        return self.train_s + 0.5 * self.clock.typical_step_s < target_s

    def step(self, budget_s: float) -> None:
        lr = self.lr(budget_s)
        t0 = time.perf_counter()
        x, y = get_batch(self.train_ids, self.cfg.batch_size, self.block_size, generator=self.gen)
        loss = lm_loss(self.model(x), y)  # logits (B, T, V)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.loss, grad_norm = torch.stack([loss.detach(), norm]).tolist()
        if not (math.isfinite(self.loss) and math.isfinite(grad_norm)):
            raise RuntimeError(f"the loss diverged at step {self.steps + 1} (lr {lr:.3g})")
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]  # Muon's group runs at muon_lr / lr times the schedule
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.clock.charge(time.perf_counter() - t0)
        self.steps += 1


class Pacer:
    """Steps the contenders one step at a time, the one furthest behind first, up to a target time."""

    def __init__(self, runs: dict[str, TimedRun]):
        self.runs = runs
        self.logged = time.perf_counter()

    def catch_up(self, target_s: float, budget_s: float, status: str = "") -> None:
        while True:
            behind = [r for r in self.runs.values() if r.wants_step(target_s)]
            if not behind:
                return
            min(behind, key=lambda r: r.train_s).step(budget_s)
            if time.perf_counter() - self.logged > 10:
                self.logged = time.perf_counter()
                runs = ", ".join(f"{k} {r.steps} it {r.train_s:.1f}s" for k, r in self.runs.items())
                log(f"  {status}{runs}")


# ----------------------------------------------------------------------------------------------
# The baseline: the recipe through Trainer.fit; after each of its steps the contenders catch up.


class BaselineRun:
    """The recipe through ``Trainer.fit``; a callback times each step and lets the contenders catch up."""

    def __init__(
        self, model_cfg: ModelConfig, train_cfg: TrainConfig, train_ids, val_ids, pacer: Pacer, budget_s: float | None
    ):
        torch.manual_seed(0)
        self.model = build_model(model_cfg)
        # One evaluation batch at the end (the Trainer evaluates when it finishes): the bench
        # scores every model itself, on the same windows.
        once = {"eval_interval": train_cfg.max_iters, "eval_iters": 1, "device": "cpu"}
        cfg = TrainConfig(**{**train_cfg.to_dict(), **once})
        self.iters = cfg.max_iters
        self.trainer = Trainer(self.model, train_ids, val_ids, cfg, callbacks=[self], device="cpu")
        self.pacer, self.budget_s = pacer, budget_s
        self.clock = StepClock()
        self.loss = math.nan
        self._resumed_at = 0.0

    @property
    def steps(self) -> int:
        return self.trainer.step

    @property
    def train_s(self) -> float:
        return self.clock.train_s

    def projected_s(self) -> float:
        """The training time the whole recipe will take, from the pace so far."""
        return self.train_s / max(1, self.steps) * self.iters

    # Trainer callbacks: the time from one callback's return to the next step's end is that step.
    def on_start(self, trainer: Trainer) -> None:
        self._resumed_at = time.perf_counter()

    def on_step(self, event: Any) -> None:
        self.clock.charge(time.perf_counter() - self._resumed_at)
        self.loss = event.loss
        budget = self.projected_s() if self.budget_s is None else self.budget_s
        target = self.train_s if self.budget_s is None else min(self.train_s, self.budget_s)
        self.pacer.catch_up(target, budget, status=f"baseline {self.steps} it {self.train_s:.1f}s, ")
        self._resumed_at = time.perf_counter()

    def fit(self) -> None:
        self.trainer.fit()


def evaluate(model: torch.nn.Module, ids: torch.Tensor, starts: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy over fixed windows: starts (n_batches, B), EVAL_BLOCK targets each."""
    source = as_source(ids)
    total, correct, n = score_windows(model, (source.windows(b, EVAL_BLOCK + 1) for b in starts)).tolist()
    return total / n, correct / n


def full_pass(
    model: torch.nn.Module, ids: torch.Tensor, tokenizer: Tokenizer, block: int = EVAL_BLOCK, batch: int = 64
) -> tuple[float, float]:
    """Mean loss per token and bits per byte over a whole text (the validation part), every token scored once.

    Consecutive windows of ``block + 1`` tokens overlap by one token: every token
    after the first is predicted once, from the tokens before it in its window
    (up to ``block``), whatever the tokenizer. Bits per byte = summed nats over
    the UTF-8 bytes of the predicted tokens / ln 2: the same text gives the same
    unit for a character model and a BPE model.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = (len(ids) - 1) // block
    windows = ids[(torch.arange(n) * block)[:, None] + torch.arange(block + 1)]  # (n, block + 1)
    batches = list(windows.split(batch))
    if len(ids) - n * block >= 2:  # the tail: fewer than block targets
        batches.append(ids[n * block :][None])
    total, _, count = score_windows(model, batches).tolist()
    assert int(count) == len(ids) - 1
    n_bytes = int(token_byte_lengths(tokenizer)[ids[1:]].sum())
    return total / count, total / n_bytes / math.log(2)


def tokenized_split(
    text: str, tokenizer: str = "char", vocab_size: int | None = None, val_fraction: float = 0.1
) -> dict[str, Any]:
    """The corpus split 90/10 by characters, each part tokenized on its own; a BPE is trained on the training part.

    ``tokenizer`` is ``"char"`` (its alphabet from the whole text, as the bench
    always had it: the ids are those of ``split_ids`` over the whole text) or
    ``"bpe"`` (byte-level BPE of ``vocab_size``). Every tokenizer sees the same
    training text and is scored on the same validation text. Returns the
    tokenizer, ``train_ids``, ``val_ids``, the seconds spent training the
    tokenizer and encoding (``tokenizer_s``), and the validation part's bytes.
    """
    n = int(len(text) * (1.0 - val_fraction))
    train_text, val_text = text[:n], text[n:]
    t0 = time.perf_counter()
    if tokenizer == "char":
        tok: Tokenizer = CharTokenizer.train(text)
    elif tokenizer == "bpe":
        tok = BPETokenizer.train(train_text, vocab_size or 512)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}: char or bpe")
    train_ids = torch.tensor(tok.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(val_text), dtype=torch.long)
    return {"tokenizer": tok, "kind": tokenizer, "train_ids": train_ids, "val_ids": val_ids,
            "tokenizer_s": time.perf_counter() - t0, "val_bytes": len(val_text.encode("utf-8")),
            "val_chars": len(val_text)}  # fmt: skip


def mamba1_recipe(vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    """The Mamba-1 that was ``cpu-best`` before Mamba-2: 3 x 192, d_state 8, lr 4e-3, warmup 50 steps."""
    model = ModelConfig.preset("mamba", vocab_size=vocab_size, block_size=64, n_layer=3, n_embd=192, d_state=8,
                               d_conv=4, expand=2)  # fmt: skip
    train = TrainConfig(batch_size=12, max_iters=1100, lr=4e-3, min_lr=4e-4, warmup_iters=50, weight_decay=0.1,
                        beta1=0.9, beta2=0.99, grad_clip=1.0)  # fmt: skip
    return model.validate(), train.validate()


def mamba2_model(vocab_size: int, d_state: int) -> ModelConfig:
    """Mamba-2 (state-space duality) at the Mamba-1's shape, with fewer, wider SSM heads (64 channels).

    The scan's cost grows with heads x state: 6 heads of 64 and a state of 16 or 32
    cost less per step than the preset's 24 heads of 16 with a state of 64.
    """
    return ModelConfig.preset("mamba2", vocab_size=vocab_size, block_size=64, n_layer=3, n_embd=192,
                              d_state=d_state, ssm_head_dim=64).validate()  # fmt: skip


def mamba2_train(lr: float) -> TrainConfig:
    """AdamW at ``lr`` under the Trainer's time-shaped schedule: warmup over 5% of the budget, cosine to lr / 10."""
    return TrainConfig(batch_size=12, max_iters=20_000, warmup_iters=1000, lr=lr, min_lr=lr / 10, weight_decay=0.1,
                       beta1=0.9, beta2=0.99, grad_clip=1.0, schedule="time", time_budget_s=94.0).validate()  # fmt: skip


def contender_configs(vocab_size: int) -> dict[str, tuple[ModelConfig, TrainConfig]]:
    """The runs that train for the baseline's time: gpt2 and llama at the recipe's shape, and cpu-best."""
    base_model, base_train = recipe("baby-gpt", vocab_size)
    llama = ModelConfig.preset(
        "llama",
        vocab_size=vocab_size,
        **{k: getattr(base_model, k) for k in ("block_size", "n_layer", "n_head", "n_embd", "dropout")},
    )
    mamba_model, mamba_train = mamba1_recipe(vocab_size)
    # The recipe search's candidates: Muon on the Mamba-1, and a llama with the newer switches and Muon.
    mamba_muon = TrainConfig(**{**mamba_train.to_dict(), "optimizer": "muon", "muon_lr": 0.02})
    llama_muon = llama.replace(mlp="relu2", qk_norm=True)
    llama_muon_train = TrainConfig(**{**base_train.to_dict(), "lr": 3e-3, "min_lr": 3e-4, "optimizer": "muon",
                                      "muon_lr": 0.05})  # fmt: skip
    return {
        "mamba": (mamba_model, mamba_train),
        "mamba2": (mamba2_model(vocab_size, 32), mamba2_train(4e-3)),
        "mamba2-lr8e-3": (mamba2_model(vocab_size, 32), mamba2_train(8e-3)),
        "mamba2-s16": (mamba2_model(vocab_size, 16), mamba2_train(6e-3)),
        "gpt2": (base_model, base_train),
        "llama": (llama, base_train),
        "mamba-muon": (mamba_model, mamba_muon),
        "llama-muon": (llama_muon.validate(), llama_muon_train),
    }


def run_equal_time(
    contenders: dict[str, tuple[ModelConfig, TrainConfig]],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    baseline: tuple[ModelConfig, TrainConfig] | None,
    budget_s: float | None,
    own_train_ids: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], float]:
    """Train the baseline (if given) and the contenders interleaved; returns (runs, budget in seconds).

    ``own_train_ids`` gives a contender on another tokenizer its own training ids.
    """
    assert baseline is not None or budget_s is not None
    own = own_train_ids or {}
    timed = {name: TimedRun(mc, tc, own.get(name, train_ids)) for name, (mc, tc) in contenders.items()}
    pacer = Pacer(timed)
    runs: dict[str, Any] = {}
    if baseline is not None:
        base = BaselineRun(*baseline, train_ids, val_ids, pacer, budget_s)
        runs["baseline"] = base
        base.fit()
        if budget_s is None:
            budget_s = base.train_s
    runs.update(timed)
    pacer.catch_up(budget_s, budget_s)
    return runs, budget_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=None, help="training seconds per run (default: the baseline's)")
    ap.add_argument("--eval-batches", type=int, default=200, help="validation batches of 12 x 64 for the final loss")
    ap.add_argument("--runs", default=",".join(RUNS[:4]), help=f"comma-separated subset of {', '.join(RUNS)}")
    ap.add_argument("--quick", action="store_true", help="200 baseline iterations, 20 eval batches: a smoke test")
    args = ap.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        sys.exit(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if "baseline" not in names and args.budget_s is None:
        sys.exit("without the baseline run, give the time budget with --budget-s")
    if args.budget_s is not None and not args.budget_s > 0:
        sys.exit("--budget-s must be a positive number of seconds")
    torch.set_num_threads(1)  # one thread per run: tiny models run fastest so, and the machine is shared

    text = read_corpus()
    char = tokenized_split(text)  # the ids split_ids gives over the whole text
    tok, train_ids, val_ids = char["tokenizer"], char["train_ids"], char["val_ids"]
    V = tok.vocab_size
    # The recipes on their own tokenizer: the same 90/10 split by characters, a BPE trained on the training part.
    data = {name: char for name in names}
    for name in set(RECIPE_RUNS) & set(names):
        spec = RECIPES[name]["tokenizer"]
        if spec["kind"] != "char":
            data[name] = tokenized_split(text, spec["kind"], spec.get("vocab_size"))

    base_model, base_train = recipe("baby-gpt", V)
    if args.quick:
        base_train = TrainConfig(**{**base_train.to_dict(), "max_iters": 200})
        args.eval_batches = 20
    own_vocab = {n: recipe(n, data[n]["tokenizer"].vocab_size) for n in RECIPE_RUNS if n in names}
    configs = {**contender_configs(V), **own_vocab}
    contenders = {k: v for k, v in configs.items() if k in names}
    baseline = (base_model, base_train) if "baseline" in names else None
    log(f"training {', '.join(names)} interleaved; budget: {args.budget_s or 'the baseline time'}")
    own = {n: d["train_ids"] for n, d in data.items()}
    runs, budget = run_equal_time(contenders, train_ids, val_ids, baseline, args.budget_s, own_train_ids=own)

    out: dict[str, Any] = {}
    for name, r in runs.items():
        d = data[name]
        eval_gen = torch.Generator().manual_seed(EVAL_SEED)
        starts = torch.randint(len(d["val_ids"]) - EVAL_BLOCK, (args.eval_batches, EVAL_BATCH), generator=eval_gen)
        loss, acc = evaluate(r.model, d["val_ids"], starts)
        _, bpb = full_pass(r.model, d["val_ids"], d["tokenizer"])
        mc = r.model.config
        tc = base_train if name == "baseline" else r.cfg
        out[name] = {
            "preset": mc.preset,
            "params": r.model.num_params(),
            "iters": r.steps,
            "train_s": round(r.train_s, 2),
            "wall_s": round(r.clock.wall_s, 2),
            "stalled_steps": r.clock.capped_steps,
            "ms_per_iter": round(r.train_s / max(1, r.steps) * 1e3, 2),
            "tokens_seen": r.steps * tc.batch_size * mc.block_size,
            "val_loss": round(loss, 4),
            "val_bpb": round(bpb, 4),  # a full pass over the validation text
            "tokenizer": d["kind"],
            "vocab_size": mc.vocab_size,
            "val_acc": round(acc, 4),
            "last_train_batch_loss": round(r.loss, 4),
            "model": {k: v for k, v in mc.to_dict().items() if k not in ("preset", "vocab_size")},
            "train": {k: getattr(tc, k) for k in ("batch_size", "lr", "min_lr", "warmup_iters", "weight_decay",
                                                  "optimizer", "muon_lr")},  # fmt: skip
            "schedule": "cosine over iterations" if name == "baseline" else (
                "warmup and cosine over the time budget (schedule=time)" if tc.schedule == "time"
                else "warmup in steps, cosine over the time budget"),
        }
        log(f"{name}: {out[name]['params']:,} params, {r.steps} iters in {r.train_s:.1f}s, val loss {loss:.4f}, "
            f"{bpb:.4f} bits per byte")
    result: dict[str, Any] = {
        "benchmark": "equal_time",
        **machine(),
        "data": {"corpus": CORPUS.stem, "tokenizer": "char", "vocab_size": V, "train_tokens": len(train_ids),
                 "val_tokens": len(val_ids)},  # fmt: skip
        "quick": args.quick,
        "budget_s": round(budget, 2),
        "budget_from": "baseline" if args.budget_s is None else "--budget-s",
        "baseline_iters": base_train.max_iters if baseline is not None else None,
        "eval": {"batches": args.eval_batches, "batch_size": EVAL_BATCH, "block": EVAL_BLOCK, "seed": EVAL_SEED,
                 "tokens": args.eval_batches * EVAL_BATCH * EVAL_BLOCK},  # fmt: skip
        "reference_val_loss": REFERENCE_VAL_LOSS,
        "target_val_loss": TARGET_VAL_LOSS,
        "runs": out,
    }
    if "cpu-best" in out:
        best = out["cpu-best"]
        if best["tokenizer"] == "char":  # loss per character, as the target is stated
            result["cpu_best_reaches_target"] = best["val_loss"] <= TARGET_VAL_LOSS
        else:  # another tokenizer: the target in bits per byte (the corpus is ASCII)
            result["cpu_best_reaches_target"] = best["val_bpb"] <= TARGET_VAL_LOSS / math.log(2)
        if "baseline" in out:
            if best["tokenizer"] == "char":
                result["cpu_best_minus_baseline"] = round(best["val_loss"] - out["baseline"]["val_loss"], 4)
            result["cpu_best_minus_baseline_bpb"] = round(best["val_bpb"] - out["baseline"]["val_bpb"], 4)
    emit(result)


if __name__ == "__main__":
    main()
