"""Model tests: configs, the transformer's three paths, attention maps, the bigram.

Tiny shapes throughout (2 layers, 4 heads, 32 wide) so the module runs in seconds.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lmcore.errors import ConfigError
from lmcore.models import ARCHS, SIZES, ModelConfig, build_model, family_of, lm_loss, preset_config
from lmcore.models.layers import apply_rope, apply_rope_reference, causal_conv1d, rope_table, swiglu_hidden
from lmcore.models.transformer import KVCache, Transformer

V, BLOCK, N_HEAD = 13, 16, 4
# gpt2 and llama presets with multi-query (1), grouped-query (2) and multi-head (None = 4) attention.
CASES = [(preset, kv) for preset in ("gpt2", "llama") for kv in (1, 2, None)]
CASE_IDS = [f"{p}-kv{kv or N_HEAD}" for p, kv in CASES]


def tiny(preset: str = "gpt2", **overrides) -> ModelConfig:
    values = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=N_HEAD, n_embd=32)
    values.update(overrides)
    return ModelConfig.preset(preset, **values)


def tiny_model(preset: str = "gpt2", seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = build_model(tiny(preset, **overrides))
    # Biases and norm scales start at 0 and 1; perturb them so that a test
    # would notice a path that skipped one of them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


# ---------------------------------------------------------------- transformer paths


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_forward_shape_and_heads(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    logits = model(tokens(3, BLOCK))
    assert logits.shape == (3, BLOCK, V)
    assert logits.dtype == torch.float32
    kv_heads = kv or N_HEAD
    assert model.h[0].attn.c_attn.weight.shape == ((N_HEAD + 2 * kv_heads) * 8, 32)


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_causal(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    idx = tokens(2, BLOCK)
    t = 6
    changed = idx.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % V
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-4  # the change is seen from t + 1 on


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_step_token_by_token_equals_forward(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    idx = tokens(2, BLOCK)
    full = model(idx)
    cache = model.init_cache(batch_size=2)
    outs = []
    for t in range(BLOCK):
        logits, cache = model.step(idx[:, t : t + 1], cache)
        assert logits.shape == (2, 1, V)
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-5)
    assert cache.pos == BLOCK


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_prefill_then_step_equals_forward(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    idx = tokens(2, BLOCK)
    full = model(idx)
    cache = model.init_cache(batch_size=2)
    prefill, cache = model.step(idx[:, :9], cache)  # a prompt in one call
    assert prefill.shape == (2, 9, V)
    parts = [prefill]
    chunk, cache = model.step(idx[:, 9:13], cache)  # several tokens at an offset: the masked path
    parts.append(chunk)
    for t in range(13, BLOCK):
        logits, cache = model.step(idx[:, t : t + 1], cache)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_reference_forward_equals_forward(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    idx = tokens(2, 11)
    logits, maps = model.reference_forward(idx)
    torch.testing.assert_close(logits, model(idx), rtol=0, atol=1e-5)
    assert maps.shape == (2, 2, N_HEAD, 11, 11)


def test_step_past_block_size_raises_and_a_new_cache_works():
    model = tiny_model()
    idx = tokens(1, BLOCK)
    cache = model.init_cache()
    _, cache = model.step(idx, cache)
    with pytest.raises(ValueError, match="cache"):
        model.step(idx[:, :1], cache)
    fresh = model.init_cache()
    logits, _ = model.step(idx[:, -4:], fresh)  # the sampler's re-prefill of the last tokens
    torch.testing.assert_close(logits, model(idx[:, -4:]), rtol=0, atol=1e-5)


def test_forward_longer_than_block_size_is_a_config_error():
    model = tiny_model()
    with pytest.raises(ConfigError, match="block_size"):
        model(tokens(1, BLOCK + 1))
    with pytest.raises(ConfigError, match="block_size"):
        model.attention_maps(tokens(1, BLOCK + 1))


def test_cache_shape_and_batch_rows_independent():
    model = tiny_model("llama", n_kv_head=2)
    cache = model.init_cache(batch_size=3)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 3, 2, BLOCK, 8)
    idx = tokens(3, 7)
    batched, _ = model.step(idx, cache)
    single, _ = model.step(idx[1:2], model.init_cache(batch_size=1))
    torch.testing.assert_close(batched[1:2], single, rtol=0, atol=1e-5)


def test_dropout_only_in_training_mode():
    model = tiny_model(dropout=0.3)
    idx = tokens(2, BLOCK)
    model.train()
    torch.manual_seed(0)
    a = model(idx)
    b = model(idx)
    assert (a - b).abs().max() > 1e-3  # different masks each call
    model.eval()
    torch.testing.assert_close(model(idx), model.reference_forward(idx)[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- attention maps


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_attention_maps_are_causal_distributions(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    maps = model.attention_maps(tokens(1, 12))
    assert maps.shape == (2, N_HEAD, 12, 12)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, N_HEAD, 12), rtol=0, atol=1e-5)
    upper = torch.ones(12, 12, dtype=torch.bool).triu(1)
    assert (maps[..., upper] == 0).all()
    assert (maps[..., ~upper] > 0).all()  # every allowed position gets some weight
    assert maps[..., 0, 0].eq(1).all()  # the first token can only read itself


def _layer0_by_hand(model: Transformer, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(hd)) of layer 0 from its weights, and its output after c_proj."""
    c = model.config
    H, KV, hd, T = c.n_head, c.kv_heads, c.head_dim, idx.size(1)
    x = model.wte.weight[idx[0]]  # (T, D)
    if c.pos == "learned":
        x = x + model.wpe.weight[:T]
    block = model.h[0]
    h = block.ln_1(x)  # (T, D)
    attn = block.attn
    qkv = h @ attn.c_attn.weight.T
    if attn.c_attn.bias is not None:
        qkv = qkv + attn.c_attn.bias
    q = qkv[:, : H * hd].reshape(T, H, hd)
    k = qkv[:, H * hd : (H + KV) * hd].reshape(T, KV, hd)
    v = qkv[:, (H + KV) * hd :].reshape(T, KV, hd)
    if c.pos == "rope":
        table = rope_table(hd, T, c.rope_theta)
        q = apply_rope_reference(q[None], table)[0]
        k = apply_rope_reference(k[None], table)[0]
    group = H // KV
    maps, outs = [], []
    for head in range(H):
        kvh = head // group  # query head -> its key/value head
        scores = q[:, head] @ k[:, kvh].T / math.sqrt(hd)  # (T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        w = scores.softmax(-1)
        maps.append(w)
        outs.append(w @ v[:, kvh])  # (T, hd)
    y = torch.cat(outs, dim=-1) @ attn.c_proj.weight.T  # (T, D)
    if attn.c_proj.bias is not None:
        y = y + attn.c_proj.bias
    return torch.stack(maps), y


@pytest.mark.parametrize("preset,kv", CASES, ids=CASE_IDS)
def test_attention_map_matches_manual_softmax_and_fast_path(preset, kv):
    model = tiny_model(preset, n_kv_head=kv)
    idx = tokens(1, 10)
    manual_maps, manual_out = _layer0_by_hand(model, idx)
    with torch.no_grad():
        torch.testing.assert_close(model.attention_maps(idx)[0], manual_maps, rtol=0, atol=1e-5)
        # The fast (scaled_dot_product_attention) path uses the same head grouping.
        x = model.wte(idx) + (model.wpe.weight[:10] if model.wpe is not None else 0)
        rope = model.rope[:10] if model.rope is not None else None
        fast = model.h[0].attn(model.h[0].ln_1(x), rope)[0]
    torch.testing.assert_close(fast, manual_out, rtol=0, atol=1e-5)


def test_attention_maps_restore_training_mode():
    model = tiny_model(dropout=0.2).train()
    maps = model.attention_maps(tokens(1, 8)[0])  # a 1-D sequence is accepted
    assert model.training
    assert maps.shape == (2, N_HEAD, 8, 8)
    torch.testing.assert_close(maps, model.attention_maps(tokens(1, 8)), rtol=0, atol=0)  # no dropout in maps


def test_rope_fast_equals_reference_and_is_relative():
    torch.manual_seed(0)
    table = rope_table(8, 20)
    x = torch.randn(2, 20, 3, 8)
    torch.testing.assert_close(apply_rope(x, table), apply_rope_reference(x, table), rtol=0, atol=1e-6)
    # <R_m q, R_n k> depends only on m - n: shift both positions by 5.
    q, k = torch.randn(8), torch.randn(8)
    seq = torch.zeros(1, 20, 2, 8)
    seq[0, :, 0], seq[0, :, 1] = q, k
    rot = apply_rope(seq, table)[0]  # (20, 2, 8)
    assert torch.allclose(rot[7, 0] @ rot[3, 1], rot[12, 0] @ rot[8, 1], atol=1e-5)
    assert not torch.allclose(rot[7, 0] @ rot[3, 1], rot[7, 0] @ rot[4, 1], atol=1e-3)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv1d_equals_torch_conv1d_values_and_gradients(K, with_state):
    g = torch.Generator().manual_seed(K)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, K, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, K - 1, 5, generator=g, dtype=torch.float64, requires_grad=True) if with_state else None
    u, after = causal_conv1d(x, w, b, state)
    before = state if with_state else torch.zeros(2, K - 1, 5, dtype=torch.float64)
    full = torch.cat([before, x], dim=1)
    expected = F.conv1d(full.transpose(1, 2), w[:, None, :], b, groups=5).transpose(1, 2)  # (B, T, C)
    torch.testing.assert_close(u, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(after, full[:, full.shape[1] - (K - 1) :])
    leaves = [x, w, b] + ([state] if with_state else [])
    gu = torch.randn(u.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((u * gu).sum(), leaves)
    grads_ref = torch.autograd.grad((expected * gu).sum(), leaves)
    for name, a, e in zip(("x", "weight", "bias", "state"), grads, grads_ref):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"gradient of {name}")


def test_tied_weights_are_one_parameter():
    model = build_model(tiny())
    assert model.lm_head.weight is model.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names
    untied = build_model(tiny(tie_weights=False))
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_params() == model.num_params() + V * 32


def test_baby_gpt_parameter_count():
    """nanoGPT's CPU baby GPT: V=65, block 64, 4 layers, 4 heads, 128 wide, bias, tied."""
    cfg = ModelConfig.preset("gpt2", vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = build_model(cfg)
    D = 128
    per_block = (
        2 * D  # ln_1 weight + bias
        + D * 3 * D + 3 * D  # c_attn
        + D * D + D  # attn.c_proj
        + 2 * D  # ln_2
        + D * 4 * D + 4 * D  # mlp.c_fc
        + 4 * D * D + D  # mlp.c_proj
    )
    assert per_block == 198_272
    wte, wpe, ln_f = 65 * D, 64 * D, 2 * D
    assert model.num_params() == 4 * per_block + wte + wpe + ln_f == 809_856
    # nanoGPT's "0.80M" leaves out the position embeddings only.
    assert model.num_params() - wpe == 801_664
    # Kaplan-style non-embedding count leaves out both tables.
    assert model.num_params(non_embedding=True) == 801_664 - wte
    assert model.flops_per_token() == 6 * 801_664 + 12 * 4 * D * 64


def test_llama_baby_parameter_count_and_swiglu_width():
    assert swiglu_hidden(128, 4.0) == 344  # 2/3 * 512 = 341.3, nearest multiple of 8
    cfg = ModelConfig.preset("llama", vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = build_model(cfg)
    D, h = 128, 344
    per_block = 2 * D + D * 3 * D + D * D + D * 2 * h + h * D  # two RMSNorms, no biases
    assert model.num_params() == 4 * per_block + 65 * D + D == 800_000
    assert model.wpe is None and not any("wpe" in n for n, _ in model.named_parameters())


def test_parameter_names_are_gpt2_checkpoint_keys():
    model = build_model(tiny(n_layer=1))
    expected = {
        "wte.weight", "wpe.weight", "lm_head.weight", "ln_f.weight", "ln_f.bias",
        "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.ln_2.weight", "h.0.ln_2.bias",
        "h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias",
        "h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias",
    }  # fmt: skip
    assert set(model.state_dict()) == expected  # the rope table and masks are not saved
    llama = build_model(tiny("llama", n_layer=1))
    assert set(llama.state_dict()) == {k for k in expected if "wpe" not in k and not k.endswith("bias")}


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = build_model(tiny(n_layer=8, n_embd=64))
    std_proj = model.h[0].mlp.c_proj.weight.std().item()
    std_fc = model.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / math.sqrt(16)) < 0.001
    assert model.h[0].attn.c_attn.bias.abs().max() == 0


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (dict(n_embd=30), "divisible by n_head"),
        (dict(n_kv_head=3), "must divide n_head"),
        (dict(n_kv_head=0), "n_kv_head must be at least 1"),
        (dict(n_kv_head=8), "between 1 and n_head"),
        (dict(norm="batchnorm"), "unknown norm"),
        (dict(pos="alibi"), "unknown position"),
        (dict(mlp="relu"), "unknown MLP"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout=1.0), "dropout"),
        (dict(pos="rope", n_embd=12, n_head=4), "even head size"),
        (dict(pos="rope", rope_theta=0.0), "rope_theta"),
        (dict(block_size=0), "block_size"),
        (dict(block_size=10**6), "block_size"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(n_head=0), "n_head"),
        (dict(n_layer=2.5), "whole number"),
        (dict(bias="yes"), "true or false"),
        (dict(arch="rnn"), "unknown architecture"),
    ],
)
def test_impossible_configs_raise_config_error(overrides, fragment):
    cfg = tiny().replace(**overrides)
    with pytest.raises(ConfigError, match=fragment) as e:
        cfg.validate()
    assert e.value.field in overrides  # the error names the field to change (a page shows its label)
    with pytest.raises(ConfigError):
        build_model(cfg)


def test_valid_configs_pass():
    for preset, kv in CASES:
        tiny(preset, n_kv_head=kv).validate()
    tiny(pos="rope", norm="layernorm", mlp="swiglu", bias=True, tie_weights=False).validate()


def test_unknown_preset_and_unknown_field():
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.preset("gpt5")
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({**tiny().to_dict(), "n_heads": 4})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json("{not json")


def test_config_json_round_trip():
    cfg = tiny("llama", n_kv_head=2, dropout=0.1, rope_theta=500.0)
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.kv_heads == 2 and again.head_dim == 8
    assert build_model(again).num_params() == build_model(cfg).num_params()


# ---------------------------------------------------------------- bigram and training


def test_bigram_forward_and_step():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("bigram", vocab_size=V)).eval()
    idx = tokens(2, 9)
    logits = model(idx)
    assert logits.shape == (2, 9, V)
    torch.testing.assert_close(logits[0, 3], model.table.weight[idx[0, 3]])  # depends on the current token only
    cache = model.init_cache(batch_size=2)
    steps = []
    for t in range(9):
        out, cache = model.step(idx[:, t : t + 1], cache)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), logits)
    assert model.num_params() == V * V
    assert not model.has_attention
    with pytest.raises(ConfigError, match="no attention maps"):
        model.attention_maps(idx[:1])


@pytest.mark.parametrize("preset", ["gpt2", "llama", "bigram"])
def test_tiny_model_overfits_one_batch(preset):
    torch.manual_seed(0)
    model = build_model(tiny(preset)).train()
    x = tokens(4, BLOCK, seed=3)
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if preset != "bigram" else 0.3)
    first = lm_loss(model(x), y).item()
    for _ in range(100):
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = lm_loss(model(x), y).item()
    assert first > 0.9 * math.log(V)  # starts near uniform
    if preset == "bigram":
        # A bigram can only learn the next-token table: it must reach that table's entropy.
        pairs = torch.stack([x.flatten(), y.flatten()], 1)
        counts = torch.zeros(V, V).index_put_((pairs[:, 0], pairs[:, 1]), torch.ones(len(pairs)), accumulate=True)
        best = -(counts * (counts / counts.sum(1, keepdim=True).clamp(min=1)).clamp(min=1e-9).log()).sum() / len(pairs)
        assert final < best.item() + 0.05
    else:
        assert final < 0.1  # memorised


def test_lm_loss_is_mean_cross_entropy():
    logits = torch.randn(2, 3, V)
    targets = torch.randint(0, V, (2, 3))
    expected = -F.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(lm_loss(logits, targets), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_family_declares_valid_configs_fields_and_a_diagram(arch):
    family = family_of(arch)
    assert set(family.sizes) == set(SIZES)
    config_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert {f.name for f in family.fields} <= config_fields
    for f in family.fields:
        assert f.kind in ("int", "float", "fraction", "choice", "bool") and f.label and f.help
        assert f.kind != "choice" or f.choices
    for preset in family.presets:
        for size in SIZES:
            cfg = preset_config(preset, size, 65).validate()
            assert cfg.arch == arch and cfg.preset == preset
            assert family.diagram(cfg).embed[1]
            assert family.run_shape(cfg)
