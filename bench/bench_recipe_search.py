"""Recipe search for the baby GPT's wall time: step-time ratios first, then fixed-step training of the finalists.

Run:
  python3 bench/bench_recipe_search.py ratio [--steps 30] [--runs a,b,...]
  python3 bench/bench_recipe_search.py train NAME --iters N [--eval-batches 200] [--corpus builtin:python-docs]

A candidate names its tokenizer (``TOKENIZERS``; the character tokenizer
unless it says otherwise, e.g. ``mamba-bpe512``: byte-level BPE of 512;
a recipe, as ``cpu-best-bpe``, has its own).
Every candidate gets the same 90/10 split of the corpus by characters, each
part tokenized on its own, a BPE trained on the training part only
(``bench_equal_time.tokenized_split``). ``train`` reports the loss per token
on the fixed validation batches (``val_loss``, and ``val_bpb_fixed``: that loss
x the validation part's tokens / bytes / ln 2) and a full pass over the whole
validation text (``val_loss_full``, ``val_bpb``: every token scored once, in
windows of 64 tokens), so candidates with different vocabularies compare in
bits per byte; ``tokenizer_s`` (training the BPE and encoding the corpus) is
reported apart from the training time. ``train_tail_bpb`` is the same full
pass over the training part's last tokens (as many as the validation part
has) and ``passes`` the training tokens seen over those in the training part:
the gap between the two bpb shows how much a run has fitted its training text.
Settings variants of the best BPE models are named by suffix
(``BPE_VARIANTS``, ``MAMBA2_BPE_VARIANTS``: ``mamba-bpe2048-160-wd0.3-minlr0``,
``mamba2-bpe2048-160-s16-wd0.3``, ...).

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
import math
import statistics
import time

import torch

from bench_equal_time import (
    EVAL_BATCH, EVAL_BLOCK, EVAL_SEED, TimedRun, evaluate, full_pass, mamba1_recipe, mamba2_model, mamba2_train,
    tokenized_split,
)
from common import CORPUS, emit, log, read_corpus
from lmcore.data import load_corpus
from lmcore.models import ModelConfig, build_model
from lmcore.recipes import RECIPES, recipe
from lmcore.train import TrainConfig, Trainer, bits_per_byte

# The candidates that are not by character: name -> (tokenizer, vocabulary size). Each is
# built by ``candidates`` for its own vocabulary; widths keep them at 0.7-0.9M parameters.
TOKENIZERS: dict[str, tuple[str, int]] = {
    "mamba-bpe384": ("bpe", 384),
    "mamba-bpe512": ("bpe", 512),
    "mamba-bpe768": ("bpe", 768),
    "mamba-bpe1024-176": ("bpe", 1024),
    "mamba-bpe1024-176-lr0.003": ("bpe", 1024),
    "mamba-bpe1024-176-lr0.006": ("bpe", 1024),
    "mamba-bpe1536-176": ("bpe", 1536),
    "mamba-bpe2048-160": ("bpe", 2048),
    "gpt-bpe512": ("bpe", 512),
    "gpt-bpe1024-112": ("bpe", 1024),
}

# Settings tried on the two best BPE Mambas (``mamba-bpe2048-160-minlr0``, ...): suffix -> (ModelConfig
# overrides, TrainConfig overrides). The model's and ``batch_size`` change the step time (measure the ratio);
# the others keep the base's. Warmup is a share of max_iters (20,000) under the time-shaped schedule: 400 = 2%.
BPE_VARIANTS: dict[str, tuple[dict, dict]] = {
    "minlr0": ({}, {"min_lr": 0.0}),
    "minlr1e-5": ({}, {"min_lr": 1e-5}),
    "lr6e-3-minlr0": ({}, {"lr": 6e-3, "min_lr": 0.0}),
    "warm2-minlr0": ({}, {"warmup_iters": 400, "min_lr": 0.0}),
    "wd0-minlr0": ({}, {"weight_decay": 0.0, "min_lr": 0.0}),
    "b2-0.95-minlr0": ({}, {"beta2": 0.95, "min_lr": 0.0}),
    "b8-minlr0": ({}, {"batch_size": 8, "min_lr": 0.0}),
    "b16-minlr0": ({}, {"batch_size": 16, "min_lr": 0.0}),
    "b24-minlr0": ({}, {"batch_size": 24, "min_lr": 0.0}),
    "seed1-minlr0": ({}, {"seed": 1, "min_lr": 0.0}),  # other batches: the spread a seed gives
    "seed2-minlr0": ({}, {"seed": 2, "min_lr": 0.0}),
    "wd0.3-minlr0": ({}, {"weight_decay": 0.3, "min_lr": 0.0}),
    "wd1-minlr0": ({}, {"weight_decay": 1.0, "min_lr": 0.0}),
    "d4-minlr0": ({"d_state": 4}, {"min_lr": 0.0}),
    "d4-lr6e-3-minlr0": ({"d_state": 4}, {"lr": 6e-3, "min_lr": 0.0}),
}
BPE_BASES = {"mamba-bpe2048-160": (2048, 160), "mamba-bpe1024-176": (1024, 176)}
TOKENIZERS.update({f"{b}-{v}": ("bpe", vs) for b, (vs, _) in BPE_BASES.items() for v in BPE_VARIANTS})
# Mamba-2 on a BPE of 2,048 (160 wide: 5 SSM heads of 64), state 16, its char search's lr 6e-3, cosine to 0.
# Suffix -> TrainConfig overrides of it (``mamba2-bpe2048-160-s16-wd0.3``), and the model's (MAMBA2_MODEL_KEYS:
# ``dropout``, ``block_size``); only those and ``batch_size`` change the step time (measure the ratio).
MAMBA2_MODEL_KEYS = ("dropout", "block_size")
MAMBA2_BPE_VARIANTS: dict[str, dict] = {
    "": {},
    "-wd0.3": {"weight_decay": 0.3},
    "-wd0.3-seed1": {"weight_decay": 0.3, "seed": 1},  # other batches: the spread a seed gives
    "-wd0.3-seed2": {"weight_decay": 0.3, "seed": 2},
    "-wd0.5": {"weight_decay": 0.5},
    "-wd1": {"weight_decay": 1.0},
    "-lr4e-3": {"lr": 4e-3},
    "-lr8e-3-wd0.3": {"lr": 8e-3, "weight_decay": 0.3},
    "-wd0.3-b2-0.95": {"weight_decay": 0.3, "beta2": 0.95},
    "-wd0.3-warm2": {"weight_decay": 0.3, "warmup_iters": 400},  # warmup over 2% of the budget, not 5%
    # The BPE models fit their training text (train-tail bpb far under val): dropout on each block's output.
    **{f"-wd0.3-do{p:g}{s}": {"weight_decay": 0.3, "dropout": p, **({"seed": int(s[5:])} if s else {})}
       for p in (0.05, 0.1, 0.2) for s in ("", "-seed1", "-seed2")},  # fmt: skip
    # A context of 128 tokens (about 310 characters) at batch 6: the same tokens a step, one chunk of 128.
    **{f"-wd0.3-t128-b6{s}": {"weight_decay": 0.3, "block_size": 128, "batch_size": 6,
                              **({"seed": int(s[5:])} if s else {})}
       for s in ("", "-seed1", "-seed2")},  # fmt: skip
}
TOKENIZERS.update({f"mamba2-bpe2048-160-s16{v}": ("bpe", 2048) for v in MAMBA2_BPE_VARIANTS})
TOKENIZERS.update({f"mamba2-bpe1024-192-s16{v}": ("bpe", 1024) for v in MAMBA2_BPE_VARIANTS})  # 6 heads of 64


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
        "cpu-best-bpe": recipe("cpu-best-bpe", vocab_size),  # on its recipe's tokenizer, a BPE of 1,024
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
        # On a byte-level BPE (TOKENIZERS): the char cpu-best's Mamba (3 layers, d_state 8, lr 4e-3,
        # its time-shaped schedule) at a width that keeps 0.7-0.9M parameters, and the baby GPT; block 64 tokens.
        "cpu-best-char": mamba_bpe(vocab_size, 192),  # cpu-best by character (3 x 192), pinned here
        **{f"mamba-bpe{v}": mamba_bpe(vocab_size, 192) for v in (384, 512, 768)},
        "mamba-bpe1024-176": mamba_bpe(vocab_size, 176),
        **{f"mamba-bpe1024-176-lr{lr:g}": (mamba_bpe(vocab_size, 176)[0],
                                           TrainConfig(**{**mamba_bpe(vocab_size, 176)[1].to_dict(), "lr": lr,
                                                          "min_lr": lr / 10}))
           for lr in (3e-3, 6e-3)},  # fmt: skip
        "mamba-bpe1536-176": mamba_bpe(vocab_size, 176),
        "mamba-bpe2048-160": mamba_bpe(vocab_size, 160),
        **{f"{b}-{v}": (mamba_bpe(vocab_size, w)[0].replace(**mo).validate(),
                        TrainConfig(**{**mamba_bpe(vocab_size, w)[1].to_dict(), **to}))
           for b, (_, w) in BPE_BASES.items() for v, (mo, to) in BPE_VARIANTS.items()},  # fmt: skip
        **{f"mamba2-bpe{vs}-{w}-s16{v}": (
            ModelConfig.preset("mamba2", vocab_size=vocab_size, n_layer=3, n_embd=w, d_state=16, ssm_head_dim=64,
                               **{"block_size": 64, **{k: v for k, v in o.items() if k in MAMBA2_MODEL_KEYS}}).validate(),
            TrainConfig(**{**mamba_bpe(vocab_size, w)[1].to_dict(), "lr": 6e-3, "min_lr": 0.0,
                           **{k: v for k, v in o.items() if k not in MAMBA2_MODEL_KEYS}}))
           for vs, w in ((2048, 160), (1024, 192)) for v, o in MAMBA2_BPE_VARIANTS.items()},  # fmt: skip
        "gpt-bpe512": (base_model, base_train),
        "gpt-bpe1024-112": (base_model.replace(n_embd=112).validate(), base_train),
    }


def mamba_bpe(vocab_size: int, width: int) -> tuple[ModelConfig, TrainConfig]:
    """cpu-best's Mamba (3 layers, d_state 8) at ``width``, with the training settings it had by character."""
    model = ModelConfig.preset("mamba", vocab_size=vocab_size, block_size=64, n_layer=3, n_embd=width, d_state=8,
                               d_conv=4, expand=2)  # fmt: skip
    train = TrainConfig(batch_size=12, max_iters=20_000, lr=4e-3, min_lr=4e-4, warmup_iters=1000, weight_decay=0.1,
                        beta1=0.9, beta2=0.99, grad_clip=1.0, schedule="time", time_budget_s=94.0)  # fmt: skip
    return model.validate(), train.validate()


def tokenizer_of(name: str) -> tuple[str, int | None]:
    """(kind, vocabulary size) of candidate ``name``'s tokenizer: a recipe's own, the rest char unless listed."""
    if name in RECIPES:
        spec = RECIPES[name]["tokenizer"]
        return spec["kind"], spec.get("vocab_size")
    return TOKENIZERS.get(name, ("char", None))


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
    splits: dict[tuple[str, int | None], dict] = {}

    def data(name: str) -> dict:
        """The split for candidate ``name``'s tokenizer, tokenized once per tokenizer."""
        spec = tokenizer_of(name)
        if spec not in splits:
            splits[spec] = tokenized_split(text, *spec)
            d = splits[spec]
            log(f"{spec[0]} {d['tokenizer'].vocab_size}: {len(d['train_ids']):,} + {len(d['val_ids']):,} tokens, "
                f"{d['val_bytes'] / len(d['val_ids']):.3f} bytes per val token, {d['tokenizer_s']:.1f}s")
        return splits[spec]

    def configs(name: str) -> tuple[ModelConfig, TrainConfig]:
        return candidates(data(name)["tokenizer"].vocab_size)[name]

    if args.mode == "ratio":
        every = candidates(66)
        names = ["baseline"] + [n for n in (args.runs.split(",") if args.runs else every) if n != "baseline"]
        runs = {n: TimedRun(*configs(n), data(n)["train_ids"]) for n in names}
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
            out[n] = {"tokenizer": tokenizer_of(n)[0], "vocab_size": runs[n].model.config.vocab_size,
                      "params": runs[n].model.num_params(), "ms_per_step": round(med * 1e3, 1),
                      "ratio": round(ratio, 3), "steps_in_budget": int(2000 / ratio)}  # fmt: skip
            log(f"{n}: {out[n]}")
        emit({"mode": "ratio", "steps": args.steps, "runs": out})
        return

    d = data(args.name)
    tok, train_ids, val_ids = d["tokenizer"], d["train_ids"], d["val_ids"]
    model_cfg, train_cfg = configs(args.name)
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
    wall_s = time.perf_counter() - t0
    loss_full, bpb = full_pass(model, val_ids, tok)
    # The same full pass over the end of the training part (as many tokens as the validation part): the gap
    # to val_bpb shows how much the run has fitted its training text.
    _, train_bpb = full_pass(model, train_ids[-len(val_ids):], tok)
    res = {"mode": "train", "name": args.name, "corpus": args.corpus or CORPUS.name,
           "tokenizer": d["kind"], "vocab_size": tok.vocab_size, "tokenizer_s": round(d["tokenizer_s"], 2),
           "val_bytes_per_token": round(d["val_bytes"] / len(val_ids), 4),
           "params": model.num_params(), "iters": args.iters, "wall_s": round(wall_s, 1),
           "val_loss": round(loss, 4), "val_bpb_fixed": round(bits_per_byte(loss, val_ids, tok), 4),
           "val_acc": round(acc, 4), "val_loss_full": round(loss_full, 4), "val_bpb": round(bpb, 4),
           "train_tail_bpb": round(train_bpb, 4), "passes": round(args.iters * cfg.batch_size * model_cfg.block_size / len(train_ids), 2),
           "val_nats_per_char_full": round(bpb * math.log(2) * d["val_bytes"] / d["val_chars"], 4)}  # fmt: skip
    log(str(res))
    emit(res, indent=None)


if __name__ == "__main__":
    main()
