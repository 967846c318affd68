"""Interventions: change one part of a model and measure what changes (ablation, patching, steering, attribution).

A picture (an attention map, a head score) shows what a part of the model
correlates with; an intervention tests what it does. Everything here runs
through the hook points of ``lmcore.hooks``, so every family that declares them
gets every intervention that applies to its points:

- Ablation: replace a part's output with zero or with its mean over a
  reference text, and run the model: ``ablate_heads`` (attention heads,
  ``blocks.{l}.attn.hook_z``), ``ablate_layers`` (a block's whole write to the
  residual stream), ``ablate_mlps``, ``ablate_channels`` (Mamba's scan
  channels, ``blocks.{l}.mixer.hook_y``). ``ablation_sweep`` ablates every
  unit in turn, many per batched pass, and returns the per-token losses.
- Activation patching (Meng et al. 2022; Wang et al. 2022; Heimersheim &
  Nanda 2024): run a corrupted input, restore one activation from a clean run
  of the same length, and read a metric (the loss on chosen tokens, or the
  logit difference of two tokens). ``patch_residual`` gives a [layers,
  positions] table over the residual stream, ``patch_heads`` a [layers, heads]
  table over each head's output; each sweep is a few batched passes.
- Steering (activation addition, Turner et al. 2023): ``mean_difference`` of
  the residual stream over two sets of prompts, added at one layer with a scale
  (``steering``, ``steered_generate``) while ``lmcore.sample.generate`` runs.
- Direct logit attribution: ``logit_attribution`` splits a next-token logit
  into what the embedding, each head and each MLP (or Mamba mixer) wrote into
  the final residual stream, through the final norm with its scale frozen.

Everything runs in eval mode without gradients. Shapes: B batch, T time,
D width, L layers, H heads, E Mamba channels, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmcore.errors import ConfigError, DataError
from lmcore.hooks import HookFn, hook_names, hooked, layer_names, run_with_cache, run_with_hooks

MODES = ("zero", "mean")
Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (N, T, V) -> (N,)
Unit = tuple[str, int | None]  # (hook name, index on its unit axis, or None for the whole tensor)


# ------------------------------------------------------------------ helpers


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batch(model: nn.Module, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Token ids as a (B, T) long tensor on the model's device; DataError when unusable."""
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.size(1) < 1:
        raise DataError(f"give the tokens as a list or a (batch, time) tensor, got shape {tuple(t.shape)}")
    vocab = model.config.vocab_size
    if int(t.min()) < 0 or int(t.max()) >= vocab:
        raise DataError(f"the text holds token ids outside the model's vocabulary of {vocab}; use the model's tokenizer")
    limit = getattr(model, "max_context", None)
    if limit is not None and t.size(1) > limit:
        raise DataError(f"the text has {t.size(1)} tokens but the model reads at most {limit}; shorten it")
    return t.to(next(model.parameters()).device)


def _need(model: nn.Module, suffix: str, what: str) -> list[str]:
    names = layer_names(model, suffix)
    if not names:
        raise ConfigError(f"the {model.config.arch} architecture has no {what}; pick a model that has them")
    return names


def _unit_axis(name: str) -> int:
    """The axis that indexes units in a hook point's tensor: heads of hook_z (B, T, H, hd), else the last."""
    return 2 if name.endswith("hook_z") else -1


def _select(t: torch.Tensor, name: str, index: int | None, positions: Sequence[int] | None) -> tuple:
    """An index tuple into t (B, T, ...) for unit ``index`` (None: all) at ``positions`` (None: all)."""
    key: list = [slice(None), slice(None) if positions is None else torch.as_tensor(list(positions))]
    if index is not None:
        axis = _unit_axis(name) % t.dim()
        key += [slice(None)] * (axis - 2) + [index]
    return tuple(key)


def _means(model: nn.Module, names: Sequence[str], reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each point's mean over the batch and positions of a reference run: (...) per point."""
    _, cache = run_with_cache(model, reference, names)
    return {n: cache[n].mean(dim=(0, 1)) for n in names}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown ablation mode {mode!r}; choose one of {', '.join(MODES)}")


def ablation_hooks(
    model: nn.Module,
    units: Sequence[Unit],
    mode: str = "zero",
    reference: Sequence[int] | torch.Tensor | None = None,
    positions: Sequence[int] | None = None,
) -> list[tuple[str, HookFn]]:
    """Hooks that replace each unit's activation with zero or its mean over ``reference``.

    ``positions`` limits the ablation to those positions (None: all). A mean is
    over the batch and every position of ``reference``.
    """
    _check_mode(mode)
    by_name: dict[str, list[int | None]] = {}
    for name, index in units:
        by_name.setdefault(name, []).append(index)
    means = _means(model, list(by_name), _batch(model, reference)) if mode == "mean" and reference is not None else {}

    def make(name: str, indices: list[int | None]) -> HookFn:
        def fn(t: torch.Tensor, _name: str) -> torch.Tensor:
            t = t.clone()
            mean = means.get(name)
            if mode == "mean" and mean is None:  # mean over this very run
                mean = t.mean(dim=(0, 1))
            for index in indices:
                key = _select(t, name, index, positions)
                if mode == "zero":
                    t[key] = 0
                else:
                    value = mean if index is None else mean.select(_unit_axis(name) % t.dim() - 2, index)
                    t[key] = value.to(t.dtype)
            return t

        return fn

    return [(name, make(name, indices)) for name, indices in by_name.items()]


def _ablate(model, ids, units, mode, reference, positions) -> torch.Tensor:
    x = _batch(model, ids)
    with _evaluating(model):
        ref = x if reference is None else reference
        return run_with_hooks(model, x, ablation_hooks(model, units, mode, ref, positions))


# ------------------------------------------------------------------ ablation


def head_units(model: nn.Module, heads: Sequence[tuple[int, int]]) -> list[Unit]:
    """(layer, head) pairs as units of the ``attn.hook_z`` points; ConfigError for a head that does not exist."""
    names = _need(model, "attn.hook_z", "attention heads")
    n_head = model.config.n_head
    units = []
    for layer, head in heads:
        if not (0 <= layer < len(names) and 0 <= head < n_head):
            raise ConfigError(f"there is no head ({layer}, {head}); layers 0..{len(names) - 1}, heads 0..{n_head - 1}")
        units.append((names[layer], int(head)))
    return units


def channel_units(model: nn.Module, channels: Sequence[tuple[int, int]]) -> list[Unit]:
    """(layer, channel) pairs as units of Mamba's ``mixer.hook_y`` points."""
    names = _need(model, "mixer.hook_y", "scan channels (only Mamba has them)")
    width = model.config.d_inner
    units = []
    for layer, channel in channels:
        if not (0 <= layer < len(names) and 0 <= channel < width):
            raise ConfigError(
                f"there is no channel ({layer}, {channel}); layers 0..{len(names) - 1}, channels 0..{width - 1}"
            )
        units.append((names[layer], int(channel)))
    return units


def layer_units(model: nn.Module, layers: Sequence[int], part: str = "all") -> list[Unit]:
    """What blocks ``layers`` write into the residual stream: ``part`` "all", "attn", "mlp" or "mixer"."""
    suffixes = {"all": ("hook_attn_out", "hook_mlp_out", "hook_mixer_out"), "attn": ("hook_attn_out",),
                "mlp": ("hook_mlp_out",), "mixer": ("hook_mixer_out",)}[part]  # fmt: skip
    points = set(hook_names(model))
    n = len(layer_names(model, "hook_resid_post"))
    units = []
    for layer in layers:
        if not 0 <= layer < n:
            raise ConfigError(f"there is no layer {layer}; this model's residual layers are 0..{n - 1}")
        found = [f"blocks.{layer}.{s}" for s in suffixes if f"blocks.{layer}.{s}" in points]
        if not found:
            raise ConfigError(f"the {model.config.arch} architecture has no {part} output to ablate in layer {layer}")
        units += [(name, None) for name in found]
    if not units and part != "all":
        raise ConfigError(f"the {model.config.arch} architecture has no {part} outputs")
    if n == 0:
        raise ConfigError(f"the {model.config.arch} architecture has no residual layers to ablate")
    return units


def ablate_heads(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    heads: Sequence[tuple[int, int]],
    mode: str = "zero",
    reference: Sequence[int] | torch.Tensor | None = None,
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits (B, T, V) with the output of each (layer, head) zeroed or replaced by its mean.

    The mean is over ``reference`` (default: ``ids`` themselves), every position.
    ``positions`` limits the ablation to those positions.
    """
    return _ablate(model, ids, head_units(model, heads), mode, reference, positions)


def ablate_layers(model, ids, layers: Sequence[int], mode: str = "zero", reference=None, positions=None) -> torch.Tensor:
    """Logits with everything blocks ``layers`` write into the residual stream removed (zero) or averaged."""
    return _ablate(model, ids, layer_units(model, layers), mode, reference, positions)


def ablate_mlps(model, ids, layers: Sequence[int], mode: str = "zero", reference=None, positions=None) -> torch.Tensor:
    """Logits with the MLP outputs of ``layers`` zeroed or averaged (transformers)."""
    return _ablate(model, ids, layer_units(model, layers, "mlp"), mode, reference, positions)


def ablate_channels(
    model, ids, channels: Sequence[tuple[int, int]], mode: str = "zero", reference=None, positions=None
) -> torch.Tensor:
    """Logits with Mamba scan channels (layer, channel) zeroed or averaged (after the gate, before out_proj)."""
    return _ablate(model, ids, channel_units(model, channels), mode, reference, positions)


def _per_token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (N, T-1) of ids[1:] under logits (N, T, V); ids (1, T) or (N, T)."""
    targets = ids[:, 1:].expand(logits.size(0), -1)
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")


@dataclass
class AblationEffect:
    """Per predicted token (index i is about ids[i + 1]): losses and top candidates before and after."""

    before: torch.Tensor  # (T-1,) nats
    after: torch.Tensor  # (T-1,)
    top_before: list[list[tuple[int, float]]]  # per position: (token id, probability), best first
    top_after: list[list[tuple[int, float]]]

    @property
    def change(self) -> torch.Tensor:
        return self.after - self.before


def _top(logits: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    probs = logits.float().softmax(-1)
    top = probs.topk(min(k, probs.size(-1)), dim=-1)
    return [list(zip(i.tolist(), p.tolist())) for i, p in zip(top.indices, top.values)]


def ablation_effect(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    heads: Sequence[tuple[int, int]] = (),
    channels: Sequence[tuple[int, int]] = (),
    layers: Sequence[int] = (),
    mlps: Sequence[int] = (),
    mode: str = "zero",
    k: int = 5,
) -> AblationEffect:
    """The per-token loss of one text before and after ablating the given units together."""
    x = _batch(model, ids)[:1]
    if x.size(1) < 2:
        raise DataError("an ablation's effect needs a text of at least two tokens")
    units = head_units(model, heads) if heads else []
    units += channel_units(model, channels) if channels else []
    units += layer_units(model, layers) if layers else []
    units += layer_units(model, mlps, "mlp") if mlps else []
    with _evaluating(model):
        clean = model(x)
        after = run_with_hooks(model, x, ablation_hooks(model, units, mode, x)) if units else clean
    return AblationEffect(
        before=_per_token_losses(clean, x)[0].cpu(),
        after=_per_token_losses(after, x)[0].cpu(),
        top_before=_top(clean[0, :-1], k),
        top_after=_top(after[0, :-1], k),
    )


def _rows_hooks(units_per_row: Sequence[Sequence[Unit]], mode: str, means: dict[str, torch.Tensor]):
    """Hooks for a batch whose row r ablates units_per_row[r] (each row a copy of the same text)."""
    rows_by_name: dict[str, list[tuple[int, int | None]]] = {}
    for r, units in enumerate(units_per_row):
        for name, index in units:
            rows_by_name.setdefault(name, []).append((r, index))

    def make(name: str, pairs: list[tuple[int, int | None]]) -> HookFn:
        def fn(t: torch.Tensor, _name: str) -> torch.Tensor:
            t = t.clone()
            for r, index in pairs:
                key = (r,) + _select(t, name, index, None)[1:]
                if mode == "zero":
                    t[key] = 0
                else:
                    mean = means[name]
                    t[key] = (mean if index is None else mean.select(_unit_axis(name) % t.dim() - 2, index)).to(t.dtype)
            return t

        return fn

    return [(name, make(name, pairs)) for name, pairs in rows_by_name.items()]


def ablation_sweep(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    unit: str = "head",
    mode: str = "zero",
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ablate every unit of a kind, one at a time: per-token losses (L, U, T-1) and the clean ones (T-1,).

    ``unit``: "head" (U = heads), "channel" (U = Mamba channels), "layer" or "mlp"
    (U = 1). Rows of one batched pass ablate different units; ``batch_size``
    rows per pass.
    """
    _check_mode(mode)
    x = _batch(model, ids)[:1]
    if x.size(1) < 2:
        raise DataError("an ablation sweep needs a text of at least two tokens")
    if unit == "head":
        L, U = len(_need(model, "attn.hook_z", "attention heads")), model.config.n_head
        units = head_units(model, [(layer, h) for layer in range(L) for h in range(U)])
    elif unit == "channel":
        L, U = len(_need(model, "mixer.hook_y", "scan channels (only Mamba has them)")), model.config.d_inner
        units = channel_units(model, [(layer, c) for layer in range(L) for c in range(U)])
    elif unit in ("layer", "mlp"):
        L, U = len(layer_names(model, "hook_resid_post")), 1
        groups = [layer_units(model, [layer], "all" if unit == "layer" else "mlp") for layer in range(L)]
    else:
        raise ConfigError(f"unknown unit {unit!r}; choose head, channel, layer or mlp")
    rows = [[u] for u in units] if unit in ("head", "channel") else groups
    with _evaluating(model):
        clean = _per_token_losses(model(x), x)[0]
        names = sorted({name for row in rows for name, _ in row})
        means = _means(model, names, x) if mode == "mean" else {}
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            logits = run_with_hooks(model, x.expand(len(chunk), -1), _rows_hooks(chunk, mode, means))
            out.append(_per_token_losses(logits, x))
    return torch.cat(out).view(L, U, -1).cpu(), clean.cpu()


# ------------------------------------------------------------------ patching


def loss_metric(ids: Sequence[int] | torch.Tensor, positions: Sequence[int] | None = None) -> Metric:
    """Mean cross-entropy of the next tokens of ``ids`` predicted at ``positions`` (None: every position)."""
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    where = torch.arange(len(t) - 1) if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
    if len(where) == 0 or int(where.max()) >= len(t) - 1 or int(where.min()) < 0:
        raise DataError(f"a loss is measured at positions 0..{len(t) - 2} (each predicts the next token)")
    targets = t[where + 1]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits[:, where.to(logits.device)].float().log_softmax(-1)  # (N, P, V)
        return -logp.gather(-1, targets.to(logits.device).expand(logits.size(0), -1)[..., None])[..., 0].mean(-1)

    return metric


def logit_diff_metric(good: int, bad: int, position: int = -1) -> Metric:
    """logit[good] - logit[bad] of the prediction at ``position``."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, position, good] - logits[:, position, bad]).float()

    return metric


@dataclass
class PatchResult:
    """A patching table: the metric with one activation restored from the clean run, per row and column."""

    table: torch.Tensor  # (L, T) or (L, H)
    clean: float  # the metric of the clean run
    corrupted: float  # the metric of the corrupted run, nothing restored

    @property
    def change(self) -> torch.Tensor:
        """The metric's change from the corrupted run, per patch."""
        return self.table - self.corrupted

    @property
    def restored(self) -> torch.Tensor:
        """The share of the clean-corrupted gap each patch closes: 0 = no effect, 1 = fully restored."""
        gap = self.clean - self.corrupted
        return (self.table - self.corrupted) / (gap if abs(gap) > 1e-9 else float("nan"))


def stream_names(model: nn.Module) -> list[str]:
    """The stream entering each layer: ``blocks.{l}.hook_resid_pre``, or for the LSTM its input at each layer."""
    pre = layer_names(model, "hook_resid_pre")
    if pre:
        return pre
    hidden = layer_names(model, "hook_hidden")
    if hidden:
        return ["embed", *hidden[:-1]]
    raise ConfigError(f"the {model.config.arch} architecture has no stream between layers to patch or steer")


def _pair(model, clean_ids, corrupted_ids) -> tuple[torch.Tensor, torch.Tensor]:
    clean, corrupted = _batch(model, clean_ids)[:1], _batch(model, corrupted_ids)[:1]
    if clean.size(1) != corrupted.size(1):
        raise DataError(
            f"the clean text has {clean.size(1)} tokens and the corrupted one {corrupted.size(1)}; "
            "patching needs two texts of the same length in tokens"
        )
    return clean, corrupted


def run_patched(
    model: nn.Module,
    clean_ids: Sequence[int] | torch.Tensor,
    corrupted_ids: Sequence[int] | torch.Tensor,
    names: Sequence[str],
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits (1, T, V) of the corrupted text with the points ``names`` restored from the clean run at ``positions``."""
    clean, corrupted = _pair(model, clean_ids, corrupted_ids)
    with _evaluating(model):
        _, cache = run_with_cache(model, clean, names)

        def restore(t: torch.Tensor, name: str) -> torch.Tensor:
            t = t.clone()
            where = slice(None) if positions is None else torch.as_tensor(list(positions))
            t[:, where] = cache[name][:, where]
            return t

        return run_with_hooks(model, corrupted, [(n, restore) for n in names])


def _patch_sweep(model, clean, corrupted, metric, jobs, batch_size) -> list[float]:
    """Run the corrupted text once per job, each job = (name, position or None, unit index or None) restored."""
    names = sorted({name for name, _, _ in jobs})
    _, cache = run_with_cache(model, clean, names)
    values = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        by_name: dict[str, list[tuple[int, int | None, int | None]]] = {}
        for r, (name, pos, index) in enumerate(chunk):
            by_name.setdefault(name, []).append((r, pos, index))

        def make(name: str, rows: list) -> HookFn:
            def fn(t: torch.Tensor, _name: str) -> torch.Tensor:
                t = t.clone()
                for r, pos, index in rows:
                    key = _select(t, name, index, None if pos is None else [pos])
                    t[(r,) + key[1:]] = cache[name][(0,) + key[1:]]
                return t

            return fn

        logits = run_with_hooks(model, corrupted.expand(len(chunk), -1), [(n, make(n, rows)) for n, rows in by_name.items()])
        values += metric(logits).tolist()
    return values


def patch_residual(
    model: nn.Module,
    clean_ids: Sequence[int] | torch.Tensor,
    corrupted_ids: Sequence[int] | torch.Tensor,
    metric: Metric,
    batch_size: int = 64,
) -> PatchResult:
    """Restore the stream entering each layer at each position: a (L, T) table of the metric."""
    clean, corrupted = _pair(model, clean_ids, corrupted_ids)
    names = stream_names(model)
    T = clean.size(1)
    with _evaluating(model):
        jobs = [(name, p, None) for name in names for p in range(T)]
        values = _patch_sweep(model, clean, corrupted, metric, jobs, batch_size)
        base_clean, base_corrupted = float(metric(model(clean))[0]), float(metric(model(corrupted))[0])
    return PatchResult(torch.tensor(values).view(len(names), T), base_clean, base_corrupted)


def patch_heads(
    model: nn.Module,
    clean_ids: Sequence[int] | torch.Tensor,
    corrupted_ids: Sequence[int] | torch.Tensor,
    metric: Metric,
    batch_size: int = 64,
) -> PatchResult:
    """Restore each head's output (``attn.hook_z``) at every position: a (L, H) table of the metric."""
    clean, corrupted = _pair(model, clean_ids, corrupted_ids)
    names = _need(model, "attn.hook_z", "attention heads (a Mamba's state carries the past: patch its stream)")
    H = model.config.n_head
    with _evaluating(model):
        jobs = [(name, None, h) for name in names for h in range(H)]
        values = _patch_sweep(model, clean, corrupted, metric, jobs, batch_size)
        base_clean, base_corrupted = float(metric(model(clean))[0]), float(metric(model(corrupted))[0])
    return PatchResult(torch.tensor(values).view(len(names), H), base_clean, base_corrupted)


# ------------------------------------------------------------------ steering


def mean_difference(
    model: nn.Module,
    prompts_a: Sequence[Sequence[int]],
    prompts_b: Sequence[Sequence[int]],
    layer: int,
) -> torch.Tensor:
    """mean(stream at ``layer`` over prompts_a) - mean(over prompts_b), every position of every prompt: (D,)."""
    names = stream_names(model)
    if not 0 <= layer < len(names):
        raise ConfigError(f"there is no layer {layer}; choose 0..{len(names) - 1}")
    if not prompts_a or not prompts_b:
        raise DataError("a steering direction needs at least one prompt on each side")

    def mean(prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        rows = []
        with _evaluating(model):
            for p in prompts:
                _, cache = run_with_cache(model, _batch(model, p)[:1], [names[layer]])
                rows.append(cache[names[layer]][0])  # (T, D)
        return torch.cat(rows).float().mean(0)

    return mean(prompts_a) - mean(prompts_b)


@contextmanager
def steering(model: nn.Module, direction: torch.Tensor, layer: int, scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * direction`` to the stream entering ``layer`` at every position, for the calls inside.

    Works with ``lmcore.sample.generate``: the hook points fire in ``step`` too.
    """
    names = stream_names(model)
    if not 0 <= layer < len(names):
        raise ConfigError(f"there is no layer {layer}; choose 0..{len(names) - 1}")
    vec = torch.as_tensor(direction).flatten()
    if vec.numel() != model.config.n_embd:
        raise ConfigError(f"the direction has {vec.numel()} values but the stream is {model.config.n_embd} wide")

    def add(t: torch.Tensor, _name: str) -> torch.Tensor:
        return t + scale * vec.to(device=t.device, dtype=t.dtype)

    with hooked(model, [(names[layer], add)]):
        yield


def steered_generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    direction: torch.Tensor,
    layer: int,
    scale: float,
    max_new_tokens: int = 50,
    sampling=None,
) -> list[int]:
    """The tokens ``generate`` draws with ``direction`` added at ``layer`` (scale 0: the plain model's)."""
    from lmcore.sample import SamplingConfig, generate

    cfg = sampling if sampling is not None else SamplingConfig(temperature=0.0)
    with steering(model, direction, layer, scale):
        return [e.token_id for e in generate(model, list(prompt_ids), max_new_tokens=max_new_tokens, sampling=cfg)]


# ------------------------------------------------------------------ direct logit attribution


@dataclass
class Attribution:
    """What each part wrote into the final stream, read as the logit of one token at one position.

    heads (L, H) and mlps (L,) for transformers; mixers (L,) for Mamba; embed the
    embedding (with positions); rest the biases (attention output, final
    norm). embed + heads + mlps + mixers + rest == logit up to float error.
    """

    logit: float
    embed: float
    heads: torch.Tensor | None
    mlps: torch.Tensor | None
    mixers: torch.Tensor | None
    rest: float


def _final_norm(model: nn.Module) -> nn.Module:
    for name in ("ln_f", "norm_f"):
        norm = getattr(model, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise ConfigError(f"the {model.config.arch} architecture has no final norm to attribute logits through")


def logit_attribution(
    model: nn.Module, ids: Sequence[int] | torch.Tensor, token: int, position: int = -1
) -> Attribution:
    """Direct logit attribution of ``token`` as the prediction at ``position`` (Elhage et al. 2021).

    The final stream is a sum of writes (embedding, each head, each MLP or
    mixer, biases). The final norm's scale is frozen at its value on the whole
    stream, so the norm is linear in each write and the logit splits exactly.
    """
    x = _batch(model, ids)[:1]
    if not 0 <= token < model.config.vocab_size:
        raise DataError(f"token id {token} is outside the vocabulary of {model.config.vocab_size}")
    T = x.size(1)
    pos = position % T
    norm = _final_norm(model)
    post = layer_names(model, "hook_resid_post")
    if not post:
        raise ConfigError(f"the {model.config.arch} architecture has no residual stream to attribute")
    L = len(post)
    z_names = layer_names(model, "attn.hook_z")
    mlp_names = layer_names(model, "hook_mlp_out")
    mixer_names = layer_names(model, "hook_mixer_out")
    attn_names = layer_names(model, "hook_attn_out")
    with _evaluating(model):
        names = ["blocks.0.hook_resid_pre", post[-1], *mlp_names, *mixer_names, *attn_names]
        logits, cache = run_with_cache(model, x, names)
        # The unembedding direction of the token: the logit's gradient at the normalized stream (the head is linear).
        with torch.enable_grad():
            leaf = {}

            def grab(t: torch.Tensor, _n: str) -> torch.Tensor:
                leaf["n"] = t.detach().requires_grad_(True)
                return leaf["n"]

            out = run_with_hooks(model, x, [("final.hook_normalized", grab)])
            (unembed,) = torch.autograd.grad(out[0, pos, token], leaf["n"])
        u = unembed[0, pos].float()  # (D,)
        stream = cache[post[-1]][0, pos].float()  # (D,)
        eps = getattr(norm, "eps", 1e-5)
        centre = isinstance(norm, nn.LayerNorm)
        if centre:
            scale = (stream.var(unbiased=False) + eps).rsqrt()
        else:
            scale = (stream.pow(2).mean() + eps).rsqrt()
        w = norm.weight.float() if getattr(norm, "weight", None) is not None else torch.ones_like(stream)
        direction = u * w * scale  # the frozen-scale norm, then the head, as one (D,) row

        def read(v: torch.Tensor) -> torch.Tensor:  # (..., D) -> (...)
            v = v.float()
            if centre:
                v = v - v.mean(-1, keepdim=True)
            return v @ direction

        embed = float(read(cache["blocks.0.hook_resid_pre"][0, pos]))
        mlps = torch.stack([read(cache[n][0, pos]) for n in mlp_names]).cpu() if mlp_names else None
        mixers = torch.stack([read(cache[n][0, pos]) for n in mixer_names]).cpu() if mixer_names else None
        heads, rest = None, 0.0
        if z_names:
            H = model.config.n_head
            # Each head's write alone: the attention output with every other head's z zeroed, minus the bias.
            rows = [(n, h) for n in z_names for h in range(H)] + [(n, None) for n in z_names]

            def keep_only(name: str, mine: list[tuple[int, int | None]]) -> HookFn:
                def fn(t: torch.Tensor, _n: str) -> torch.Tensor:
                    t = t.clone()
                    for r, h in mine:
                        keep = t[r, :, h].clone() if h is not None else None
                        t[r] = 0
                        if keep is not None:
                            t[r, :, h] = keep
                    return t

                return fn

            by_name: dict[str, list] = {}
            for r, (n, h) in enumerate(rows):
                by_name.setdefault(n, []).append((r, h))
            outs: dict[str, torch.Tensor] = {}

            def take(t: torch.Tensor, name: str) -> None:
                outs[name] = t.detach()

            run_with_hooks(
                model,
                x.expand(len(rows), -1),
                [(n, keep_only(n, mine)) for n, mine in by_name.items()] + [(n, take) for n in attn_names],
            )
            writes = torch.zeros(L, H)
            for layer, an in enumerate(attn_names):
                bias = outs[an][len(z_names) * H + layer, pos]  # the row with every head zeroed: the bias alone
                rest += float(read(bias))
                for h in range(H):
                    writes[layer, h] = read(outs[an][layer * H + h, pos] - bias)
            heads = writes
        if getattr(norm, "bias", None) is not None:
            rest += float(u @ norm.bias.float())
    return Attribution(
        logit=float(logits[0, pos, token]), embed=embed, heads=heads, mlps=mlps, mixers=mixers, rest=rest
    )


# ------------------------------------------------------------------ what the playground's page needs


def ablation_table(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    unit: str = "head",
    mode: str = "zero",
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Mean loss change (L, U) over a text when each unit alone is ablated (``ablation_sweep``).

    ``positions``: the predictions averaged (index i predicts token i + 1); None: all.
    """
    losses, clean = ablation_sweep(model, ids, unit=unit, mode=mode)
    change = losses - clean  # (L, U, T-1)
    if positions is not None:
        change = change[:, :, torch.as_tensor(list(positions), dtype=torch.long)]
    return change.mean(-1)


def top_next_tokens(model: nn.Module, ids: Sequence[int] | torch.Tensor, position: int = -1, k: int = 10):
    """The k most likely next tokens after ``position`` as (token id, probability), best first."""
    x = _batch(model, ids)[:1]
    with _evaluating(model):
        logits = model(x)[0, position]
    return _top(logits[None], k)[0]


def repeated_pair(vocab_size: int, length: int = 25, seed: int = 0, avoid: Sequence[int] = ()) -> tuple:
    """The induction pair: clean = S random distinct tokens then the same S again; corrupted = the
    first copy shuffled, then the same second copy. Returns (clean, corrupted, positions), positions
    being the predictions of the second copy's tokens 2..S (what copying predicts and a shuffle breaks).
    """
    pool = [t for t in range(vocab_size) if t not in set(avoid)]
    S = min(length, len(pool))
    if S < 3:
        raise DataError("the vocabulary is too small for a repeated sequence; use a model with more tokens")
    gen = torch.Generator().manual_seed(seed)
    seg = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:S].tolist()]
    shuffled = [seg[i] for i in torch.randperm(S, generator=gen).tolist()]
    if shuffled == seg:
        shuffled = seg[1:] + seg[:1]
    return seg + seg, shuffled + seg, list(range(S, 2 * S - 1))


def swap_pair(encode: Callable[[str], list[int]], names: Sequence[str], sep: str = "\n", seed: int = 0) -> tuple:
    """A name swap: clean = name A, a separator, A again; corrupted = name B (as many tokens as A), the
    separator, A. Returns (clean, corrupted, positions, (A, B)); positions predict A's second copy from its
    second token on. Names the tokenizer cannot write are skipped.
    """
    from lmcore.errors import LMCoreError

    by_length: dict[int, list[tuple[str, list[int]]]] = {}
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            ids = encode(name)
        except LMCoreError:
            continue
        if len(ids) >= 3:
            by_length.setdefault(len(ids), []).append((name, ids))
    lengths = sorted(n for n, group in by_length.items() if len(group) >= 2)
    if not lengths:
        raise DataError("this model's tokenizer cannot write two names of the same length; use your own two texts")
    gen = torch.Generator().manual_seed(seed)
    group = by_length[lengths[int(torch.randint(len(lengths), (1,), generator=gen))]]
    i, j = torch.randperm(len(group), generator=gen)[:2].tolist()
    (a, a_ids), (b, b_ids) = group[i], group[j]
    s = encode(sep)
    n = len(a_ids)
    start = n + len(s)
    return a_ids + s + a_ids, b_ids + s + a_ids, list(range(start, start + n - 1)), (a, b)
