"""N-gram counting baseline: the next token from the previous n-1 tokens, by lookup.

P(v | context) = (count(context, v) + k) / (count(context) + k V), add-k smoothing
over the counts of one pass through the training text (``fit_counts``); a context
never seen gets the uniform distribution. ``forward`` returns these log-probabilities
as its logits, so the usual loss and sampler apply unchanged. Orders n = 1..5
(``ngram_n``); ``add_k`` is k. The first tokens of a text, with fewer than n-1
tokens before them, use the counts of the shorter contexts they have.

Storage is sparse: for each context length j = 0..n-1, the sorted codes of the
(j+1)-grams seen (the tokens read as a base-V number) and their counts, as
frozen tensors whose sizes come from the data (``sized_by_data``), so a
checkpoint holds exactly what was counted. Nothing is learned by gradient: the
trainer calls ``fit_counts`` once instead of taking optimizer steps.

Shapes: B batch, T time, V vocabulary, P positions looked up.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from lmcore.errors import ConfigError
from lmcore.models.base import LanguageModel
from lmcore.models.config import ModelConfig
from lmcore.models.family import BLOCK_SIZE, Diagram, Family, Field, Preset

MAX_ORDER = 5

FAMILY = Family(
    presets={
        "ngram": Preset(
            "N-gram (counting baseline)",
            "A counting table: the next token from the previous n-1, with add-k smoothing. Training is one "
            "pass that counts; on a names list a 3-gram beats a small transformer.",
            dict(n_layer=1, ngram_n=3, add_k=0.1),
        ),
    },
    sizes={
        "tiny": dict(block_size=64, ngram_n=3, add_k=0.1),
        "small": dict(block_size=64, ngram_n=4, add_k=0.1),
        "GPU": dict(block_size=256, ngram_n=5, add_k=0.1),
    },
    fields=(
        Field("ngram_n", limits=(1, MAX_ORDER)),
        Field("add_k"),
        BLOCK_SIZE,
    ),  # fmt: skip
    diagram=lambda c: Diagram(
        embed=("context", f"context: the previous {c.ngram_n - 1} token" + ("s" if c.ngram_n != 2 else "")
               if c.ngram_n > 1 else "no context (n = 1)"),
        steps=(
            ("counts", "count table\ncount(context, next token), one pass over the text"),
            ("smooth", f"add-k smoothing, k = {c.add_k:g}\n(count + k) / (total + k · {c.vocab_size})"),
            ("logp", "log of each probability"),
        ),
        head=False,
    ),  # fmt: skip
    training_note="an n-gram is counted in one pass, with no gradient steps.",
    params_note="An n-gram has no weights until it counts the training text: its tables grow with the data.",
)


class NGram(LanguageModel):
    family: ClassVar[Family] = FAMILY
    sized_by_data: ClassVar[bool] = True
    max_context = None

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.order = config.ngram_n
        for j in range(self.order):  # j = context length
            self.register_buffer(f"codes_{j}", torch.zeros(0, dtype=torch.long))
            setattr(self, f"counts_{j}", nn.Parameter(torch.zeros(0), requires_grad=False))
        self.register_buffer("powers", config.vocab_size ** torch.arange(self.order - 1, -1, -1), persistent=False)

    @classmethod
    def validate_config(cls, config: ModelConfig) -> None:
        if config.ngram_n > MAX_ORDER:  # at least 1 and add_k > 0: their declarations (ModelConfig.validate)
            raise ConfigError(f"ngram_n must be between 1 and {MAX_ORDER}, got {config.ngram_n}", "ngram_n")
        if config.vocab_size**config.ngram_n >= 2**62:
            raise ConfigError(
                f"a {config.ngram_n}-gram over {config.vocab_size} tokens has too many possible keys; "
                "lower ngram_n or use a smaller vocabulary",
                "ngram_n",
            )  # fmt: skip

    # -- counting --
    @torch.no_grad()
    def fit_counts(self, ids: torch.Tensor) -> None:
        """Count every (j+1)-gram of the 1-D token stream ``ids``, for j = 0..n-1, in one pass each."""
        ids = ids.to(self.powers.device)
        for j in range(self.order):
            grams = ids.unfold(0, j + 1, 1)  # (N - j, j + 1), a view
            codes, counts = torch.unique((grams * self.powers[-(j + 1) :]).sum(-1), return_counts=True)  # sorted
            setattr(self, f"codes_{j}", codes)
            getattr(self, f"counts_{j}").data = counts.float()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The tables take the sizes of the ones being loaded.
        for j in range(self.order):
            if prefix + f"codes_{j}" in state_dict:
                setattr(self, f"codes_{j}", torch.empty_like(state_dict[prefix + f"codes_{j}"], device=self.powers.device))
            if prefix + f"counts_{j}" in state_dict:
                getattr(self, f"counts_{j}").data = torch.empty_like(
                    state_dict[prefix + f"counts_{j}"], device=self.powers.device
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- lookup --
    def _lookup(self, ctx: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., V) of the token after each context ctx (..., j)."""
        j, V = ctx.size(-1), self.config.vocab_size
        shape = ctx.shape[:-1]
        base = (ctx.reshape(shape.numel(), j) * self.powers[self.order - j :]).sum(-1) * V  # (P,): the context's first code
        codes, counts = getattr(self, f"codes_{j}"), getattr(self, f"counts_{j}")
        lo, hi = torch.searchsorted(codes, base), torch.searchsorted(codes, base + V)  # each context's entries
        found = hi - lo
        rows = torch.repeat_interleave(torch.arange(len(base), device=base.device), found)  # (E,)
        entries = lo[rows] + torch.arange(len(rows), device=base.device) - (found.cumsum(0) - found)[rows]
        table = torch.zeros(len(base), V, device=base.device)
        table[rows, codes[entries] % V] = counts[entries]
        k = self.config.add_k
        probs = (table + k) / (table.sum(-1, keepdim=True) + k * V)
        return probs.log().reshape(*shape, V)

    def _log_probs(self, seq: torch.Tensor, start: int) -> torch.Tensor:
        """Log-probabilities (B, T - start, V) after each position start..T-1 of seq (B, T)."""
        B, T = seq.shape
        n = self.order
        full_from = max(start, n - 2)  # from here on every position has n-1 tokens of context
        parts = [self._lookup(seq[:, None, : t + 1]) for t in range(start, min(full_from, T))]  # (B, 1, V) each
        if T > full_from:
            if n == 1:
                ctx = seq.new_zeros(B, T - full_from, 0)
            else:
                ctx = seq[:, full_from - n + 2 : T].unfold(1, n - 1, 1)  # (B, T - full_from, n - 1)
            parts.append(self._lookup(ctx))
        return torch.cat(parts, dim=1) if parts else seq.new_zeros(B, 0, self.config.vocab_size, dtype=torch.float)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V) log-probabilities
        return self._log_probs(idx, 0)

    def init_cache(self, batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(batch_size, 0, dtype=torch.long, device=self.powers.device if device is None else device)

    def step(self, idx_t: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx_t (B, t) -> log-probabilities (B, t, V); the cache is the last n-1 tokens (B, <= n-1)."""
        seq = torch.cat([cache, idx_t], dim=1)
        logits = self._log_probs(seq, cache.size(1))
        return logits, seq[:, max(0, seq.size(1) - (self.order - 1)) :] if self.order > 1 else seq[:, :0]

    # -- accounting --
    def num_params(self, non_embedding: bool = False) -> int:
        """The number of counts stored (every distinct n-gram of every order seen)."""
        return sum(getattr(self, f"counts_{j}").numel() for j in range(self.order))

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return self.config.vocab_size  # one row of V probabilities per token
