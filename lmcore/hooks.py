"""Named hook points: read or replace any activation of a model's one forward path.

Every family passes its activations through named identity points
(``HookPoint``) on its forward path; with nothing attached they return their
input untouched and cost one global read. Names follow TransformerLens where
they exist, so its tutorials transfer:

- ``embed`` (B, T, D): the token embeddings (before learned positions);
- ``blocks.{i}.hook_resid_pre`` / ``blocks.{i}.hook_resid_post`` (B, T, D):
  the residual stream entering and leaving block i;
- attention blocks: ``blocks.{i}.attn.hook_pattern`` (B, H, T, T) after the
  softmax, ``blocks.{i}.attn.hook_z`` (B, T, H, hd) each head's output before
  the output projection, ``blocks.{i}.hook_attn_out`` and
  ``blocks.{i}.hook_mlp_out`` (B, T, D);
- Mamba: ``blocks.{i}.mixer.hook_delta`` (B, T, E), ``hook_B`` and ``hook_C``
  (B, T, N), ``blocks.{i}.mixer.hook_y`` (B, T, E) the gated scan output per
  channel, ``blocks.{i}.hook_mixer_out`` (B, T, D);
- LSTM: ``blocks.{i}.hook_hidden`` (B, T, D), the hidden state of layer i;
- ``final.hook_normalized`` (B, T, D): the stream after the final norm.

``run_with_cache(model, ids)`` returns the logits and a dict of activations;
``run_with_hooks(model, ids, [(name, fn)])`` calls ``fn(tensor, name)`` at each
named point, and a tensor it returns replaces the activation. ``hooked(model,
hooks)`` is the same as a context manager, for any call in between (e.g.
``lmcore.sample.generate`` while steering).

Hooks are attached per thread: a model shared between threads (the app's
cached models) runs hook-free in every thread but the one that attached them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from lmcore.errors import ConfigError

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]

# How many hooked contexts are open, over all threads: while it is 0, every hook
# point returns its input after reading this one global.
_active = 0
_count_lock = threading.Lock()
_local = threading.local()  # .fns: {HookPoint: [fn, ...]} for this thread


def _attached() -> dict[HookPoint, list[HookFn]]:
    fns = getattr(_local, "fns", None)
    if fns is None:
        fns = _local.fns = {}
    return fns


class HookPoint:
    """An identity on the forward path with a name; attached functions may read or replace its tensor.

    Not an ``nn.Module``: it holds no weights, adds nothing to the state dict and
    costs no module call.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def active(self) -> bool:
        """Whether a function is attached here in this thread."""
        return bool(_active) and self in _attached()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not _active:
            return x
        fns = _attached().get(self)
        if fns:
            for fn in fns:
                out = fn(x, self.name)
                if out is not None:
                    x = out
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of ``model`` by name, in the order its modules are registered."""
    points: dict[str, HookPoint] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, HookPoint):
                points[value.name] = value
    return points


def hook_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s hook points (empty for a family that declares none)."""
    return list(hook_points(model))


def _resolve(model: nn.Module, hooks: Sequence[tuple[str, HookFn]]) -> list[tuple[HookPoint, HookFn]]:
    points = hook_points(model)
    out = []
    for name, fn in hooks:
        if name not in points:
            known = ", ".join(list(points)[:6]) or "none"
            raise ConfigError(f"this model has no hook point {name!r}; its points include: {known} (see hook_names)")
        out.append((points[name], fn))
    return out


@contextmanager
def hooked(model: nn.Module, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach ``hooks`` ([(name, fn)]) to ``model`` for the calls made inside the block, in this thread."""
    global _active
    resolved = _resolve(model, hooks)
    attached = _attached()
    for point, fn in resolved:
        attached.setdefault(point, []).append(fn)
    with _count_lock:
        _active += 1
    try:
        yield
    finally:
        with _count_lock:
            _active -= 1
        for point, fn in resolved:
            fns = attached.get(point)
            if fns is not None:
                fns.remove(fn)
                if not fns:
                    del attached[point]


def run_with_hooks(model: nn.Module, ids: torch.Tensor, hooks: Sequence[tuple[str, HookFn]]) -> torch.Tensor:
    """``model(ids)`` with ``fn(tensor, name)`` called at each named point; a returned tensor replaces it."""
    with hooked(model, hooks):
        return model(ids)


def run_with_cache(
    model: nn.Module, ids: torch.Tensor, names: Sequence[str] | Callable[[str], bool] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (identical to ``model(ids)``) and the activations at ``names`` (all points when None).

    ``names`` may also be a predicate on the name. Cached tensors are detached.
    """
    all_names = hook_names(model)
    if names is None:
        chosen = all_names
    elif callable(names):
        chosen = [n for n in all_names if names(n)]
    else:
        chosen = list(names)
    cache: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, name: str) -> None:
        cache[name] = t.detach()

    logits = run_with_hooks(model, ids, [(n, keep) for n in chosen])
    return logits, cache


def layer_names(model: nn.Module, suffix: str) -> list[str]:
    """``blocks.{i}.{suffix}`` for every layer i that has that point, in layer order."""
    points = hook_points(model)
    out = []
    i = 0
    while f"blocks.{i}.{suffix}" in points:
        out.append(f"blocks.{i}.{suffix}")
        i += 1
    return out
