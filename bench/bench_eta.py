"""How right the Training page's "about m:ss left" is: the estimate against the time the run really took.

Run: python3 bench/bench_eta.py [--steps 400] [--eval-every 50] [--threads]

A real run of a small gpt2 (2 layers, 64 wide, block 64, batch 8) on the
built-in python-docs corpus, started as the app starts one (a process of its
own through ``JobRegistry``; ``--threads``: a thread of this process, as
before), with an evaluation (head scores and a text sample included) every
``--eval-every`` steps. ``progress()`` is read every half second; once the run
has ended, each reading's estimate is compared with the time that was really
left. Reported for the readings between 10% and 95% of the steps: the median
and largest relative error of the estimate (``remaining_seconds``: recent step
time plus the evaluations to come) and, from the same readings, of the
average since the start (steps left / (steps done / seconds elapsed)).
One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import emit

from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
from lmcore.jobs import JobRegistry, RunSpec
from lmcore.models import ModelConfig
from lmcore.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", action="store_true", help="run in a thread of this process")
    ap.add_argument("--save-log", type=Path, default=None, help="keep a copy of the run's log here")
    args = ap.parse_args()
    corpus = load_corpus("builtin:python-docs")
    tok = build_tokenizer("char", corpus.text)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=64)
    tc = TrainConfig(max_iters=args.steps, batch_size=8, eval_interval=args.eval_every, eval_iters=10, device="cpu")
    readings = []
    with tempfile.TemporaryDirectory() as tmp:
        job = JobRegistry(processes=not args.threads).start(RunSpec("eta", cfg, tok, train_ids, val_ids, tc), tmp)
        t0 = time.monotonic()
        while job.is_alive:
            p = job.progress()
            if p["eta_s"] is not None and p["step"] > 0:
                readings.append((time.monotonic(), p["step"], p["eta_s"], p["elapsed_s"], job._first_step))
            time.sleep(0.5)
        t_end = time.monotonic()
        assert job.status == "finished", job.error
        if args.save_log:
            shutil.copy(Path(tmp) / "eta.metrics.jsonl", args.save_log)

    def errors(kind: str) -> list[float]:
        out = []
        for t, step, eta, elapsed, first in readings:
            if not 0.1 * args.steps <= step <= 0.95 * args.steps:
                continue
            truth = t_end - t
            guess = eta if kind == "new" else (args.steps - step) * elapsed / max(step - (first or 0), 1)
            out.append(abs(guess - truth) / truth)
        return out

    new, old = errors("new"), errors("old")
    emit({
        "steps": args.steps, "eval_every": args.eval_every, "process": not args.threads,
        "run_s": round(t_end - t0, 1), "readings": len(new), "load_avg": os.getloadavg(),
        "estimate_error_median": round(statistics.median(new), 3), "estimate_error_max": round(max(new), 3),
        "average_since_start_error_median": round(statistics.median(old), 3),
        "average_since_start_error_max": round(max(old), 3),
    })  # fmt: skip


if __name__ == "__main__":
    main()
