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


def test_a_tied_head_round_trips(tmp_path, small_text):
    # The untied LSTM's round trip is in test_family_contract.py.
    tok = CharTokenizer.train(small_text)
    model = tiny_model(vocab_size=tok.vocab_size, tie_weights=True)
    assert_checkpoint_round_trip(tmp_path / "lstm.safetensors", model, tok, LSTM, "class A:")


