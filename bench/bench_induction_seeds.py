"""The induction recipe under several seeds, as the Training page trains it.

Run: python3 bench/bench_induction_seeds.py [--seeds 1337 1 2 3 4] [--steps N]

The built-in ``induction`` corpus through the character tokenizer, split
90/10 as the app splits it, trained with ``recipes.recipe("induction")`` and
``HeadScoresCallback`` (the page's "Watch an induction head form"), once per
training seed (the seed fixes the initial weights and the batches). For each
seed: the best induction score of any head at each evaluation, the best over
the run and the step it was reached, the first step at which it passed
``recipes.INDUCTION_FORMED``, and the wall time. One JSON object on stdout,
progress on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from common import emit

from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
from lmcore.models import build_model
from lmcore.recipes import INDUCTION_FORMED, recipe
from lmcore.train import HeadScoresCallback, Trainer


def run(seed: int, steps: int | None) -> dict:
    corpus = load_corpus("builtin:induction")
    tok = build_tokenizer("char", corpus.text)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    model_cfg, tc = recipe("induction", tok.vocab_size)
    tc = dataclasses.replace(tc, seed=seed, device="cpu", **({"max_iters": steps} if steps else {}))
    torch.manual_seed(seed)  # as the app builds it: initial weights from the run's seed
    model = build_model(model_cfg)
    curve: list[tuple[int, float, float]] = []

    class Watch:
        def on_eval(self, e):
            best = max(max(row) for row in e.head_scores["induction"])
            curve.append((e.step, round(best, 3), round(e.val_loss, 3)))
            print(f"seed {seed} step {e.step}: best induction {best:.2f}, val {e.val_loss:.3f}", file=sys.stderr)

    t0 = time.perf_counter()
    Trainer(model, train_ids, val_ids, tc, callbacks=[HeadScoresCallback(), Watch()]).fit()
    best_step, best, _ = max(curve, key=lambda c: c[1])
    formed = next((s for s, b, _ in curve if b >= INDUCTION_FORMED), None)
    return {"seed": seed, "steps": tc.max_iters, "best_induction": best, "best_step": best_step,
            "formed_at": formed, "final_val_loss": curve[-1][2], "seconds": round(time.perf_counter() - t0, 1),
            "curve": curve}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = [run(s, args.steps) for s in args.seeds]
    emit({"runs": out})


if __name__ == "__main__":
    main()
