"""Sampling: SamplingConfig and ``generate()``, a stream of tokens with their distributions.

Each new token is drawn from the model's next-token distribution after three
optional filters, applied in this order (as in Hugging Face's generate):

1. temperature: logits / T; T = 0 means greedy (always the most likely token);
2. top-k: keep the k most likely tokens;
3. top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most likely
   tokens whose probabilities add up to at least p;

then the kept probabilities are renormalised to sum to 1. Each event carries
that distribution, so the app can show what the token was chosen from.

Generation uses the model's cache: the prompt is run once (prefill), then each
new token costs one ``step``. Models with a context limit (``max_context``, the
transformer's block_size) are cropped when the cache is full: the cache is
rebuilt from the last ``crop_keep`` tokens (default half the context) and
generation goes on, so it can run indefinitely. Randomness comes only from a
``torch.Generator`` seeded with ``SamplingConfig.seed``: same seed, same
prompt, same model, same tokens.

Shapes: V vocabulary, t prompt length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmcore.errors import ConfigError, TokenizerError, TrainingError
from lmcore.settings import Declared, check, check_value, declared, loose, setting


# The longest text one generation writes: past it, a typo (an extra zero or three)
# would run for hours. Refused with a message naming the cap.
MAX_NEW_TOKENS = 100_000
MAX_SEED = 2**32 - 1


@dataclass
class SamplingConfig:
    """How each new token is drawn. Each field is declared once (``lmcore.settings``): its
    bounds, help, command-line flag, page-address key and widget come from here."""

    temperature: float = setting(
        0.8, "0 = greedy: always the most likely token. 1 = the model's own odds. Above 1: flatter, more surprising.",
        low=0, metavar="T", key="temp", label="Sampling temperature", widget="slider", page=(0.0, 2.0), step=0.05,
    )  # fmt: skip
    # None = no top-k filter; the page's box has no vocabulary-sized maximum: the value outlives a switch of model
    top_k: int | None = setting(
        None, "Draw only among the k most likely tokens (default: all).", low=1, high=2**31 - 1, metavar="K",
        key="top_k", label="Top-k (0 = off)", widget="number", page=(0, 1_000_000), step=1, off=0,
    )  # fmt: skip
    # None = no nucleus filter
    top_p: float | None = setting(
        None, "Draw only among the most likely tokens whose probabilities add up to p (default: all).",
        low=0, low_open=True, high=1, metavar="P",
        key="top_p", label="Top-p (1 = off)", widget="slider", page=(0.05, 1.0), step=0.05, off=1.0,
    )  # fmt: skip
    seed: int = setting(
        0, f"Same seed, prompt, settings and model: the same text (0 to {MAX_SEED:,}).", low=0, high=MAX_SEED,
        key="gseed", label="Seed", widget="number", page=(0, 2**31 - 1), step=1,
    )  # fmt: skip

    def validate(self) -> "SamplingConfig":
        """Check every value against its declaration; ConfigError naming the bad one. Returns self."""
        check(self)
        return self


# How long one generation runs: generate()'s argument, not part of SamplingConfig, but
# the command line and the pages set it beside the sampling settings.
MAX_NEW = loose(
    "max_new_tokens", int, 200, f"Write at most this many tokens (default 200, at most {MAX_NEW_TOKENS:,}).", low=0,
    high=MAX_NEW_TOKENS, metavar="N", key="new", label="Max new tokens", widget="number", page=(1, 2000), step=10,
)  # fmt: skip
# Every setting one generation takes, in the order the command line and the pages show them.
SAMPLING_SETTINGS: dict[str, Declared] = {**declared(SamplingConfig), "max_new_tokens": MAX_NEW}


@dataclass(frozen=True)
class GenerationEvent:
    """One generated token and the distribution it was drawn from."""

    token_id: int
    probs: torch.Tensor  # (V,) float32 on CPU: after temperature/top-k/top-p, renormalised
    position: int  # index of the token in the whole sequence, prompt included
    model_probs: torch.Tensor | None = None  # (V,) the model's own distribution (temperature 1, no filter)

    @property
    def prob(self) -> float:
        """Probability of the chosen token under ``probs``."""
        return float(self.probs[self.token_id])


def prompt_start(ids: Sequence[int], bos_id: int, documents: bool, empty_at_bos: bool = True) -> list[int]:
    """The ids generation starts from: ``ids`` as the model saw text in training.

    A documents-mode model saw BOS before every document, so its prompt (even an
    empty one) starts with BOS. A plain-text model continues ``ids`` as they are;
    with none it starts at BOS too, unless ``empty_at_bos`` is False (the app
    then asks for a prompt). Example: prompt_start([5, 6], 0, True) -> [0, 5, 6].
    """
    if documents or (empty_at_bos and not ids):
        return [bos_id, *ids]
    return list(ids)


def token_candidates(event: GenerationEvent, k: int = 10) -> list[tuple[int, float, float]]:
    """What a generated token was chosen from: (id, the model's own probability, the probability it was drawn with).

    The k most likely tokens under the model's own odds, most likely first (ties:
    the smaller id first), then the drawn token when it was not among them (a
    high temperature can draw from the tail).
    """
    own = event.model_probs if event.model_probs is not None else event.probs  # (V,)
    ids = torch.sort(own, descending=True, stable=True).indices[:k].tolist()
    if event.token_id not in ids:
        ids.append(event.token_id)
    return [(i, float(own[i]), float(event.probs[i])) for i in ids]


def filter_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Logits (V,) -> probabilities (V,) float32 after temperature, top-k and top-p, renormalised.

    Temperature 0 gives a one-hot distribution on the most likely token (ties go
    to the lowest id). Example: probs [0.5, 0.3, 0.2] with top_p=0.7 keep the
    first two (0.5 < 0.7 <= 0.8) -> [0.625, 0.375, 0].
    """
    logits = logits.detach().float().cpu()
    V = logits.numel()
    if not bool(torch.isfinite(logits).all()):
        raise TrainingError(
            "the model gave NaN or infinite scores; it has diverged, so retrain it with a lower learning rate"
        )
    if temperature == 0:
        probs = torch.zeros(V)
        probs[int(logits.argmax())] = 1.0
        return probs
    probs = torch.softmax(logits / temperature, dim=-1)  # (V,)
    if top_k is not None and top_k < V:
        keep = torch.zeros(V, dtype=torch.bool)
        keep[torch.topk(probs, top_k).indices] = True
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True, stable=True)  # (V,)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass of the more likely tokens
        keep_sorted = before < top_p  # the first token always stays (before = 0)
        keep = torch.zeros(V, dtype=torch.bool)
        keep[order[keep_sorted]] = True
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    return probs


def top_candidates(probs: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
    """The k most likely token ids and their probabilities, most likely first.

    Ties keep the smaller id first, so the order is deterministic.
    Example: top_candidates([0.1, 0.6, 0.3], 2) -> [(1, 0.6), (2, 0.3)]
    """
    p = np.asarray(probs, dtype=float).ravel()
    k = max(0, min(int(k), p.size))
    order = np.lexsort((np.arange(p.size), -p))[:k]
    return [(int(i), float(p[i])) for i in order]


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector (zeros contribute nothing)."""
    p = np.asarray(probs, dtype=float).ravel()
    p = p[p > 0]
    return max(0.0, float(-(p * np.log(p)).sum()))  # never "-0.00" for a one-hot


def _prompt_list(prompt_ids: Any, vocab_size: int) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1:
            raise ConfigError(f"the prompt must be a 1-D sequence of token ids, got shape {list(prompt_ids.shape)}")
        ids = [int(i) for i in prompt_ids.tolist()]
    else:
        try:
            ids = [int(i) for i in prompt_ids]
        except (TypeError, ValueError):
            raise ConfigError("the prompt must be a sequence of token ids (use tokenizer.encode)") from None
    if not ids:
        raise ConfigError("the prompt is empty; to start from nothing pass the BOS token, [tokenizer.bos_id]")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise TokenizerError(
            f"prompt token ids {bad[:5]} are outside the model's vocabulary of {vocab_size}; "
            "encode the prompt with the model's own tokenizer"
        )
    return ids


def _prefill(model: torch.nn.Module, ids: list[int], device: torch.device) -> tuple[torch.Tensor, Any]:
    """Run ``ids`` through a fresh cache; return (logits of the last position (V,), cache).

    One ``step`` call over the whole prompt, or one call per token for a model
    whose ``step_accepts_sequence`` is False.
    """
    x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, t)
    cache = model.init_cache(batch_size=1, device=device)
    with torch.no_grad():
        if model.step_accepts_sequence:
            logits, cache = model.step(x, cache)  # (1, t, V)
        else:
            for t in range(len(ids)):
                logits, cache = model.step(x[:, t : t + 1], cache)  # (1, 1, V)
    return logits[0, -1], cache


def generate(
    model: torch.nn.Module,
    prompt_ids: Iterable[int] | torch.Tensor,
    max_new_tokens: int = 200,
    sampling: SamplingConfig | None = None,
    stop_ids: Iterable[int] | None = None,
    crop_keep: int | None = None,
) -> Iterator[GenerationEvent]:
    """Generate up to ``max_new_tokens`` (at most ``MAX_NEW_TOKENS``) tokens after ``prompt_ids``, one event per token.

    Generation ends early, without yielding it, at a token of ``stop_ids``.
    An empty prompt is refused: pass ``[tokenizer.bos_id]`` to start from
    nothing. ``crop_keep`` is how many recent tokens are kept when a model's
    context is full (``max_context``, default half of it); ``crop_keep =
    max_context`` gives an exact sliding window at the cost of a full prefill
    per token. Arguments are checked here, before the first token.
    """
    sampling = (sampling or SamplingConfig()).validate()
    ids = _prompt_list(prompt_ids, model.config.vocab_size)
    check_value(MAX_NEW, max_new_tokens)
    max_context = getattr(model, "max_context", None)
    if max_context is not None:
        keep = max(1, max_context // 2) if crop_keep is None else crop_keep
        if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= max_context:
            raise ConfigError(f"crop_keep must be between 1 and the model's context of {max_context}, got {keep!r}")
    else:
        keep = None
    stops = {int(i) for i in stop_ids or ()}
    return _generate(model, ids, max_new_tokens, sampling, stops, max_context, keep)


def _generate(
    model: torch.nn.Module,
    context: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    stops: set[int],
    max_context: int | None,
    keep: int | None,
) -> Iterator[GenerationEvent]:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(sampling.seed)
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        if max_new_tokens == 0:
            return
        window = context if max_context is None else context[-max_context:]
        logits, cache = _prefill(model, window, device)
        cached = len(window)  # positions the cache holds
        for i in range(max_new_tokens):
            logits = logits.float().cpu()  # (V,)
            probs = filter_probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
            if sampling.temperature == 0:
                token = int(probs.argmax())
            else:
                token = int(torch.multinomial(probs, 1, generator=gen))
            if token in stops:
                return
            context.append(token)
            yield GenerationEvent(
                token_id=token, probs=probs, position=len(context) - 1, model_probs=torch.softmax(logits, -1)
            )
            if i == max_new_tokens - 1:
                break
            if max_context is not None and cached >= max_context:
                # The cache is full: rebuild it from the most recent tokens (the new one included).
                window = context[-keep:]
                logits, cache = _prefill(model, window, device)
                cached = len(window)
            else:
                with torch.no_grad():
                    out, cache = model.step(torch.tensor([[token]], device=device), cache)  # (1, 1, V)
                logits = out[0, -1]
                cached += 1
    finally:
        model.train(was_training)


@torch.no_grad()
def next_token_distribution(
    model: torch.nn.Module,
    prompt_ids: Iterable[int] | torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution (V,) float32 on CPU that the next token after ``prompt_ids`` would be drawn from."""
    SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p).validate()
    ids = _prompt_list(prompt_ids, model.config.vocab_size)
    max_context = getattr(model, "max_context", None)
    if max_context is not None:
        ids = ids[-max_context:]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids], dtype=torch.long, device=device))[0, -1]  # (V,)
    finally:
        model.train(was_training)
    return filter_probs(logits, temperature, top_k, top_p)
