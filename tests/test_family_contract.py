"""The contract every registered model family keeps, one suite over every preset.

A new family joins by adding its tiny shape to ``TINY`` (a test fails until it
does); what is particular to a family (the scans, the KV cache's bounds, the
attention maps) stays in its own test module. The hook points of every family
are checked in ``test_hooks.py``, over the same presets.
"""

from __future__ import annotations

import pytest
import torch

from lmcore import cli
from lmcore.models import PRESETS, ModelConfig, build_model, model_class
from lmcore.tokenizers import CharTokenizer

from helpers import assert_checkpoint_round_trip, assert_seeded_sampling_past_block_size

pytestmark = pytest.mark.usefixtures("one_thread")

V, BLOCK = 23, 16
# Each preset's smallest shape that still has every part (two layers where there are layers,
# more than one head or group where there are heads or groups, chunks that do not divide BLOCK).
TINY: dict[str, dict] = {
    "gpt2": dict(n_layer=2, n_head=2, n_embd=16),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=16),
    "mamba": dict(n_layer=2, n_embd=16, d_state=4, d_conv=3),
    "mamba2": dict(n_layer=2, n_embd=16, d_state=4, d_conv=3, ssm_head_dim=8, n_groups=2, chunk_size=5),
    "lstm": dict(n_layer=2, n_embd=16),
    "bigram": {},
    "ngram": dict(ngram_n=3),
}
# The transformer's cache holds block_size positions; the others carry a state of fixed size.
LIMITED_CONTEXT = {"transformer"}


def tiny_config(preset: str, **overrides) -> ModelConfig:
    return ModelConfig.preset(preset, **{"vocab_size": V, "block_size": BLOCK, **TINY[preset], **overrides})


def tiny_model(preset: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model whose outputs depend on every part: biases and norm scales moved off their
    starting values, and an n-gram's counts taken from random text."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(preset, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    if hasattr(model, "fit_counts"):
        model.fit_counts(torch.randint(0, model.config.vocab_size, (2000,), generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def tokens(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_every_registered_preset_is_in_the_contract() -> None:
    assert set(TINY) == set(PRESETS)


@pytest.mark.parametrize("preset", list(TINY))
def test_the_whole_model_is_causal(preset: str) -> None:
    model = tiny_model(preset)
    idx = tokens(2, 14, seed=4)
    for t in (0, 6, 12):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % V
        with torch.no_grad():
            a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("preset", list(TINY))
def test_stepping_token_by_token_equals_the_forward_pass(preset: str) -> None:
    model = tiny_model(preset)
    # As long as the cache allows: a state of fixed size goes on past block_size.
    T = BLOCK if model.config.arch in LIMITED_CONTEXT else 2 * BLOCK + 5
    idx = tokens(2, T, seed=5)
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache(batch_size=2)
        steps = []
        for t in range(T):
            logits, cache = model.step(idx[:, t : t + 1], cache)
            assert logits.shape == (2, 1, V)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", list(TINY))
def test_a_prompt_in_one_step_then_single_tokens_equals_the_forward_pass(preset: str) -> None:
    model = tiny_model(preset)
    idx = tokens(1, BLOCK, seed=6)
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache(batch_size=1)
        first, cache = model.step(idx[:, :11], cache)  # a prompt in one call
        pieces = [first]
        for t in range(11, BLOCK):
            logits, cache = model.step(idx[:, t : t + 1], cache)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", list(TINY))
def test_a_checkpoint_loads_back_exactly(preset: str, tmp_path, small_text: str) -> None:
    tok = CharTokenizer.train(small_text)
    model = tiny_model(preset, vocab_size=tok.vocab_size)
    cls = model_class(model.config.arch)
    assert_checkpoint_round_trip(tmp_path / "m.safetensors", model, tok, cls, "def main():")


@pytest.mark.parametrize("preset", list(TINY))
def test_seeded_sampling_runs_past_the_block_size(preset: str) -> None:
    assert_seeded_sampling_past_block_size(tiny_model(preset, block_size=8), new_tokens=25, seed=3)


@pytest.mark.parametrize("preset", list(TINY))
def test_the_command_line_trains_saves_and_generates(preset: str, tmp_path, small_text: str, capsys) -> None:
    """``lmcore train`` then ``lmcore generate`` (in this process; test_cli.py runs real processes)."""
    data = tmp_path / "corpus.txt"
    data.write_text(small_text[:6000], encoding="utf-8")
    out = tmp_path / f"{preset}.safetensors"
    shape = [f"--{k.replace('_', '-')}={v}" for k, v in TINY[preset].items()]
    assert cli.main(["train", "--data", str(data), "--preset", preset, *shape, "--block-size", "16", "--batch-size", "4",
                     "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "1", "--device", "cpu",
                     "--out", str(out)]) == 0  # fmt: skip
    assert out.exists()
    capsys.readouterr()
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "The ", "--max-new-tokens", "40",
                     "--device", "cpu", "--seed", "1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("The ") and len(printed) > len("The ")
