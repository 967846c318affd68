"""Training speed and quality: the baby-GPT recipe, ours against a plain PyTorch GPT.

Run: python3 bench/bench_train.py [--iters 2000] [--eval-batches 200] [--quick]

The recipe is nanoGPT's CPU "baby GPT" on tiny Shakespeare: character
tokenizer, 90/10 split, 4 layers, 4 heads, 128 wide, block 64, batch 12,
dropout 0, AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices),
warmup 100, cosine to 1e-4, gradient clipping at 1, 2000 iterations.
Reference on this machine: val loss 1.886, about 33 ms/iter, 23k tokens/s.

Three runs in one process, trained in interleaved chunks (so a busy
neighbour on a shared machine slows all three alike):
- ``gpt2``: our gpt2 preset through ``lmcore.train.Trainer``;
- ``plain``: an ~80-line PyTorch GPT of the same shape (written below, the way
  nanoGPT's model.py and train.py do it) with its own simple loop, fed the
  very same batches (the same ``get_batch`` and seeded generator);
- ``llama``: our llama preset (RMSNorm, RoPE, SwiGLU, no biases) through the Trainer.
Each is then scored on the same ``--eval-batches`` fixed validation windows.

Reported: final val loss, ms/iter and tokens/s of the training steps only
(evaluation excluded), our tokens/s over the plain GPT's, and the MFU: model
FLOPs per token (``flops_per_token``: 6 N + 12 L D T) times tokens/s over
this machine's fp32 matmul peak, measured in this run with a large
``torch.matmul``. One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from common import emit, log, machine, read_corpus

from lmcore.batches import as_source
from lmcore.data import get_batch, split_ids
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig, Trainer, score_windows

SHAPE = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
RECIPE = dict(batch_size=12, lr=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1, beta1=0.9, beta2=0.99,
              grad_clip=1.0, seed=1337)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The plain GPT: the usual minimal PyTorch GPT-2, and a training loop to match.


class PlainAttention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.resid_dropout = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class PlainBlock(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = PlainAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PlainGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(0.0)
        self.h = nn.ModuleList([PlainBlock(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                residual = name.endswith("c_proj.weight") or name.endswith("mlp.2.weight")
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer) if residual else 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def plain_lr(it: int, iters: int, warmup: int = 100, lr: float = 1e-3, min_lr: float = 1e-4) -> float:
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = min(1.0, (it - warmup) / max(1, iters - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


class PlainRun:
    """The plain GPT's own loop: AdamW with decay on matrices, warmup + cosine, clipping."""

    def __init__(self, model: PlainGPT, train_ids: torch.Tensor, iters: int):
        self.model, self.train_ids, self.iters = model, train_ids, iters
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": RECIPE["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(groups, lr=RECIPE["lr"], betas=(RECIPE["beta1"], RECIPE["beta2"]))
        self.gen = torch.Generator().manual_seed(RECIPE["seed"])  # the Trainer's batch generator
        self.step = 0
        self.train_s = 0.0
        self.loss = math.nan

    def run(self, n: int) -> None:
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(min(n, self.iters - self.step)):
            x, y = get_batch(self.train_ids, RECIPE["batch_size"], SHAPE["block_size"], generator=self.gen)
            for group in self.opt.param_groups:
                group["lr"] = plain_lr(self.step, self.iters)
            logits = self.model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), RECIPE["grad_clip"])
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.loss = loss.item()
            self.step += 1
        self.train_s += time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# Our runs: the Trainer, stopped every `chunk` steps so the three runs interleave.


class ChunkTimer:
    """Trainer callback: stops the run every ``chunk`` steps and sums the time spent in steps."""

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.train_s = 0.0
        self.loss = math.nan
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.started = self.last = time.perf_counter()
        self.done = 0

    def on_step(self, event) -> None:
        self.last = time.perf_counter()
        self.loss = event.loss
        self.done += 1
        if self.done >= self.chunk:
            self.trainer.stop()

    def on_end(self, result) -> None:
        self.train_s += self.last - self.started  # the closing evaluation is not training time


class OursRun:
    def __init__(self, preset: str, vocab_size: int, train_ids, val_ids, iters: int, chunk: int):
        torch.manual_seed(0)
        self.model = build_model(ModelConfig.preset(preset, vocab_size=vocab_size, **SHAPE))
        self.timer = ChunkTimer(chunk)
        # One evaluation batch: the bench scores every model itself on the same windows.
        cfg = TrainConfig(max_iters=iters, eval_interval=iters, eval_iters=1, device="cpu", **RECIPE)
        self.trainer = Trainer(self.model, train_ids, val_ids, cfg, callbacks=[self.timer], device="cpu")

    @property
    def step(self) -> int:
        return self.trainer.step

    def run(self, n: int) -> None:
        self.trainer.fit()


# ----------------------------------------------------------------------------------------------


def matmul_peak_gflops(n: int = 2048, reps: int = 8, tries: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul: this machine's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)
    best = 0.0
    for _ in range(tries):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def evaluate(model: nn.Module, ids: torch.Tensor, starts: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy over fixed windows: starts (n_batches, B)."""
    source = as_source(ids)
    total, correct, n = score_windows(model, (source.windows(b, SHAPE["block_size"] + 1) for b in starts)).tolist()
    return total / n, correct / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--eval-batches", type=int, default=200, help="validation batches of 12 x 64 for the final loss")
    ap.add_argument("--chunk", type=int, default=100, help="steps per turn when interleaving the runs")
    ap.add_argument("--runs", default="gpt2,plain,llama", help="comma-separated subset of gpt2, plain, llama")
    ap.add_argument("--quick", action="store_true", help="150 iterations, 20 eval batches: checks that it runs")
    ap.add_argument("--threads", type=int, default=2, choices=(1, 2),
                    help="CPU threads; 1 is steadier when other work shares the two cores")
    args = ap.parse_args()
    if args.quick:
        args.iters, args.eval_batches, args.chunk = 150, 20, 50
    text = read_corpus()
    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))

    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids, 0.1)
    V, T, B = tok.vocab_size, SHAPE["block_size"], RECIPE["batch_size"]

    log("measuring the fp32 matmul peak")
    peak = matmul_peak_gflops()
    log(f"  {peak:.1f} GFLOP/s")

    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    runs: dict[str, object] = {}
    for name in names:
        if name == "plain":
            torch.manual_seed(0)
            runs[name] = PlainRun(PlainGPT(V, T, SHAPE["n_layer"], SHAPE["n_head"], SHAPE["n_embd"]), train_ids, args.iters)
        elif name in ("gpt2", "llama"):
            runs[name] = OursRun(name, V, train_ids, val_ids, args.iters, args.chunk)
        else:
            sys.exit(f"unknown run {name!r}; choose from gpt2, plain, llama")

    started = time.perf_counter()
    while any(r.step < args.iters for r in runs.values()):
        for name, r in runs.items():
            if r.step < args.iters:
                r.run(args.chunk)
        done = min(r.step for r in runs.values())
        log(f"  step {done}/{args.iters}, {time.perf_counter() - started:.0f} s")

    eval_gen = torch.Generator().manual_seed(42)
    starts = torch.randint(len(val_ids) - T, (args.eval_batches, B), generator=eval_gen)
    result: dict[str, object] = {
        "benchmark": "train",
        **machine(),
        "recipe": {**SHAPE, **RECIPE, "iters": args.iters, "tokenizer": "char", "vocab_size": V},
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "eval_batches": args.eval_batches,
        "eval_tokens": args.eval_batches * B * T,
        "matmul_peak_gflops": round(peak, 1),
        "reference": {"val_loss": 1.886, "ms_per_iter": 33, "tokens_per_s": 23000},
        "runs": {},
    }
    tokens_per_iter = B * T
    for name, r in runs.items():
        model = r.model
        loss, acc = evaluate(model, val_ids, starts)
        train_s = r.train_s if name == "plain" else r.timer.train_s
        tok_s = args.iters * tokens_per_iter / train_s
        if name == "plain":
            n_params = sum(p.numel() for p in model.parameters())
            flops = build_model(ModelConfig.preset("gpt2", vocab_size=V, **SHAPE)).flops_per_token(T)
        else:
            n_params = model.num_params()
            flops = model.flops_per_token(T)
        wpe = model.wpe.weight.numel() if getattr(model, "wpe", None) is not None else 0
        result["runs"][name] = {
            "params": n_params,
            "params_without_wpe": n_params - wpe,
            "val_loss": round(loss, 4),
            "val_acc": round(acc, 4),
            "last_train_batch_loss": round(r.loss if name == "plain" else r.timer.loss, 4),
            "train_s": round(train_s, 2),
            "ms_per_iter": round(train_s / args.iters * 1e3, 2),
            "tokens_per_s": round(tok_s),
            "flops_per_token": flops,
            "achieved_gflops": round(flops * tok_s / 1e9, 1),
            "mfu": round(flops * tok_s / (peak * 1e9), 4),
        }
        log(f"{name}: val loss {loss:.4f}, {tok_s:,.0f} tokens/s, {train_s / args.iters * 1e3:.1f} ms/iter")
    res = result["runs"]
    if "plain" in res:
        for name in ("gpt2", "llama"):
            if name in res:
                result[f"{name}_tokens_per_s_over_plain"] = round(res[name]["tokens_per_s"] / res["plain"]["tokens_per_s"], 3)
    if "gpt2" in res:
        result["gpt2_val_loss_minus_reference"] = round(res["gpt2"]["val_loss"] - 1.886, 4)
    emit(result)


if __name__ == "__main__":
    main()
