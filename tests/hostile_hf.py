"""Hostile Hugging Face folders, made from a tiny valid GPT-2: shared by the tests and bench/bench_loader.py.

Each maker takes a parent folder and returns a model folder whose import or
description would cost a careless reader gigabytes, a traceback or forever.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

TINY = {"vocab_size": 64, "n_positions": 16, "n_embd": 8, "n_layer": 1, "n_head": 2}


def _tokenizer_json(vocab_size: int, pattern: str | None = None) -> str:
    from tokenizers import Regex
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {(chr(0x61 + i) if i < 26 else f"w{i}"): i for i in range(vocab_size - 1)}
    vocab["<|endoftext|>"] = vocab_size - 1
    fast = FastTokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    fast.pre_tokenizer = pre_tokenizers.Split(Regex(pattern or r"[\s\S]"), behavior="isolated")
    fast.add_special_tokens(["<|endoftext|>"])
    return fast.to_str()


def valid(parent: Path, name: str = "tiny", **config: int) -> Path:
    """A tiny GPT-2 folder as save_pretrained writes it, with a word-level tokenizer.json."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = parent / name
    torch.manual_seed(0)
    cfg = GPT2Config(**{**TINY, **config}, bos_token_id=TINY["vocab_size"] - 1, eos_token_id=TINY["vocab_size"] - 1)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(_tokenizer_json(cfg.vocab_size), encoding="utf-8")
    return folder


def _with_config(parent: Path, name: str, named_weights: bool = False, **changes: int) -> Path:
    """A tiny folder whose config.json is changed; with ``named_weights`` its weights have every
    tensor name the new config needs, each holding a single value."""
    folder = valid(parent, name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    if named_weights:
        import torch
        from safetensors.torch import save_file
        from transformers import GPT2Config, GPT2LMHeadModel

        with torch.device("meta"):
            names = [k for k in GPT2LMHeadModel(GPT2Config(**cfg)).state_dict() if k != "lm_head.weight"]
        save_file({k: torch.zeros(1) for k in names}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def large_config(parent: Path) -> Path:
    """A GPT-2 config of 2.6 billion parameters beside weights of one value per tensor, every name present."""
    return _with_config(parent, "large", True, n_embd=2560, n_layer=32, n_head=32, vocab_size=50257, n_positions=1024)


def mid_config(parent: Path) -> Path:
    """A 350M-parameter config (GPT-2 medium) beside the weights of a tiny model."""
    return _with_config(parent, "mid", n_embd=1024, n_layer=24, n_head=16, vocab_size=50257, n_positions=1024)


def many_layers(parent: Path, n_layer: int = 1_000_000) -> Path:
    return _with_config(parent, f"layers-{n_layer}", n_layer=n_layer)


def header_bomb(parent: Path, n: int = 1_200_000) -> Path:
    """model.safetensors whose header holds ``n`` tiny tensor entries (about 90 MB of JSON)."""
    folder = valid(parent, "header-bomb")
    entry = '"t{}":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    size = 2 + sum(len(entry.format(k)) for k in range(n)) + (n - 1)  # braces, entries, commas
    with open(folder / "model.safetensors", "wb") as f:  # written as it is made: the test process holds none of it
        f.write(struct.pack("<Q", size) + b"{")
        for start in range(0, n, 100_000):
            f.write(",".join(entry.format(k) for k in range(start, min(n, start + 100_000))).encode())
            if start + 100_000 < n:
                f.write(b",")
        f.write(b"}\0\0\0\0")
    return folder


def many_tokens(parent: Path, n: int = 1_000_000) -> Path:
    """A tokenizer.json of ``n`` tokens for a model of 64."""
    folder = valid(parent, "many-tokens")
    (folder / "tokenizer.json").write_text(_tokenizer_json(n), encoding="utf-8")
    return folder


def fifo_index(parent: Path) -> Path:
    """model.safetensors.index.json is a named pipe (no writer: reading it blocks forever)."""
    folder = valid(parent, "fifo-index")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors.index.json")
    return folder


def fifo_shard(parent: Path) -> Path:
    """The index names a shard that is a named pipe."""
    folder = valid(parent, "fifo-shard")
    names = _tensor_names(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    os.mkfifo(folder / "model-00001-of-00001.safetensors")
    return folder


def outside_index(parent: Path, target: Path, how: str) -> Path:
    """The index names a shard outside the folder: by an absolute path or by ``..``."""
    folder = valid(parent, f"outside-{how}")
    names = _tensor_names(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    name = str(target.resolve()) if how == "absolute" else os.path.relpath(target.resolve(), folder.resolve())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: name for k in names}}))
    return folder


def symlinked_weights(parent: Path, target: Path) -> Path:
    """model.safetensors is a link to a file outside the folder."""
    folder = valid(parent, "symlinked")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(target.resolve())
    return folder


def backtracking_tokenizer(parent: Path) -> Path:
    """A tokenizer whose pre-tokenizer pattern backtracks exponentially: (a+)+$."""
    folder = valid(parent, "backtracking")
    (folder / "tokenizer.json").write_text(_tokenizer_json(64, r"(a+)+$"), encoding="utf-8")
    return folder


def _tensor_names(path: Path) -> list[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


# Runs CLI commands one after the other in this process under a memory cap; prints, per command,
# its exit status and stderr, and the peak RSS of the whole process (which only grows) after it.
_MEASURE = """
import contextlib, io, json, resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from lmcore.cli import main
import lmcore.hf, lmcore.errors, transformers, tokenizers, safetensors

def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

before = peak_mb()
for args in json.loads(sys.argv[2]):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if args[0] == "describe":  # what the app's "open a Hugging Face model" box shows first
                try:
                    lmcore.hf.describe_source(args[1])
                    rc = 0
                except lmcore.errors.LMCoreError as e:
                    rc = 2
                    print(f"error: {e}", file=sys.stderr)
            else:
                rc = main(args)
    except BaseException as e:
        rc, err = 1, io.StringIO(f"{type(e).__name__}: {e}")
    print("MEASURED " + json.dumps({"rc": rc, "stderr": err.getvalue()[-400:], "peak_mb": round(peak_mb()),
                      "growth_mb": round(peak_mb() - before)}), flush=True)
"""


def measure_cli(
    commands: list[list[str]], root: Path, timeout_s: float = 120, memory_cap_bytes: int = 8 << 30
) -> list[dict]:
    """Per CLI command, run one after another in one fresh process: exit status, stderr, and the
    process's peak RSS so far (whole, and growth past the imports); a command still running at the
    timeout is reported as such, and the ones after it are not run."""
    env = {**os.environ, "PYTHONPATH": str(Path(root).resolve()), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", _MEASURE, str(memory_cap_bytes), json.dumps(commands)]
    try:
        run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
        out = run.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        run = None
    results = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("MEASURED {")]
    if len(results) < len(commands):
        why = f"still running after {timeout_s:g} s (killed)" if run is None else f"crashed: {run.stderr[-300:]}"
        results.append({"rc": None, "stderr": why, "peak_mb": None})
    return results
