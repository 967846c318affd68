"""GPU training: nanoGPT's shakespeare-char recipe and ours, val loss against wall time, tokens/s, MFU.

Run: python3 bench/bench_gpu.py [--runs nanogpt,best,mamba] [--max-iters N] [--eval-interval N] [--quick]

Needs a CUDA GPU; without one it prints one line on stderr ("skipped") and exits with
status 0, so that ``make bench`` goes on to the CPU benchmarks.

- ``nanogpt``: nanoGPT's ``config/train_shakespeare_char.py``: character
  tokenizer, 90/10 split, 6 layers, 6 heads, 384 wide, block 256, batch 64,
  dropout 0.2, no biases, tied head, AdamW (lr 1e-3, betas 0.9/0.99, weight
  decay 0.1 on matrices), warmup 100, cosine to 1e-4 over 5000 iterations,
  gradient clipping at 1; trained by ``lmcore.train.Trainer`` on the GPU with
  bf16 autocast, the fused AdamW, ``torch.compile`` and the flash attention
  kernel of ``scaled_dot_product_attention`` (forced with ``sdpa_kernel``).
- ``best``: the same shape and data with what the speedruns since nanoGPT
  found to learn faster per step (``BEST_GPU``): RoPE, RMSNorm, QK-norm, a
  ReLU squared MLP, and Muon on the hidden matrices (AdamW on the rest). A
  candidate until measured: the figures this script prints are the result.
- ``mamba``: a small Mamba trained on the CPU and on the GPU (fp32, no
  autocast, no compile; the GPU takes the scan that recomputes its states in
  the backward) from the same seed on the same batches: the per-step losses
  must agree within ``MAMBA_TOL``.

Every evaluation prints step, training seconds (evaluations excluded) and
val loss (the Trainer's mean over ``--eval-iters`` fixed batches), so the
curve of val loss against wall time can be read off. Tokens/s counts the
training steps only; MFU is model FLOPs per token (``flops_per_token``: 6 N
+ 12 L D T) times tokens/s over the GPU's dense bf16 peak, from ``PEAK_BF16``
by device name ("unknown" for a GPU not in the table). One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

import torch

from common import emit, log, read_corpus

from lmcore.data import split_ids
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig, Trainer

RUNS = ("nanogpt", "best", "mamba")
TARGET_VAL_LOSS = 1.47  # nanoGPT's shakespeare-char result, to reach in under 90 s of training
MAMBA_TOL = 1e-3  # largest |CPU loss - GPU loss| allowed over the comparison's steps

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; first match in the name wins.
PEAK_BF16: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
]

NANOGPT_MODEL = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False, tie_weights=True)
NANOGPT_TRAIN = dict(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1,
                     beta1=0.9, beta2=0.99, grad_clip=1.0)  # fmt: skip
BEST_GPU = {
    "preset": "llama",
    "model": {**NANOGPT_MODEL, "mlp": "relu2", "qk_norm": True},
    "train": {**NANOGPT_TRAIN, "optimizer": "muon", "muon_lr": 0.02, "lr": 2e-3, "min_lr": 2e-4,
              "max_iters": 3000},  # fmt: skip
}


def peak_bf16(name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``name``, or None when it is not in the table."""
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


class Clock:
    """A Trainer callback: training seconds (evaluations excluded) and the curve of val loss against them."""

    def __init__(self) -> None:
        self.train_s = 0.0
        self.curve: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.first_step_s = 0.0  # with torch.compile, mostly compilation
        self._mark = 0.0

    def on_start(self, trainer: Trainer) -> None:
        self._mark = time.perf_counter()

    def on_step(self, event: Any) -> None:
        now = time.perf_counter()
        if not self.losses:
            self.first_step_s = now - self._mark
        self.train_s += now - self._mark  # the Trainer read the loss back: the step is done on the GPU
        self._mark = now
        self.losses.append(event.loss)

    def on_eval(self, event: Any) -> None:
        point = {"step": event.step, "train_s": round(self.train_s, 2), "val_loss": round(event.val_loss, 4)}
        self.curve.append(point)
        log(f"  step {event.step:>5}  {self.train_s:7.1f} s  val {event.val_loss:.4f}")
        self._mark = time.perf_counter()  # the evaluation is not training time


def train_run(
    preset: str,
    model_overrides: dict[str, Any],
    train_overrides: dict[str, Any],
    data: tuple[torch.Tensor, torch.Tensor, int],
    device: str,
    compile: bool,
    flash: bool,
) -> dict[str, Any]:
    """Train one recipe with the Trainer and report its curve, tokens/s and MFU."""
    train_ids, val_ids, vocab_size = data
    torch.manual_seed(1337)
    model = build_model(ModelConfig.preset(preset, vocab_size=vocab_size, **model_overrides).validate())
    cfg = TrainConfig(device=device, compile=compile, **train_overrides)
    clock = Clock()
    trainer = Trainer(model, train_ids, val_ids, cfg, callbacks=[clock])
    kernel: contextlib.AbstractContextManager = contextlib.nullcontext()
    if flash:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    with kernel:
        result = trainer.fit()
    steps = result["step"]
    tokens_per_s = steps * cfg.batch_size * model.config.block_size / max(clock.train_s, 1e-9)
    flops = model.flops_per_token() * tokens_per_s
    name = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu"
    peak = peak_bf16(name)
    reached = next((p for p in clock.curve if p["val_loss"] <= TARGET_VAL_LOSS), None)
    return {
        "preset": preset,
        "params": model.num_params(),
        "model": model_overrides,
        "train": train_overrides,
        "steps": steps,
        "train_s": round(clock.train_s, 2),
        "first_step_s": round(clock.first_step_s, 2),
        "val_loss": round(result["val_loss"], 4),
        "best_val_loss": round(result["best_val_loss"], 4),
        "curve": clock.curve,
        "tokens_per_s": round(tokens_per_s),
        "model_tflops": round(flops / 1e12, 2),
        "mfu": "unknown" if peak is None else round(flops / peak, 4),
        "reached_target_at": reached,
    }


def mamba_cpu_vs_cuda(data: tuple[torch.Tensor, torch.Tensor, int], steps: int) -> dict[str, Any]:
    """A small Mamba from one seed on the same batches, on the CPU and on the GPU in fp32: per-step losses."""
    train_ids, val_ids, vocab_size = data
    cfg = ModelConfig.preset("mamba", vocab_size=vocab_size, n_layer=2, n_embd=64, block_size=64, d_state=8).validate()
    tc = TrainConfig(batch_size=8, max_iters=steps, lr=3e-3, warmup_iters=10, eval_interval=steps, eval_iters=4,
                     dtype="float32")  # fmt: skip
    losses, vals = {}, {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_model(cfg)  # built on the CPU from the seed, then moved: the same initial weights
        clock = Clock()
        result = Trainer(model, train_ids, val_ids, tc, callbacks=[clock], device=device).fit()
        losses[device], vals[device] = clock.losses, result["val_loss"]
    gap = max(abs(a - b) for a, b in zip(losses["cpu"], losses["cuda"]))
    return {
        "steps": steps,
        "max_loss_gap": gap,
        "val_loss_cpu": round(vals["cpu"], 5),
        "val_loss_cuda": round(vals["cuda"], 5),
        "tolerance": MAMBA_TOL,
        "matches": gap <= MAMBA_TOL and abs(vals["cpu"] - vals["cuda"]) <= MAMBA_TOL,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    ap.add_argument("--max-iters", type=int, help="override the recipes' iterations")
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=200, help="batches per evaluation (nanoGPT: 200)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--mamba-steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="200 iterations, 20 eval batches: a smoke test")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        # Status 0: `make bench` runs every script and goes on to the CPU benchmarks.
        log(f"bench_gpu.py skipped: it needs a CUDA GPU and torch {torch.__version__} sees none on this machine")
        return 0
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        log(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
        return 2
    text = read_corpus()
    if args.quick:
        args.max_iters, args.eval_iters, args.eval_interval = 200, 20, 100

    tok = CharTokenizer.train(text)
    train_ids, val_ids = split_ids(torch.tensor(tok.encode(text), dtype=torch.long), 0.1)
    data = (train_ids, val_ids, tok.vocab_size)
    name = torch.cuda.get_device_name(0)
    peak = peak_bf16(name)
    out: dict[str, Any] = {
        "benchmark": "gpu",
        "torch": torch.__version__,
        "device": name,
        "peak_bf16_tflops": "unknown" if peak is None else peak / 1e12,
        "target_val_loss": TARGET_VAL_LOSS,
        "runs": {},
    }
    common = {"eval_interval": args.eval_interval, "eval_iters": args.eval_iters}
    recipes = {"nanogpt": ("gpt2", NANOGPT_MODEL, NANOGPT_TRAIN), "best": (BEST_GPU["preset"], BEST_GPU["model"], BEST_GPU["train"])}
    for run in names:
        if run == "mamba":
            log("mamba: CPU and GPU from the same seed")
            out["mamba_cpu_vs_cuda"] = mamba_cpu_vs_cuda(data, args.mamba_steps)
            log(f"  largest per-step loss gap {out['mamba_cpu_vs_cuda']['max_loss_gap']:.2e}")
            continue
        preset, model, train = recipes[run]
        train = {**train, **common}
        if args.max_iters is not None:
            train["max_iters"] = args.max_iters
            train["warmup_iters"] = min(train["warmup_iters"], args.max_iters // 10)
        log(f"{run}: {preset} {model} {train}")
        r = train_run(preset, model, train, data, "cuda", compile=not args.no_compile, flash=True)
        out["runs"][run] = r
        mfu = r["mfu"] if r["mfu"] == "unknown" else f"{100 * r['mfu']:.1f}%"
        log(f"  {r['steps']} steps in {r['train_s']} s, val {r['val_loss']}, {r['tokens_per_s']:,} tokens/s, MFU {mfu}")
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
