"""Generation speed: the key/value cache against recomputing the whole context.

Run: python3 bench/bench_generate.py [--new-tokens 500] [--block 256] [--repeats 3] [--quick]

1. Tokens/s generating ``--new-tokens`` tokens at block_size ``--block`` with a
   baby-GPT-shaped model (4 layers, 4 heads, 128 wide, char vocabulary of tiny
   Shakespeare): through ``lmcore.sample.generate`` (prefill, then one cached
   ``step`` per token, re-prefilling half a block when the cache is full)
   against a loop that runs ``forward`` over the last block of tokens for every
   new token (nanoGPT's ``generate``). Both draw with the same filter
   (``filter_probs``) and the same seeded generator, gpt2 and llama presets.
2. Per-token cost with the cache at positions 100, 1000 and 4000 (block 4096),
   beside the cost of one forward over that many tokens.
3. A correctness check: greedy decoding with and without the cache gives the
   same tokens until the first crop.

Prints one JSON object on stdout; progress goes to stderr. Timings are medians
over ``--repeats``; compare the ratios (same process, same machine), not the
absolute figures, on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import emit, log, machine, read_corpus, timed

from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer


def make_model(preset: str, vocab_size: int, block_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(preset, vocab_size=vocab_size, block_size=block_size, n_layer=4, n_head=4, n_embd=128)
    return build_model(cfg).eval()


def generate_cached(model, prompt: list[int], n: int, temperature: float, seed: int) -> list[int]:
    """The library's sampler: prefill, then one cached step per token."""
    from lmcore.sample import SamplingConfig, generate

    cfg = SamplingConfig(temperature=temperature, seed=seed)
    return [e.token_id for e in generate(model, list(prompt), max_new_tokens=n, sampling=cfg)]


@torch.no_grad()
def generate_recompute(model, prompt: list[int], n: int, temperature: float, seed: int) -> list[int]:
    """No cache: a full forward over the last block_size tokens for every new token."""
    from lmcore.sample import filter_probs

    gen = torch.Generator().manual_seed(seed)
    block = model.config.block_size
    context = list(prompt)
    out = []
    for _ in range(n):
        idx = torch.tensor([context[-block:]], dtype=torch.long)  # (1, <= block)
        logits = model(idx)[0, -1]  # (V,)
        probs = filter_probs(logits, temperature)
        token = int(probs.argmax()) if temperature == 0 else int(torch.multinomial(probs, 1, generator=gen))
        context.append(token)
        out.append(token)
    return out


@torch.no_grad()
def per_position_cost(model, positions: list[int], steps: int, repeats: int) -> dict[str, dict[str, float]]:
    """ms per cached step just after ``p`` tokens, and ms for one forward over p + 1 tokens."""
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    out = {}
    for p in positions:
        seq = torch.randint(0, V, (1, p + steps), generator=g)
        step_ms, fwd_ms = [], []
        for _ in range(repeats):
            cache = model.init_cache(batch_size=1)
            model.step(seq[:, :p], cache)  # prefill p tokens in one call
            t0 = time.perf_counter()
            for i in range(p, p + steps):
                model.step(seq[:, i : i + 1], cache)
            step_ms.append((time.perf_counter() - t0) / steps * 1e3)
            t0 = time.perf_counter()
            model(seq[:, : p + 1])
            fwd_ms.append((time.perf_counter() - t0) * 1e3)
        s, f = statistics.median(step_ms), statistics.median(fwd_ms)
        out[str(p)] = {"cached_step_ms": round(s, 4), "full_forward_ms": round(f, 3), "ratio": round(f / s, 1)}
        log(f"  position {p}: cached step {s:.3f} ms, full forward {f:.2f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=500)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--positions", default="100,1000,4000")
    ap.add_argument("--long-block", type=int, default=4096)
    ap.add_argument("--presets", default="gpt2,llama")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats: checks that it runs")
    ap.add_argument("--threads", type=int, default=2, choices=(1, 2),
                    help="CPU threads; 1 is steadier when other work shares the two cores")
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.repeats, args.positions, args.presets = 120, 1, "100,1000", "gpt2"
    text = read_corpus()
    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))

    tok = CharTokenizer.train(text)
    prompt = tok.encode(text[:16])  # "First Citizen:\nB"
    result: dict[str, object] = {
        "benchmark": "generate",
        **machine(),
        "vocab_size": tok.vocab_size,
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "block_size": args.block,
        "model": "4 layers, 4 heads, 128 wide (random init: speed only)",
        "presets": {},
    }
    for preset in args.presets.split(","):
        model = make_model(preset, tok.vocab_size, args.block)
        log(f"{preset}: {model.num_params():,} parameters, block {args.block}")
        # Greedy decoding must agree until the cache is first cropped (after block - prompt tokens).
        n_exact = args.block - len(prompt) + 1
        a = generate_cached(model, prompt, n_exact, 0.0, 0)
        b = generate_recompute(model, prompt, n_exact, 0.0, 0)
        agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        generate_cached(model, prompt, 20, 1.0, 0)  # warm-up
        generate_recompute(model, prompt, 20, 1.0, 0)
        cached_s, recompute_s = [], []
        for r in range(args.repeats):
            cached_s.append(timed(lambda: generate_cached(model, prompt, args.new_tokens, 1.0, r)).best)
            recompute_s.append(timed(lambda: generate_recompute(model, prompt, args.new_tokens, 1.0, r)).best)
            log(f"  repeat {r}: cached {cached_s[-1]:.2f} s, recompute {recompute_s[-1]:.2f} s")
        c, rc = statistics.median(cached_s), statistics.median(recompute_s)
        result["presets"][preset] = {
            "params": model.num_params(),
            "cached_tokens_per_s": round(args.new_tokens / c, 1),
            "recompute_tokens_per_s": round(args.new_tokens / rc, 1),
            "speedup": round(rc / c, 2),
            "greedy_tokens_equal_before_crop": f"{agree}/{n_exact}",
        }
        log(f"  {preset}: cached {args.new_tokens / c:.0f} tok/s, recompute {args.new_tokens / rc:.0f} tok/s, x{rc / c:.2f}")

    positions = [int(p) for p in args.positions.split(",")]
    long_block = max(args.long_block, max(positions) + 64)
    model = make_model("gpt2", tok.vocab_size, long_block)
    log(f"per-token cost, gpt2, block {long_block}")
    result["per_position"] = {
        "preset": "gpt2",
        "block_size": long_block,
        "steps_timed": 32,
        "positions": per_position_cost(model, positions, 32, args.repeats),
    }
    emit(result)


if __name__ == "__main__":
    main()
