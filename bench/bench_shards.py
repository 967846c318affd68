"""Benchmark: token shards and torchrun on a CPU.

1. ``prepare`` of a large corpus (tiny Shakespeare repeated to ``--corpus-mb``
   MB in a temporary folder, deleted afterwards): wall time, MB/s and the peak
   RSS of the ``python -m lmcore prepare`` process, for char and BPE (BPE on
   the first ``--bpe-mb`` MB when that is smaller: a pure-Python encoder).
2. The memmap batch sampler alone: tokens/s of ``get_batch`` over the shards.
3. Peak RSS of the same short training run on the large prepared corpus and
   on a 1 MB one.
4. torchrun with 2 CPU ranks of 1 thread each against 1 process with 2
   threads, the same global batch: tokens/s of each, ``--repeats`` times,
   interleaved (the machine may be shared: the spread is reported).

Run: python3 bench/bench_shards.py [--corpus-mb 1000] [--bpe-mb 1000] [--repeats 3] [--parts char,bpe,sampler,rss,torchrun]
``prepare`` figures include the process's CPU seconds, so a busy machine's
wall time can be told from the work itself. Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, corpus_path, emit, log
from lmcore import runlog
from lmcore.data import get_batch
from lmcore.shards import load_prepared

BPE_SAMPLE_MB = 1  # the vocabulary's training sample (pure Python: minutes for a few MB)
MODEL = ["--preset", "gpt2", "--n-layer", "2", "--n-head", "4", "--n-embd", "128", "--block-size", "128", "--device", "cpu"]


def peak_rss(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Run ``cmd`` under a fresh helper process: (wall s, its own peak RSS in MB, its CPU s)."""
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "subprocess.run(json.loads(sys.argv[1]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps([time.perf_counter() - t, r.ru_maxrss / 1024, r.ru_utime + r.ru_stime]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cmd)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    wall, rss, cpu = json.loads(out.stdout)
    return wall, rss, cpu


def build_corpus(path: Path, mb: int) -> int:
    text = corpus_path().read_bytes()
    target = mb * 1_000_000
    with open(path, "wb") as f:
        written = 0
        while written < target:
            f.write(text)
            written += len(text)
    return written


def prepare(src: Path, out: Path, kind: str) -> dict:
    cmd = [sys.executable, "-m", "lmcore", "prepare", "--data", str(src), "--tokenizer", kind, "--out", str(out)]
    if kind == "bpe":
        cmd += ["--vocab-size", "512", "--bpe-sample-mb", str(BPE_SAMPLE_MB)]
    wall, rss, cpu = peak_rss(cmd)
    size = src.stat().st_size
    meta = json.loads((out / "meta.json").read_text())
    return {"mb": round(size / 1e6, 1), "seconds": round(wall, 1), "mb_per_s": round(size / 1e6 / wall, 2),
            "cpu_seconds": round(cpu, 1), "mb_per_cpu_s": round(size / 1e6 / cpu, 2),
            "peak_rss_mb": round(rss), "tokens": meta["train_tokens"] + meta["val_tokens"]}  # fmt: skip


def sampler(directory: Path, batches: int = 2000, batch: int = 64, block: int = 256) -> float:
    p = load_prepared(directory)
    g = torch.Generator().manual_seed(0)
    get_batch(p.train, batch, block, generator=g)
    t0 = time.perf_counter()
    for _ in range(batches):
        get_batch(p.train, batch, block, generator=g)
    return batches * batch * block / (time.perf_counter() - t0)


def train_rss(data: Path, out: Path, steps: int) -> float:
    cmd = [sys.executable, "-m", "lmcore", "train", "--data", str(data), *MODEL, "--batch-size", "16",
           "--max-iters", str(steps), "--eval-interval", str(steps), "--eval-iters", "5", "--out", str(out)]  # fmt: skip
    return peak_rss(cmd, {"OMP_NUM_THREADS": "2"})[1]


def throughput(data: Path, out: Path, ranks: int, steps: int) -> float:
    """Tokens/s of the steps after the first 5, from the run's log."""
    args = ["--data", str(data), *MODEL, "--max-iters", str(steps), "--eval-interval", str(steps + 1),
            "--eval-iters", "1", "--out", str(out)]  # fmt: skip
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "lmcore", "train", *args, "--batch-size", "8"]  # fmt: skip
        env = {"OMP_NUM_THREADS": "1"}
    else:
        cmd = [sys.executable, "-m", "lmcore", "train", *args, "--batch-size", "8", "--grad-accum", "2"]
        env = {"OMP_NUM_THREADS": "2"}
    runlog.log_path(out).unlink(missing_ok=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    steps_ = [r for r in runlog.read_log(out) if r["kind"] == "step"]
    a, b = steps_[4], steps_[-1]
    return (b["tokens"] - a["tokens"]) / (b["time"] - a["time"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus-mb", type=int, default=1000)
    ap.add_argument("--bpe-mb", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--ddp-steps", type=int, default=40)
    ap.add_argument("--parts", default="char,bpe,sampler,rss,torchrun", help="which measurements to take")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="lmcore-bench-shards-"))
    result: dict = _Loud(cpu_count=os.cpu_count(), torch=torch.__version__)
    try:
        big = work / "big.txt"
        log(f"building a {args.corpus_mb} MB corpus in {work}")
        build_corpus(big, args.corpus_mb)
        if parts & {"char", "sampler", "rss"}:
            log("prepare (char)")
            result["prepare_char"] = prepare(big, work / "char", "char")
        if "bpe" in parts:
            bpe_src = big
            if args.bpe_mb < args.corpus_mb:
                bpe_src = work / "bpe.txt"
                build_corpus(bpe_src, args.bpe_mb)
            log(f"prepare (bpe) of {bpe_src.stat().st_size / 1e6:.0f} MB")
            result["prepare_bpe"] = prepare(bpe_src, work / "bpe", "bpe")
            (work / "bpe.txt").unlink(missing_ok=True)
        big.unlink()
        if "sampler" in parts:
            log("batch sampler")
            result["sampler_tokens_per_s"] = round(sampler(work / "char"))
        small = work / "small.txt"
        build_corpus(small, 1)
        subprocess.run([sys.executable, "-m", "lmcore", "prepare", "--data", str(small), "--out", str(work / "small")],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True)  # fmt: skip
        if "rss" in parts:
            log("training RSS, large vs small corpus")
            result["train_peak_rss_mb"] = {
                f"{args.corpus_mb}MB": round(train_rss(work / "char", work / "big.safetensors", args.train_steps)),
                "1MB": round(train_rss(work / "small", work / "small.safetensors", args.train_steps)),
            }
        if "torchrun" in parts:
            log("torchrun 2 ranks x 1 thread vs 1 process x 2 threads (global batch 16 x 128 tokens)")
            ddp, single = [], []
            for k in range(args.repeats):
                ddp.append(round(throughput(work / "small", work / "ddp.safetensors", 2, args.ddp_steps)))
                single.append(round(throughput(work / "small", work / "one.safetensors", 1, args.ddp_steps)))
                log(f"  repeat {k + 1}: torchrun {ddp[-1]} tok/s, one process {single[-1]} tok/s")
            result["torchrun_2x1_tokens_per_s"] = ddp
            result["one_process_2_threads_tokens_per_s"] = single
        result["load_average_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result)


class _Loud(dict):
    """A result dict that also prints each figure to stderr as soon as it is measured."""

    def __setitem__(self, key: str, value: object) -> None:
        log(f"  {key}: {json.dumps(value)}")
        super().__setitem__(key, value)


if __name__ == "__main__":
    main()
