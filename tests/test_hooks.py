"""Named hook points: run_with_cache and run_with_hooks on every family, on real tiny models."""

from __future__ import annotations

import threading

import pytest
import torch

from lmcore import hooks
from lmcore.errors import ConfigError
from lmcore.hooks import hook_names, hooked, run_with_cache, run_with_hooks
from lmcore.models import ARCHITECTURES, PRESETS, ModelConfig, build_model
from lmcore.sample import SamplingConfig, generate

V = 20
# One preset per registered family, plus the llama mix of the transformer (RoPE, grouped-query).
FAMILY_PRESETS = sorted({next(p for p, v in PRESETS.items() if v["arch"] == arch) for arch in ARCHITECTURES})


def tiny(preset: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    values = dict(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=16)
    values.update(kw)
    model = build_model(ModelConfig.preset(preset, **values))
    if hasattr(model, "fit_counts"):
        model.fit_counts(torch.randint(V, (200,), generator=torch.Generator().manual_seed(3)))
    return model.eval()


def ids(B: int = 2, T: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", [*FAMILY_PRESETS, "llama"])
def test_run_with_cache_logits_equal_forward_for_every_family(preset: str) -> None:
    kw = dict(n_kv_head=2) if preset == "llama" else {}
    model = tiny(preset, **kw)
    x = ids()
    with torch.no_grad():
        expected = model(x)
        logits, cache = run_with_cache(model, x)
    assert torch.equal(logits, expected)
    assert set(cache) == set(hook_names(model))
    assert not hooks._active and not hooks._attached()  # nothing left attached


def test_hook_names_and_shapes_of_the_transformer_mamba_and_lstm() -> None:
    model = tiny("gpt2")
    _, cache = run_with_cache(model, ids())
    B, T, D, H = 2, 11, 16, 4
    assert cache["embed"].shape == (B, T, D)
    for i in range(2):
        for name in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            assert cache[f"blocks.{i}.{name}"].shape == (B, T, D)
        assert cache[f"blocks.{i}.attn.hook_pattern"].shape == (B, H, T, T)
        assert cache[f"blocks.{i}.attn.hook_z"].shape == (B, T, H, D // H)
    assert cache["final.hook_normalized"].shape == (B, T, D)
    # the residual stream adds up: pre + attention + MLP = post, and post feeds the next block
    c = cache
    torch.testing.assert_close(
        c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"] + c["blocks.0.hook_mlp_out"],
        c["blocks.0.hook_resid_post"],
    )
    assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.1.hook_resid_pre"])

    mamba = tiny("mamba", d_state=4)
    _, cache = run_with_cache(mamba, ids())
    E = mamba.config.d_inner
    assert cache["blocks.1.mixer.hook_delta"].shape == (B, T, E)
    assert cache["blocks.1.mixer.hook_B"].shape == cache["blocks.1.mixer.hook_C"].shape == (B, T, 4)
    assert cache["blocks.1.mixer.hook_y"].shape == (B, T, E)
    assert cache["blocks.1.hook_mixer_out"].shape == (B, T, D)
    assert (cache["blocks.0.mixer.hook_delta"] > 0).all()  # softplus

    lstm = tiny("lstm")
    _, cache = run_with_cache(lstm, ids())
    assert sorted(cache) == ["blocks.0.hook_hidden", "blocks.1.hook_hidden", "embed"]
    assert cache["blocks.1.hook_hidden"].abs().max() < 1  # h = o tanh(c)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_hook_pattern_equals_what_the_attention_view_shows(preset: str) -> None:
    model = tiny(preset, n_kv_head=2) if preset == "llama" else tiny(preset)
    x = ids(1, 9)
    _, cache = run_with_cache(model, x, lambda n: n.endswith("hook_pattern"))
    shown = model.attention_maps_for(x[0].tolist())  # what views/attention.py draws
    _, reference = model.reference_forward(x)  # (L, 1, H, T, T), the written-out attention
    for i in range(2):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"][0]
        assert torch.equal(pattern, torch.from_numpy(shown[i]))
        torch.testing.assert_close(pattern, reference[i, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(4, 9))


def test_mamba_hidden_attention_reads_the_hook_points() -> None:
    model = tiny("mamba", d_state=4)
    x = ids(1, 7)
    maps = model.attention_maps(x)
    # Make Δ twice as large through its hook: the hidden attention must change with it.
    with hooked(model, [("blocks.0.mixer.hook_delta", lambda t, n: 2 * t)]):
        doubled = model.attention_maps(x)
    assert maps.shape == (2, 4, 7, 7)
    assert not torch.allclose(maps[0], doubled[0])


def test_mamba2_points_hold_per_head_delta_grouped_b_and_c_and_the_stream_adds_up() -> None:
    model = tiny("mamba2", d_state=4, n_groups=2, ssm_head_dim=8)  # E = 32: 4 heads in 2 groups
    _, cache = run_with_cache(model, ids())
    B, T, D, E = 2, 11, 16, 32
    assert cache["embed"].shape == cache["final.hook_normalized"].shape == (B, T, D)
    for i in range(2):
        for name in ("hook_resid_pre", "hook_mixer_out", "hook_resid_post"):
            assert cache[f"blocks.{i}.{name}"].shape == (B, T, D)
        assert cache[f"blocks.{i}.mixer.hook_delta"].shape == (B, T, 4)  # one Δ per head
        assert cache[f"blocks.{i}.mixer.hook_B"].shape == cache[f"blocks.{i}.mixer.hook_C"].shape == (B, T, 2, 4)
        assert cache[f"blocks.{i}.mixer.hook_y"].shape == (B, T, E)
    assert (cache["blocks.0.mixer.hook_delta"] > 0).all()  # softplus
    c = cache
    assert torch.equal(c["embed"], c["blocks.0.hook_resid_pre"])
    assert torch.equal(c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_mixer_out"], c["blocks.0.hook_resid_post"])
    assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.1.hook_resid_pre"])
    # y is what out_proj reads
    mixer = model.layers[1].mixer
    torch.testing.assert_close(mixer.out_proj(c["blocks.1.mixer.hook_y"]), c["blocks.1.hook_mixer_out"])


def test_mamba2_attention_maps_read_the_hook_points() -> None:
    model = tiny("mamba2", d_state=4)
    x = ids(1, 7)
    maps = model.attention_maps(x)
    # Δ twice as large through its hook: the SSD matrices change with it, in that layer and the next
    with hooked(model, [("blocks.0.mixer.hook_delta", lambda t, n: 2 * t)]):
        doubled = model.attention_maps(x)
    assert maps.shape == (2, 2, 7, 7)
    assert not torch.allclose(maps[0], doubled[0]) and not torch.allclose(maps[1], doubled[1])


def test_a_returned_tensor_replaces_the_activation_and_none_keeps_it() -> None:
    model = tiny("gpt2")
    x = ids()
    with torch.no_grad():
        clean = model(x)
        same = run_with_hooks(model, x, [("blocks.0.hook_mlp_out", lambda t, n: None)])
        changed = run_with_hooks(model, x, [("blocks.1.hook_resid_post", lambda t, n: torch.zeros_like(t))])
    assert torch.equal(same, clean)
    # a zero stream reads out as the final norm's bias alone: the same logits at every position
    torch.testing.assert_close(changed[0, 0], changed[1, 5])
    # a replaced pattern drives the output: uniform attention changes the logits
    def uniform_attention(t, n):
        causal = torch.ones_like(t).tril()
        return causal / causal.sum(-1, keepdim=True)

    uniform = run_with_hooks(model, x, [("blocks.0.attn.hook_pattern", uniform_attention)])
    assert not torch.allclose(uniform, clean)
    with pytest.raises(ConfigError, match="no hook point"):
        run_with_hooks(model, x, [("blocks.9.hook_resid_pre", lambda t, n: None)])


def test_replacing_the_pattern_with_itself_gives_the_fused_output() -> None:
    model = tiny("llama", n_kv_head=2)
    x = ids()
    with torch.no_grad():
        clean = model(x)
        again = run_with_hooks(model, x, [("blocks.0.attn.hook_pattern", lambda t, n: t.clone())])
    torch.testing.assert_close(again, clean, rtol=0, atol=1e-5)


def test_hooks_fire_while_generating() -> None:
    for preset in ("gpt2", "mamba", "mamba2", "lstm"):
        model = tiny(preset, d_state=4) if preset in ("mamba", "mamba2") else tiny(preset)
        prompt = ids(1, 5)[0].tolist()
        cfg = SamplingConfig(temperature=0, seed=0)
        seen = []
        name = "blocks.1.hook_hidden" if preset == "lstm" else "blocks.1.hook_resid_post"
        with hooked(model, [(name, lambda t, n: seen.append(t.shape[1]))]):
            out = [e.token_id for e in generate(model, prompt, max_new_tokens=4, sampling=cfg)]
        assert len(out) == 4 and len(seen) >= 4, preset


def test_hooks_attached_in_one_thread_leave_another_threads_forward_alone() -> None:
    model = tiny("gpt2")
    x = ids()
    with torch.no_grad():
        clean = model(x)
    ready, done, result = threading.Event(), threading.Event(), {}

    def hooked_run():
        with hooked(model, [("blocks.0.hook_resid_post", lambda t, n: torch.zeros_like(t))]):
            with torch.no_grad():
                result["in_thread"] = model(x)
            ready.set()
            done.wait(30)  # hooks stay attached while the main thread runs

    thread = threading.Thread(target=hooked_run)
    thread.start()
    try:
        assert ready.wait(30)
        with torch.no_grad():
            assert torch.equal(model(x), clean)
    finally:
        done.set()
        thread.join()
    assert not torch.allclose(result["in_thread"], clean)


def test_an_imported_hugging_face_gpt2_has_the_same_points_and_its_patterns_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from lmcore.hf import config_from_hf, state_from_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=4)
    theirs = transformers.GPT2LMHeadModel(cfg).eval()
    theirs.config._attn_implementation = "eager"  # attention weights written out, as ours on the pattern point
    config, _ = config_from_hf(theirs.config)
    ours = build_model(config)
    weights = {k: v for k, v in theirs.state_dict().items() if k != "lm_head.weight"}  # tied: saved once
    ours.load_state_dict(state_from_hf("gpt2", config, weights))
    ours.eval()
    assert hook_names(ours) == hook_names(tiny("gpt2"))
    x = ids(1, 9)
    logits, cache = run_with_cache(ours, x)
    with torch.no_grad():
        out = theirs(x, output_attentions=True)
    torch.testing.assert_close(logits, out.logits, rtol=1e-4, atol=1e-4)
    for i, att in enumerate(out.attentions):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], att, rtol=1e-4, atol=1e-5)
