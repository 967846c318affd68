"""Token sources: the flat sequences of ids that training and evaluation cut their windows from.

A source lives in memory (``TensorTokens``) or on disk (``lmcore.shards.MemmapTokens``).
The caller builds it and hands it to the Trainer, which cuts batches through
it and reads no file itself.

Shapes: B batch, T block size.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lmcore.errors import DataError


class TokenSource(Protocol):
    """Where batches are cut from: a flat sequence of token ids, in memory or on disk.

    ``windows(starts, length)`` returns the ids ``[s, s + length)`` for each
    start as a (B, length) long tensor on the CPU. ``id_range()`` is (lowest,
    highest) id it may hold, checked against a model's vocabulary once.
    Implemented by ``TensorTokens`` (ids in memory) and
    ``lmcore.shards.MemmapTokens`` (a prepared ``.bin`` file read through
    numpy.memmap).
    """

    def __len__(self) -> int: ...

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor: ...

    def id_range(self) -> tuple[int, int]: ...


class TensorTokens:
    """A TokenSource over a 1-D long tensor of ids in memory."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        return self.ids[starts[:, None] + torch.arange(length)]  # (B, length)

    def id_range(self) -> tuple[int, int]:
        return int(self.ids.min()), int(self.ids.max())


def as_source(ids: torch.Tensor | TokenSource) -> TokenSource:
    """``ids`` as a TokenSource: a tensor is wrapped, a source is returned as it is."""
    return TensorTokens(ids) if isinstance(ids, torch.Tensor) else ids


def check_length(ids: torch.Tensor | TokenSource, block_size: int, what: str = "corpus") -> None:
    """DataError unless ``ids`` holds at least one window of block_size + 1 tokens."""
    if len(ids) < block_size + 1:
        raise DataError(
            f"the {what} has {len(ids)} tokens but a block of {block_size} needs at least {block_size + 1}; "
            "add more text, lower the validation share, or choose a smaller block size"
        )


def batch_from_starts(
    source: TokenSource, starts: torch.Tensor, block_size: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows at ``starts`` (B,): x (B, T) and y (B, T), moved to ``device``."""
    windows = source.windows(starts, block_size + 1)  # (B, T + 1)
    x, y = windows[:, :-1], windows[:, 1:]
    if hasattr(source, "target_windows"):  # a loss mask (lmcore.finetune.MaskedTokens): untrained targets are -100
        y = source.target_windows(starts, block_size + 1)[:, 1:]
    if device is not None and torch.device(device).type != "cpu":
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y
