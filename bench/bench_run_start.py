"""How long an app run takes to start: forked from the launcher against a fresh interpreter.

The app starts every run as a process of its own (``lmcore.jobs.JobRegistry``). On Linux it forks
each from a launcher that has imported torch once (``lmcore.launcher``); ``LMCORE_FORK_RUNS=0``
starts a fresh ``python -m lmcore.runs`` instead. Each round starts one tiny run each way, taking
turns, and times ``start()`` to the run's first step and to its end (200 steps of a tiny model), and
the CPU seconds the run's process had used by its first step (from /proc: the forked run's own).

    python bench/bench_run_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import emit, log, machine

from lmcore import launcher
from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
from lmcore.jobs import JobRegistry, RunSpec
from lmcore.models import ModelConfig
from lmcore.train import TrainConfig


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(registry: JobRegistry, spec: RunSpec, folder: str) -> dict[str, float]:
    t0 = time.perf_counter()
    job = registry.start(spec, folder)
    while not job.events_since(0):
        time.sleep(0.005)
    first = time.perf_counter() - t0
    cpu = _cpu_s(job.pid)  # the run is 200 steps long: still alive at its first step
    job.wait()
    return {"first_step_s": first, "cpu_to_first_step_s": cpu, "whole_run_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not launcher.supported():
        log("runs are forked on Linux only; nothing to compare here")
        raise SystemExit(2)
    corpus = load_corpus("builtin:python-names")
    tok = build_tokenizer("char", corpus.text)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=16)
    tc = TrainConfig(max_iters=200, batch_size=4, eval_interval=100, eval_iters=2, warmup_iters=2, device="cpu")
    registry = JobRegistry(max_concurrent=1)
    results: dict[str, list[dict[str, float]]] = {"forked": [], "fresh": []}
    with tempfile.TemporaryDirectory() as folder:
        launcher.warm(wait_s=120)
        one_run(registry, RunSpec("warmup", cfg, tok, train_ids, val_ids, tc), folder)
        for r in range(args.rounds):
            for way in results:
                os.environ[launcher.FORK_ENV] = "1" if way == "forked" else "0"
                results[way].append(one_run(registry, RunSpec(f"{way}-{r}", cfg, tok, train_ids, val_ids, tc), folder))
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{w} {v[-1]['first_step_s']:.2f}s" for w, v in results.items()))
    table = {way: {k: round(statistics.median(x[k] for x in rows), 3) for k in rows[0]} for way, rows in results.items()}
    ratio = round(table["fresh"]["first_step_s"] / table["forked"]["first_step_s"], 2)
    emit({"benchmark": "run_start", "machine": machine(), "rounds": args.rounds, "median": table,
          "first_step_fresh_over_forked": ratio})  # fmt: skip


if __name__ == "__main__":
    main()
