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


class Bigram(LanguageModel):
    step_accepts_sequence: ClassVar[bool] = True  # step() takes (B, t) as well as (B, 1)

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
