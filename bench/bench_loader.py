"""Benchmark: what ``load_checkpoint`` costs on hostile files and on a valid 100 MB checkpoint.

Each file is loaded in a fresh interpreter (``tests/hostile_files.py``'s
``measure_load``) under a memory cap (``--cap-gb``, default 6) and a time limit
(``--timeout``, default 120 s), so a loader without limits cannot take the
machine. Reported per file: its size, the load's wall time, the growth of the
process's peak RSS (VmHWM) during the load, and its outcome (the one-line
refusal, or "loaded").

``--lmcore DIR`` loads with the lmcore found in DIR (e.g. an older version
unpacked with ``git archive REV | tar -x -C DIR``); the files are always
written by this checkout.

Run: python3 bench/bench_loader.py [--lmcore DIR] [--timeout 120] [--cap-gb 6]
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import ROOT, emit, log, tests_module
from lmcore.checkpoint import save_checkpoint
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer

hostile = tests_module("hostile_files")  # the hostile checkpoints the tests load too


def valid_100mb(folder: Path) -> Path:
    """A GPT-2 of 25 M parameters (8 layers x 512 wide): about 100 MB of float32 weights."""
    tok = CharTokenizer.train(hostile.TEXT)
    config = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, block_size=256, n_layer=8, n_head=8, n_embd=512)
    torch.manual_seed(0)
    return save_checkpoint(folder / "valid-100mb.safetensors", build_model(config), tok, train_state={"steps": 1})


CASES = {
    "doubling merges (40)": hostile.doubling_merges,
    "chained merges (60,000)": hostile.chained_merges,
    "special tokens (100,000)": hostile.many_specials,
    "alias bomb (10,000 layers, 130,000 aliases)": hostile.alias_bomb,
    "nested JSON (100,000 deep, config)": lambda d: hostile.nested(d, "config"),
    "5,000-digit number (train)": hostile.long_number,
    "header of 1.5 M entries": hostile.many_entries,
    "valid checkpoint (100 MB)": valid_100mb,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmcore", type=Path, default=ROOT, help="the folder holding the lmcore to measure")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a load is killed")
    parser.add_argument("--cap-gb", type=float, default=6, help="address-space cap of the loading process")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            folder = Path(tmp) / str(len(results))
            folder.mkdir()
            path = make(folder)
            log(f"{name}: loading {path.name}")
            result = hostile.measure_load(path, args.lmcore, args.timeout, int(args.cap_gb * (1 << 30)))
            results[name] = {"file_mb": round(path.stat().st_size / 1e6, 2), **result}
            log(f"  {results[name]}")
    emit({"lmcore": str(args.lmcore), "timeout_s": args.timeout, "cap_gb": args.cap_gb, "cases": results})


if __name__ == "__main__":
    main()
