"""Bigram baseline: the next token depends only on the current one.

One (V, V) table of logits; the simplest model that can be trained, and the
floor every other architecture must beat. Shapes: B batch, T time, V vocabulary.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lmcore.models.base import LanguageModel
from lmcore.models.config import ModelConfig
from lmcore.models.family import BLOCK_SIZE, Diagram, Family, Preset

FAMILY = Family(
    presets={
        "bigram": Preset(
            "Bigram (baseline)",
            "The baseline: the next token depends only on the current one (a lookup table). Any real model "
            "must beat it.",
            dict(n_layer=1),
        ),
    },
    sizes={"tiny": dict(block_size=64), "small": dict(block_size=64), "GPU": dict(block_size=256)},
    fields=(BLOCK_SIZE,),
    diagram=lambda c: Diagram(embed=("table", f"lookup table\n{c.vocab_size} × {c.vocab_size}"), head=False),
    run_shape=lambda c: f"ctx{c.block_size}",
)


class Bigram(LanguageModel):
    family: ClassVar[Family] = FAMILY

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)  # row i: logits after token i
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.table(idx)

    def init_cache(self, batch_size: int = 1, device: torch.device | str | None = None) -> None:
        return None  # a bigram remembers nothing

    def step(self, idx_t: torch.Tensor, cache: None) -> tuple[torch.Tensor, None]:  # (B, t) -> (B, t, V)
        return self.table(idx_t), None

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return 6 * self.config.vocab_size  # a lookup forward; the gradient touches one row
