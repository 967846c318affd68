"""Interventions on real tiny models: ablation, activation patching, steering, direct logit attribution."""

from __future__ import annotations

import pytest
import torch

from lmcore import intervene as I
from lmcore.errors import ConfigError, DataError
from lmcore.hooks import run_with_cache, run_with_hooks
from lmcore.models import ModelConfig, build_model
from lmcore.sample import SamplingConfig, generate

V = 20


def tiny(preset: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    values = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=16)
    if preset in ("mamba", "mamba2"):
        values["d_state"] = 4
    values.update(kw)
    model = build_model(ModelConfig.preset(preset, **values))
    with torch.no_grad():  # biases and norm scales off their initial 0 and 1, so a skipped one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def text(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_zeroing_a_head_through_run_with_hooks_equals_ablate_heads(preset: str) -> None:
    model = tiny(preset, n_kv_head=2) if preset == "llama" else tiny(preset)
    ids = text()

    def zero_head(t, name):
        t = t.clone()
        t[:, :, 2] = 0
        return t

    with torch.no_grad():
        by_hand = run_with_hooks(model, ids[None], [("blocks.1.attn.hook_z", zero_head)])
        clean = model(ids[None])
    ablated = I.ablate_heads(model, ids, heads=[(1, 2)])
    assert torch.equal(ablated, by_hand)
    assert not torch.allclose(ablated, clean)
    # a sweep's row for that head is the same run
    losses, clean_losses = I.ablation_sweep(model, ids, unit="head")
    assert losses.shape == (2, 4, len(ids) - 1)
    torch.testing.assert_close(losses[1, 2], I._per_token_losses(ablated, ids[None])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(clean_losses, I._per_token_losses(clean, ids[None])[0])


def test_mean_ablation_puts_the_heads_mean_output_in_its_place() -> None:
    model = tiny("gpt2")
    ids, reference = text(), text(14, seed=5)
    _, cache = run_with_cache(model, reference[None], ["blocks.0.attn.hook_z"])
    mean = cache["blocks.0.attn.hook_z"][0, :, 1].mean(0)  # (hd,)

    def put_mean(t, name):
        t = t.clone()
        t[:, :, 1] = mean
        return t

    with torch.no_grad():
        by_hand = run_with_hooks(model, ids[None], [("blocks.0.attn.hook_z", put_mean)])
    torch.testing.assert_close(I.ablate_heads(model, ids, [(0, 1)], mode="mean", reference=reference), by_hand)


@pytest.mark.parametrize("preset", ["gpt2", "mamba", "mamba2"])
def test_ablating_at_one_position_changes_only_the_positions_that_can_see_it(preset: str) -> None:
    model = tiny(preset)
    ids = text()
    p = 5
    with torch.no_grad():
        clean = model(ids[None])
    if preset == "gpt2":
        runs = [I.ablate_heads(model, ids, heads=[(0, 3)], positions=[p])]
    else:
        runs = [I.ablate_channels(model, ids, channels=[(0, 3), (0, 7)], positions=[p])]
        runs.append(I.ablate_layers(model, ids, layers=[0], positions=[p]))
    for ablated in runs:
        assert torch.equal(ablated[:, :p], clean[:, :p])  # earlier positions cannot see position p
        assert (ablated[:, p:] - clean[:, p:]).abs().amax(-1).min() > 0  # p and every later one can


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba", "mamba2", "lstm"])
def test_patching_the_clean_activation_everywhere_gives_back_the_clean_output(preset: str) -> None:
    model = tiny(preset, n_kv_head=2) if preset == "llama" else tiny(preset)
    clean, corrupted = text(seed=1), text(seed=2)
    with torch.no_grad():
        clean_logits = model(clean[None])
    for name in I.stream_names(model):
        patched = I.run_patched(model, clean, corrupted, [name])
        assert torch.equal(patched, clean_logits), name
    # restoring only the first half leaves the corrupted output in the second half (it sees corrupted tokens)
    half = I.run_patched(model, clean, corrupted, [I.stream_names(model)[0]], positions=range(6))
    assert torch.equal(half[:, :6], clean_logits[:, :6])
    assert not torch.allclose(half[:, 6:], clean_logits[:, 6:])


@pytest.mark.parametrize("preset", ["gpt2", "mamba", "mamba2"])
def test_residual_patching_table_finds_the_corrupted_position(preset: str) -> None:
    model = tiny(preset)
    clean = text(seed=1)
    corrupted = clean.clone()
    corrupted[4] = (corrupted[4] + 7) % V  # one token differs
    metric = I.loss_metric(clean)
    result = I.patch_residual(model, clean, corrupted, metric, batch_size=7)
    assert result.table.shape == (2, len(clean))
    # the first layer's stream at the changed position carries all of the difference
    assert result.table[0, 4] == pytest.approx(result.clean, abs=1e-5)
    # restoring any other position of the first layer's stream changes nothing
    others = torch.cat([result.table[0, :4], result.table[0, 5:]])
    torch.testing.assert_close(others, torch.full_like(others, result.corrupted), rtol=0, atol=1e-5)
    assert result.restored[0, 4] == pytest.approx(1.0, abs=1e-3)


def test_head_patching_table_and_logit_difference() -> None:
    model = tiny("gpt2")
    clean, corrupted = text(seed=1), text(seed=2)
    metric = I.logit_diff_metric(3, 4, position=-1)
    result = I.patch_heads(model, clean, corrupted, metric, batch_size=3)
    assert result.table.shape == (2, 4)
    # row (l, h) is the corrupted run with that head's output restored
    z_clean = run_with_cache(model, clean[None], ["blocks.1.attn.hook_z"])[1]["blocks.1.attn.hook_z"]

    def restore(t, name):
        t = t.clone()
        t[:, :, 2] = z_clean[:, :, 2]
        return t

    with torch.no_grad():
        one = run_with_hooks(model, corrupted[None], [("blocks.1.attn.hook_z", restore)])
    assert result.table[1, 2] == pytest.approx(float(metric(one)[0]), abs=1e-5)
    with pytest.raises(ConfigError, match="attention heads"):
        I.patch_heads(tiny("mamba"), clean, corrupted, metric)
    with pytest.raises(ConfigError, match="attention heads"):
        I.patch_heads(tiny("mamba2"), clean, corrupted, metric)
    with pytest.raises(DataError, match="same length"):
        I.patch_residual(model, clean, corrupted[:-1], metric)


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba", "mamba2"])
def test_direct_logit_attribution_adds_up_to_the_logit(preset: str) -> None:
    model = tiny(preset, n_kv_head=2) if preset == "llama" else tiny(preset)
    ids = text()
    a = I.logit_attribution(model, ids, token=7, position=8)
    with torch.no_grad():
        logit = float(model(ids[None])[0, 8, 7])
    total = a.embed + a.rest + sum(float(t.sum()) for t in (a.heads, a.mlps, a.mixers) if t is not None)
    assert a.logit == pytest.approx(logit, abs=1e-6)
    assert total == pytest.approx(logit, abs=1e-4)
    if preset in ("mamba", "mamba2"):
        assert a.heads is None and a.mixers.shape == (2,)
    else:
        assert a.heads.shape == (2, 4) and a.mlps.shape == (2,)


@pytest.mark.parametrize("preset", ["gpt2", "mamba", "mamba2", "lstm"])
def test_steering_adds_a_direction_while_generating(preset: str) -> None:
    model = tiny(preset)
    prompt = text(4).tolist()
    direction = I.mean_difference(model, [text(6, 3).tolist(), text(5, 4).tolist()], [text(7, 5).tolist()], layer=1)
    assert direction.shape == (16,)
    plain = [e.token_id for e in generate(model, prompt, max_new_tokens=6, sampling=SamplingConfig(temperature=0))]
    assert I.steered_generate(model, prompt, direction, layer=1, scale=0.0, max_new_tokens=6) == plain
    # a large push along one token's unembedding direction makes the model say that token
    target = 11
    push = model.lm_head.weight[target] if preset == "gpt2" else model.embedding.weight[target]
    if preset == "lstm":
        push = model.head.weight[target] if model.head is not None else push
    steered = I.steered_generate(model, prompt, push.detach(), layer=1, scale=500.0, max_new_tokens=6)
    assert steered != plain


def test_errors_a_user_can_cause() -> None:
    gpt, lstm = tiny("gpt2"), tiny("lstm")
    ids = text()
    with pytest.raises(ConfigError, match="no head"):
        I.ablate_heads(gpt, ids, [(2, 0)])
    with pytest.raises(ConfigError, match="ablation mode"):
        I.ablate_heads(gpt, ids, [(0, 0)], mode="noise")
    with pytest.raises(ConfigError, match="attention heads"):
        I.ablate_heads(lstm, ids, [(0, 0)])
    with pytest.raises(ConfigError, match="scan channels"):
        I.ablate_channels(gpt, ids, [(0, 0)])
    with pytest.raises(DataError, match="vocabulary"):
        I.ablate_heads(gpt, [0, V], [(0, 0)])
    with pytest.raises(ConfigError, match="no layer"):
        I.mean_difference(gpt, [[1, 2]], [[3, 4]], layer=5)
