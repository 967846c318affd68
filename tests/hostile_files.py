"""Hostile checkpoint files, written from a small valid one: shared by the tests and bench/bench_loader.py.

Each maker takes a folder and returns the path of a file that a careless loader
would spend seconds, gigabytes or a traceback on.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmcore.checkpoint import save_checkpoint
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import BOS_TOKEN, CharTokenizer

TEXT = "hello world, the quick brown fox jumps over the lazy dog.\n"
METADATA_FIELDS = ("config", "tokenizer", "train", "data", "tied")


def tiny_config(vocab_size: int, n_layer: int = 2) -> ModelConfig:
    return ModelConfig.preset("gpt2", vocab_size=vocab_size, block_size=16, n_layer=n_layer, n_head=2, n_embd=8)


def valid(folder: Path, name: str = "good") -> Path:
    """A small valid checkpoint (GPT-2, 2 layers, character tokenizer) with its optimizer state."""
    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = build_model(tiny_config(tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters())
    return save_checkpoint(folder / f"{name}.safetensors", model, tok, train_state={"steps": 1}, optimizer=opt)


def rewrite(src: Path, dst: Path, tensors: dict[str, torch.Tensor] | None = None, **meta: str) -> Path:
    with safe_open(str(src), framework="pt") as f:
        metadata = {**f.metadata(), **meta}
    save_file(load_file(str(src)) if tensors is None else tensors, str(dst), metadata=metadata)
    return dst


def _with_bpe(folder: Path, name: str, merges: list[list[int]], specials: list[str]) -> Path:
    """A consistent checkpoint (weights of the right vocabulary) whose BPE tokenizer is ``merges``/``specials``."""
    vocab = 256 + len(merges) + len(specials)
    config = tiny_config(vocab, n_layer=1)
    torch.manual_seed(0)
    model = build_model(config)
    tensors = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tokenizer = {"type": "bpe", "version": 1, "pattern": "gpt4", "merges": merges, "special_tokens": specials}
    src = valid(folder, f"{name}-base")
    return rewrite(
        src,
        folder / f"{name}.safetensors",
        tensors,
        config=config.to_json(),
        tokenizer=json.dumps(tokenizer),
        tied=json.dumps({"lm_head.weight": "wte.weight"}),
    )


def doubling_merges(folder: Path, n: int = 40) -> Path:
    """Each merge joins the last token with itself: token k is 2^(k+1) bytes long (40 merges: 2^41 bytes)."""
    merges = [[97, 97]] + [[256 + k, 256 + k] for k in range(n - 1)]
    return _with_bpe(folder, "doubling", merges, [BOS_TOKEN])


def chained_merges(folder: Path, n: int = 60_000) -> Path:
    """Each merge adds one byte to the last token: n^2/2 bytes in all (60,000 merges: 1.8 GB)."""
    merges = [[97, 97]] + [[256 + k, 97] for k in range(n - 1)]
    return _with_bpe(folder, "chained", merges, [BOS_TOKEN])


def many_specials(folder: Path, n: int = 100_000) -> Path:
    return _with_bpe(folder, "specials", [], [BOS_TOKEN] + [f"<|s{k}|>" for k in range(n - 1)])


def alias_bomb(folder: Path, n_layer: int = 10_000, aliases: int = 130_000) -> Path:
    """A config of ``n_layer`` layers, 'filled' by aliases of one stored tensor."""
    src = valid(folder, "alias-base")
    vocab = json.loads(_metadata(src)["config"])["vocab_size"]
    tied = {f"h.{k // 13}.alias{k % 13}.weight": "wte.weight" for k in range(aliases)}
    tied["lm_head.weight"] = "wte.weight"
    return rewrite(
        src, folder / "alias.safetensors", config=tiny_config(vocab, n_layer=n_layer).to_json(), tied=json.dumps(tied)
    )


def nested(folder: Path, field: str, depth: int = 100_000) -> Path:
    """``field``'s metadata is an object holding ``depth`` nested lists."""
    src = valid(folder, f"nested-{field}-base")
    return rewrite(src, folder / f"nested-{field}.safetensors", **{field: '{"x": ' + "[" * depth + "]" * depth + "}"})


def long_number(folder: Path, field: str = "train", digits: int = 5000) -> Path:
    src = valid(folder, f"number-{field}-base")
    return rewrite(src, folder / f"number-{field}.safetensors", **{field: '{"steps": ' + "7" * digits + "}"})


def many_entries(folder: Path, n: int = 1_500_000) -> Path:
    """A valid lmcore header followed by ``n`` tensor entries (1.5 M: about 89 MB)."""
    meta = _metadata(valid(folder, "entries-base"))
    head = b'{"__metadata__":' + json.dumps(meta).encode()
    entry = ',"t{}":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    size = len(head) + sum(len(entry.format(k)) for k in range(n)) + 1
    path = folder / "entries.safetensors"
    with open(path, "wb") as f:  # written as it is made: the test process holds none of it
        f.write(struct.pack("<Q", size) + head)
        for start in range(0, n, 100_000):
            f.write("".join(entry.format(k) for k in range(start, min(n, start + 100_000))).encode())
        f.write(b"}\0\0\0\0")
    return path


# Loads one file in a fresh interpreter under a memory cap; prints wall and CPU time, peak-RSS growth, outcome.
_MEASURE = """
import json, resource, sys, time
cap = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from lmcore.checkpoint import load_checkpoint
from lmcore.errors import CheckpointError

def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

before = peak_kb()
start, cpu = time.perf_counter(), time.process_time()
try:
    load_checkpoint(sys.argv[1])
    outcome = "loaded"
except CheckpointError as e:
    outcome = "refused: " + str(e)
except BaseException as e:
    outcome = type(e).__name__ + ": " + str(e)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
growth = (peak_kb() - before) / 1024
print(json.dumps({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "rss_growth_mb": round(growth, 1),
                  "outcome": " ".join(outcome.split())[:300]}))
"""


def measure_load(path: Path, root: Path, timeout_s: float = 120, memory_cap_bytes: int = 6 << 30) -> dict:
    """Wall and CPU time and peak-RSS growth of ``load_checkpoint(path)`` in a fresh process.

    The process imports lmcore from ``root`` and cannot map more than ``memory_cap_bytes``.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(root).resolve()), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _MEASURE, str(path), str(memory_cap_bytes)]
    try:
        run = subprocess.run(cmd, cwd=path.parent, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "outcome": f"still running after {timeout_s:g} s (killed)"}
    if run.returncode != 0 or not run.stdout.strip():
        return {"seconds": None, "outcome": f"crashed ({run.returncode}): {run.stderr[-200:]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())
