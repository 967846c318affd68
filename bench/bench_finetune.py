"""Fine-tuning to answer: exact match before and after, full against LoRA, and what the base forgets.

Run: nice python3 bench/bench_finetune.py [--data PATH] [--task NAME] [--pretrain-iters N] [--iters N]

1. The baby GPT's shape (the ``baby-gpt`` recipe: gpt2, 4 layers x 128, block 64,
   batch 12, its optimizer settings) is pretrained ``--pretrain-iters`` steps on
   ``--data`` (default: tiny Shakespeare under ../shared, characters; the first
   90% train, the last 10% validate).
2. It is fine-tuned on a shipped task (``lmcore.tasks``, default ``uppercase``)
   ``--iters`` steps twice, through ``lmcore.run.finetune``: every weight,
   and LoRA adapters of rank ``--rank`` on the attention and MLP projections.
   Each reports the share of weights that train, its time, the exact match on
   the task's held-out prompts (greedy, never trained on) and the loss on the
   first ``--val-tokens`` tokens of the Shakespeare validation text before and after.
3. GPT-2-small's shape (random weights, vocabulary 50257, block ``--gpt2-block``):
   the time of a training step with every weight against one with LoRA adapters,
   and the size of the adapter file against the model's weights.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CORPUS, emit, machine

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
from lmcore.finetune import (
    apply_lora,
    chat_tokenizer,
    exact_match,
    grow_vocab,
    save_adapter,
    trainable_share,
)
from lmcore.models import ModelConfig, build_model
from lmcore.recipes import RECIPES
from lmcore.run import finetune
from lmcore.tasks import get_task
from lmcore.train import TrainConfig, Trainer, evaluate_ids


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pretrain(data: str, iters: int, folder: Path) -> tuple[Path, torch.Tensor]:
    corpus = load_corpus(data)
    tok = build_tokenizer("char", corpus)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    baby = RECIPES["baby-gpt"]
    torch.manual_seed(1337)
    model = build_model(ModelConfig.preset(baby["preset"], vocab_size=tok.vocab_size, **baby["model"]))
    settings = {**baby["train"], "max_iters": iters, "warmup_iters": min(100, iters), "eval_interval": iters, "eval_iters": 20}
    cfg = TrainConfig(**settings, device="cpu")
    t0 = time.time()
    Trainer(model, train_ids, val_ids, cfg).fit()
    say(f"pretrained {iters} steps in {time.time() - t0:.0f} s")
    return save_checkpoint(folder / "base", model, tok), val_ids


def val_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    return round(evaluate_ids(model, ids, batch_size=32)["loss"], 4)


def gpt2_small_lora(rank: int, block: int, steps: int, folder: Path) -> dict:
    """Seconds per step, full against LoRA, and the adapter's size against the model's, at GPT-2 small's shape."""
    cfg = ModelConfig.preset("gpt2", vocab_size=50257, block_size=block, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    out: dict = {"block_size": block, "batch_size": 1, "steps_timed": steps}
    x = torch.randint(0, cfg.vocab_size, (1, block + 1))
    for method in ("full", "lora"):
        torch.manual_seed(0)
        model = build_model(cfg)
        if method == "lora":
            apply_lora(model, rank)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        times = []
        for i in range(steps + 1):  # the first step warms up and is not counted
            t0 = time.perf_counter()
            logits = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        out[method] = {"s_per_step": round(sorted(times)[len(times) // 2], 3), "trainable_share": round(trainable_share(model), 5)}
        if method == "lora":
            path = save_adapter(folder / "gpt2-adapter", model, "random")
            out["adapter_bytes"] = path.stat().st_size
            base_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) - sum(p.numel() for p in params)
            out["params"] = base_params
            out["model_bytes_fp32"] = 4 * base_params
        say(f"gpt2-small {method}: {out[method]['s_per_step']} s/step")
        del model, opt
    out["lora_step_over_full"] = round(out["lora"]["s_per_step"] / out["full"]["s_per_step"], 3)
    out["adapter_over_model"] = round(out["adapter_bytes"] / out["model_bytes_fp32"], 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(CORPUS))
    ap.add_argument("--task", default="uppercase")
    ap.add_argument("--pretrain-iters", type=int, default=600)
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr-full", type=float, default=1e-3)
    ap.add_argument("--lr-lora", type=float, default=4e-3)
    ap.add_argument("--val-tokens", type=int, default=20000)
    ap.add_argument("--gpt2-block", type=int, default=256)
    ap.add_argument("--gpt2-steps", type=int, default=5)
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--skip-chat", action="store_true", help="only the GPT-2 small timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", help="a base checkpoint pretrained on --data already (skips step 1)")
    ap.add_argument("--methods", default="full,lora", help="full, lora or both")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    task = get_task(args.task)
    out: dict = {"machine": machine(),
                 "task": task.name, "pretrain_iters": args.pretrain_iters, "iters": args.iters}  # fmt: skip

    if args.skip_chat:
        out["gpt2_small_lora"] = gpt2_small_lora(args.rank, args.gpt2_block, args.gpt2_steps, folder)
        emit(out)
        return
    if args.base:
        base_path = Path(args.base)
        _, val_ids = split_ids(encode_corpus(load_checkpoint(base_path).tokenizer, load_corpus(args.data)), 0.1)
    else:
        base_path, val_ids = pretrain(args.data, args.pretrain_iters, folder)
    val_ids = val_ids[: args.val_tokens + 1]
    heldout = task.examples("heldout")
    base = load_checkpoint(base_path)
    tok = chat_tokenizer(base.tokenizer, task.examples("train"), add_chars=True)  # addition's digits
    grown = grow_vocab(base.model, tok.vocab_size).eval()
    out["before"] = {"exact_match": exact_match(grown, tok, heldout), "shakespeare_val_loss": val_loss(base.model, val_ids)}
    say(f"before: {out['before']}")

    methods = [m for m in (("full", None, args.lr_full), (f"lora_r{args.rank}", args.rank, args.lr_lora))
               if m[0].split("_")[0] in args.methods.split(",")]  # fmt: skip
    for method, rank, lr in methods:
        cfg = TrainConfig(batch_size=12, max_iters=args.iters, lr=lr, min_lr=lr / 10, warmup_iters=20,
                          weight_decay=0.0, grad_clip=1.0, eval_interval=args.iters, eval_iters=10, device="cpu")  # fmt: skip
        result = finetune(base_path, task.path("train"), cfg, folder / method, lora_rank=rank, add_chars=True)
        ft = load_checkpoint(result["out"])
        out[method] = {
            "trainable_share": round(result["trainable_share"], 5),
            "train_s": round(result["elapsed_s"], 1),
            "exact_match": exact_match(ft.model, ft.tokenizer, heldout),
            "shakespeare_val_loss": val_loss(ft.model, val_ids),
            "task_val_loss": round(result["val_loss"], 4),
        }
        say(f"{method}: {out[method]}")

    if not args.skip_gpt2:
        out["gpt2_small_lora"] = gpt2_small_lora(args.rank, args.gpt2_block, args.gpt2_steps, folder)
    emit(out)


if __name__ == "__main__":
    main()
