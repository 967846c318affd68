"""Sparse autoencoders on real tiny models: TopK encoding, files, cross-entropy recovered, training."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT, short_training_run
from lmcore import sae as S
from lmcore.errors import CheckpointError, ConfigError, LMCoreError
from lmcore.hooks import run_with_hooks
from lmcore.models import ModelConfig, build_model
from tests.helpers import run_lmcore

V = 20


def tiny(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    values = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=16)
    values.update(kw)
    return build_model(ModelConfig.preset("gpt2", **values)).eval()


def text(n: int = 4000, seed: int = 1) -> torch.Tensor:
    """A learnable text: each token mostly follows from the one before (token + 3 mod V), with noise."""
    g = torch.Generator().manual_seed(seed)
    out = [0]
    noise = torch.rand(n, generator=g)
    jumps = torch.randint(V, (n,), generator=g)
    for i in range(1, n):
        out.append((out[-1] + 3) % V if noise[i] < 0.8 else int(jumps[i]))
    return torch.tensor(out)


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    model = tiny(n_embd=32)
    short_training_run(model, text(), steps=120, lr=3e-3)
    return model.eval()


def test_encode_gives_at_most_k_non_zero_values_per_row() -> None:
    torch.manual_seed(0)
    sae = S.SparseAutoencoder(16, 64, 5)
    with torch.no_grad():
        sae.b_enc.add_(torch.randn(64))
        z = sae.encode(torch.randn(300, 16))
    assert z.shape == (300, 64)
    assert int((z != 0).sum(-1).max()) <= 5
    assert int((z != 0).sum(-1).max()) == 5  # the bound is reached, so a larger k would show
    assert bool((z >= 0).all())


def test_decode_encode_gives_x_back_when_the_dictionary_holds_its_direction() -> None:
    torch.manual_seed(0)
    sae = S.SparseAutoencoder(16, 32, 1)
    x = torch.randn(16)
    with torch.no_grad():
        sae.W_dec[:, 7] = x / x.norm()
        sae.normalize_decoder()
        sae.W_enc.copy_(sae.W_dec.t())
    out = sae.decode(sae.encode(x[None]))[0]
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    assert int(sae.encode(x[None]).nonzero()[0, 1]) == 7


def test_save_load_is_exact_and_refused_beside_another_model(tmp_path: Path) -> None:
    model = tiny()
    sae = S.train_sae(model, text(600), n_features=32, k=4, batch_size=64, buffer_tokens=256)
    path = sae.save(tmp_path / "f.sae.safetensors")
    back = S.SparseAutoencoder.load(path, model)
    assert back.config_dict() == sae.config_dict() == {"d_in": 16, "n_features": 32, "k": 4, "hook": "blocks.1.hook_resid_post"}
    for (n, p), (_, q) in zip(sae.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q), n
    x = torch.randn(10, 16)
    assert torch.equal(sae.encode(x), back.encode(x))
    other = tiny(seed=1)
    with pytest.raises(ConfigError) as e:
        S.SparseAutoencoder.load(path, other)
    assert "\n" not in str(e.value) and "another model" in str(e.value)
    with pytest.raises(ConfigError):
        S.evaluate_sae(other, back, text(100))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError):
        S.SparseAutoencoder.load(tmp_path / "bad.safetensors")


def test_cross_entropy_recovered_equals_a_splice_through_run_with_hooks(trained) -> None:
    ids = text(16 * 6 + 1, seed=2)
    sae = S.train_sae(trained, text(), n_features=64, k=4, batch_size=128, buffer_tokens=1024)
    result = S.evaluate_sae(trained, sae, ids)
    x, y = ids[:-1].view(6, 16), ids[1:].view(6, 16)
    hook = "blocks.1.hook_resid_post"

    def ce(logits):
        return float(F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)))

    with torch.no_grad():
        clean = ce(trained(x))
        spliced = ce(run_with_hooks(trained, x, [(hook, lambda t, n: sae.decode(sae.encode(t)))]))
        zero = ce(run_with_hooks(trained, x, [(hook, lambda t, n: torch.zeros_like(t))]))
    assert result["ce_clean"] == pytest.approx(clean, rel=1e-5)
    assert result["ce_sae"] == pytest.approx(spliced, rel=1e-5)
    assert result["ce_zero"] == pytest.approx(zero, rel=1e-5)
    assert result["ce_recovered"] == pytest.approx((zero - spliced) / (zero - clean), rel=1e-4)
    assert 0 < result["l0"] <= 4
    assert result["tokens"] == 96


def test_a_trained_sae_recovers_more_than_a_random_one(trained) -> None:
    sae = S.train_sae(trained, text(), n_features=64, k=4, epochs=3, batch_size=128, buffer_tokens=1024)
    random = S.SparseAutoencoder(32, 64, 4, hook=sae.hook, model_id=sae.model_id)
    held_out = text(1000, seed=3)
    good = S.evaluate_sae(trained, sae, held_out)
    bad = S.evaluate_sae(trained, random, held_out)
    assert good["ce_recovered"] > bad["ce_recovered"] + 0.15
    assert good["ce_recovered"] > 0.9
    assert good["explained_variance"] > bad["explained_variance"]
    assert good["dead_fraction"] < 0.5


def test_feature_contexts_density_and_logit_effects(trained) -> None:
    sae = S.train_sae(trained, text(), n_features=64, k=4, batch_size=128, buffer_tokens=1024)
    ids = text(500, seed=4)
    acts = S.feature_activations(trained, sae, ids)
    density = acts.density()
    assert density.shape == (64,)
    assert float(density.sum()) == pytest.approx(float((acts.values > 0).sum()) / 500)
    f = int(density.argmax())
    ctxs = acts.top_contexts(f, n=5, before=6, after=2)
    assert 1 <= len(ctxs) <= 5
    top = ctxs[0]
    assert top.acts[top.peak] == top.value == max(c.value for c in ctxs)
    assert top.tokens == ids[top.position - top.peak : top.position - top.peak + len(top.tokens)].tolist()
    # the recorded activation is the SAE's encoding of that token's activation (its window of 16)
    with torch.no_grad():
        end = (top.position // 16 + 1) * 16
        full = torch.cat([sae.encode(a) for a in S.stream_activations(trained, ids[:end], sae.hook)])
    assert float(full[top.position, f]) == pytest.approx(top.value, rel=1e-5)
    effects = S.logit_effects(trained, sae)
    assert effects.shape == (64, V)
    expected = sae.W_dec[:, f].detach() @ trained.lm_head.weight.detach().t()
    torch.testing.assert_close(effects[f], expected, rtol=1e-4, atol=1e-5)
    up, down = S.top_tokens(effects[f], n=3)
    assert up[0][0] == int(expected.argmax()) and down[0][0] == int(expected.argmin())


def test_bad_settings_are_one_line_errors(trained) -> None:
    with pytest.raises(ConfigError, match="no hook point"):
        S.train_sae(trained, text(100), hook="blocks.9.hook_resid_post")
    with pytest.raises(ConfigError, match="k must be"):
        S.train_sae(trained, text(100), n_features=8, k=9)
    with pytest.raises(LMCoreError, match="vocabulary"):
        S.train_sae(trained, torch.tensor([0, 1, V + 5]))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return run_lmcore(*args, cwd=cwd, env=env, timeout=180)


def test_cli_trains_saves_and_prints_the_evaluation_as_one_json_line(tmp_path: Path) -> None:
    from lmcore.checkpoint import save_checkpoint
    from lmcore.tokenizers.char import CharTokenizer

    corpus = "".join(f"the {w} sat on the {w}. " for w in ["cat", "dog", "mat", "hat", "bat"] * 40)
    tok = CharTokenizer.train(corpus)
    model = tiny(vocab_size=tok.vocab_size)
    save_checkpoint(tmp_path / "m.safetensors", model, tok)
    (tmp_path / "c.txt").write_text(corpus)
    args = ["sae", "--checkpoint", "m.safetensors", "--data", "c.txt", "--n-features", "32", "--k", "4"]
    run = _cli(*args, "--out", "f.safetensors", cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()
    lines = run.stdout.decode().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["hook"] == "blocks.1.hook_resid_post" and result["k"] == 4 and 0 < result["l0"] <= 4
    assert {"explained_variance", "dead_fraction", "ce_recovered", "ce_clean", "ce_sae", "ce_zero"} <= set(result)
    assert S.SparseAutoencoder.load(tmp_path / "f.safetensors", model).n_features == 32
    for bad in (["--hook", "blocks.7.hook_resid_post"], ["--k", "0"], ["--k", "64"]):
        run = _cli(*args, *bad, "--out", "g.safetensors", cwd=tmp_path)
        err = run.stderr.decode()
        assert run.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert run.stdout == b"" and "Traceback" not in err
    assert not (tmp_path / "g.safetensors").exists()


@pytest.fixture(scope="module")
def dictionary(trained) -> S.SparseAutoencoder:
    return S.train_sae(trained, text(), n_features=64, k=4, batch_size=128, buffer_tokens=1024)


def test_token_search_and_text_search_read_the_recorded_activations(trained, dictionary) -> None:
    ids = text(400, seed=5)
    acts = S.feature_activations(trained, dictionary, ids)
    token = int(ids[7])
    found = S.FeatureActivations.token_features(acts, token, n=5)
    assert 1 <= len(found) <= 5
    at = ids == token
    for s in found:
        col = acts.column(s.feature)
        assert s.mean == pytest.approx(float(col[at].sum()) / int(at.sum()), rel=1e-5)
        assert s.count == int((col[at] > 0).sum()) and s.share == s.count / int(at.sum())
        assert s.precision == pytest.approx(s.count / int((col > 0).sum()))
    means = [s.mean for s in found]
    assert means == sorted(means, reverse=True)
    best = max(range(64), key=lambda f: float(acts.column(f)[at].sum()))
    assert found[0].feature == best
    assert acts.token_features(V + 100) == []  # a token the text lacks
    top = acts.top_features(n=3)
    totals = torch.stack([acts.column(f).sum() for f in range(64)])
    assert [s.feature for s in top] == totals.topk(3).indices.tolist()
    assert top[0].total == pytest.approx(float(totals.max()), rel=1e-5)
    # which features fire on each token of a typed text: the SAE's encoding of that token's activation
    typed = ids[:12]
    here = S.feature_activations(trained, dictionary, typed)
    with torch.no_grad():
        z = dictionary.encode(next(S.stream_activations(trained, typed, dictionary.hook)))
    for pos in (0, 5, 11):
        expected = sorted(((int(f), float(z[pos, f])) for f in z[pos].nonzero()[:, 0]), key=lambda p: -p[1])
        assert [f for f, _ in here.features_at(pos)] == [f for f, _ in expected]


def test_steering_at_strength_zero_is_plain_generation_and_a_strong_push_raises_its_token(trained, dictionary) -> None:
    from lmcore.sample import SamplingConfig, generate, next_token_distribution

    prompt = text(10, seed=6).tolist()
    cfg = SamplingConfig(temperature=1.0, seed=3)
    plain = [e.token_id for e in generate(trained, prompt, max_new_tokens=30, sampling=cfg)]
    assert S.steered_generate(trained, dictionary, prompt, 5, 0.0, max_new_tokens=30, sampling=cfg) == plain
    effects = S.logit_effects(trained, dictionary)
    plain_probs = next_token_distribution(trained, prompt)
    favours = effects.argmax(-1)  # (F,): the token each feature's direction favours most
    unlikely = plain_probs[favours] < 0.05  # features whose token the plain model does not expect here
    feature = int(torch.where(unlikely, effects.std(-1), -1.0).argmax())
    favoured = int(favours[feature])
    before = float(plain_probs[favoured])
    with S.feature_steering(trained, dictionary, feature, 40.0):
        after = float(next_token_distribution(trained, prompt)[favoured])
    assert after > 10 * before
    pushed = S.steered_generate(trained, dictionary, prompt, feature, 40.0, max_new_tokens=30, sampling=cfg)
    assert pushed != plain and pushed.count(favoured) > plain.count(favoured)
    with pytest.raises(ConfigError, match="feature must be"):
        S.steered_generate(trained, dictionary, prompt, 64, 1.0)
    with pytest.raises(ConfigError, match="another model"):
        S.steered_generate(tiny(n_embd=32, seed=4), dictionary, prompt, 1, 1.0)


@pytest.mark.parametrize("preset", ["gpt2", "mamba"])
def test_streamed_activations_stop_at_the_hook_and_equal_a_full_cached_run(preset) -> None:
    from lmcore.hooks import run_with_cache
    from lmcore.sample import SamplingConfig, generate, next_token_distribution

    model = tiny(preset=preset) if preset == "gpt2" else _mamba()
    ids = text(16 * 5 + 3, seed=7)
    hook = S.default_hook(model)
    streamed = torch.cat(list(S.stream_activations(model, ids, hook, batch_windows=2)))
    window = S._window(model)
    expected = []
    for lo in range(0, len(ids), window):
        _, cache = run_with_cache(model, ids[lo : lo + window][None], [hook])
        expected.append(cache[hook][0])
    torch.testing.assert_close(streamed, torch.cat(expected), rtol=1e-5, atol=1e-6)
    sae = S.train_sae(model, text(600), hook=hook, n_features=32, k=4, batch_size=64, buffer_tokens=256)
    prompt, cfg = [1, 2, 3], SamplingConfig(temperature=1.0, seed=1)
    plain = [e.token_id for e in generate(model, prompt, max_new_tokens=12, sampling=cfg)]
    assert S.steered_generate(model, sae, prompt, 3, 0.0, max_new_tokens=12, sampling=cfg) == plain
    with S.feature_steering(model, sae, 3, 50.0):  # the push reaches the next token (an untrained model's is faint)
        pushed = next_token_distribution(model, prompt)
    assert float((pushed - next_token_distribution(model, prompt)).abs().max()) > 1e-3


def _mamba() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("mamba", vocab_size=V, n_layer=2, n_embd=16)).eval()


def test_training_runs_the_model_only_up_to_the_hook(trained) -> None:
    calls = []
    last = trained.residual_blocks()[-1]
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        S.train_sae(trained, text(300), hook="blocks.0.hook_resid_post", n_features=16, k=2, batch_size=64,
                    buffer_tokens=128)  # fmt: skip
    finally:
        handle.remove()
    assert calls == []
