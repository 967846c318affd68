"""Sparse autoencoders: cross-entropy recovered, L0 and dead features on the baby GPT, and how long it takes.

Run: python3 bench/bench_sae.py [--checkpoint CKPT] [--data PATH] [--train-budget S] [--epochs E]

Without ``--checkpoint`` it first trains the baby GPT shape (gpt2 preset, 4 layers
x 128, block 64, batch 12, the baby-gpt recipe's settings) on ``--data``
(default: tiny Shakespeare under ../shared, characters) for at most
``--train-budget`` seconds, through the CLI. Then an SAE with 1024 features,
k = 16 on the residual stream after block 2 (``blocks.2.hook_resid_post``) is
trained on the first 90% of the text and evaluated on 50k held-out tokens of
the last 10%. Prints one JSON object on stdout; progress goes to stderr.

``--baseline REV`` also times ``lmcore/sae.py`` as it was at git revision REV
against the current one, side by side in this process on the same model and
tokens (``--baseline-epochs`` of a pass each, alternated ``--repeats`` times,
the current one first and last), so a loaded machine slows both alike: compare
the ratio of the fastest of each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CORPUS, ROOT, emit

from lmcore.checkpoint import load_checkpoint
from lmcore.data import encode_corpus, load_corpus
from lmcore.sae import evaluate_sae, feature_activations, logit_effects, train_sae

BABY = ["--preset", "gpt2", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64",
        "--batch-size", "12", "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", "100", "--weight-decay", "0.1",
        "--grad-clip", "1.0", "--max-iters", "2000", "--eval-interval", "250", "--eval-iters", "20"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint")
    ap.add_argument("--data", default=str(CORPUS))
    ap.add_argument("--train-budget", type=float, default=600)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--n-features", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--hook", default="blocks.2.hook_resid_post")
    ap.add_argument("--baseline", help="a git revision whose lmcore/sae.py is timed against the current one")
    ap.add_argument("--baseline-epochs", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=1, help="baseline runs, each between two current ones")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {}
    ckpt_path = args.checkpoint
    if ckpt_path is None:
        ckpt_path = str(Path(tempfile.mkdtemp()) / "baby.safetensors")
        t0 = time.time()
        cmd = [sys.executable, "-m", "lmcore", "train", "--data", args.data, *BABY,
               "--time-budget", str(args.train_budget), "--out", ckpt_path]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr)
        out["model_train"] = {**json.loads(proc.stdout.splitlines()[-1]), "wall_s": round(time.time() - t0, 1)}
        print(f"model trained in {time.time() - t0:.0f}s: {ckpt_path}", file=sys.stderr)
    ckpt = load_checkpoint(ckpt_path)
    ids = encode_corpus(ckpt.tokenizer, load_corpus(args.data))
    n = int(len(ids) * 0.9)
    train_ids, held = ids[:n], ids[n : n + 50_001]
    if args.baseline:
        out["side_by_side"] = side_by_side(ckpt.model, train_ids, held, args)
    t0 = time.time()
    cpu0 = time.process_time()
    sae = train_sae(ckpt.model, train_ids, hook=args.hook, n_features=args.n_features, k=args.k, epochs=args.epochs,
                    progress=lambda d, t: print(f"\r{d:,}/{t:,} tokens", end="", file=sys.stderr))  # fmt: skip
    print(file=sys.stderr)
    out["sae_train"] = {"tokens": sae.info["tokens"], "steps": sae.info["steps"], "wall_s": round(time.time() - t0, 1),
                        "cpu_s": round(time.process_time() - cpu0, 1)}  # fmt: skip
    out["eval"] = evaluate_sae(ckpt.model, sae, held)
    acts = feature_activations(ckpt.model, sae, held)
    t0 = time.time()
    ctx = acts.top_contexts(int(acts.density().argmax()), n=10)
    logit_effects(ckpt.model, sae)
    out["feature_click_s"] = round(time.time() - t0, 3)
    out["top_context_tokens"] = ckpt.tokenizer.decode(ctx[0].tokens) if ctx else ""
    emit(out, indent=None)


def module_at(rev: str):
    """lmcore/sae.py as it was at git revision ``rev``, imported under another name."""
    show = ["git", "show", f"{rev}:lmcore/sae.py"]
    source = subprocess.run(show, cwd=ROOT, capture_output=True, text=True, check=True)
    path = Path(tempfile.mkdtemp()) / "sae_baseline.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("sae_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sae_baseline"] = module
    spec.loader.exec_module(module)
    return module


def side_by_side(model, train_ids, held, args) -> dict:
    """Wall and CPU seconds of the current train_sae and the baseline's, alternated (current, baseline, ..., current)."""
    import lmcore.sae as current

    baseline = module_at(args.baseline)
    runs: dict[str, list] = {"current": [], "baseline": []}
    order = [("current", current), ("baseline", baseline)] * args.repeats + [("current", current)]
    for name, module in order:
        t0, cpu0 = time.time(), time.process_time()
        sae = module.train_sae(model, train_ids, hook=args.hook, n_features=args.n_features, k=args.k,
                               epochs=args.baseline_epochs)  # fmt: skip
        wall, cpu = time.time() - t0, time.process_time() - cpu0
        ev = module.evaluate_sae(model, sae, held)
        runs[name].append({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "tokens": sae.info["tokens"],
                           "ce_recovered": round(ev["ce_recovered"], 4),
                           "dead_fraction": round(ev["dead_fraction"], 4)})  # fmt: skip
        print(f"{name}: {wall:.0f}s wall, {cpu:.0f}s CPU", file=sys.stderr)
    best = {name: min(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    walls = {name: min(r["wall_s"] for r in rs) for name, rs in runs.items()}
    return {"baseline": args.baseline, "epochs": args.baseline_epochs, **runs,
            "cpu_ratio": round(best["baseline"] / best["current"], 2),
            "wall_ratio": round(walls["baseline"] / walls["current"], 2)}  # fmt: skip


if __name__ == "__main__":
    main()
