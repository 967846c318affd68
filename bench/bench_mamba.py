"""Mamba speed and memory: the fast scan against the loop, a training step against GPT-2.

Run: python3 bench/bench_mamba.py [--repeats 5] [--steps 15] [--sweep] [--quality-seconds S] [--quick]

1. ``scan``: ``selective_scan`` (chunked, hand-written backward) against
   ``selective_scan_ref`` (the loop over time), forward + backward, batch 12,
   d_model 128 (d_inner 256, d_state 16), T = 64, 256, 1024, fp32; the fast
   scan both with Ā and the states kept for the backward (as a CPU runs it up
   to ``KEEP_STATES_MAX_BYTES`` per layer) and with them recomputed (above
   that, and on a GPU).
   ``--sweep`` adds the chunk sizes tried (4, 8, 16, 32, 64) at T = 64 and 256.
2. ``train_step``: ms per iteration (forward, backward, AdamW step) of the
   mamba preset (4 layers, d_model 128) beside the gpt2 preset (4 layers, 4
   heads, 128 wide), batch 12, block 64, on the same tiny Shakespeare batches,
   and the same Mamba with the loop scan swapped in. Steps are interleaved
   model by model, so a busy neighbour slows all alike.
3. ``generation``: ms per generated token at positions 100, 1000 and 4000
   (cache or state filled by a prefill first) for Mamba, the LSTM preset and
   the gpt2 transformer with its key/value cache (block 4096).
4. ``memory``: peak resident memory (VmHWM) of one Mamba training step at
   T = 1024 (batch 12), measured in a fresh subprocess for each scan: kept,
   recomputed, the loop.
5. ``quality`` (only with ``--quality-seconds S``): each of mamba, gpt2 and
   llama trains for S seconds of its own step time (interleaved, constant lr
   1e-3 after 100 warm-up steps, AdamW), then val loss on fixed windows.

Timings: the best and the median over interleaved repeats; ratios use the
medians. One JSON object on stdout; progress on stderr. The machine is shared:
compare ratios from one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from common import ROOT, emit, log, machine, read_corpus, timed

import lmcore.models.mamba as mamba_module
from lmcore.data import get_batch, split_ids
from lmcore.errors import LMCoreError
from lmcore.models import ModelConfig, build_model, lm_loss
from lmcore.models.mamba import selective_scan, selective_scan_ref
from lmcore.tokenizers import CharTokenizer
from lmcore.train import score_windows

BATCH, D_MODEL, D_STATE, EXPAND = 12, 128, 16, 2


@contextlib.contextmanager
def loop_scan() -> Iterator[None]:
    """Make every Mamba layer use the reference loop instead of the fast scan."""

    def ref(u, delta, A, B, C, h0=None, chunk_size=None):
        return selective_scan_ref(u, delta, A, B, C, h0)

    saved = mamba_module.selective_scan
    mamba_module.selective_scan = ref
    try:
        yield
    finally:
        mamba_module.selective_scan = saved


# ----------------------------------------------------------------------------------------------- 1


def scan_inputs(T: int, seed: int = 0) -> list[torch.Tensor]:
    """Inputs shaped and scaled as a freshly initialised mamba preset layer sees them."""
    E, N = EXPAND * D_MODEL, D_STATE
    g = torch.Generator().manual_seed(seed)
    u = F.silu(torch.randn(BATCH, T, E, generator=g))
    dt = torch.exp(torch.rand(E, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta = F.softplus(dt + torch.log(-torch.expm1(-dt)) + 0.1 * torch.randn(BATCH, T, E, generator=g))
    A = -torch.arange(1.0, N + 1).expand(E, N).contiguous()
    B = torch.randn(BATCH, T, N, generator=g)
    C = torch.randn(BATCH, T, N, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C)]


def bench_scan(lengths: list[int], repeats: int, chunks: list[int] | None) -> dict:
    out: dict = {"batch": BATCH, "d_model": D_MODEL, "d_inner": EXPAND * D_MODEL, "d_state": D_STATE,
                 "chunk": mamba_module.SCAN_CHUNK, "T": {}}  # fmt: skip
    for T in lengths:
        xs = scan_inputs(T)
        gy = torch.randn(BATCH, T, EXPAND * D_MODEL)

        def run(fn: Callable, xs=xs, gy=gy) -> None:
            y, _ = fn(*xs)
            torch.autograd.backward(y, gy)
            for x in xs:
                x.grad = None

        fns = {
            "fast": lambda: run(lambda *a: selective_scan(*a, keep_states=True)),
            "fast_recomputed": lambda: run(lambda *a: selective_scan(*a, keep_states=False)),
            "loop": lambda: run(selective_scan_ref),
        }
        for c in (chunks or []) if T <= 256 else []:
            fns[f"chunk{c}"] = lambda c=c: run(lambda *a: selective_scan(*a, chunk_size=c))
        reps = max(2, repeats // 2) if T >= 1024 else repeats
        log(f"scan T={T}: {len(fns)} variants x {reps} rounds")
        r = {k: t.ms() for k, t in timed(fns, reps, warmup=True).items()}
        row = {k: r[k] for k in ("fast", "fast_recomputed", "loop")}
        row["speedup"] = round(r["loop"]["median_ms"] / r["fast"]["median_ms"], 2)
        row["speedup_recomputed"] = round(r["loop"]["median_ms"] / r["fast_recomputed"]["median_ms"], 2)
        if chunks and T <= 256:
            row["chunk_sizes"] = {k: v["median_ms"] for k, v in r.items() if k.startswith("chunk")}
        out["T"][str(T)] = row
    out["target_speedup_at_256"] = 5.0
    return out


# ----------------------------------------------------------------------------------------------- 2


def make_model(preset: str, vocab: int, block: int, **extra) -> torch.nn.Module | None:
    shape = dict(n_layer=4, n_embd=D_MODEL, n_head=4) if preset != "lstm" else {}
    try:
        torch.manual_seed(0)
        return build_model(ModelConfig.preset(preset, vocab_size=vocab, block_size=block, **shape, **extra))
    except LMCoreError as e:  # a shape this preset does not accept
        log(f"skipping {preset}: {e}")
        return None


def bench_train_step(train_ids: torch.Tensor, vocab: int, steps: int) -> dict:
    g = torch.Generator().manual_seed(1337)
    batches = [get_batch(train_ids, BATCH, 64, generator=g) for _ in range(steps + 1)]
    models = {k: make_model(k, vocab, 64) for k in ("mamba", "gpt2")}
    models["mamba_loop_scan"] = make_model("mamba", vocab, 64)
    models = {k: m for k, m in models.items() if m is not None}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1) for k, m in models.items()}
    it = {k: 0 for k in models}

    def step(name: str) -> None:
        x, y = batches[it[name] % len(batches)]
        it[name] += 1
        with loop_scan() if name == "mamba_loop_scan" else contextlib.nullcontext():
            loss = lm_loss(models[name](x), y)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()

    log(f"training steps: {', '.join(models)} x {steps} interleaved")
    r = {k: t.ms() for k, t in timed({k: (lambda k=k: step(k)) for k in models}, steps, warmup=True).items()}
    out: dict = {"batch": BATCH, "block": 64, "ms_per_iter": r,
                 "params": {k: m.num_params() for k, m in models.items()}}  # fmt: skip
    if "gpt2" in r:
        out["mamba_over_gpt2"] = round(r["mamba"]["median_ms"] / r["gpt2"]["median_ms"], 2)
        out["target_ratio"], out["stretch_ratio"] = 3.0, 2.0
    out["loop_scan_over_fast_scan"] = round(r["mamba_loop_scan"]["median_ms"] / r["mamba"]["median_ms"], 2)
    return out


# ----------------------------------------------------------------------------------------------- 3


@torch.no_grad()
def bench_generation(vocab: int, positions: list[int], tokens: int) -> dict:
    block = max(positions) + tokens + 1
    out: dict = {}
    for name, preset in (("mamba", "mamba"), ("lstm", "lstm"), ("gpt2_cached", "gpt2")):
        model = make_model(preset, vocab, block)
        if model is None:
            continue
        model.eval()
        row = {}
        for p in positions:
            prompt = torch.randint(0, vocab, (1, p), generator=torch.Generator().manual_seed(p))
            cache = model.init_cache(batch_size=1)
            _, cache = model.step(prompt, cache)  # prefill to position p
            times = []
            tok = prompt[:, -1:]
            for _ in range(tokens):
                t0 = time.perf_counter()
                logits, cache = model.step(tok, cache)
                times.append((time.perf_counter() - t0) * 1e3)
                tok = logits[:, -1].argmax(-1, keepdim=True)
            row[str(p)] = round(statistics.median(times), 3)
        out[name] = row
        log(f"generation {name}: {row} ms/token")
    return out


# ----------------------------------------------------------------------------------------------- 4

_RSS_CHILD = """
import torch
torch.set_num_threads({threads})
import lmcore.models.mamba as mm
from lmcore.models import ModelConfig, build_model, lm_loss

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
if {mode!r} == "loop":
    ref = mm.selective_scan_ref
    mm.selective_scan = lambda u, d, A, B, C, h0=None, chunk_size=None: ref(u, d, A, B, C, h0)
else:
    fast = mm.selective_scan
    mm.selective_scan = lambda *a, **k: fast(*a, keep_states={mode!r} == "kept", **k)
torch.manual_seed(0)
model = build_model(ModelConfig.preset("mamba", vocab_size=65, block_size=1024, n_layer=4, n_embd=128))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 65, ({batch}, 1024)); y = torch.randint(0, 65, ({batch}, 1024))
base = hwm()
loss = lm_loss(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
print(base, hwm())
"""


def bench_memory(threads: int, loop_too: bool) -> dict:
    out = {"T": 1024, "batch": BATCH}
    for name, mode in (("fast_scan_kept", "kept"), ("fast_scan_recomputed", "recomputed"), ("loop_scan", "loop")):
        if mode == "loop" and not loop_too:
            continue
        code = _RSS_CHILD.format(threads=threads, mode=mode, batch=BATCH)
        log(f"memory: one training step at T=1024 with the {name.replace('_', ' ')} in a subprocess")
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            out[name] = {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
            continue
        base, peak = (float(v) for v in run.stdout.split())
        out[name] = {"before_step_mb": round(base, 1), "peak_mb": round(peak, 1), "step_mb": round(peak - base, 1)}
    return out


# ----------------------------------------------------------------------------------------------- 5


def bench_quality(train_ids, val_ids, vocab: int, seconds: float) -> dict:
    g = torch.Generator().manual_seed(1337)
    models = {k: make_model(k, vocab, 64) for k in ("mamba", "gpt2", "llama")}
    models = {k: m for k, m in models.items() if m is not None}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1) for k, m in models.items()}
    spent = {k: 0.0 for k in models}
    iters = {k: 0 for k in models}
    while any(spent[k] < seconds for k in models):
        x, y = get_batch(train_ids, BATCH, 64, generator=g)  # the same batch for every model in a round
        for k, m in models.items():
            if spent[k] >= seconds:
                continue
            for group in opts[k].param_groups:
                group["lr"] = 1e-3 * min(1.0, (iters[k] + 1) / 100)
            t0 = time.perf_counter()
            loss = lm_loss(m(x), y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            spent[k] += time.perf_counter() - t0
            iters[k] += 1
    starts = torch.arange(0, len(val_ids) - 65, 64)[:200]
    out = {"seconds_each": seconds}
    for k, m in models.items():
        total, _, n = score_windows(m, (val_ids[s : s + 65][None] for s in starts.tolist())).tolist()  # (1, 65) each
        out[k] = {"iters": iters[k], "val_loss": round(total / n, 4)}
        log(f"quality {k}: {out[k]}")
    return out


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per scan timing")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per model")
    ap.add_argument("--gen-tokens", type=int, default=20, help="tokens timed at each position")
    ap.add_argument("--sweep", action="store_true", help="also time the chunk sizes tried")
    ap.add_argument("--no-loop-memory", action="store_true", help="skip the loop scan's memory run (slow)")
    ap.add_argument("--quality-seconds", type=float, default=0.0, help="train mamba, gpt2, llama this long each")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="tiny repeats: checks that it runs")
    args = ap.parse_args()
    text = read_corpus()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.steps, args.gen_tokens = 2, 3, 3
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids, 0.1)
    vocab = tok.vocab_size
    t_start = time.time()
    result = {
        "machine": machine(),
        "scan": bench_scan([64, 256] if args.quick else [64, 256, 1024], args.repeats,
                           [4, 8, 16, 32, 64] if args.sweep else None),  # fmt: skip
        "train_step": bench_train_step(train_ids, vocab, args.steps),
        "generation_ms_per_token": bench_generation(vocab, [100, 1000, 4000], args.gen_tokens),
        "memory": bench_memory(args.threads, loop_too=not (args.no_loop_memory or args.quick)),
    }
    if args.quality_seconds > 0:
        result["quality"] = bench_quality(train_ids, val_ids, vocab, args.quality_seconds)
    result["elapsed_s"] = round(time.time() - t_start, 1)
    emit(result)


if __name__ == "__main__":
    main()
