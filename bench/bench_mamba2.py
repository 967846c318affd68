"""Mamba-2 against Mamba-1: the SSD in chunks against the selective scan, and a training step of each.

Run: python3 bench/bench_mamba2.py [--repeats 3] [--quick]

1. ``scan``: the sequence mixing alone, forward + backward, inner width 256,
   batch 16, T = 256, fp32: Mamba-1's fast ``selective_scan`` (state 16 per
   channel) against Mamba-2's ``ssd_chunked`` (16 heads of 16 channels, state
   64 per head, chunks of 64) and its plain recurrence ``ssd_ref``.
2. ``train_step``: ms per forward + backward of the mamba and mamba2 presets at
   the same shape (3 layers, width 192, vocabulary 65, batch 16) for T = 256
   and T = 64, and their parameter counts; beside them the mamba2 preset with
   heads of 64 channels (``mamba2_head64``: 6 heads, mamba_ssm's head size)
   and the same state of 64.

Steps are interleaved model by model, so a busy neighbour slows all alike;
ratios use the medians of one run. One JSON object on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F

from common import emit, log, machine, timed

from lmcore.models import ModelConfig, build_model, lm_loss
from lmcore.models.mamba import selective_scan
from lmcore.models.mamba2 import ssd_chunked, ssd_ref


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per call of each function: one warm-up each, then ``repeats`` rounds taking turns."""
    times = timed(fns, repeats, warmup=True, rounds=True)
    return {k: {"best_s": t.best, "median_s": t.median} for k, t in times.items()}


def bench_scan(repeats: int, T: int, batch: int = 16, width: int = 256) -> dict:
    g = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).requires_grad_()

    # Mamba-1: a decay per channel and state (E x N = 256 x 16)
    u, delta = leaf(batch, T, width), F.softplus(torch.randn(batch, T, width, generator=g) - 2).requires_grad_()
    A1, B1, C1 = leaf(width, 16), leaf(batch, T, 16), leaf(batch, T, 16)
    # Mamba-2: 16 heads of 16 channels, one decay per head, state 64 per head
    H, P, N = width // 16, 16, 64
    x, dt = leaf(batch, T, H, P), F.softplus(torch.randn(batch, T, H, generator=g) - 2).requires_grad_()
    A2, B2, C2 = leaf(H), leaf(batch, T, 1, N), leaf(batch, T, 1, N)

    def mamba1() -> None:
        y, _ = selective_scan(u, delta, -A1.exp(), B1, C1)
        y.square().mean().backward()

    def mamba2() -> None:
        y, _ = ssd_chunked(x, dt, -A2.exp(), B2, C2, chunk_size=64)
        y.square().mean().backward()

    def mamba2_loop() -> None:
        y, _ = ssd_ref(x, dt, -A2.exp(), B2, C2)
        y.square().mean().backward()

    res = interleaved({"mamba1_scan": mamba1, "mamba2_ssd": mamba2, "mamba2_recurrence": mamba2_loop}, repeats)
    med = {k: v["median_s"] for k, v in res.items()}
    return {"T": T, "batch": batch, "inner_width": width, **res,
            "ssd_over_mamba1_scan": med["mamba2_ssd"] / med["mamba1_scan"],
            "ssd_over_recurrence": med["mamba2_ssd"] / med["mamba2_recurrence"]}  # fmt: skip


def bench_train_step(repeats: int, T: int, batch: int = 16) -> dict:
    models, fns = {}, {}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 65, (batch, T), generator=g)
    y = torch.randint(0, 65, (batch, T), generator=g)
    for name, preset, extra in (("mamba", "mamba", {}), ("mamba2", "mamba2", {}),
                                ("mamba2_head64", "mamba2", {"ssm_head_dim": 64})):  # fmt: skip
        torch.manual_seed(0)
        cfg = ModelConfig.preset(preset, vocab_size=65, block_size=T, n_layer=3, n_embd=192, **extra)
        model = build_model(cfg).train()
        models[name] = model

        def step(model=model) -> None:
            model.zero_grad(set_to_none=True)
            lm_loss(model(x), y).backward()

        fns[name] = step
    res = interleaved(fns, repeats)
    params = {k: m.num_params() for k, m in models.items()}
    ratios = {f"{k}_over_mamba": res[k]["median_s"] / res["mamba"]["median_s"] for k in ("mamba2", "mamba2_head64")}
    return {"T": T, "batch": batch, "shape": "3 x 192", **res, "params": params, **ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="T = 64 only, one repeat: checks that it runs")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    lengths = (64,) if args.quick else (256, 64)
    out = machine()
    log("scan alone, forward + backward")
    out["scan"] = [bench_scan(repeats, T) for T in lengths]
    log("training step (forward + backward), 3 x 192, batch 16")
    out["train_step"] = [bench_train_step(repeats, T) for T in lengths]
    emit(out)


if __name__ == "__main__":
    main()
