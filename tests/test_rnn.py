"""LSTM: step equals forward, causality, no attention maps, tying, training, I/O."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.models.rnn import LSTM
from lmcore.tokenizers import CharTokenizer

from helpers import (
    assert_checkpoint_round_trip,
    assert_seeded_sampling_past_block_size,
    cli_train_and_generate,
    short_training_run,
    unigram_entropy,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> LSTM:
    values = dict(vocab_size=19, block_size=8, n_layer=2, n_embd=24)
    values.update(overrides)
    torch.manual_seed(seed)
    model = build_model(ModelConfig.preset("lstm", **values))
    assert isinstance(model, LSTM)
    return model.eval()


def test_shapes_and_parameter_names():
    model = tiny_model()
    assert model(torch.randint(0, 19, (3, 5))).shape == (3, 5, 19)
    names = set(dict(model.named_parameters()))
    assert {"embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l1", "head.weight", "head.bias"} <= names
    # the forget gate starts open: bias 1 on its slice of the input bias
    D = 24
    assert torch.equal(model.lstm.bias_ih_l0[D : 2 * D], torch.ones(D))
    assert model.num_params(non_embedding=True) == model.num_params() - 19 * 24


def test_tied_head_is_the_embedding():
    model = tiny_model(tie_weights=True)
    assert "head.weight" not in dict(model.named_parameters())
    idx = torch.randint(0, 19, (2, 6))
    with torch.no_grad():
        hidden, _ = model.lstm(model.embedding(idx))
        torch.testing.assert_close(model(idx), hidden @ model.embedding.weight.t())


def test_step_token_by_token_equals_forward_beyond_block_size():
    model = tiny_model()
    idx = torch.randint(0, 19, (2, 20), generator=torch.Generator().manual_seed(1))  # block_size is 8
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache(batch_size=2)
        steps = []
        for t in range(idx.shape[1]):
            logits, cache = model.step(idx[:, t : t + 1], cache)
            assert logits.shape == (2, 1, 19)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    assert cache[0].shape == cache[1].shape == (2, 2, 24)  # (layers, batch, width), whatever the position


def test_step_with_a_whole_prompt_then_single_tokens_equals_forward():
    model = tiny_model()
    idx = torch.randint(0, 19, (1, 15), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)
        logits, cache = model.step(idx[:, :9], model.init_cache())
        pieces = [logits]
        for t in range(9, 15):
            logits, cache = model.step(idx[:, t : t + 1], cache)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)


def test_whole_model_is_causal():
    model = tiny_model()
    idx = torch.randint(0, 19, (2, 12), generator=torch.Generator().manual_seed(3))
    for t in (0, 5, 10):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 19
        with torch.no_grad():
            a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_no_attention_maps():
    model = tiny_model()
    assert model.has_attention is False
    with pytest.raises(ConfigError, match="has no attention maps"):
        model.attention_maps(torch.zeros(1, 4, dtype=torch.long))


def test_dropout_acts_in_training_only_and_one_layer_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nn.LSTM warns about dropout with a single layer
        model = tiny_model(n_layer=1, dropout=0.3)
    idx = torch.randint(0, 19, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model(idx))  # eval: deterministic
        model.train()
        assert not torch.allclose(model(idx), model(idx))


@pytest.mark.parametrize("field,value,message", [("n_layer", 0, "n_layer must be at least 1"), ("dropout", 1.0, "dropout")])
def test_validate_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.preset("lstm", **{field: value}).validate()


def test_short_training_run_beats_the_unigram_loss(small_text):
    text = small_text[:12000]
    tok = CharTokenizer.train(text)
    ids = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("lstm", vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_embd=64))
    val_loss = short_training_run(model, ids, steps=150, lr=1e-2, batch=8)
    unigram = unigram_entropy(ids[: int(len(ids) * 0.9)])
    assert math.isfinite(val_loss)
    assert val_loss < unigram - 0.1, (val_loss, unigram)


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_round_trip(tmp_path, small_text, tie):
    tok = CharTokenizer.train(small_text)
    model = tiny_model(vocab_size=tok.vocab_size, tie_weights=tie)
    assert_checkpoint_round_trip(tmp_path / "lstm.safetensors", model, tok, LSTM, "class A:")


def test_sampler_generates_past_block_size():
    assert_seeded_sampling_past_block_size(tiny_model(block_size=8), new_tokens=25, seed=3)


@pytest.mark.slow
def test_cli_trains_and_generates_with_the_lstm_preset(tmp_path, small_text):
    cli_train_and_generate(tmp_path, small_text[:6000], "lstm")