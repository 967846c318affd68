"""Interventions: what knocking out an induction head does, what hook points cost, how long a sweep takes.

Run: python3 bench/bench_intervene.py [--skip-induction] [--skip-overhead] [--skip-sweep]
                                      [--save PATH] [--base REF]

1. The induction recipe (``recipes.recipe("induction")``, 2 layers, on
   ``recipes.induction_data``), trained as bench_interpret.py trains it; then on
   the head-score probe (4 x 25 random tokens, the same 25 again), with the
   vocabulary the app's run has (257: the recipe's 256 and the character
   tokenizer's separator, never in the data): the loss on
   the repeated half with nothing ablated, with the head of the highest
   induction score zeroed, with the head of the lowest zeroed (and every head's
   row, from one ``ablation_sweep``). ``--save`` writes the trained model as a
   checkpoint the app opens (the character tokenizer of the built-in
   ``induction`` corpus gives the same ids). ``--resume CKPT --induction-steps N``
   trains a saved run N steps more (its optimizer state starts afresh).
2. Hook points with nothing attached: training steps/s (baby-GPT shape, batch
   12, block 64) and generation tokens/s (the same model, 200 tokens), gpt2 and
   mamba, this tree against ``--base`` (default: the merge base with main, the
   code before hook points), each in its own process, alternated three times;
   the ratio of medians. Beside them, the same in this tree with one no-op hook
   attached to every layer's residual point. Rates are per CPU second of the
   process (one thread), so other work on a shared machine does not skew them.
3. A full head-ablation sweep (every head of every layer zeroed in turn,
   per-token losses of each) at GPT-2 small's shape (12 layers x 12 heads x 768,
   vocabulary 50257, random weights) on a 64-token text: wall and CPU seconds.

Prints one JSON object on stdout; progress goes to stderr. One thread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, emit, log


# ---------------------------------------------------------------- 1. the induction head, knocked out


def induction(steps: int | None, save: str | None, resume: str | None = None, vocab: int | None = None) -> dict:
    from lmcore.interpret import head_scores, probe_ids
    from lmcore.intervene import ablate_heads, ablation_sweep
    from lmcore.models import build_model
    from lmcore.recipes import INDUCTION_VOCAB, induction_data, recipe
    from lmcore.train import TrainConfig, Trainer

    from lmcore.data import load_corpus
    from lmcore.tokenizers import CharTokenizer

    # The vocabulary of the app's run: the built-in induction corpus through the character
    # tokenizer gives the recipe's ids 0..255 and one more, its document separator (never in the data).
    tok = CharTokenizer.train(load_corpus("builtin:induction").text)
    model_cfg, train_cfg = recipe("induction", vocab or tok.vocab_size)
    if steps is not None:
        train_cfg = TrainConfig(**{**train_cfg.to_dict(), "max_iters": steps})
    train_ids, val_ids = induction_data()
    torch.manual_seed(0)
    model = build_model(model_cfg)
    if resume:  # a saved run of the recipe, trained ``steps`` more (fresh optimizer state)
        from lmcore.checkpoint import load_checkpoint

        model = load_checkpoint(resume).model
        model.train()

    class Watch:
        def on_eval(self, e) -> None:
            log(f"induction step {e.step}: val {e.val_loss:.3f}")

    t0 = time.perf_counter()
    Trainer(model, train_ids, val_ids, train_cfg, callbacks=[Watch()]).fit()
    seconds = time.perf_counter() - t0
    model.eval()
    if save and model.config.vocab_size == tok.vocab_size:
        from lmcore.checkpoint import save_checkpoint

        save_checkpoint(save, model, tok, train_state={"steps": train_cfg.max_iters})
        log(f"saved {save}")
    scores = head_scores(model)["induction"]  # (L, H)
    flat = scores.flatten()
    H = scores.size(1)
    top, low = divmod(int(flat.argmax()), H), divmod(int(flat.argmin()), H)
    probe = probe_ids(model)  # (4, 2 S); segments drawn from the whole vocabulary, as bench_interpret.py's
    S = probe.size(1) // 2

    def repeated_loss(logits: torch.Tensor, ids: torch.Tensor) -> float:
        # predictions at positions S..2S-2 of tokens S+1..2S-1: the second copy, after its first token
        logp = logits[0, S:-1].float().log_softmax(-1)
        return float(-logp.gather(-1, ids[S + 1 :, None]).mean())

    rows = {"none": [], "top": [], "lowest": []}
    sweep = torch.zeros(scores.shape)
    with torch.no_grad():
        for ids in probe:
            rows["none"].append(repeated_loss(model(ids[None]), ids))
            rows["top"].append(repeated_loss(ablate_heads(model, ids, [top]), ids))
            rows["lowest"].append(repeated_loss(ablate_heads(model, ids, [low]), ids))
            losses, _ = ablation_sweep(model, ids, unit="head")  # (L, H, 2S-1)
            sweep += losses[:, :, S:].mean(-1) / len(probe)
    base = statistics.mean(rows["none"])
    return {
        "steps": train_cfg.max_iters,
        "train_s": round(seconds, 1),
        "induction_scores": [[round(float(v), 3) for v in row] for row in scores],
        "top_head": list(top),
        "lowest_head": list(low),
        "repeated_half_loss": round(base, 3),
        "zero_top_head": round(statistics.mean(rows["top"]), 3),
        "zero_lowest_head": round(statistics.mean(rows["lowest"]), 3),
        "rise_top": round(statistics.mean(rows["top"]) - base, 3),
        "rise_lowest": round(statistics.mean(rows["lowest"]) - base, 3),
        "sweep_repeated_half_loss": [[round(float(v), 3) for v in row] for row in sweep],
        "log_vocab": round(math.log(INDUCTION_VOCAB), 3),
    }


# ---------------------------------------------------------------- 2. hooks off: the cost of hook points

SPEED_CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(1)
from lmcore.models import ModelConfig, build_model
from lmcore.models import lm_loss
from lmcore.sample import SamplingConfig, generate
hooked = sys.argv[1] == "hooked"
out = {}
for preset in ("gpt2", "mamba"):
    torch.manual_seed(0)
    kw = dict(n_head=4) if preset == "gpt2" else dict(d_state=16)
    model = build_model(ModelConfig.preset(preset, vocab_size=65, block_size=64, n_layer=4, n_embd=128, **kw))
    ctx = None
    if hooked:
        from lmcore.hooks import hooked as attach, layer_names
        ctx = attach(model, [(n, lambda t, name: None) for n in layer_names(model, "hook_resid_post")])
        ctx.__enter__()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(65, (12, 65), generator=torch.Generator().manual_seed(1))
    def train_step():
        loss = lm_loss(model(x[:, :-1]), x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(3):
        train_step()
    n = 20
    t0 = time.process_time()
    for _ in range(n):
        train_step()
    steps = n / (time.process_time() - t0)
    model.eval()
    cfg = SamplingConfig(temperature=0.8, seed=0)
    list(generate(model, [1, 2, 3], max_new_tokens=20, sampling=cfg))
    t0 = time.process_time()
    k = sum(1 for _ in generate(model, [1, 2, 3], max_new_tokens=200, sampling=cfg))
    out[preset] = {"train_steps_per_s": steps, "gen_tokens_per_s": k / (time.process_time() - t0)}
print(json.dumps(out))
"""


def overhead(base: str, rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "base"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, "lmcore"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        runs: dict[str, list[dict]] = {"base": [], "hooks_off": [], "hooks_on": []}
        for r in range(rounds):
            for label, path, arg in (("base", old, "off"), ("hooks_off", ROOT, "off"), ("hooks_on", ROOT, "hooked")):
                env = {"PYTHONPATH": str(path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
                res = subprocess.run([sys.executable, "-c", SPEED_CHILD, arg], env=env, capture_output=True, text=True,
                                     check=True, cwd=tmp)  # fmt: skip
                runs[label].append(json.loads(res.stdout))
                log(f"round {r} {label}: {res.stdout.strip()}")
    out: dict = {"base": base, "rounds": rounds}
    for preset in ("gpt2", "mamba"):
        entry = {}
        for metric in ("train_steps_per_s", "gen_tokens_per_s"):
            med = {k: statistics.median(run[preset][metric] for run in v) for k, v in runs.items()}
            entry[metric] = {k: round(v, 2) for k, v in med.items()}
            entry[metric]["ratio_off_vs_base"] = round(med["hooks_off"] / med["base"], 3)
            entry[metric]["ratio_on_vs_off"] = round(med["hooks_on"] / med["hooks_off"], 3)
        out[preset] = entry
    return out


# ---------------------------------------------------------------- 3. a full head sweep at GPT-2 small's shape


def gpt2_small_sweep(batch_size: int) -> dict:
    from lmcore.intervene import ablation_sweep
    from lmcore.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig.preset("gpt2", vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    model = build_model(cfg).eval()
    ids = torch.randint(50257, (64,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t0 = time.perf_counter()
        model(ids[None])
        one = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    losses, clean = ablation_sweep(model, ids, unit="head", batch_size=batch_size)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert losses.shape == (12, 12, 63)
    return {"heads": 144, "tokens": 64, "batch_size": batch_size, "sweep_s": round(seconds, 1), "sweep_cpu_s": round(cpu, 1),
            "one_forward_s": round(one, 3), "params_m": round(model.num_params() / 1e6, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-induction", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--induction-steps", type=int, default=None)
    parser.add_argument("--save", default=None, help="write the trained induction model to this checkpoint")
    parser.add_argument("--resume", default=None, help="train this saved induction model --induction-steps more")
    parser.add_argument("--vocab", type=int, default=None,
                        help="the model's vocabulary (256: the recipe's own, as bench_interpret.py; not saved)")
    parser.add_argument("--base", default=None, help="git ref of the code without hook points")
    parser.add_argument("--sweep-batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict = {}
    if not args.skip_sweep:
        out["gpt2_small_head_sweep"] = gpt2_small_sweep(args.sweep_batch)
        log(json.dumps(out["gpt2_small_head_sweep"]))
    if not args.skip_overhead:
        base = args.base or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                           capture_output=True, text=True).stdout.strip()  # fmt: skip
        out["hooks_overhead"] = overhead(base)
        log(json.dumps(out["hooks_overhead"]))
    if not args.skip_induction:
        out["induction"] = induction(args.induction_steps, args.save, args.resume, args.vocab)
    emit(out)


if __name__ == "__main__":
    main()
