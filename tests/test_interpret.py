"""Looking inside: token losses, logit lens, head scores and the embedding map, on real tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from lmcore.errors import ConfigError, DataError
from lmcore.interpret import embedding_map, head_scores, logit_lens, probe_ids, token_losses
from lmcore.models import ModelConfig, build_model, lm_loss
from lmcore.train import evaluate_ids


def tiny(preset: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)
    return build_model(cfg).eval()


def random_ids(n: int, vocab: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba", "mamba2", "lstm", "bigram"])
def test_token_losses_mean_is_the_models_loss(preset: str) -> None:
    model = tiny(preset)
    ids = random_ids(12)
    result = token_losses(model, ids, k=3)
    assert result.losses.shape == (11,) and result.top_ids.shape == (11, 3)
    with torch.no_grad():
        expected = lm_loss(model(ids[None, :-1]), ids[None, 1:])
    assert result.mean == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(result.probs, (-result.losses).exp())
    assert torch.allclose(result.bits, result.losses / math.log(2))
    # rank 1 exactly where the true token is the top candidate
    assert torch.equal(result.ranks == 1, result.top_ids[:, 0] == ids[1:])
    assert (result.top_probs[:, :-1] >= result.top_probs[:, 1:]).all()


def test_token_losses_on_a_text_longer_than_the_context_matches_evaluation() -> None:
    model = tiny("gpt2")
    ids = random_ids(50)  # block_size 16: four windows
    assert token_losses(model, ids).mean == pytest.approx(evaluate_ids(model, ids)["loss"], rel=1e-5)


@pytest.mark.parametrize("preset", ["gpt2", "mamba", "mamba2"])
def test_token_losses_are_causal(preset: str) -> None:
    model = tiny(preset)
    ids = random_ids(14)
    changed = ids.clone()
    changed[9] = (changed[9] + 1) % 20
    a, b = token_losses(model, ids).losses, token_losses(model, changed).losses
    assert torch.equal(a[:8], b[:8])  # losses[i] is about ids[i + 1] given ids[: i + 1]
    assert not torch.equal(a[8:], b[8:])


def test_token_losses_needs_two_known_tokens() -> None:
    model = tiny("gpt2")
    with pytest.raises(DataError, match="at least 2 tokens"):
        token_losses(model, [3])
    with pytest.raises(DataError, match="vocabulary of 20"):
        token_losses(model, [3, 25])


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba", "mamba2"])
def test_logit_lens_last_row_is_the_models_output(preset: str) -> None:
    model = tiny(preset)
    ids = random_ids(10)
    lens = logit_lens(model, ids)
    assert lens.shape == (3, 10, 20)
    with torch.no_grad():
        expected = model(ids[None])[0].log_softmax(-1)
    assert torch.allclose(lens[-1], expected, atol=1e-5)
    assert torch.allclose(lens.exp().sum(-1), torch.ones(3, 10), atol=1e-5)
    assert not torch.allclose(lens[0], lens[-1])  # the embedding alone predicts something else


@pytest.mark.parametrize("preset", ["lstm", "bigram"])
def test_logit_lens_needs_a_residual_stream(preset: str) -> None:
    with pytest.raises(ConfigError, match="residual stream"):
        logit_lens(tiny(preset), random_ids(5))


def previous_token_model() -> torch.nn.Module:
    """One layer, two heads: head 0's weights force attention to the previous position, head 1 is blank.

    Tokens embed to zero and position p to e_p - e_(p+16), so after LayerNorm the
    stream at p is s (e_p - e_(p+16)) with s = sqrt(D / 2) = 4. Head 0's query at p
    points at slot p-1 and its key at slot p: q.k / sqrt(hd) = 4 * 4 * 9 / 4 = 36
    for the previous position, 0 for every other one.
    """
    T, D = 16, 32
    cfg = ModelConfig.preset("gpt2", vocab_size=20, block_size=T, n_layer=1, n_head=2, n_embd=D)
    model = build_model(cfg).eval()
    hd = cfg.head_dim
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.h[0].ln_1.weight.fill_(1.0)
        model.h[0].ln_2.weight.fill_(1.0)
        model.ln_f.weight.fill_(1.0)
        for p in range(T):
            model.wpe.weight[p, p] = 1.0
            model.wpe.weight[p, p + T] = -1.0
        w = model.h[0].attn.c_attn.weight  # rows: queries (2 hd) | keys (2 hd) | values (2 hd)
        for p in range(1, T):
            w[p - 1, p] = 3.0  # head 0's query at p: slot p-1
        for p in range(T):
            w[2 * hd + p, p] = 3.0  # head 0's key at p: slot p
    return model


def test_head_scores_find_a_forced_previous_token_head() -> None:
    model = previous_token_model()
    scores = head_scores(model)
    assert set(scores) == {"previous_token", "first_token", "induction"}
    for value in scores.values():
        assert value.shape == (1, 2) and (value >= 0).all() and (value <= 1).all()
    assert scores["previous_token"][0, 0] > 0.99
    assert scores["first_token"][0, 0] < 0.1 and scores["induction"][0, 0] < 0.1
    assert scores["previous_token"][0, 1] < 0.3  # the blank head spreads its attention evenly


def test_head_scores_of_a_uniform_head_follow_the_probe_layout() -> None:
    model = previous_token_model()
    probe = probe_ids(model)
    S = probe.size(1) // 2
    assert S == 8 and torch.equal(probe[:, :S], probe[:, S:])
    assert all(len(set(row[:S].tolist())) == S for row in probe)  # distinct tokens: one earlier occurrence each
    scores = head_scores(model)
    # Head 1 attends uniformly: position i gives 1 / (i + 1) to each earlier position.
    T = 2 * S
    uniform = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    assert scores["first_token"][0, 1] == pytest.approx(uniform, abs=1e-4)
    assert scores["previous_token"][0, 1] == pytest.approx(uniform, abs=1e-4)
    assert scores["induction"][0, 1] == pytest.approx(sum(1 / (i + 1) for i in range(S, T)) / S, abs=1e-4)


def test_head_scores_for_mamba_and_refusal_for_lstm() -> None:
    scores = head_scores(tiny("mamba"))
    for value in scores.values():
        assert value.shape == (2, 4) and (value >= 0).all() and (value <= 1).all()
    # Mamba-2's maps are exact and signed: scores are shares of their magnitudes
    model = tiny("mamba2", ssm_head_dim=8)
    assert (model.attention_maps(probe_ids(model, 0)[:1]) < 0).any()
    scores = head_scores(model)
    for value in scores.values():
        assert value.shape == (2, 4) and (value > 0).all() and (value < 1).all()
    assert sum(scores[k] for k in ("previous_token", "first_token")).max() < 1
    with pytest.raises(ConfigError, match="no attention heads"):
        head_scores(tiny("lstm"))


def test_head_scores_are_reproducible_from_the_seed() -> None:
    model = tiny("gpt2")
    a, b, c = head_scores(model, seed=0), head_scores(model, seed=0), head_scores(model, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["induction"], c["induction"])


def test_embedding_map_pca_and_neighbours() -> None:
    model = tiny("gpt2")
    with torch.no_grad():
        model.wte.weight[5] = 3.0 * model.wte.weight[2]  # same direction, other length
    emap = embedding_map(model, k=3)
    assert emap.coords.shape == (20, 3) and emap.explained.shape == (3,)
    assert (emap.explained[:-1] >= emap.explained[1:] - 1e-6).all() and 0 < float(emap.explained.sum()) <= 1
    # the PCA matches the SVD of the centred embeddings
    centred = model.wte.weight.detach() - model.wte.weight.detach().mean(0)
    s = torch.linalg.svdvals(centred)
    assert torch.allclose(emap.explained, s[:3] ** 2 / (s**2).sum(), atol=1e-3)
    best, cosine = emap.neighbours(2, n=3)[0]
    assert best == 5 and cosine == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError):
        emap.neighbours(99)
    with pytest.raises(ConfigError):
        embedding_map(model, k=4)


@pytest.mark.parametrize("preset", ["gpt2", "lstm"])
def test_head_scores_callback_adds_scores_to_every_evaluation(preset: str) -> None:
    from lmcore.train import HeadScoresCallback, TrainConfig, Trainer

    model = tiny(preset)
    ids = random_ids(400)
    events = []

    class Record:
        def on_eval(self, e) -> None:
            events.append(e)

    measure = HeadScoresCallback()
    cfg = TrainConfig(batch_size=4, max_iters=6, warmup_iters=1, eval_interval=3, eval_iters=1, device="cpu")
    trainer = Trainer(model, ids[:300], ids[300:], cfg, callbacks=[measure, Record()])
    trainer.fit()
    assert [e.step for e in events] == [3, 6]
    if preset == "lstm":  # nothing to score: the events and history stay as they were
        assert all(e.head_scores is None for e in events) and "head_scores" not in trainer.history[-1]
        return
    final = head_scores(model)
    for e in events:
        assert set(e.head_scores) == {"previous_token", "first_token", "induction"}
        assert torch.tensor(e.head_scores["induction"]).shape == (2, 2)
    assert torch.allclose(torch.tensor(events[-1].head_scores["induction"]), final["induction"], atol=1e-4)
    assert trainer.history[-1]["head_scores"] == events[-1].head_scores  # saved with the checkpoint's history
    assert measure.seconds > 0
