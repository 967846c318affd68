"""Models: the registry of architecture families and ``build_model``.

Adding an architecture is one model file (its class and its ``Family``) plus
its line in ``ARCHITECTURES`` (and the import above it); everything else
(presets, sizes, the model page's fields, views, diagrams, estimates) is read
from the family.
"""

from __future__ import annotations

import torch

from lmcore.errors import ConfigError
from lmcore.models.base import LanguageModel, lm_loss
from lmcore.models.bigram import Bigram
from lmcore.models.config import ARCHITECTURES, PRESETS, ModelConfig, family_of, model_class
from lmcore.models.family import SIZES, Family, Field
from lmcore.models.mamba import Mamba
from lmcore.models.mamba2 import Mamba2
from lmcore.models.ngram import NGram
from lmcore.models.rnn import LSTM
from lmcore.models.transformer import Transformer

# arch name (ModelConfig.arch) -> its model class (the registry lives in lmcore.models.config, filled here).
ARCHITECTURES.update({
    "transformer": Transformer,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "lstm": LSTM,
    "bigram": Bigram,
    "ngram": NGram,
})  # fmt: skip
ARCHS = tuple(ARCHITECTURES)
# Every family's presets: name -> the ModelConfig fields it sets, its arch included.
PRESETS.update({
    name: {"arch": arch, **preset.values}
    for arch, cls in ARCHITECTURES.items()
    for name, preset in cls.family.presets.items()
})  # fmt: skip

# Every family's config fields a person sets, each once, in registry order.
FIELDS: dict[str, Field] = {f.name: f for cls in ARCHITECTURES.values() for f in cls.family.fields}


def preset_family(preset: str) -> Family:
    """The ``Family`` a preset belongs to (gpt2 and llama: the transformer's)."""
    return family_of(ModelConfig.preset(preset).arch)


def preset_config(preset: str, size: str, vocab_size: int) -> ModelConfig:
    """The config of ``preset`` at the app's size ``size`` (a key of ``SIZES``) for a vocabulary of ``vocab_size``."""
    family = preset_family(preset)
    if size not in family.sizes:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return ModelConfig.preset(preset, vocab_size=vocab_size, **family.sizes[size])


def build_model(config: ModelConfig, device: torch.device | str | None = None) -> LanguageModel:
    """Validate ``config`` and build its model (on ``device`` if given)."""
    config.validate()
    model = model_class(config.arch)(config)
    return model.to(device) if device is not None else model


__all__ = [
    "ARCHITECTURES", "ARCHS", "FIELDS", "PRESETS", "SIZES", "Family", "Field", "LanguageModel", "ModelConfig",
    "build_model", "family_of", "lm_loss", "model_class", "preset_config", "preset_family",
]  # fmt: skip
