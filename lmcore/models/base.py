"""The contract every model honours, and the one loss function they all share.

Shapes: B batch, T time, D width, V vocabulary.

Every architecture subclasses ``LanguageModel`` and provides:
- ``forward(idx)``: idx (B, T) long -> logits (B, T, V), causal;
- ``init_cache(batch_size)`` / ``step(idx_t, cache)``: one token at a time,
  giving the same logits as ``forward`` over the whole sequence;
- ``attention_maps(idx)``: (1, T) -> (n_layer, n_groups, T, T), or a
  ``ConfigError`` when the architecture has no such maps (``has_attention``);
  by default read from the ``blocks.{i}.attn.hook_pattern`` hook points;
- named hook points (``lmcore.hooks.HookPoint``) on the forward path, which
  every view and intervention reads;
- ``family``: its ``Family``, what the app, figures and estimates know about it.
The trainer, sampler, checkpoint code and app never branch on the architecture.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmcore.errors import ConfigError
from lmcore.hooks import layer_names, run_with_cache
from lmcore.models.config import ModelConfig
from lmcore.models.family import Family


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy. logits (B, T, V), targets (B, T) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


class LanguageModel(nn.Module):
    """Base class of all models; see the module docstring for the contract."""

    family: ClassVar[Family]  # what the project knows about the architecture (lmcore.models.family)
    # Longest context step() can carry: the transformer's block_size; None = unbounded.
    max_context: int | None = None
    # Whether step() takes a whole prompt (B, t) in one call (a prefill); False: the sampler feeds one token at a time.
    step_accepts_sequence: ClassVar[bool] = True
    # Whether tensor sizes come from the training data (n-gram counts) rather than the config.
    sized_by_data: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @property
    def has_attention(self) -> bool:
        """Whether attention_maps() gives maps (the family names a kind of attention)."""
        return self.family.attention is not None

    @property
    def attention_unit(self) -> str:
        """What the second axis of attention_maps is: "head", or Mamba's "channel group"."""
        return self.family.attention_unit

    @classmethod
    def validate_config(cls, config: ModelConfig) -> None:
        """Architecture-specific checks; raise ConfigError. Default: nothing more."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        raise NotImplementedError

    def init_cache(self, batch_size: int = 1, device: torch.device | str | None = None) -> Any:
        raise NotImplementedError

    def step(self, idx_t: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:  # (B, 1) -> (B, 1, V)
        raise NotImplementedError

    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:  # (1, T) or (T,) -> (L, H, T, T)
        """Attention weights of every layer and head, in eval mode, read from the ``attn.hook_pattern`` points.

        Row i of a map is how position i spreads its attention over positions
        0..i: non-negative, zero above the diagonal, summing to 1. A family
        without pattern points raises ConfigError (or overrides this).
        """
        names = layer_names(self, "attn.hook_pattern")
        if not names:
            raise ConfigError(
                f"the {self.config.arch} architecture has no attention maps; "
                "pick a transformer or Mamba model to see them"
            )
        if idx.dim() == 1:
            idx = idx[None]
        if idx.size(0) != 1:
            raise ValueError(f"attention_maps takes one sequence, got a batch of {idx.size(0)}")
        if idx.size(1) < 1:
            raise ConfigError("attention maps need at least one token; enter some text")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                _, cache = run_with_cache(self, idx, names)
        finally:
            self.train(was_training)
        return torch.stack([cache[n][0] for n in names]).float()  # (L, H, T, T)

    def residual_blocks(self) -> nn.ModuleList:
        """The blocks that update the residual stream, in order; each takes the stream as its first input.

        With ``readout`` this is what the logit lens reads: models without a
        residual stream raise ConfigError.
        """
        raise ConfigError(
            f"the {self.config.arch} architecture has no residual stream to read layer by layer; "
            "pick a transformer or Mamba model"
        )

    def readout(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V)
        """The final norm and output head applied to a residual stream x."""
        raise ConfigError(f"the {self.config.arch} architecture has no residual stream to read out")

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        seen: set[int] = set()
        total = 0
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if non_embedding and name.endswith(("wte.weight", "wpe.weight")):
                continue
            total += p.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6 N plus the sequence mixing.

        Subclasses add their mixing cost (attention: 12 L D T); this default is 6 N.
        """
        return 6 * self.num_params(non_embedding=True)

    @torch.no_grad()
    def attention_maps_for(self, ids: list[int]) -> np.ndarray:
        """``attention_maps`` for one prompt given as token ids, as float32 numpy (L, H, T, T)."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        return self.attention_maps(idx).float().cpu().numpy()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
