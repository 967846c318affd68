"""Looking inside a model: per-token surprise, the logit lens, head roles, the embedding map.

Pure functions of a model and token ids (no Streamlit, no I/O); every model
family where the idea applies, and a ``ConfigError`` saying why otherwise.

- ``token_losses``: how surprised the model is by each token of a text, with
  the rank and probability of the true token and the model's top candidates.
- ``logit_lens``: what the model would predict if it stopped after the
  embedding or after block l: each residual stream (read at the model's hook
  points, ``lmcore.hooks``) passed through the final norm and the output head
  (nostalgebraist 2020).
- ``head_scores``: per layer and head, how much attention goes to the previous
  token, to the first token (an attention sink) and to the token after the
  current token's earlier occurrence (an induction head, Olsson et al. 2022),
  on a fixed probe of random tokens repeated twice.
- ``embedding_map``: a PCA of the token embeddings and nearest neighbours by
  cosine similarity.
- ``ngram_index`` and ``novelty``: which spans of a generated text occur word
  for word in the training text, and the share that is new.

Shapes: T tokens, V vocabulary, L layers, H heads (or channel groups).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmcore.errors import ConfigError, DataError
from lmcore.hooks import hook_names, layer_names, run_with_cache
from lmcore.models.base import LanguageModel

# Length of the repeated segment of the head-score probe. The induction recipe
# trains on segments of 6..20 tokens, so a score on this length cannot come
# from a look-back distance learned in training.
PROBE_SEGMENT = 25
PROBE_COUNT = 4  # probes averaged per score
HEAD_SCORE_KEYS = ("previous_token", "first_token", "induction")


def _as_ids(ids: Sequence[int] | torch.Tensor, model: LanguageModel, least: int) -> torch.Tensor:
    """Token ids as a 1-D long tensor on the model's device; DataError when unusable."""
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if len(t) < least:
        raise DataError(f"this view needs at least {least} tokens; give it a longer text")
    vocab = model.config.vocab_size
    if int(t.min()) < 0 or int(t.max()) >= vocab:
        raise DataError(f"the text holds token ids outside the model's vocabulary of {vocab}; use the model's tokenizer")
    return t.to(model.device)


@dataclass
class TokenLosses:
    """Surprise per predicted token: index i is about ``ids[i + 1]`` given ``ids[: i + 1]``."""

    losses: torch.Tensor  # (T-1,) cross-entropy in nats
    probs: torch.Tensor  # (T-1,) the model's probability of the true token
    ranks: torch.Tensor  # (T-1,) long: 1 = the model's top guess
    top_ids: torch.Tensor  # (T-1, k) long: the k most likely tokens, best first
    top_probs: torch.Tensor  # (T-1, k)

    @property
    def bits(self) -> torch.Tensor:
        """The losses in bits (surprisal: -log2 p)."""
        return self.losses / math.log(2)

    @property
    def mean(self) -> float:
        return float(self.losses.mean())


@torch.no_grad()
def _next_token_logprobs(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (T-1, V) of the token after each of ids[:-1].

    A model with a bounded context (``max_context``) reads the text in
    consecutive windows of that many predictions which overlap by one token,
    as ``evaluate_ids`` does, so each token is predicted exactly once.
    """
    was_training = model.training
    model.eval()
    try:
        window = model.max_context or len(ids)
        parts = [model(ids[i : i + window + 1][None, :-1])[0] for i in range(0, len(ids) - 1, window)]
    finally:
        model.train(was_training)
    return torch.cat(parts).float().log_softmax(-1)


def token_losses(model: LanguageModel, ids: Sequence[int] | torch.Tensor, k: int = 5) -> TokenLosses:
    """Per-token cross-entropy (nats) of ``ids[1:]``, with ranks, probabilities and top-k candidates."""
    t = _as_ids(ids, model, 2)
    logp = _next_token_logprobs(model, t)  # (T-1, V)
    target = t[1:]
    true = logp.gather(1, target[:, None])[:, 0]  # (T-1,)
    top = logp.topk(min(k, logp.size(-1)), dim=-1)
    return TokenLosses(
        losses=-true.cpu(),
        probs=true.exp().cpu(),
        ranks=((logp > true[:, None]).sum(-1) + 1).cpu(),
        top_ids=top.indices.cpu(),
        top_probs=top.values.exp().cpu(),
    )


@torch.no_grad()
def logit_lens(model: LanguageModel, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Log-probabilities (L+1, T, V): row 0 reads the embedding, row l the stream after block l.

    The streams are the ``blocks.0.hook_resid_pre`` and ``blocks.{l}.hook_resid_post``
    hook points; each goes through the model's own final norm and head
    (``model.readout``), so the last row is the model's output distribution.
    Transformers and Mamba; ConfigError for models without a residual stream.
    """
    names = residual_stream_names(model)
    t = _as_ids(ids, model, 1)
    was_training = model.training
    model.eval()
    try:
        _, cache = run_with_cache(model, t[None], names)
        rows = [model.readout(cache[n])[0].float().log_softmax(-1) for n in names]
    finally:
        model.train(was_training)
    return torch.stack(rows).cpu()  # (L+1, T, V)


def residual_stream_names(model: LanguageModel) -> list[str]:
    """The hook points of the residual stream: the first block's input, then every block's output.

    ConfigError for a model without a residual stream (the LSTM, the bigram, the n-gram).
    """
    post = layer_names(model, "hook_resid_post")
    if not post or "blocks.0.hook_resid_pre" not in hook_names(model):
        raise ConfigError(
            f"the {model.config.arch} architecture has no residual stream to read layer by layer; "
            "pick a transformer or Mamba model"
        )
    return ["blocks.0.hook_resid_pre", *post]


def probe_ids(model: LanguageModel, seed: int = 0, count: int = PROBE_COUNT) -> torch.Tensor:
    """The head-score probes (count, 2 S): S distinct random tokens, then the same S again.

    S is ``PROBE_SEGMENT``, or less where the model's context or vocabulary is smaller.
    """
    vocab = model.config.vocab_size
    segment = min(PROBE_SEGMENT, vocab, (model.max_context or 2 * PROBE_SEGMENT) // 2)
    if segment < 2:
        raise ConfigError("head scores need a context of at least 4 tokens and a vocabulary of at least 2")
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(vocab, generator=gen)[:segment] for _ in range(count)]
    return torch.stack([torch.cat([r, r]) for r in rows])


@torch.no_grad()
def head_scores(model: LanguageModel, seed: int = 0, count: int = PROBE_COUNT) -> dict[str, torch.Tensor]:
    """Previous-token, first-token and induction scores, each (L, H) in [0, 1].

    Measured on ``probe_ids(model, seed)``: the attention each query puts on
    the token before it (averaged over positions 1..), on position 0 (same
    positions), and, in the repeated half, on the token that followed the
    current token's first occurrence. Mamba's implicit attention maps (one per
    channel group, magnitudes) and Mamba-2's exact ones (signed: their
    magnitudes) are normalised per row first, so every score is a share of
    attention. ConfigError for models without attention.
    """
    if not model.has_attention:
        raise ConfigError(
            f"the {model.config.arch} architecture has no attention heads to score; pick a transformer or Mamba model"
        )
    probes = probe_ids(model, seed, count).to(model.device)
    S = probes.size(1) // 2
    T = 2 * S
    later = torch.arange(1, T)
    repeat = torch.arange(S, T)  # query positions in the second copy
    totals = None
    for ids in probes:
        maps = model.attention_maps(ids[None]).float().abs()  # (L, H, T, T)
        maps = maps / maps.sum(-1, keepdim=True).clamp_min(1e-12)
        scores = torch.stack(
            [
                maps[:, :, later, later - 1].mean(-1),
                maps[:, :, later, 0].mean(-1),
                maps[:, :, repeat, repeat - S + 1].mean(-1),
            ]
        )  # (3, L, H)
        totals = scores if totals is None else totals + scores
    assert totals is not None
    mean = (totals / len(probes)).clamp(0.0, 1.0).cpu()
    return dict(zip(HEAD_SCORE_KEYS, mean.unbind(0)))


@dataclass
class EmbeddingMap:
    """The token embeddings (V, D), their PCA coordinates (V, k) and each component's share of variance."""

    embeddings: torch.Tensor  # (V, D)
    coords: torch.Tensor  # (V, k)
    explained: torch.Tensor  # (k,) fraction of the total variance per component

    def neighbours(self, token: int, n: int = 5) -> list[tuple[int, float]]:
        """The n tokens whose embeddings are closest to ``token``'s by cosine similarity, best first."""
        V = self.embeddings.size(0)
        if not 0 <= token < V:
            raise DataError(f"token id {token} is outside the vocabulary of {V}")
        unit = F.normalize(self.embeddings, dim=-1)
        sims = unit @ unit[token]  # (V,)
        sims[token] = -math.inf
        best = sims.topk(min(n, V - 1))
        return list(zip(best.indices.tolist(), best.values.tolist()))


def token_embedding_matrix(model: LanguageModel) -> torch.Tensor:
    """The model's token embedding (V, D): its first embedding table with one row per token."""
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings == model.config.vocab_size:
            return module.weight.detach().float().cpu()
    raise ConfigError(f"the {model.config.arch} model has no token embeddings to map; pick a neural model")


def embedding_map(model: LanguageModel, k: int = 2, seed: int = 0) -> EmbeddingMap:
    """PCA of the token embeddings to ``k`` dimensions (2 or 3), by ``torch.pca_lowrank``."""
    if k not in (2, 3):
        raise ConfigError(f"an embedding map has 2 or 3 dimensions, got {k}")
    emb = token_embedding_matrix(model)
    q = min(k, *emb.shape)
    centred = emb - emb.mean(0)
    with torch.random.fork_rng(devices=[]):  # pca_lowrank draws a random start: keep it reproducible
        torch.manual_seed(seed)
        # A few extra components make the randomized estimate of the first k close to exact.
        _, s, v = torch.pca_lowrank(centred, q=min(k + 8, *emb.shape), center=False, niter=4)
    coords = centred @ v[:, :q]  # (V, q)
    total = centred.pow(2).sum().clamp_min(1e-12)
    return EmbeddingMap(embeddings=emb, coords=coords, explained=s[:q].pow(2) / total)


# ------------------------------------------------------------------ memorised or new
NOVELTY_MIN_LEN = 8  # a verbatim match shorter than this many tokens is too common to call copying


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of every window of ``n`` consecutive ids (wrapping polynomial hash)."""
    windows = np.lib.stride_tricks.sliding_window_view(ids.astype(np.uint64), n)
    powers = np.uint64(1_000_003) ** np.arange(n, dtype=np.uint64)
    return (windows * powers).sum(axis=1, dtype=np.uint64)


def ngram_index(corpus_ids: Sequence[int] | np.ndarray, n: int = NOVELTY_MIN_LEN) -> np.ndarray:
    """Every n-token window of a corpus, hashed and sorted: built once per corpus for ``novelty``."""
    if n < 1:
        raise ConfigError(f"the match length must be at least 1 token, not {n}")
    ids = np.asarray(corpus_ids, dtype=np.int64)
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    return np.unique(_window_hashes(ids, n))


@dataclass(frozen=True)
class Novelty:
    """Per generated token: ``copied`` (inside a span found verbatim in the corpus) and ``span``
    (the length of the copied run it belongs to, 0 when new); ``spans`` as (start, end)."""

    copied: np.ndarray
    span: np.ndarray
    spans: list[tuple[int, int]]

    @property
    def novel_share(self) -> float:
        """The share of generated tokens that are not part of a verbatim copy (1.0 for no tokens)."""
        return 1.0 - float(self.copied.mean()) if len(self.copied) else 1.0


def novelty(
    generated_ids: Sequence[int],
    index: np.ndarray,
    min_len: int = NOVELTY_MIN_LEN,
    filler_ids: Sequence[int] = (),
) -> Novelty:
    """Mark the generated tokens that lie in a run of at least ``min_len`` tokens copied from the corpus.

    ``index`` comes from ``ngram_index(corpus_ids, min_len)``. A token is copied
    when some window of ``min_len`` tokens that contains it occurs in the corpus;
    overlapping windows join into one span. A window made only of ``filler_ids``
    (e.g. the whitespace tokens: any text has runs of spaces) copies nothing.
    """
    ids = np.asarray(generated_ids, dtype=np.int64)
    copied = np.zeros(len(ids), dtype=bool)
    if len(ids) >= min_len and len(index):
        found = np.isin(_window_hashes(ids, min_len), index)
        if len(filler_ids):
            content = ~np.isin(ids, np.asarray(filler_ids, dtype=np.int64))  # (T,)
            found &= np.convolve(content.astype(np.int64), np.ones(min_len, dtype=np.int64), "valid") > 0
        found = found.astype(np.int64)
        copied = np.convolve(found, np.ones(min_len, dtype=np.int64)) > 0  # each found window covers min_len tokens
    spans: list[tuple[int, int]] = []
    span = np.zeros(len(ids), dtype=np.int64)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], copied.astype(np.int8), [0]))))
    for start, end in zip(edges[::2], edges[1::2]):
        spans.append((int(start), int(end)))
        span[start:end] = end - start
    return Novelty(copied=copied, span=span, spans=spans)
