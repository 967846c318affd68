"""Models: the registry of architectures and ``build_model``.

Adding an architecture is one file plus one line in ``ARCHITECTURES``.
"""

from __future__ import annotations

import importlib

import torch

from lmcore.errors import ConfigError
from lmcore.models.base import LanguageModel, lm_loss
from lmcore.models.config import ARCHS, PRESETS, ModelConfig

# arch name -> "module:Class"; modules are imported when first used.
ARCHITECTURES: dict[str, str] = {
    "transformer": "lmcore.models.transformer:Transformer",
    "mamba": "lmcore.models.mamba:Mamba",
    "lstm": "lmcore.models.rnn:LSTM",
    "bigram": "lmcore.models.bigram:Bigram",
    "ngram": "lmcore.models.ngram:NGram",
}


def model_class(arch: str) -> type[LanguageModel]:
    """The class registered for ``arch``; ConfigError listing the known ones."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    module, name = ARCHITECTURES[arch].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(config: ModelConfig, device: torch.device | str | None = None) -> LanguageModel:
    """Validate ``config`` and build its model (on ``device`` if given)."""
    config.validate()
    model = model_class(config.arch)(config)
    return model.to(device) if device is not None else model


__all__ = ["ARCHITECTURES", "ARCHS", "PRESETS", "LanguageModel", "ModelConfig", "build_model", "lm_loss", "model_class"]
