"""Corpora, validation, train/val splits and random-window batches.

Shapes: B batch, T block size.
"""

from __future__ import annotations

import torch

from lmcore.errors import DataError


def split_ids(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split: the first (1 - val_fraction) of the ids train, the rest validate."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


def check_length(ids: torch.Tensor, block_size: int, what: str = "corpus") -> None:
    """DataError unless ``ids`` holds at least one window of block_size + 1 tokens."""
    if len(ids) < block_size + 1:
        raise DataError(
            f"the {what} has {len(ids)} tokens but a block of {block_size} needs at least {block_size + 1}; "
            "add more text, lower the validation share, or choose a smaller block size"
        )


def get_batch(
    ids: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x (B, T) and the next-token targets y (B, T)."""
    check_length(ids, block_size)
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = ids[starts[:, None] + offsets]  # (B, T + 1)
    x, y = windows[:, :-1], windows[:, 1:]
    if device is not None and torch.device(device).type != "cpu":
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y
