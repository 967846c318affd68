"""Recipe search for the baby GPT's wall time: step-time ratios first, then fixed-step training of the finalists.

Run:
  python3 bench/bench_recipe_search.py ratio [--steps 30] [--runs a,b,...]
  python3 bench/bench_recipe_search.py train NAME --iters N [--eval-batches 200] [--corpus builtin:python-docs]

``ratio`` steps the baby-GPT baseline and the candidates one step each in
turn (one process, one thread), so a busy neighbour slows all alike, and
prints each candidate's median step time over the baseline's: a candidate
with ratio r gets ``2000 / r`` steps in the baseline's 2000-step time.
``train`` trains one candidate through the Trainer for exactly that many
steps (cosine over them) and scores it on the same fixed validation batches
as ``bench_equal_time.py``; the loss then does not depend on how busy the
machine was, only the step count (from the interleaved ratio) does.
One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_equal_time import (
    EVAL_BATCH, EVAL_BLOCK, EVAL_SEED, TimedRun, evaluate, mamba1_recipe, mamba2_model, mamba2_train,
)
from common import CORPUS, emit, log, read_corpus
from lmcore.data import load_corpus, split_ids
from lmcore.models import ModelConfig, build_model
from lmcore.recipes import recipe
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig, Trainer


def candidates(vocab_size: int) -> dict[str, tuple[ModelConfig, TrainConfig]]:
    """The baseline and the candidates, by name."""
    base_model, base_train = recipe("baby-gpt", vocab_size)
    best_model, best_train = mamba1_recipe(vocab_size)  # the Mamba-1 the earlier searches started from
    bt = best_train.to_dict()
    llama = ModelConfig.preset(
        "llama", vocab_size=vocab_size,
        **{k: getattr(base_model, k) for k in ("block_size", "n_layer", "n_head", "n_embd", "dropout")},
    )  # fmt: skip
    llama_new = llama.replace(mlp="relu2", qk_norm=True).validate()
    lt = {**base_train.to_dict(), "lr": 3e-3, "min_lr": 3e-4}
    return {
        "baseline": (base_model, base_train),
        "cpu-best": recipe("cpu-best", vocab_size),
        "mamba": (best_model, best_train),
        "mamba-muon-0.02": (best_model, TrainConfig(**{**bt, "optimizer": "muon", "muon_lr": 0.02})),
        "mamba-muon-0.04": (best_model, TrainConfig(**{**bt, "optimizer": "muon", "muon_lr": 0.04})),
        "mamba-b16": (best_model, TrainConfig(**{**bt, "batch_size": 16})),
        "mamba-lr6e-3": (best_model, TrainConfig(**{**bt, "lr": 6e-3, "min_lr": 6e-4})),
        "llama-relu2-qk": (llama_new, TrainConfig(**{**lt, "warmup_iters": 50})),
        "llama-relu2-qk-lr5e-3": (llama_new, TrainConfig(**{**lt, "lr": 5e-3, "min_lr": 5e-4, "warmup_iters": 50})),
        "llama-relu2-qk-muon": (llama_new, TrainConfig(**{**lt, "optimizer": "muon", "muon_lr": 0.05})),
        # Fewer, wider layers: fewer sequential scans per step at about the same parameter count.
        "mamba-2x240": (best_model.replace(n_layer=2, n_embd=240).validate(), best_train),
        "mamba-2x240-lr6e-3": (best_model.replace(n_layer=2, n_embd=240).validate(),
                               TrainConfig(**{**bt, "lr": 6e-3, "min_lr": 6e-4})),  # fmt: skip
        "mamba-d4": (best_model.replace(d_state=4).validate(), best_train),
        "mamba-d4-lr6e-3": (best_model.replace(d_state=4).validate(), TrainConfig(**{**bt, "lr": 6e-3, "min_lr": 6e-4})),
        "mamba-d4-lr8e-3": (best_model.replace(d_state=4).validate(), TrainConfig(**{**bt, "lr": 8e-3, "min_lr": 8e-4})),
        # Mamba-2 at the same width and depth, 64-channel heads, under the time-shaped schedule.
        **{f"mamba2-s{n}-lr{lr:g}": (mamba2_model(vocab_size, n), mamba2_train(lr))
           for n, lr in ((16, 4e-3), (16, 6e-3), (16, 1e-2), (32, 6e-3))},  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("ratio", "train"))
    ap.add_argument("name", nargs="?", default=None, help="train: the candidate")
    ap.add_argument("--iters", type=int, default=None, help="train: steps (the baseline's 2000 / the ratio)")
    ap.add_argument("--steps", type=int, default=30, help="ratio: steps per run")
    ap.add_argument("--runs", default=None, help="ratio: comma-separated candidates (default: all)")
    ap.add_argument("--eval-batches", type=int, default=200)
    ap.add_argument("--corpus", default=None, help="builtin:NAME to check a recipe on held-out text (default: tiny Shakespeare)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    text = load_corpus(args.corpus).text if args.corpus else read_corpus()
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids, 0.1)
    cands = candidates(tok.vocab_size)

    if args.mode == "ratio":
        names = ["baseline"] + [n for n in (args.runs.split(",") if args.runs else cands) if n != "baseline"]
        runs = {n: TimedRun(*cands[n], train_ids) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.steps):
            for n, r in runs.items():
                t0 = time.perf_counter()
                r.step(1e9)
                times[n].append(time.perf_counter() - t0)
        base = statistics.median(times["baseline"][3:])
        out = {}
        for n in names:
            med = statistics.median(times[n][3:])
            ratio = med / base
            out[n] = {"params": runs[n].model.num_params(), "ms_per_step": round(med * 1e3, 1),
                      "ratio": round(ratio, 3), "steps_in_budget": int(2000 / ratio)}  # fmt: skip
            log(f"{n}: {out[n]}")
        emit({"mode": "ratio", "steps": args.steps, "runs": out})
        return

    model_cfg, train_cfg = cands[args.name]
    steps_cfg = {}
    if train_cfg.schedule == "time":  # the same shape over the counted steps: warmup takes the same share
        warm = max(1, round(args.iters * train_cfg.warmup_iters / train_cfg.max_iters))
        steps_cfg = {"schedule": "steps", "time_budget_s": None, "warmup_iters": warm}
    cfg = TrainConfig(**{**train_cfg.to_dict(), **steps_cfg, "max_iters": args.iters, "eval_interval": args.iters,
                         "eval_iters": 1, "device": "cpu"})  # fmt: skip
    torch.manual_seed(0)
    model = build_model(model_cfg)
    t0 = time.perf_counter()
    Trainer(model, train_ids, val_ids, cfg, device="cpu").fit()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    starts = torch.randint(len(val_ids) - EVAL_BLOCK, (args.eval_batches, EVAL_BATCH), generator=gen)
    loss, acc = evaluate(model, val_ids, starts)
    res = {"mode": "train", "name": args.name, "corpus": args.corpus or CORPUS.name, "params": model.num_params(), "iters": args.iters,
           "wall_s": round(time.perf_counter() - t0, 1), "val_loss": round(loss, 4), "val_acc": round(acc, 4)}  # fmt: skip
    log(str(res))
    emit(res, indent=None)


if __name__ == "__main__":
    main()
