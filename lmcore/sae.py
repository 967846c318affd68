"""Sparse autoencoders: split one hook point's activations into features a person can read.

A TopK sparse autoencoder (Gao et al. 2024) learns a dictionary of
``n_features`` directions for the activations at one hook point (default: the
residual stream after the middle block, ``blocks.{L//2}.hook_resid_post``)
and writes every activation as a sum of at most ``k`` of them:

- ``encode(x) = scatter(TopK(W_enc (x - b_pre) + b_enc))`` with a ReLU, so at
  most k values per row are non-zero; ``decode(z) = W_dec z + b_pre``. The
  decoder's columns have unit norm (renormalized after every step, their
  gradient's parallel part removed before it), so a feature's activation is
  its size along its direction. ``b_pre`` starts at the mean activation.
- An auxiliary loss (AuxK) keeps features from dying: a feature that has not
  fired for ``dead_after`` tokens is "dead", and the top ``k_aux`` dead
  features are trained to reconstruct what the live ones missed.

``train_sae(model, ids, ...)`` streams activations from the token ids in
windows of the model's context, a bounded buffer at a time (shuffled), and
returns a ``SparseAutoencoder``. ``evaluate_sae`` measures explained variance,
L0, dead features and cross-entropy recovered (the model's loss with the SAE
spliced in through ``lmcore.hooks.run_with_hooks``, against the clean loss and
against zeroing that activation). ``feature_activations`` records every
token's active features for the per-feature views: density, top contexts
with the activation on each token; ``logit_effects`` gives the tokens a
feature's decoder direction pushes up and down through the unembedding.

An SAE file is a safetensors file with its config and the fingerprint of the
model it was trained on in its metadata; using it beside another model raises
a one-line ``ConfigError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmcore.errors import CheckpointError, ConfigError, DataError
from lmcore.hooks import hook_names, hooked, run_with_cache, run_with_hooks

FORMAT = "lmcore-sae/1"
MAX_FEATURES = 1 << 16
DEFAULT_WINDOW = 256  # the window for models without a fixed context (Mamba, LSTM)
Progress = Callable[[int, int], None]  # (tokens done, tokens in all)


# --------------------------------------------------------------------------- model identity


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's config and weights: the identity an SAE file records."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def default_hook(model: nn.Module) -> str:
    """The residual stream after the middle block: ``blocks.{L//2}.hook_resid_post`` (or the last that exists)."""
    names = hook_names(model)
    posts = [n for n in names if n.startswith("blocks.") and n.endswith(".hook_resid_post")]
    if not posts:
        raise ConfigError("this model has no residual-stream hook points; pass --hook with one of its hook points")
    return posts[len(posts) // 2]


def check_hook(model: nn.Module, hook: str) -> None:
    """ConfigError (one line) unless ``hook`` is a per-token hook point of ``model``."""
    names = hook_names(model)
    if hook not in names:
        known = ", ".join(names[:6]) or "none"
        raise ConfigError(f"this model has no hook point {hook!r}; its points include: {known}")
    if hook.endswith("hook_pattern"):
        raise ConfigError(f"{hook} holds attention patterns, not one vector per token; choose another hook point")


# --------------------------------------------------------------------------- the autoencoder


class SparseAutoencoder(nn.Module):
    """A TopK sparse autoencoder over ``d_in``-wide activations at ``hook`` of one model."""

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int,
        hook: str = "",
        model_id: str = "",
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not 1 <= n_features <= MAX_FEATURES:
            raise ConfigError(f"n_features must be from 1 to {MAX_FEATURES:,}, got {n_features}")
        if not 1 <= k <= n_features:
            raise ConfigError(f"k must be from 1 to n_features ({n_features}), got {k}")
        self.d_in, self.n_features, self.k = d_in, n_features, k
        self.hook, self.model_id = hook, model_id
        self.info: dict[str, Any] = dict(info or {})
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        W = torch.randn(d_in, n_features)
        self.W_dec = nn.Parameter(W / W.norm(dim=0, keepdim=True))  # (D, F), unit columns
        self.W_enc = nn.Parameter(self.W_dec.detach().t().clone())  # (F, D)
        self.b_enc = nn.Parameter(torch.zeros(n_features))

    # -- maths

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, F)
        return F.linear(x - self.b_pre, self.W_enc, self.b_enc)

    def _topk(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = pre.topk(self.k, dim=-1)
        return F.relu(values), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, F): at most k non-zero (positive) values per row."""
        values, indices = self._topk(self.pre_activations(x))
        return torch.zeros(*x.shape[:-1], self.n_features, dtype=values.dtype, device=values.device).scatter_(
            -1, indices, values
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N, D)."""
        return F.linear(z, self.W_dec, self.b_pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def _remove_parallel_grad(self) -> None:
        if self.W_dec.grad is not None:
            W, g = self.W_dec, self.W_dec.grad
            g.sub_(W * (W * g).sum(dim=0, keepdim=True))

    # -- the model it belongs to

    def check_model(self, model: nn.Module) -> None:
        """ConfigError (one line) unless ``model`` is the model this SAE was trained on."""
        if self.model_id and model_fingerprint(model) != self.model_id:
            raise ConfigError(
                f"this SAE was trained on another model (fingerprint {self.model_id}); "
                "load it beside the model it was trained on, or train a new SAE on this one"
            )
        check_hook(model, self.hook)

    def splice(self) -> tuple[str, Callable[[torch.Tensor, str], torch.Tensor]]:
        """A (name, fn) hook for run_with_hooks that replaces the activation by its reconstruction."""

        def fn(t: torch.Tensor, name: str) -> torch.Tensor:
            flat = t.reshape(*t.shape[:2], -1).float()
            return self(flat).reshape(t.shape).to(t.dtype)

        return self.hook, fn

    # -- files

    def config_dict(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "n_features": self.n_features, "k": self.k, "hook": self.hook}

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file with the config and the model's fingerprint in its metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {n: p.detach().to("cpu", torch.float32).contiguous() for n, p in self.named_parameters()}
        meta = {
            "format": FORMAT,
            "config": json.dumps(self.config_dict()),
            "model": self.model_id,
            "info": json.dumps(self.info),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> SparseAutoencoder:
        """Read an SAE file; with ``model``, refuse (ConfigError) unless it is the model the SAE was trained on."""
        from safetensors import safe_open

        path = Path(path)
        name = path.name
        if not path.is_file():
            raise CheckpointError(f"no SAE file {name}; train one with python -m lmcore sae")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as e:  # safetensors raises several kinds on a bad file
            raise CheckpointError(f"{name} is not a readable safetensors file ({type(e).__name__}); train it again") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{name} is not an SAE file (format {meta.get('format')!r}); train one with lmcore sae")
        try:
            config = json.loads(meta["config"])
            info = json.loads(meta.get("info", "{}"))
            d_in, n_features, k, hook = (config[key] for key in ("d_in", "n_features", "k", "hook"))
            if not all(isinstance(v, int) and v > 0 for v in (d_in, n_features, k)) or not isinstance(hook, str):
                raise ValueError
        except (KeyError, ValueError, TypeError):
            raise CheckpointError(f"{name} has a malformed SAE config in its metadata; train it again") from None
        if d_in > MAX_FEATURES * 64:
            raise CheckpointError(f"{name} has an SAE width of {d_in}, larger than any model here; train it again")
        sae = cls(d_in, n_features, k, hook=hook, model_id=str(meta.get("model", "")), info=info)
        expected = {n: tuple(p.shape) for n, p in sae.named_parameters()}
        got = {n: tuple(t.shape) for n, t in tensors.items()}
        if got != expected:
            raise CheckpointError(f"{name} holds tensors that do not match its SAE config; train it again")
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            raise CheckpointError(f"{name} holds non-finite weights; train it again")
        with torch.no_grad():
            for n, p in sae.named_parameters():
                p.copy_(tensors[n])
        if model is not None:
            sae.check_model(model)
            sae.to(next(model.parameters()).device)
        return sae.eval()


# --------------------------------------------------------------------------- activations


def _ids(ids: Any, model: nn.Module, what: str) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
    if len(t) < 2:
        raise DataError(f"the {what} needs at least 2 tokens; give it more text")
    vocab = model.config.vocab_size
    if int(t.min()) < 0 or int(t.max()) >= vocab:
        raise DataError(f"the {what} holds token ids outside the model's vocabulary of {vocab}; use its tokenizer")
    return t


def _window(model: nn.Module) -> int:
    return getattr(model, "max_context", None) or DEFAULT_WINDOW


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _flat(t: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B * T, D)
    return t.reshape(t.shape[0] * t.shape[1], -1).float()


def _windows(ids: torch.Tensor, window: int, batch: int) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping windows of ``ids``, ``batch`` at a time (the last window may be shorter)."""
    n_full = len(ids) // window
    full = ids[: n_full * window].view(n_full, window)
    for i in range(0, n_full, batch):
        yield full[i : i + batch]
    if len(ids) > n_full * window:
        yield ids[n_full * window :][None]


class _Reached(Exception):
    """Raised by the hook that reads an activation: the layers after it need not run."""

    def __init__(self, tensor: torch.Tensor):
        super().__init__()
        self.tensor = tensor


def _read_activation(model: nn.Module, ids: torch.Tensor, hook: str) -> torch.Tensor:
    """The activation at ``hook`` for ``ids``, running the model only up to that point."""

    def reached(t: torch.Tensor, name: str) -> None:
        raise _Reached(t.detach())

    try:
        run_with_hooks(model, ids, [(hook, reached)])
    except _Reached as r:
        return r.tensor
    raise ConfigError(f"the hook point {hook} is not on this model's forward path; choose another")


STREAM_TOKENS = 4096  # tokens per forward pass when streaming activations


def stream_activations(
    model: nn.Module, ids: torch.Tensor, hook: str, batch_windows: int | None = None
) -> Iterator[torch.Tensor]:
    """Activations at ``hook`` over the ids, (N, D) float32 per batch of windows; bounded memory.

    Each batch runs the model only as far as the hook point. ``batch_windows``
    (default: about ``STREAM_TOKENS`` tokens' worth) windows per forward pass.
    """
    device = _device(model)
    window = _window(model)
    batch_windows = batch_windows or max(1, STREAM_TOKENS // window)
    was_training = model.training
    model.eval()
    try:
        for w in _windows(ids, window, batch_windows):
            with torch.no_grad():  # not held across the yield: the caller may train
                acts = _read_activation(model, w.to(device), hook)
            yield _flat(acts)
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- training


def _aux_loss(sae: SparseAutoencoder, x: torch.Tensor, e: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK: how well the top ``k_aux`` dead features (indices ``dead``) reconstruct the residual ``e``, normalized.

    Computed on the dead features' columns alone, (N, n_dead): the same
    values as a top-k over all pre-activations with the live ones masked
    out, at n_dead / F of the cost.
    """
    pre = F.linear(x - sae.b_pre, sae.W_enc[dead], sae.b_enc[dead])  # (N, n_dead)
    if k_aux < len(dead):
        v, j = pre.topk(k_aux, dim=-1)
        z = torch.zeros_like(pre).scatter_(-1, j, F.relu(v))
    else:
        z = F.relu(pre)
    e_hat = F.linear(z, sae.W_dec[:, dead])  # (N, D)
    return (e - e_hat).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)


def train_sae(
    model: nn.Module,
    ids: Any,
    hook: str | None = None,
    n_features: int = 1024,
    k: int = 16,
    *,
    epochs: float = 1.0,
    batch_size: int = 1024,
    lr: float = 1e-3,
    buffer_tokens: int = 65536,
    dead_after: int = 20_000,
    k_aux: int | None = None,
    aux_coef: float = 1 / 32,
    seed: int = 0,
    progress: Progress | None = None,
) -> SparseAutoencoder:
    """Train a TopK SAE on ``model``'s activations at ``hook`` over ``ids`` (``epochs`` passes over them).

    Activations are read a buffer of ``buffer_tokens`` at a time, shuffled, and
    trained on in batches of ``batch_size`` with Adam. A feature that has not
    fired on the last ``dead_after`` tokens counts as dead for the AuxK loss.
    """
    hook = hook or default_hook(model)
    check_hook(model, hook)
    ids = _ids(ids, model, "training text")
    if not (epochs > 0 and math.isfinite(epochs)):
        raise ConfigError(f"epochs must be a positive number, got {epochs}")
    if batch_size < 1 or buffer_tokens < batch_size:
        raise ConfigError("batch_size must be at least 1 and at most buffer_tokens")
    device = _device(model)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = next(stream_activations(model, ids[: _window(model)], hook))
    d_in = first.shape[1]
    sae = SparseAutoencoder(d_in, n_features, k, hook=hook, model_id=model_fingerprint(model)).to(device)
    k_aux = min(n_features, k_aux or max(k, d_in // 2))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(n_features, dtype=torch.long, device=device)
    total = max(1, int(epochs * len(ids)))
    done = 0
    initialized = False
    steps = 0
    sae.train()

    def buffers() -> Iterator[torch.Tensor]:
        nonlocal done
        parts: list[torch.Tensor] = []
        size = 0
        while done < total:
            for acts in stream_activations(model, ids, hook):
                acts = acts[: total - done]
                done += len(acts)
                parts.append(acts)
                size += len(acts)
                if size >= buffer_tokens or done >= total:
                    yield torch.cat(parts)
                    parts, size = [], 0
                if done >= total:
                    return

    for buf in buffers():
        if not initialized:
            with torch.no_grad():
                sae.b_pre.copy_(buf.mean(0))
            initialized = True
        buf = buf[torch.randperm(len(buf), generator=gen).to(buf.device)]
        for i in range(0, len(buf), batch_size):
            x = buf[i : i + batch_size]
            pre = sae.pre_activations(x)  # (N, F)
            values, indices = sae._topk(pre)  # (N, k)
            z = torch.zeros_like(pre).scatter_(-1, indices, values)
            x_hat = sae.decode(z)
            var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
            loss = (x - x_hat).pow(2).sum(-1).mean() / var
            with torch.no_grad():
                fired = torch.zeros(n_features, dtype=torch.bool, device=device)
                fired[indices[values > 0]] = True
                since_fired += len(x)
                since_fired[fired] = 0
                dead = since_fired > dead_after
            n_dead = int(dead.sum())
            if n_dead and aux_coef > 0:
                loss = loss + aux_coef * _aux_loss(sae, x, (x - x_hat).detach(), dead.nonzero()[:, 0], k_aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae._remove_parallel_grad()
            opt.step()
            sae.normalize_decoder()
            steps += 1
        if progress is not None:
            progress(done, total)
    sae.info = {"tokens": done, "steps": steps, "epochs": epochs, "lr": lr, "batch_size": batch_size}
    return sae.eval()


# --------------------------------------------------------------------------- evaluation


def _loss_windows(ids: torch.Tensor, window: int, batch: int) -> Iterator[torch.Tensor]:
    """Windows of window + 1 tokens overlapping by one: each token after the first is predicted once."""
    n_full = (len(ids) - 1) // window
    if n_full:
        full = ids[: n_full * window + 1].unfold(0, window + 1, window)
        for i in range(0, n_full, batch):
            yield full[i : i + batch]
    tail = ids[n_full * window :]
    if len(tail) >= 2:
        yield tail[None]


@torch.no_grad()
def evaluate_sae(
    model: nn.Module, sae: SparseAutoencoder, ids: Any, max_tokens: int | None = 50_000, batch_windows: int = 8
) -> dict[str, float]:
    """Explained variance, L0, dead features and cross-entropy recovered of ``sae`` on ``ids``.

    ``ce_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)``: 1 when
    splicing the SAE in costs nothing, 0 when it is as bad as zeroing the
    activation. ``dead_fraction``: the share of features that never fire here.
    """
    sae.check_model(model)
    ids = _ids(ids, model, "evaluation text")
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    device = _device(model)
    was_training, sae_training = model.training, sae.training
    model.eval()
    sae.eval()
    hook = sae.hook
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    sq_err = 0.0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64, device=device)
    sum_x2 = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.n_features, dtype=torch.bool, device=device)
    n_act = 0
    try:
        for w in _loss_windows(ids, _window(model), batch_windows):
            w = w.to(device)
            x_in, y = w[:, :-1], w[:, 1:]
            logits, cache = run_with_cache(model, x_in, [hook])
            x = _flat(cache[hook])
            z = sae.encode(x)
            x_hat = sae.decode(z)
            sq_err += float((x - x_hat).double().pow(2).sum())
            sum_x += x.double().sum(0)
            sum_x2 += float(x.double().pow(2).sum())
            nz = z > 0
            l0 += float(nz.sum())
            fired |= nz.any(0)
            n_act += len(x)

            def loss(lg: torch.Tensor) -> float:
                return float(F.cross_entropy(lg.reshape(-1, lg.size(-1)).float(), y.reshape(-1), reduction="sum"))

            ce["clean"] += loss(logits)
            ce["sae"] += loss(run_with_hooks(model, x_in, [sae.splice()]))
            ce["zero"] += loss(run_with_hooks(model, x_in, [(hook, lambda t, name: torch.zeros_like(t))]))
            n_pred += y.numel()
    finally:
        model.train(was_training)
        sae.train(sae_training)
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n_act
    clean, spliced, zero = (ce[key] / n_pred for key in ("clean", "sae", "zero"))
    gap = zero - clean
    return {
        "hook": hook,
        "tokens": n_pred,
        "explained_variance": 1.0 - sq_err / total_var if total_var > 0 else float("nan"),
        "l0": l0 / n_act,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "ce_clean": clean,
        "ce_sae": spliced,
        "ce_zero": zero,
        "ce_recovered": (zero - spliced) / gap if gap != 0 else float("nan"),
    }


# --------------------------------------------------------------------------- per feature


@dataclass
class Context:
    """A stretch of tokens around one activation of a feature, with the feature's activation on each token."""

    tokens: list[int]
    acts: list[float]
    peak: int  # index in tokens of the top activation
    value: float  # the activation there
    position: int  # the peak's position in the text


@dataclass
class FeatureActivations:
    """Every token's active features over a text: ``values`` and ``indices`` are (N, k), in token order."""

    tokens: torch.Tensor  # (N,)
    values: torch.Tensor  # (N, k), >= 0
    indices: torch.Tensor  # (N, k)
    n_features: int

    def density(self) -> torch.Tensor:
        """(F,): the share of tokens on which each feature fires."""
        counts = torch.zeros(self.n_features, dtype=torch.float64)
        counts.index_add_(0, self.indices[self.values > 0], torch.ones(int((self.values > 0).sum()), dtype=torch.float64))
        return (counts / max(1, len(self.tokens))).float()

    def column(self, feature: int) -> torch.Tensor:
        """(N,): the feature's activation on every token (0 where it is not active)."""
        if not 0 <= feature < self.n_features:
            raise ConfigError(f"feature must be from 0 to {self.n_features - 1}, got {feature}")
        return (self.values * (self.indices == feature)).sum(-1)

    def top_contexts(self, feature: int, n: int = 10, before: int = 24, after: int = 4) -> list[Context]:
        """The ``n`` tokens where the feature is strongest, each with ``before`` tokens of context and ``after`` more."""
        col = self.column(feature)
        m = min(n, int((col > 0).sum()))
        if m == 0:
            return []
        values, positions = col.topk(m)
        out = []
        for v, p in zip(values.tolist(), positions.tolist()):
            lo, hi = max(0, p - before), min(len(col), p + after + 1)
            out.append(Context(self.tokens[lo:hi].tolist(), col[lo:hi].tolist(), p - lo, v, p))
        return out

    def same_token_share(self, feature: int, n: int = 10) -> float:
        """The share of the top ``n`` contexts that end (peak) on the most common token: a rough readability score."""
        ctxs = self.top_contexts(feature, n, before=0, after=0)
        if not ctxs:
            return 0.0
        peaks = [c.tokens[c.peak] for c in ctxs]
        return max(peaks.count(t) for t in set(peaks)) / len(peaks)

    def features_at(self, position: int) -> list[tuple[int, float]]:
        """The features active on the token at ``position``, strongest first."""
        pairs = [(int(i), float(v)) for i, v in zip(self.indices[position], self.values[position]) if v > 0]
        return sorted(pairs, key=lambda p: -p[1])

    def top_features(self, n: int = 10) -> list[FeatureScore]:
        """The ``n`` features with the largest total activation over the whole text, strongest first."""
        active = self.values > 0
        total = torch.zeros(self.n_features, dtype=torch.float64)
        total.index_add_(0, self.indices[active], self.values[active].double())
        count = torch.zeros(self.n_features, dtype=torch.long)
        count.index_add_(0, self.indices[active], torch.ones(int(active.sum()), dtype=torch.long))
        return _scores(total, count, len(self.tokens), n)

    def token_features(self, token: int, n: int = 10) -> list[FeatureScore]:
        """The features that fire most on ``token``: the ``n`` largest mean activations over its occurrences.

        ``share`` is the share of the token's occurrences on which the feature
        fires; ``precision`` the share of the feature's firings that fall on
        this token (1: it fires on nothing else here). Empty when the token
        does not occur in the text.
        """
        at = self.tokens == token
        occurrences = int(at.sum())
        if occurrences == 0:
            return []
        values, indices = self.values[at], self.indices[at]
        active = values > 0
        total = torch.zeros(self.n_features, dtype=torch.float64)
        total.index_add_(0, indices[active], values[active].double())
        count = torch.zeros(self.n_features, dtype=torch.long)
        count.index_add_(0, indices[active], torch.ones(int(active.sum()), dtype=torch.long))
        everywhere = self.density() * len(self.tokens)
        scores = _scores(total, count, occurrences, n)
        for s in scores:
            s.precision = s.count / max(1.0, float(everywhere[s.feature]))
        return scores


@dataclass
class FeatureScore:
    """One feature's activation over a set of tokens: total, mean per token of the set, how often it fired."""

    feature: int
    total: float  # the sum of its activations over the set
    mean: float  # total / tokens in the set
    count: int  # tokens of the set on which it fired
    share: float  # count / tokens in the set
    precision: float | None = None  # of all its firings in the text, the share on this set (token search only)


def _scores(total: torch.Tensor, count: torch.Tensor, n_tokens: int, n: int) -> list[FeatureScore]:
    n = min(n, int((count > 0).sum()))
    if n <= 0:
        return []
    top = total.topk(n)
    return [
        FeatureScore(int(f), float(v), float(v) / n_tokens, int(count[f]), int(count[f]) / n_tokens)
        for v, f in zip(top.values, top.indices)
    ]


@torch.no_grad()
def feature_activations(
    model: nn.Module, sae: SparseAutoencoder, ids: Any, max_tokens: int | None = 50_000, batch_windows: int = 8
) -> FeatureActivations:
    """Record the active features of every token of ``ids`` (windows of the model's context, as in training)."""
    sae.check_model(model)
    ids = _ids(ids, model, "text")
    if max_tokens is not None:
        ids = ids[:max_tokens]
    values, indices = [], []
    for x in stream_activations(model, ids, sae.hook, batch_windows):
        v, i = sae._topk(sae.pre_activations(x))
        values.append(v.cpu())
        indices.append(i.cpu())
    return FeatureActivations(ids, torch.cat(values), torch.cat(indices), sae.n_features)


@torch.no_grad()
def logit_effects(model: nn.Module, sae: SparseAutoencoder) -> torch.Tensor:
    """(F, V): each decoder direction read through the unembedding (the final norm skipped, as is usual).

    Computed through the model's own head: the direction replaces the
    normalized final stream (``final.hook_normalized``) of a one-token run.
    """
    sae.check_model(model)
    if "final.hook_normalized" not in hook_names(model):
        raise ConfigError("this model has no final.hook_normalized point, so its unembedding cannot be read")
    width = getattr(model.config, "n_embd", None)
    if sae.d_in != width:
        raise ConfigError(f"logit effects need an SAE on the {width}-wide residual stream; this one is {sae.d_in} wide")
    device = _device(model)
    out = []
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, sae.n_features, 256):
            dirs = sae.W_dec[:, lo : lo + 256].t()  # (f, D)
            ids = torch.zeros(len(dirs), 1, dtype=torch.long, device=device)
            logits = run_with_hooks(model, ids, [("final.hook_normalized", lambda t, name: dirs[:, None, :].to(t.dtype))])
            out.append(logits[:, 0].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def top_tokens(effects: torch.Tensor, n: int = 10) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """For one feature's (V,) effects: the ``n`` tokens pushed up most and the ``n`` pushed down most."""
    centered = effects - effects.mean()
    n = min(n, len(centered))
    up = centered.topk(n)
    down = (-centered).topk(n)
    return (
        [(int(i), float(v)) for v, i in zip(up.values, up.indices)],
        [(int(i), -float(v)) for v, i in zip(down.values, down.indices)],
    )


# --------------------------------------------------------------------------- steering


def feature_direction(sae: SparseAutoencoder, feature: int) -> torch.Tensor:
    """(d_in,): the feature's decoder direction (unit length), detached."""
    if not 0 <= feature < sae.n_features:
        raise ConfigError(f"feature must be from 0 to {sae.n_features - 1}, got {feature}")
    return sae.W_dec[:, feature].detach()


@contextmanager
def feature_steering(model: nn.Module, sae: SparseAutoencoder, feature: int, strength: float) -> Iterator[None]:
    """Add ``strength`` times the feature's decoder direction at the SAE's hook point, every position, inside the block.

    Runs through ``lmcore.hooks.hooked``, so ``lmcore.sample.generate`` is
    steered too (its hook points fire in ``step``). The direction has unit
    length: ``strength`` is the activation the feature is given on top of its own.
    """
    if not math.isfinite(strength):
        raise ConfigError(f"the steering strength must be a finite number, got {strength}")
    sae.check_model(model)
    direction = feature_direction(sae, feature)

    def add(t: torch.Tensor, _name: str) -> torch.Tensor:
        return t + strength * direction.to(device=t.device, dtype=t.dtype).view(t.shape[2:])

    with hooked(model, [(sae.hook, add)]):
        yield


def steered_generate(
    model: nn.Module,
    sae: SparseAutoencoder,
    prompt_ids: Sequence[int],
    feature: int,
    strength: float,
    max_new_tokens: int = 50,
    sampling: Any = None,
    stop_ids: Sequence[int] | None = None,
) -> list[int]:
    """The tokens ``lmcore.sample.generate`` draws while ``feature`` is steered (strength 0: the plain model's).

    ``sampling`` is a ``SamplingConfig`` (default greedy); the same seed gives
    the plain and the steered text the same random draws.
    """
    from lmcore.sample import SamplingConfig, generate

    cfg = sampling if sampling is not None else SamplingConfig(temperature=0.0)
    with feature_steering(model, sae, feature, strength):
        events = generate(model, list(prompt_ids), max_new_tokens=max_new_tokens, sampling=cfg, stop_ids=stop_ids)
        return [e.token_id for e in events]
