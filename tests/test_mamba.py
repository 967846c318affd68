"""Mamba: the fast scan against the loop, generation state, hidden attention, training, I/O."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import lmcore.models.mamba as mamba_module
from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.models.mamba import (
    DT_MAX,
    DT_MIN,
    Mamba,
    hidden_attention,
    selective_scan,
    selective_scan_ref,
)
from lmcore.tokenizers import CharTokenizer
from lmcore.train import Trainer, TrainConfig

from helpers import (
    short_training_run,
    unigram_entropy,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=23, block_size=16, n_layer=2, n_embd=16, d_state=4, d_conv=3)
    values.update(overrides)
    return ModelConfig.preset("mamba", **values)


def tiny_model(seed: int = 0, **overrides) -> Mamba:
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides))
    assert isinstance(model, Mamba)
    return model.eval()


def scan_inputs(batch: int, T: int, E: int, N: int, dtype=torch.float64, seed: int = 0, delta_shift: float = -1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, T, E, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, T, E, generator=g, dtype=dtype) + delta_shift)
    A = -torch.exp(torch.randn(E, N, generator=g, dtype=dtype))
    B = torch.randn(batch, T, N, generator=g, dtype=dtype)
    C = torch.randn(batch, T, N, generator=g, dtype=dtype)
    h0 = torch.randn(batch, E, N, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, h0)]


# --------------------------------------------------------------------------- scans


@pytest.mark.parametrize("keep_states", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("T,chunk", [(1, 8), (2, 8), (9, 8), (13, 8), (13, 4), (37, 8), (40, 5), (16, 16)])
def test_fast_scan_equals_loop_values_and_gradients(T, chunk, keep_states):
    inputs = scan_inputs(2, T, 6, 5)
    y_ref, h_ref = selective_scan_ref(*inputs)
    y, h = selective_scan(*inputs, chunk_size=chunk, keep_states=keep_states)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    # one random cotangent on both outputs, gradients for all six inputs
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (h_ref * gh).sum(), inputs)
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), inputs)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "h0"), grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")


def test_fast_scan_without_initial_state_and_output_only_loss():
    u, delta, A, B, C, _ = scan_inputs(3, 21, 4, 3)
    y_ref, _ = selective_scan_ref(u, delta, A, B, C)
    y, _ = selective_scan(u, delta, A, B, C, chunk_size=8)
    torch.testing.assert_close(y, y_ref)
    grads = torch.autograd.grad(y.square().sum(), (u, delta, A, B, C))
    grads_ref = torch.autograd.grad(y_ref.square().sum(), (u, delta, A, B, C))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("keep_states", [True, False], ids=["kept", "recomputed"])
def test_fast_scan_backward_runs_twice_on_a_retained_graph(keep_states):
    # The backward reads what the forward kept without changing it.
    inputs = scan_inputs(2, 19, 4, 3)
    y, h = selective_scan(*inputs, chunk_size=8, keep_states=keep_states)
    loss = y.square().sum() + h.sum()
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    second = torch.autograd.grad(loss, inputs)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fast_scan_keeps_states_on_a_cpu_only_up_to_the_limit(monkeypatch):
    inputs = scan_inputs(2, 19, 4, 3)
    y, _ = selective_scan(*inputs, chunk_size=8)
    assert len(y.grad_fn.A_bars) == 3  # small: Ā and the states of its three chunks are kept
    monkeypatch.setattr(mamba_module, "KEEP_STATES_MAX_BYTES", 0)
    y, _ = selective_scan(*inputs, chunk_size=8)
    assert y.grad_fn.A_bars == []  # past the limit the backward recomputes them
    y_ref, _ = selective_scan_ref(*inputs)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), inputs)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_fast_scan_without_gradients_matches_the_loop():
    inputs = [t.detach() for t in scan_inputs(2, 23, 4, 3)]
    with torch.no_grad():
        y, h = selective_scan(*inputs, chunk_size=8)
    y_ref, h_ref = selective_scan_ref(*inputs)
    assert not y.requires_grad
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)


def test_empty_sequence_passes_the_state_through():
    u, delta, A, B, C, h0 = [t.detach() for t in scan_inputs(2, 0, 4, 3)]
    y, h = selective_scan(u, delta, A, B, C, h0)
    assert y.shape == (2, 0, 4) and torch.equal(h, h0)


def test_fast_scan_is_stable_where_products_underflow():
    # Large steps: Ā = exp(Δ A) underflows to 0 after a few steps; no NaN, no inf, same answer.
    inputs = [t.detach().float() for t in scan_inputs(2, 50, 8, 4, delta_shift=4.0)]
    inputs[1] = inputs[1] * 20  # Δ around 100: exp(Δ A) ~ exp(-100) and below
    y_ref, h_ref = selective_scan_ref(*inputs)
    y, h = selective_scan(*inputs)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_fast_scan_computes_half_precision_in_float32():
    u, delta, A, B, C, _ = [t.detach().float() for t in scan_inputs(2, 19, 8, 4)]
    y32, _ = selective_scan(u, delta, A, B, C)
    y16, h16 = selective_scan(*(t.bfloat16() for t in (u, delta, A, B, C)))
    assert y16.dtype == torch.bfloat16 and h16.dtype == torch.float32
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.1)


# --------------------------------------------------------------------------- hidden attention


def unrolled_alpha(delta, A, B, C):
    """α[e, i, j] = C_i · (Π_{k=j+1..i} Ā_k) B̄_j, with the products multiplied out one by one."""
    T, E = delta.shape
    alpha = torch.zeros(E, T, T, dtype=delta.dtype)
    for i in range(T):
        for j in range(i + 1):
            prod = torch.ones_like(A)  # (E, N)
            for k in range(j + 1, i + 1):
                prod = prod * torch.exp(delta[k][:, None] * A)
            B_bar = delta[j][:, None] * B[j][None, :]  # (E, N)
            alpha[:, i, j] = (C[i][None, :] * prod * B_bar).sum(-1)
    return alpha


def test_hidden_attention_equals_unrolled_formula_and_reproduces_the_scan():
    u, delta, A, B, C, _ = [t.detach() for t in scan_inputs(1, 9, 5, 3)]
    alpha = hidden_attention(delta[0], A, B[0], C[0])  # (E, T, T)
    torch.testing.assert_close(alpha, unrolled_alpha(delta[0], A, B[0], C[0]), rtol=1e-10, atol=1e-12)
    assert torch.equal(alpha.triu(1), torch.zeros_like(alpha))  # causal by construction
    y, _ = selective_scan_ref(u, delta, A, B, C)  # the scan before the D skip and the gate
    torch.testing.assert_close(torch.einsum("eij,je->ie", alpha, u[0]), y[0], rtol=1e-10, atol=1e-12)


def test_attention_maps_are_group_means_of_absolute_alpha():
    model = tiny_model(n_embd=16, expand=2)  # 32 channels -> 4 groups of 8
    idx = torch.randint(0, 23, (1, 11), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(idx)
    assert maps.shape == (2, 4, 11, 11)
    assert torch.equal(maps.triu(1), torch.zeros_like(maps)) and (maps >= 0).all()
    with torch.no_grad():
        x = model.embedding(idx)
        layer = model.layers[0]
        _, delta, A, B, C, _, _ = layer.mixer.ssm_inputs(layer.norm(x))
        alpha = hidden_attention(delta[0], A, B[0], C[0]).abs()  # (32, T, T)
    torch.testing.assert_close(maps[0], alpha.view(4, 8, 11, 11).mean(1))


def test_attention_maps_of_a_prefix_ignore_later_tokens():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 23, (1, 12), generator=g)
    other = idx.clone()
    other[0, 8:] = (other[0, 8:] + 5) % 23
    a, b = model.attention_maps(idx), model.attention_maps(other)
    torch.testing.assert_close(a[:, :, :8, :8], b[:, :, :8, :8])
    assert not torch.allclose(a[:, :, 8:], b[:, :, 8:])


def test_attention_maps_reject_a_batch():
    with pytest.raises(ConfigError, match="one non-empty sequence"):
        tiny_model().attention_maps(torch.zeros(2, 5, dtype=torch.long))


# --------------------------------------------------------------------------- the model


def test_shapes_names_and_initialisation():
    model = tiny_model()
    idx = torch.randint(0, 23, (3, 7))
    assert model(idx).shape == (3, 7, 23)
    names = set(dict(model.named_parameters()))
    for n in ("embedding.weight", "norm_f.weight", "layers.1.norm.weight", "layers.0.mixer.in_proj.weight",
              "layers.0.mixer.conv1d.weight", "layers.0.mixer.conv1d.bias", "layers.0.mixer.x_proj.weight",
              "layers.0.mixer.dt_proj.weight", "layers.0.mixer.dt_proj.bias", "layers.0.mixer.A_log",
              "layers.0.mixer.D", "layers.0.mixer.out_proj.weight"):
        assert n in names, n
    assert "head.weight" not in names  # tied: the embedding is the head
    assert "head.weight" in dict(tiny_model(tie_weights=False).named_parameters())
    mixer = model.layers[0].mixer
    torch.testing.assert_close(mixer.A_log[3], torch.log(torch.arange(1.0, 5.0)))
    with torch.no_grad():
        A = mixer.ssm_inputs(torch.randn(1, 2, 16))[2]
    torch.testing.assert_close(A, -torch.arange(1.0, 5.0).expand(32, 4))  # S4D-real: A = -(1..N)
    assert torch.equal(mixer.D, torch.ones(32))
    dt = F.softplus(mixer.dt_proj.bias)
    assert (dt >= DT_MIN * 0.999).all() and (dt <= DT_MAX * 1.001).all()
    assert mixer.x_proj.out_features == 1 + 2 * 4  # dt_rank = ceil(16 / 16)
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=True) == model.num_params() - 23 * 16
    assert model.flops_per_token() > 6 * model.num_params(non_embedding=True)


def test_state_size_does_not_grow_with_position():
    model = tiny_model()
    cache = model.init_cache(batch_size=1)
    sizes = []
    with torch.no_grad():
        for t in range(40):
            _, cache = model.step(torch.tensor([[t % 23]]), cache)
            sizes.append(sum(c.numel() for c in cache.conv) + sum(h.numel() for h in cache.ssm))
    assert len(set(sizes)) == 1


def test_causal_conv_matches_torch_conv1d():
    model = tiny_model(d_conv=4)
    mixer = model.layers[0].mixer
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        u = mixer.ssm_inputs(x)[0]  # (B, T, E)
        xi = mixer.in_proj(x)[..., : mixer.d_inner].transpose(1, 2)  # (B, E, T)
        expected = F.conv1d(xi, mixer.conv1d.weight, mixer.conv1d.bias, padding=3, groups=mixer.d_inner)[..., :9]
    torch.testing.assert_close(u, F.silu(expected).transpose(1, 2))


def test_d_conv_of_one_has_no_window():
    model = tiny_model(d_conv=1)
    idx = torch.randint(0, 23, (1, 6))
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache()
        out = []
        for t in range(6):
            logits, cache = model.step(idx[:, t : t + 1], cache)
            out.append(logits)
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("d_state", 0, "d_state must be at least 1"),
        ("d_conv", 0, "d_conv must be at least 1"),
        ("expand", 0, "expand must be at least 1"),
        ("dt_rank", 0, "dt_rank must be at least 1"),
        ("d_state", 2.5, "d_state must be a whole number"),
    ],
)
def test_validate_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{field: value}).validate()


def test_explicit_dt_rank_is_used():
    model = tiny_model(dt_rank=3)
    assert model.layers[0].mixer.dt_proj.in_features == 3


# --------------------------------------------------------------------------- training and I/O


def test_short_training_run_beats_the_unigram_loss(small_text):
    text = small_text[:12000]
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("mamba", vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_embd=32, d_state=8))
    val_loss = short_training_run(model, ids, steps=150, lr=3e-3, batch=8)
    unigram = unigram_entropy(ids[: int(len(ids) * 0.9)])
    assert math.isfinite(val_loss)
    assert val_loss < unigram - 0.1, (val_loss, unigram)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile needs a C++ compiler on CPU")
def test_trainer_with_torch_compile_matches_eager(small_text):
    # The scan runs as it is between the compiled parts; the run must give what eager gives.
    text = small_text[:6000]
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text))
    n = int(len(ids) * 0.9)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig.preset("mamba", vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_embd=16, d_state=4))
        cfg = TrainConfig(batch_size=4, max_iters=5, eval_interval=5, eval_iters=2, warmup_iters=1, lr=3e-3, device="cpu", compile=compiled)
        results.append(Trainer(model, ids[:n], ids[n:], cfg).fit())
    eager, compiled = results
    assert math.isfinite(compiled["val_loss"])
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)


