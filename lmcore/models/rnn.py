"""LSTM language model: the recurrent baseline (Hochreiter & Schmidhuber 1997).

Shapes: B batch, T time, D width (``n_embd``, both the embedding and the hidden
size), L layers (``n_layer``), V vocabulary.

Token embedding -> dropout -> ``n_layer`` stacked ``torch.nn.LSTM`` layers (with
dropout between them) -> dropout -> head. The head is the embedding matrix
itself when ``tie_weights`` is set (both are V x D here), else its own Linear.

Generation carries (h, c), each (L, B, D): every token costs the same whatever
its position, and the context is not limited by ``block_size``.

There is no attention to show: its family names none, ``has_attention`` is False and
``attention_maps`` raises the base class's ``ConfigError`` ("has no attention
maps ..."), which the app shows as not available for this architecture.

Hook points (``lmcore.hooks``): ``embed`` and ``blocks.{i}.hook_hidden`` (B, T, D),
the hidden state layer i outputs at every position. While one of them is
hooked, the layers run one call each (the same kernel, so the same numbers);
otherwise the stack runs as one ``nn.LSTM`` call.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import _VF, nn

from lmcore.hooks import HookPoint
from lmcore.models.base import LanguageModel
from lmcore.models.config import ModelConfig
from lmcore.models.family import BLOCK_SIZE, DROPOUT, N_EMBD, N_LAYER, Diagram, Family, Preset, embedding_node


FAMILY = Family(
    presets={
        "lstm": Preset(
            "LSTM (recurrent)",
            "A recurrent network: a hidden state and a memory cell updated one token at a time, the classic "
            "before transformers.",
            dict(n_layer=2, n_embd=256, tie_weights=False),
        ),
    },
    sizes={
        "tiny": dict(n_layer=1, n_embd=128, block_size=64, dropout=0.0),
        "small": dict(n_layer=2, n_embd=256, block_size=64, dropout=0.0),
        "GPU": dict(n_layer=3, n_embd=512, block_size=256, dropout=0.2),
    },
    fields=(N_LAYER, N_EMBD, BLOCK_SIZE, DROPOUT),
    diagram=lambda c: Diagram(
        embed=embedding_node(c), block=(("lstm", f"LSTM layer\nhidden {c.n_embd}, carries (h, c)"),)
    ),
    activations=lambda c, batch_size: batch_size * c.block_size * 10 * c.n_embd,  # B T 10 D per layer
)


class LSTM(LanguageModel):
    """Embedding, multi-layer LSTM, head. Checkpoint keys: ``embedding.weight``,
    ``lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l{i}``, and ``head.{weight,bias}``
    when the head is not tied."""

    family: ClassVar[Family] = FAMILY
    max_context = None

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        D, V, L = config.n_embd, config.vocab_size, config.n_layer
        self.embedding = nn.Embedding(V, D)
        self.drop = nn.Dropout(config.dropout)
        # nn.LSTM applies its dropout between layers only, and warns when there is one layer.
        self.lstm = nn.LSTM(D, D, num_layers=L, batch_first=True, dropout=config.dropout if L > 1 else 0.0)
        self.head = None if config.tie_weights else nn.Linear(D, V)
        self.hook_embed = HookPoint("embed")  # (B, T, D)
        for i in range(L):
            setattr(self, f"hook_hidden_{i}", HookPoint(f"blocks.{i}.hook_hidden"))  # (B, T, D)
        self._hidden_points = tuple(getattr(self, f"hook_hidden_{i}") for i in range(L))
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            # Forget-gate bias 1 (Jozefowicz et al. 2015): the cell remembers by default,
            # so gradients reach far back from the first steps. Gate order is i, f, g, o.
            for i in range(L):
                getattr(self.lstm, f"bias_ih_l{i}")[D : 2 * D].fill_(1.0)
                getattr(self.lstm, f"bias_hh_l{i}")[D : 2 * D].zero_()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V)
        x = self.drop(x)
        return F.linear(x, self.embedding.weight) if self.head is None else self.head(x)

    def _run(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The LSTM stack over x (B, T, D) from state (h, c) (L, B, D) or zeros; layer by layer when hooked."""
        if not any(p.active() for p in self._hidden_points):
            return self.lstm(x, state)
        L, B, D = self.config.n_layer, x.size(0), self.config.n_embd
        if state is None:
            zeros = x.new_zeros(L, B, D)
            state = (zeros, zeros)
        hs, cs = [], []
        for i, point in enumerate(self._hidden_points):
            weights = [getattr(self.lstm, f"{w}_l{i}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x, h, c = _VF.lstm(x, (state[0][i : i + 1], state[1][i : i + 1]), weights, True, 1, 0.0,
                               self.training, False, True)  # fmt: skip
            x = point(x)  # (B, T, D)
            hs.append(h)
            cs.append(c)
            if i < L - 1 and self.lstm.dropout and self.training:
                x = F.dropout(x, self.lstm.dropout, True)
        return x, (torch.cat(hs), torch.cat(cs))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.hook_embed(self.embedding(idx)))  # (B, T, D)
        out, _ = self._run(x, None)  # (B, T, D)
        return self._logits(out)  # (B, T, V)

    def init_cache(
        self, batch_size: int = 1, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.device if device is None else torch.device(device)
        shape = (self.config.n_layer, batch_size, self.config.n_embd)
        dtype = self.embedding.weight.dtype
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def step(
        self, idx_t: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """idx_t (B, t) -> logits (B, t, V) and (h, c) after those tokens; t may be > 1."""
        x = self.drop(self.hook_embed(self.embedding(idx_t)))  # (B, t, D)
        out, (h, c) = self._run(x, cache)  # (B, t, D), (L, B, D) each
        return self._logits(out), (h, c)

    def num_params(self, non_embedding: bool = False) -> int:
        total = super().num_params()
        return total - self.embedding.weight.numel() if non_embedding else total
