"""Mamba-2: the chunked SSD against the plain recurrence, its exact attention matrices, generation, training, I/O."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.models.mamba2 import FACTORED_MAX_SPAN, Mamba2, _factored_chunks, ssd_attention, ssd_chunked, ssd_ref
from lmcore.tokenizers import CharTokenizer

from helpers import (
    short_training_run,
    unigram_entropy,
)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 23


def tiny_config(**overrides) -> ModelConfig:
    # inner width 32 = 4 heads of 8 channels in 2 groups of B and C; chunks of 5 so that 16 is not a multiple
    values = dict(vocab_size=V, block_size=16, n_layer=2, n_embd=16, d_state=4, d_conv=3, ssm_head_dim=8,
                  n_groups=2, chunk_size=5)  # fmt: skip
    values.update(overrides)
    return ModelConfig.preset("mamba2", **values)


def tiny_model(seed: int = 0, **overrides) -> Mamba2:
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides))
    assert isinstance(model, Mamba2)
    with torch.no_grad():  # norms start at 1 and D at 1: perturb them so that a path that skips one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def ssd_inputs(batch: int, T: int, H: int, P: int, G: int, N: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, H, P, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(batch, T, H, generator=g, dtype=dtype) - 1.0)
    A = -torch.exp(torch.randn(H, generator=g, dtype=dtype))
    B = torch.randn(batch, T, G, N, generator=g, dtype=dtype)
    C = torch.randn(batch, T, G, N, generator=g, dtype=dtype)
    h0 = torch.randn(batch, H, P, N, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C, h0)]


def ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- SSD against the recurrence


def assert_chunked_matches_the_recurrence(inputs, **kwargs) -> None:
    """ssd_chunked(*inputs, **kwargs) against ssd_ref in values and in the gradients of every input.

    The final state is compared (and part of the loss) unless ``final_state=False``, when it must be None.
    """
    y_ref, h_ref = ssd_ref(*inputs)
    y, h = ssd_chunked(*inputs, **kwargs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    loss, loss_ref = (y * gy).sum(), (y_ref * gy).sum()
    if kwargs.get("final_state", True):
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
        gh = torch.randn(h.shape, generator=g, dtype=h.dtype)
        loss, loss_ref = loss + (h * gh).sum(), loss_ref + (h_ref * gh).sum()
    else:
        assert h is None
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    grads = torch.autograd.grad(loss, inputs)
    for name, a, b in zip(("x", "dt", "A", "B", "C", "h0"), grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("T,chunk", [(1, 4), (2, 4), (13, 4), (13, 5), (16, 4), (16, 16), (13, 64), (37, 8)])
def test_chunked_ssd_equals_the_recurrence_values_and_gradients(T, chunk, groups):
    assert_chunked_matches_the_recurrence(ssd_inputs(2, T, 4, 3, groups, 5), chunk_size=chunk)


@pytest.mark.parametrize("chunk", [8, 64], ids=["three-chunks", "one-chunk"])
def test_chunked_ssd_without_initial_state_and_an_empty_sequence(chunk):
    # Training passes no state: one chunk then skips the passing between chunks.
    inputs = ssd_inputs(3, 21, 4, 4, 2, 3)[:5]
    y_ref, h_ref = ssd_ref(*inputs)
    y, h = ssd_chunked(*inputs, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + h_ref.sum(), inputs)
    grads = torch.autograd.grad((y * gy).sum() + h.sum(), inputs)
    for name, a, b in zip(("x", "dt", "A", "B", "C"), grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")
    e = [t.detach() for t in ssd_inputs(2, 0, 2, 4, 1, 3)]
    y, h = ssd_chunked(*e)
    assert y.shape == (2, 0, 2, 4) and torch.equal(h, e[5])


@pytest.mark.parametrize("T,chunk", [(21, 8), (24, 8), (21, 64), (1, 8)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_ssd_without_its_final_state_gives_the_same_output_and_gradients(T, chunk, with_state):
    inputs = ssd_inputs(2, T, 4, 3, 2, 5)
    assert_chunked_matches_the_recurrence(inputs if with_state else inputs[:5], chunk_size=chunk, final_state=False)


def test_a_block_carries_a_state_on_only_when_one_came_in():
    model = tiny_model().double()
    x = model.embedding(ids(2, 11, seed=3))
    out, state = model.layers[0](x)
    assert state is None
    cache = model.init_cache(2)
    out_stepped, (conv, h) = model.layers[0](x, (cache.conv[0], cache.ssm[0]))
    torch.testing.assert_close(out_stepped, out, rtol=1e-10, atol=1e-12)
    assert conv.shape == cache.conv[0].shape and h.shape == cache.ssm[0].shape and h.abs().sum() > 0


def test_the_factored_decay_halves_each_heads_chunk_until_its_span_fits_or_gives_way():
    # Head 1 decays by 1.5 a step: a chunk of 64 spans 96, of 32 spans 48 (within FACTORED_MAX_SPAN).
    a = torch.zeros(1, 100, 3, dtype=torch.float64)
    a[..., 1] = -1.5
    assert _factored_chunks(a, 64) == [64, 32, 64]
    assert _factored_chunks(a, 20) == [20, 20, 20]  # 30
    a[0, 50, 2] = -(FACTORED_MAX_SPAN + 1)  # one step alone spans more than a factor can hold
    assert _factored_chunks(a, 64) == [64, 32, 0]
    assert _factored_chunks(torch.zeros(2, 5, 4), 8) == [8] * 4


def inputs_decaying_by(step_decays, T: int, groups: int, seed: int = 5):
    """SSD inputs (2 sequences, heads of 3 channels, state 5) whose head h decays by about step_decays[h] a step."""
    x, dt, A, B, C, h0 = ssd_inputs(2, T, len(step_decays), 3, groups, 5, seed=seed)
    with torch.no_grad():
        A.copy_(-torch.tensor(step_decays, dtype=A.dtype) / dt.mean((0, 1)))
    return x, dt, A, B, C, h0


@pytest.mark.parametrize(
    "step_decay,chunk",
    [(1.5, 64), (6.0, 16), (0.1, 16)],
    ids=["factored-in-halves", "per-head", "factored"],
)
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_ssd_is_exact_whichever_way_the_decay_is_computed(step_decay, chunk, with_state):
    # Every head decays by about step_decay a step: spans of 64 x 1.5 (halved to chunks of 32),
    # 16 x 6 (no chunk of 16 or more factors: per head) and 16 x 0.1 (factored as it is).
    x, dt, A, B, C, h0 = inputs_decaying_by([step_decay] * 4, 70, groups=2)
    assert set(_factored_chunks((dt * A).detach(), chunk)) == {{1.5: 32, 6.0: 0, 0.1: 16}[step_decay]}
    assert_chunked_matches_the_recurrence([x, dt, A, B, C] + ([h0] if with_state else []), chunk_size=chunk)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("with_state,final_state", [(False, True), (True, True), (True, False)])
def test_chunked_ssd_is_exact_with_heads_computed_apart_each_its_own_way(groups, with_state, final_state):
    # Four heads that need three ways: chunks of 32 (factored), of 16 (halved) and per head.
    # Heads of one group go different ways, and putting the ways back in order is no mere swap.
    x, dt, A, B, C, h0 = inputs_decaying_by([6.0, 2.5, 0.1, 0.2], 70, groups)
    ways = _factored_chunks((dt * A).detach(), 32)
    assert ways == [0, 16, 32, 32], ways
    inputs = [x, dt, A, B, C] + ([h0] if with_state else [])
    assert_chunked_matches_the_recurrence(inputs, chunk_size=32, final_state=final_state)


@pytest.mark.parametrize(
    "step_decays", [[0.1] * 4, [6.0] * 4, [6.0, 2.5, 0.1, 0.2]], ids=["factored", "per-head", "heads-apart"]
)
def test_chunked_ssd_outputs_depend_on_no_later_step_to_the_bit(step_decays):
    x, dt, A, B, C, _ = [t.detach().float() for t in inputs_decaying_by(step_decays, 70, groups=2)]
    y, _ = ssd_chunked(x, dt, A, B, C, chunk_size=32)
    for p in (21, 40):  # inside a first and a second chunk: no step before it may see the change
        x2, dt2, B2 = x.clone(), dt.clone(), B.clone()
        x2[:, p] += 1.0
        dt2[:, p] *= 0.5
        B2[:, p] -= 1.0
        y2, _ = ssd_chunked(x2, dt2, A, B2, C, chunk_size=32)
        assert torch.equal(y2[:, :p], y[:, :p])
        assert not torch.equal(y2[:, p], y[:, p])


@pytest.mark.parametrize("chunk,with_state", [(16, True), (64, False)])
def test_chunked_ssd_is_stable_where_decays_underflow(chunk, with_state):
    x, dt, A, B, C, h0 = [t.detach().float() for t in ssd_inputs(2, 50, 4, 3, 2, 4)]
    h0 = h0 if with_state else None
    dt = dt * 200  # exp(Δ A) far below float32's smallest number within a chunk
    y_ref, h_ref = ssd_ref(x, dt, A, B, C, h0)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=chunk)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-3)


def test_chunked_ssd_computes_half_precision_in_float32():
    x, dt, A, B, C, _ = [t.detach().float() for t in ssd_inputs(2, 19, 4, 8, 2, 4)]
    y32, _ = ssd_chunked(x, dt, A, B, C, chunk_size=8)
    y16, h16 = ssd_chunked(*(t.bfloat16() for t in (x, dt, A, B, C)), chunk_size=8)
    assert y16.dtype == torch.bfloat16 and h16.dtype == torch.float32
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.1)


# --------------------------------------------------------------------------- the exact attention matrices


def unrolled_M(dt, A, B, C):
    """M[h, i, j] = (C_i · B_j) Π_{k=j+1..i} exp(Δ_k A_h) Δ_j, with the products multiplied out one by one."""
    T, H = dt.shape
    r = H // B.shape[1]
    M = torch.zeros(H, T, T, dtype=dt.dtype)
    for h in range(H):
        for i in range(T):
            for j in range(i + 1):
                decay = torch.ones((), dtype=dt.dtype)
                for k in range(j + 1, i + 1):
                    decay = decay * torch.exp(dt[k, h] * A[h])
                M[h, i, j] = (C[i, h // r] @ B[j, h // r]) * decay * dt[j, h]
    return M


def test_ssd_attention_equals_the_unrolled_formula_and_reproduces_the_recurrence():
    x, dt, A, B, C, _ = [t.detach() for t in ssd_inputs(1, 9, 4, 3, 2, 5)]
    M = ssd_attention(dt[0], A, B[0], C[0])  # (H, T, T)
    torch.testing.assert_close(M, unrolled_M(dt[0], A, B[0], C[0]), rtol=1e-10, atol=1e-12)
    assert torch.equal(M.triu(1), torch.zeros_like(M))  # causal
    y, _ = ssd_ref(x, dt, A, B, C)
    torch.testing.assert_close(torch.einsum("hij,jhp->ihp", M, x[0]), y[0], rtol=1e-10, atol=1e-12)


def test_attention_maps_applied_to_the_layer_input_give_the_layer_output():
    model = tiny_model().double()
    idx = ids(1, 13, seed=2)
    maps = model.attention_maps(idx)
    assert maps.shape == (2, 4, 13, 13)  # layers x heads
    assert (maps < 0).any()  # exact and signed, not magnitudes
    with torch.no_grad():
        x = model.embedding(idx).double()
        x = model.layers[0](x)[0]  # the input of layer 1
        layer = model.layers[1]
        mixer = layer.mixer
        s = mixer.ssm_inputs(layer.norm(x))
        y = torch.einsum("hij,bjhp->bihp", maps[1].double(), s.x)  # M x, per head
        out = mixer.finish(y, s)  # the D skip, the gated norm, the projection
        torch.testing.assert_close(x + out, layer(x)[0], rtol=1e-5, atol=1e-6)


def test_attention_maps_of_a_prefix_ignore_later_tokens_and_reject_a_batch():
    model = tiny_model()
    idx = ids(1, 12, seed=3)
    other = idx.clone()
    other[0, 8:] = (other[0, 8:] + 5) % V
    a, b = model.attention_maps(idx), model.attention_maps(other)
    torch.testing.assert_close(a[:, :, :8, :8], b[:, :, :8, :8])
    assert not torch.allclose(a[:, :, 8:], b[:, :, 8:])
    with pytest.raises(ConfigError, match="one non-empty sequence"):
        model.attention_maps(torch.zeros(2, 5, dtype=torch.long))


# --------------------------------------------------------------------------- the model


def test_shapes_names_and_initialisation():
    model = build_model(tiny_config())
    assert model(ids(3, 7, seed=0)).shape == (3, 7, V)
    names = set(dict(model.named_parameters()))
    for n in ("embedding.weight", "norm_f.weight", "layers.1.norm.weight", "layers.0.mixer.in_proj.weight",
              "layers.0.mixer.conv1d.weight", "layers.0.mixer.conv1d.bias", "layers.0.mixer.dt_bias",
              "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.norm.weight",
              "layers.0.mixer.out_proj.weight"):  # fmt: skip
        assert n in names, n
    assert "head.weight" not in names
    assert "head.weight" in dict(build_model(tiny_config(tie_weights=False)).named_parameters())
    mixer = model.layers[0].mixer
    # in_proj: z (32) | x (32), B, C (2 groups x 4 each) | Δ (4 heads)
    assert mixer.in_proj.weight.shape == (32 + 32 + 16 + 4, 16)
    assert mixer.conv1d.weight.shape == (48, 1, 3)
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 5.0))  # A_h = -h
    dt = F.softplus(mixer.dt_bias)
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.flops_per_token() > 6 * model.num_params(non_embedding=True)


def test_state_size_does_not_grow_with_position():
    model = tiny_model()
    cache = model.init_cache(batch_size=1)
    sizes = []
    with torch.no_grad():
        for t in range(30):
            _, cache = model.step(torch.tensor([[t % V]]), cache)
            sizes.append(sum(c.numel() for c in cache.conv) + sum(h.numel() for h in cache.ssm))
    assert len(set(sizes)) == 1 and cache.ssm[0].shape == (1, 4, 8, 4)


def test_causal_conv_matches_torch_conv1d():
    model = tiny_model(d_conv=4)
    mixer = model.layers[0].mixer
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        s = mixer.ssm_inputs(x)
        xBC = mixer.in_proj(x)[..., 32 : 32 + 48].transpose(1, 2)  # (B, 48, T)
        expected = F.silu(F.conv1d(xBC, mixer.conv1d.weight, mixer.conv1d.bias, padding=3, groups=48)[..., :9])
    torch.testing.assert_close(s.x.flatten(-2), expected[:, :32].transpose(1, 2))
    torch.testing.assert_close(s.B.flatten(-2), expected[:, 32:40].transpose(1, 2))
    torch.testing.assert_close(s.C.flatten(-2), expected[:, 40:].transpose(1, 2))


def test_the_chunk_length_changes_nothing_but_the_speed():
    a, b = tiny_model(chunk_size=3), tiny_model(chunk_size=64)
    idx = ids(2, 16, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(a(idx), b(idx), rtol=1e-5, atol=1e-5)


def test_dropout_acts_on_the_mixer_output_in_training_only():
    plain, dropped = tiny_model(), tiny_model(dropout=0.5)
    idx = ids(2, 16, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(dropped(idx), plain(idx))  # evaluation: no dropout, the same weights
        dropped.train()
        torch.manual_seed(1)
        first = dropped(idx)
        torch.manual_seed(1)
        again = dropped(idx)
        other = dropped(idx)
    torch.testing.assert_close(first, again)  # drawn from torch's generator: a seed repeats it
    assert not torch.allclose(first, other) and not torch.allclose(first, plain(idx))
    # What is dropped is the mixer's branch, not the residual stream: where an entry of the branch is
    # zeroed the block passes its input through unchanged, about half the entries at p = 0.5.
    x = dropped.embedding(idx)
    with torch.no_grad():
        kept_input = (dropped.layers[0](x)[0] == x).float().mean().item()
    assert 0.35 < kept_input < 0.65, kept_input


def test_gated_norm_works_per_group():
    model = tiny_model()
    norm = model.layers[0].mixer.norm  # 32 channels in 2 groups of 16
    y, z = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    y2 = y.clone()
    y2[..., 16:] *= 10  # the second group only: the first group's output must not change
    with torch.no_grad():
        torch.testing.assert_close(norm(y, z)[..., :16], norm(y2, z)[..., :16])


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("d_state", 0, "d_state must be at least 1"),
        ("n_groups", 0, "n_groups must be at least 1"),
        ("chunk_size", 0, "chunk_size must be at least 1"),
        ("ssm_head_dim", 12, r"ssm_head_dim \(12\) must divide the inner width"),
        ("n_groups", 3, r"n_groups \(3\) must divide the number of heads \(4"),
        ("ssm_head_dim", 2.5, "ssm_head_dim must be a whole number"),
    ],
)
def test_validate_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{field: value}).validate()


# --------------------------------------------------------------------------- training and I/O


def test_short_training_run_beats_the_unigram_loss(small_text):
    text = small_text[:12000]
    tok = CharTokenizer.train(text)
    data = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("mamba2", vocab_size=tok.vocab_size, block_size=32, n_layer=2,
                                           n_embd=32, d_state=8, chunk_size=8))  # fmt: skip
    val_loss = short_training_run(model, data, steps=150, lr=3e-3, batch=8)
    unigram = unigram_entropy(data[: int(len(data) * 0.9)])
    assert math.isfinite(val_loss)
    assert val_loss < unigram - 0.1, (val_loss, unigram)


def test_the_attention_page_shows_the_exact_maps_and_says_what_they_mean(tmp_path, monkeypatch, small_text):
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from lmcore.checkpoint import save_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    tok = CharTokenizer.train(small_text)
    save_checkpoint(folder / "ssd.safetensors", tiny_model(vocab_size=tok.vocab_size), tok)
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60).run()
    at.switch_page("views/attention.py").run()
    assert not at.exception and not at.error
    captions = " ".join(str(c.value) for c in at.caption)
    assert "State-space duality" in captions and "exact" in captions
    assert "Head" in [s.label for s in at.selectbox]
    one, grid, _ = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert one["layout"]["title"]["text"].startswith("layer 0 · head 0")
    assert len(grid["data"]) == 2 * 4  # every layer and head


def test_the_model_page_builds_a_mamba2_from_its_fields():
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60).run()
    at.switch_page("views/model.py").run()
    at.radio(key="keep.model.arch").set_value("mamba2").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    labels = [w.label for w in at.number_input]
    assert {"Head size (P)", "Groups of B and C", "Chunk length (SSD)"} <= set(labels)
    assert at.session_state["model_config"].arch == "mamba2"
