"""Looking inside: the cost of each view, of head scores during training, and the induction recipe.

Run: python3 bench/bench_interpret.py [--skip-induction] [--induction-steps N]

1. Each view of ``lmcore.interpret`` and its figures in ``lmcore.viz`` on a tiny model
   (gpt2 and mamba presets, 2 layers, 2 heads, 64 wide, block 256) with a
   256-token text: median seconds over 5 runs.
2. Head scores at every evaluation: a baby-GPT-shaped run (4 x 128, block 64,
   batch 12) of 200 steps evaluating every 50 (five times the default rate),
   with ``HeadScoresCallback``; its time as a share of the run.
3. The induction recipe (``recipes.recipe("induction")``) with 2 layers and
   with 1, on ``recipes.induction_data``: the best induction score of any
   head, and the loss on the probe's repeated half against log(vocabulary).

Prints one JSON object on stdout; progress goes to stderr. One thread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from common import emit, timed

from lmcore import viz
from lmcore.interpret import embedding_map, head_scores, logit_lens, probe_ids, token_losses
from lmcore.models import ModelConfig, build_model
from lmcore.recipes import INDUCTION_VOCAB, induction_data, recipe
from lmcore.train import HeadScoresCallback, TrainConfig, Trainer


def median_s(fn, repeats: int = 5) -> float:
    return round(timed(fn, repeats).median, 4)


def views(preset: str) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=65, block_size=256, n_layer=2, n_head=2, n_embd=64)
    model = build_model(cfg).eval()
    ids = torch.randint(65, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    tokens = [chr(33 + i) for i in ids]
    label = lambda i: chr(33 + i)  # noqa: E731
    result = token_losses(model, ids)
    lens = logit_lens(model, ids[:48])
    emap = embedding_map(model)
    return {
        "token_losses": median_s(lambda: token_losses(model, ids)),
        "surprise_html": median_s(lambda: viz.surprise_html(tokens, result, label)),
        "logit_lens (256 positions)": median_s(lambda: logit_lens(model, ids)),
        "logit_lens_heatmap (48 positions)": median_s(lambda: viz.logit_lens_heatmap(lens, tokens[:48], label)),
        "head_scores": median_s(lambda: head_scores(model)),
        "embedding_map": median_s(lambda: embedding_map(model)),
        "embedding_scatter": median_s(lambda: viz.embedding_scatter(emap, [label(i) for i in range(65)])),
    }


def head_score_overhead() -> dict[str, float]:
    torch.manual_seed(0)
    ids = torch.randint(65, (60_000,), generator=torch.Generator().manual_seed(1))
    model = build_model(ModelConfig.preset("gpt2", vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    measure = HeadScoresCallback()
    cfg = TrainConfig(batch_size=12, max_iters=200, warmup_iters=20, eval_interval=50, eval_iters=20, device="cpu")
    t0 = time.perf_counter()
    Trainer(model, ids[:54_000], ids[54_000:], cfg, callbacks=[measure]).fit()
    total = time.perf_counter() - t0
    evals = 200 // 50
    return {
        "run_s": round(total, 2),
        "evals": evals,
        "head_scores_s_per_eval": round(measure.seconds / evals, 4),
        "share_of_run_pct": round(100 * measure.seconds / total, 2),
    }


def induction(n_layer: int, steps: int | None) -> dict[str, float]:
    model_cfg, train_cfg = recipe("induction", INDUCTION_VOCAB)
    model_cfg = model_cfg.replace(n_layer=n_layer)
    if steps is not None:
        train_cfg = TrainConfig(**{**train_cfg.to_dict(), "max_iters": steps, "warmup_iters": min(100, steps // 10)})
    train_ids, val_ids = induction_data()
    torch.manual_seed(0)
    model = build_model(model_cfg)
    curve = []

    class Watch:
        def on_eval(self, e) -> None:
            best = max(max(row) for row in e.head_scores["induction"])
            curve.append((e.step, round(best, 3)))
            print(f"{n_layer} layers, step {e.step}: val {e.val_loss:.3f}, best induction {best:.2f}", file=sys.stderr)

    t0 = time.perf_counter()
    Trainer(model, train_ids, val_ids, train_cfg, callbacks=[HeadScoresCallback(), Watch()]).fit()
    seconds = time.perf_counter() - t0
    probe = probe_ids(model)  # a segment length the data never has
    S = probe.size(1) // 2
    repeated = []
    for row in probe:
        result = token_losses(model, row)
        repeated.append(float(result.losses[S:].mean()))  # predicting the second copy's tokens 2..S
    scores = head_scores(model)
    return {
        "layers": n_layer,
        "steps": train_cfg.max_iters,
        "train_s": round(seconds, 1),
        "best_induction_score": round(float(scores["induction"].max()), 3),
        "best_previous_token_score": round(float(scores["previous_token"].max()), 3),
        "repeated_half_loss": round(statistics.mean(repeated), 3),
        "log_vocab": round(math.log(INDUCTION_VOCAB), 3),
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-induction", action="store_true")
    parser.add_argument("--induction-steps", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict = {"views_s": {p: views(p) for p in ("gpt2", "mamba")}}
    print(json.dumps(out), file=sys.stderr)
    out["head_score_overhead"] = head_score_overhead()
    print(json.dumps(out["head_score_overhead"]), file=sys.stderr)
    if not args.skip_induction:
        out["induction"] = [induction(n, args.induction_steps) for n in (2, 1)]
    emit(out)


if __name__ == "__main__":
    main()
