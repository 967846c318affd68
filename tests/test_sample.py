"""Sampler: greedy = argmax, filters, seeds, stop tokens, prefill, cropping past the context."""

from __future__ import annotations

import pytest
import torch

from lmcore.errors import ConfigError, TokenizerError, TrainingError
from lmcore.models import ModelConfig, build_model
from lmcore.sample import (
    GenerationEvent,
    SamplingConfig,
    filter_probs,
    generate,
    next_token_distribution,
    prompt_start,
    token_candidates,
)

V = 40
BLOCK = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def make(preset: str = "gpt2", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    sizes = dict(vocab_size=V, block_size=BLOCK)
    if preset in ("gpt2", "llama"):
        sizes.update(n_layer=2, n_head=2, n_embd=32)
    elif preset in ("mamba", "mamba2", "lstm"):
        sizes.update(n_layer=2, n_embd=32)
    model = build_model(ModelConfig.preset(preset, **{**sizes, **overrides})).eval()
    # Random initial weights give nearly flat distributions; sharpen them so that
    # greedy choices are not decided by float noise.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() >= 2 else 1.0)
    return model


@pytest.fixture(params=["gpt2", "llama", "bigram", "mamba", "mamba2", "lstm"])
def model(request):
    return make(request.param)


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def tokens(events) -> list[int]:
    return [e.token_id for e in events]


def argmax_reference(model, prompt, n, keep=None):
    """Greedy decoding by full forward passes over a window that restarts like the sampler's.

    With keep = max_context this is nanoGPT's sliding window (the last block_size tokens).
    """
    ctx = list(prompt)
    limit = getattr(model, "max_context", None)
    start = 0 if limit is None else max(0, len(ctx) - limit)
    out = []
    with torch.no_grad():
        for _ in range(n):
            if limit is not None and len(ctx) - start > limit:
                start = len(ctx) - keep
            logits = model(torch.tensor([ctx[start:]]))[0, -1]
            t = int(logits.argmax())
            out.append(t)
            ctx.append(t)
    return out


def test_temperature_zero_is_the_argmax_of_forward(model):
    got = tokens(generate(model, PROMPT, 6, SamplingConfig(temperature=0)))
    assert got == argmax_reference(model, PROMPT, 6)


def test_top_k_one_is_greedy_whatever_the_temperature(model):
    greedy = tokens(generate(model, PROMPT, 6, SamplingConfig(temperature=0)))
    assert tokens(generate(model, PROMPT, 6, SamplingConfig(temperature=1.5, top_k=1, seed=3))) == greedy


def test_same_seed_same_tokens_and_other_seeds_differ(model):
    cfg = SamplingConfig(temperature=1.0, seed=11)
    first = tokens(generate(model, PROMPT, 30, cfg))
    assert tokens(generate(model, PROMPT, 30, SamplingConfig(temperature=1.0, seed=11))) == first
    others = [tokens(generate(model, PROMPT, 30, SamplingConfig(temperature=1.0, seed=s))) for s in (12, 13)]
    assert all(o != first for o in others)


def test_events_carry_a_normalised_distribution_that_holds_the_token():
    model = make()
    events = list(generate(model, PROMPT, 10, SamplingConfig(temperature=0.9, top_k=5, top_p=0.9, seed=1)))
    assert len(events) == 10
    for i, e in enumerate(events):
        assert isinstance(e, GenerationEvent)
        assert e.probs.shape == (V,) and e.probs.dtype == torch.float32 and e.probs.device.type == "cpu"
        assert float(e.probs.sum()) == pytest.approx(1.0, abs=1e-5)
        assert e.prob > 0 and int((e.probs > 0).sum()) <= 5
        assert e.position == len(PROMPT) + i
        assert float(e.model_probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_filter_probs_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    kept = lambda p: set(torch.nonzero(filter_probs(logits, 1.0, top_p=p)).flatten().tolist())  # noqa: E731
    assert kept(0.4) == {1}
    assert kept(0.7) == {1, 3}
    assert kept(0.8) == {1, 3}  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept(0.81) == {1, 3, 0}
    assert kept(1.0) == {0, 1, 2, 3}
    out = filter_probs(logits, 1.0, top_p=0.7)
    assert out.tolist() == pytest.approx([0.0, 0.625, 0.0, 0.375])


def test_filter_probs_temperature_and_top_k():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert filter_probs(logits, 0).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert filter_probs(logits, 0.5).tolist() == pytest.approx(torch.softmax(logits / 0.5, 0).tolist())
    top2 = filter_probs(logits, 1.0, top_k=2)
    assert torch.nonzero(top2).flatten().tolist() == [1, 2]
    assert float(top2.sum()) == pytest.approx(1.0)
    cold, hot = filter_probs(logits, 0.3), filter_probs(logits, 3.0)
    assert cold.max() > hot.max()  # lower temperature, sharper distribution


def test_a_diverged_model_is_reported_not_sampled():
    model = make()
    with torch.no_grad():
        model.ln_f.weight.fill_(float("inf"))
    with pytest.raises(TrainingError, match="NaN or infinite"):
        next(generate(model, PROMPT, 3))
    with pytest.raises(TrainingError):
        next_token_distribution(model, PROMPT)


def test_sampled_tokens_stay_inside_the_nucleus():
    model = make()
    for e in generate(model, PROMPT, 40, SamplingConfig(temperature=1.0, top_p=0.5, seed=5)):
        nucleus = filter_probs(torch.log(e.model_probs), 1.0, top_p=0.5)
        assert nucleus[e.token_id] > 0
        assert torch.allclose(e.probs, nucleus, atol=1e-6)


def test_stop_ids_end_generation_before_the_stop_token():
    model = make()
    greedy = tokens(generate(model, PROMPT, 12, SamplingConfig(temperature=0)))
    stop = greedy[4]
    first = greedy.index(stop)
    got = tokens(generate(model, PROMPT, 12, SamplingConfig(temperature=0), stop_ids=[stop]))
    assert got == greedy[:first]


def test_whole_prompt_prefill_equals_token_by_token():
    model = make()
    fast = tokens(generate(model, PROMPT, 8, SamplingConfig(temperature=0)))
    model.step_accepts_sequence = False  # this instance now feeds its prompt one token at a time
    slow = tokens(generate(model, PROMPT, 8, SamplingConfig(temperature=0)))
    assert fast == slow


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("keep", [BLOCK, BLOCK // 2, 1])
def test_generation_goes_on_past_the_context_by_cropping(preset, keep):
    model = make(preset)
    n = 3 * BLOCK + 5
    got = tokens(generate(model, PROMPT, n, SamplingConfig(temperature=0), crop_keep=keep))
    assert len(got) == n
    assert got == argmax_reference(model, PROMPT, n, keep=keep)


def test_default_crop_keeps_half_the_context_and_long_prompts_work():
    model = make()
    long_prompt = (PROMPT * 5)[: 2 * BLOCK + 3]  # longer than the context
    got = tokens(generate(model, long_prompt, 2 * BLOCK, SamplingConfig(temperature=0)))
    assert got == argmax_reference(model, long_prompt, 2 * BLOCK, keep=BLOCK // 2)


def test_models_without_a_context_limit_are_not_cropped():
    model = make("bigram")
    n = 3 * BLOCK
    assert tokens(generate(model, PROMPT, n, SamplingConfig(temperature=0))) == argmax_reference(model, PROMPT, n)


def test_bad_prompts_and_settings_are_refused_before_the_first_token():
    model = make()
    with pytest.raises(ConfigError, match="BOS"):
        generate(model, [], 5)
    with pytest.raises(TokenizerError, match="outside the model's vocabulary"):
        generate(model, [1, V], 5)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, PROMPT, -1)
    with pytest.raises(ConfigError, match="crop_keep"):
        generate(model, PROMPT, 5, crop_keep=BLOCK + 1)
    assert list(generate(model, PROMPT, 0)) == []


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=-0.1),
        SamplingConfig(temperature=float("nan")),
        SamplingConfig(top_k=0),
        SamplingConfig(top_k=2.5),
        SamplingConfig(top_p=0.0),
        SamplingConfig(top_p=1.5),
        SamplingConfig(seed="x"),
    ],
)
def test_sampling_config_validate(cfg):
    with pytest.raises(ConfigError):
        cfg.validate()


def test_generation_restores_the_model_mode_and_leaves_grad_mode_alone():
    model = make(dropout=0.2).train()
    stream = generate(model, PROMPT, 5, SamplingConfig(temperature=0))
    next(stream)
    assert torch.is_grad_enabled()  # the generator does not leak no_grad into its caller
    rest = list(stream)
    assert len(rest) == 4 and model.training


def test_next_token_distribution_matches_forward():
    model = make()
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT]))[0, -1]
    for t in (0.5, 1.0, 2.0):
        got = next_token_distribution(model, PROMPT, temperature=t)
        assert got.shape == (V,) and float(got.sum()) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(got, torch.softmax(logits / t, -1), atol=1e-6)
    greedy = next_token_distribution(model, PROMPT, temperature=0)
    assert int(greedy.argmax()) == int(logits.argmax()) and float(greedy.max()) == 1.0
    first = next(generate(model, PROMPT, 1, SamplingConfig(temperature=0.7)))
    assert torch.allclose(first.probs, next_token_distribution(model, PROMPT, temperature=0.7), atol=1e-6)
    long = PROMPT * 4  # longer than the context: the last block is used
    assert next_token_distribution(model, long).shape == (V,)


def test_prompt_start_puts_bos_before_a_document_and_before_nothing():
    assert prompt_start([5, 6], 0, documents=True) == [0, 5, 6]
    assert prompt_start([], 0, documents=True) == [0]
    assert prompt_start([5, 6], 0, documents=False) == [5, 6]
    assert prompt_start([], 0, documents=False) == [0]  # nothing to continue: start at BOS
    assert prompt_start([], 0, documents=False, empty_at_bos=False) == []  # the app asks for a prompt
    assert prompt_start([], 0, documents=True, empty_at_bos=False) == [0]


def test_token_candidates_are_the_models_favourites_then_the_drawn_token():
    model = make()
    events = list(generate(model, PROMPT, 40, SamplingConfig(temperature=2.0, seed=5)))
    outside = 0
    for e in events:
        got = token_candidates(e, 3)
        order = torch.argsort(e.model_probs, descending=True, stable=True)[:3].tolist()
        assert [c[0] for c in got[:3]] == order
        assert all(c[1] == float(e.model_probs[c[0]]) and c[2] == float(e.probs[c[0]]) for c in got)
        assert e.token_id in [c[0] for c in got]
        outside += len(got) == 4
        assert len(got) == (3 if e.token_id in order else 4)  # the drawn token once, last when outside the top
    assert outside > 0  # at T = 2 some tokens come from the tail
    flat = GenerationEvent(token_id=3, probs=torch.full((V,), 1 / V), position=0)  # ties: smaller ids first
    assert [c[0] for c in token_candidates(flat, 2)] == [0, 1, 3]
