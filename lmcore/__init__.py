"""lmcore: tokenize text, build small language models, train, sample and save them.

A plain PyTorch library (no Streamlit): the Small LM Playground's pages are thin
views over it, and ``python -m lmcore`` (or the ``lmcore`` command) drives it
from a terminal.

One import gives what a notebook needs::

    import lmcore

    corpus = lmcore.load_corpus("builtin:python-docs")
    tok = lmcore.build_tokenizer("char", corpus.text)
    train_ids, val_ids = lmcore.split_ids(lmcore.encode_corpus(tok, corpus), 0.1)
    model = lmcore.build_model(lmcore.ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=2, n_embd=64))
    lmcore.Trainer(model, train_ids, val_ids, lmcore.TrainConfig(max_iters=200), progress=True).fit()
    lmcore.save_checkpoint("mine.safetensors", model, tok)
    print(lmcore.load_checkpoint("mine.safetensors").complete("The ", max_new_tokens=100))

The names in ``__all__`` are loaded on first use, so ``import lmcore.errors``
(or ``python -m lmcore --help``) stays quick. Nothing here imports Streamlit,
plotly, pandas or transformers: those belong to the app (``lmcore[app]``) and
the Hugging Face bridge (``lmcore[hf]``, ``lmcore.hf``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the package's one version: pyproject.toml reads it from here

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # corpora
    "Corpus": "lmcore.data",
    "BUILTIN_CORPORA": "lmcore.data",
    "load_corpus": "lmcore.data",
    "corpus_from_text": "lmcore.data",
    "build_tokenizer": "lmcore.data",
    "encode_corpus": "lmcore.data",
    "split_ids": "lmcore.data",
    # tokenizers
    "Tokenizer": "lmcore.tokenizers",
    "CharTokenizer": "lmcore.tokenizers",
    "BPETokenizer": "lmcore.tokenizers",
    "tokenizer_from_dict": "lmcore.tokenizers",
    # models
    "ModelConfig": "lmcore.models",
    "build_model": "lmcore.models",
    # training
    "TrainConfig": "lmcore.train",
    "Trainer": "lmcore.train",
    "TrainEvent": "lmcore.train",
    "ProgressBar": "lmcore.train",
    # checkpoints
    "Checkpoint": "lmcore.checkpoint",
    "save_checkpoint": "lmcore.checkpoint",
    "load_checkpoint": "lmcore.checkpoint",
    # sampling
    "SamplingConfig": "lmcore.sample",
    "generate": "lmcore.sample",
    # looking inside: named hook points
    "hook_names": "lmcore.hooks",
    "run_with_cache": "lmcore.hooks",
    "run_with_hooks": "lmcore.hooks",
    # errors
    "LMCoreError": "lmcore.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from lmcore.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from lmcore.data import BUILTIN_CORPORA, Corpus, build_tokenizer, corpus_from_text, encode_corpus, load_corpus, split_ids
    from lmcore.errors import LMCoreError
    from lmcore.hooks import hook_names, run_with_cache, run_with_hooks
    from lmcore.models import ModelConfig, build_model
    from lmcore.sample import SamplingConfig, generate
    from lmcore.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict
    from lmcore.train import ProgressBar, TrainConfig, TrainEvent, Trainer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
