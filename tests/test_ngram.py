"""The n-gram counting baseline: known counts, the model contract, training by counting, checkpoints, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.cli import main
from lmcore.data import split_ids
from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, build_model
from lmcore.sample import SamplingConfig, generate
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig, Trainer, evaluate_ids


def ngram(n: int, vocab: int = 3, k: float = 1.0) -> torch.nn.Module:
    return build_model(ModelConfig.preset("ngram", vocab_size=vocab, ngram_n=n, add_k=k))


IDS = torch.tensor([0, 1, 2, 0, 1, 1, 0, 1, 2])


def test_counts_give_the_known_add_k_probabilities() -> None:
    uni, bi, tri = ngram(1), ngram(2), ngram(3)
    for m in (uni, bi, tri):
        m.fit_counts(IDS)
    # unigram counts 3, 4, 2 of 9; add-1: (c + 1) / (9 + 3)
    assert torch.allclose(uni(IDS[None])[0, 5].exp(), torch.tensor([4, 5, 3]) / 12)
    # after 0 came 1 three times: (0 + 1, 3 + 1, 0 + 1) / (3 + 3)
    assert torch.allclose(bi(torch.tensor([[2, 0]]))[0, 1].exp(), torch.tensor([1, 4, 1]) / 6)
    # after (0, 1) came 2 twice and 1 once: (1, 2, 3) / 6; an unseen context is uniform
    assert torch.allclose(tri(torch.tensor([[0, 1]]))[0, 1].exp(), torch.tensor([1, 2, 3]) / 6)
    assert torch.allclose(tri(torch.tensor([[2, 2]]))[0, 1].exp(), torch.full((3,), 1 / 3))
    # the first position has one token of context: the bigram counts answer
    assert torch.allclose(tri(torch.tensor([[0]]))[0, 0].exp(), torch.tensor([1, 4, 1]) / 6)
    assert [m.num_params() for m in (uni, bi, tri)] == [3, 3 + 5, 3 + 5 + 6]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_step_gives_the_same_log_probabilities_as_forward(n: int) -> None:
    model = ngram(n, vocab=5, k=0.1)
    ids = torch.randint(5, (2, 30), generator=torch.Generator().manual_seed(n))
    model.fit_counts(ids[0])
    full = model(ids)
    assert torch.allclose(full.exp().sum(-1), torch.ones(2, 30))
    cache = model.init_cache(batch_size=2)
    first, cache = model.step(ids[:, :7], cache)  # a prefill, then one token at a time
    rest = []
    for t in range(7, 30):
        logits, cache = model.step(ids[:, t : t + 1], cache)
        rest.append(logits)
    assert torch.allclose(torch.cat([first, *rest], dim=1), full)


def test_bad_orders_and_smoothing_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="between 1 and 5"):
        ModelConfig.preset("ngram", ngram_n=6).validate()
    with pytest.raises(ConfigError, match="add_k"):
        ModelConfig.preset("ngram", add_k=0.0).validate()
    with pytest.raises(ConfigError, match="too many possible keys"):
        ModelConfig.preset("ngram", vocab_size=50_000, ngram_n=5).validate()
    with pytest.raises(ConfigError, match="no attention maps"):
        ngram(2).attention_maps(torch.tensor([[0, 1]]))


def test_trainer_fits_by_counting_and_beats_uniform(small_text: str, tmp_path) -> None:
    tok = CharTokenizer.train(small_text)
    ids = torch.tensor(tok.encode(small_text), dtype=torch.long)
    train_ids, val_ids = split_ids(ids, 0.1)
    model = build_model(ModelConfig.preset("ngram", vocab_size=tok.vocab_size, ngram_n=3, block_size=32))
    events = []

    class Record:
        def on_eval(self, e) -> None:
            events.append(e)

    cfg = TrainConfig(max_iters=50, warmup_iters=0, eval_iters=2, device="cpu")
    result = Trainer(model, train_ids, val_ids, cfg, callbacks=[Record()]).fit()
    assert result["step"] == 50 and len(events) == 1
    assert int(model.counts_0.sum()) == len(train_ids)  # every training token counted once
    assert result["val_loss"] < math.log(tok.vocab_size) - 1.0
    val = evaluate_ids(model, val_ids)["loss"]
    assert val < evaluate_ids(build_and_fit(tok.vocab_size, 1, train_ids), val_ids)["loss"]  # 3-gram beats 1-gram

    path = save_checkpoint(tmp_path / "tri.safetensors", model, tok)
    loaded = load_checkpoint(path)
    assert loaded.model.num_params() == model.num_params()
    assert evaluate_ids(loaded.model, val_ids)["loss"] == pytest.approx(val, rel=1e-6)
    text = [e.token_id for e in generate(loaded.model, tok.encode("The "), 20, SamplingConfig(temperature=0))]
    assert len(text) == 20


def build_and_fit(vocab: int, n: int, ids: torch.Tensor) -> torch.nn.Module:
    model = ngram(n, vocab=vocab, k=0.1)
    model.fit_counts(ids)
    return model


def test_cli_trains_and_evaluates_an_ngram(tmp_path, small_text: str, capsys) -> None:
    data = tmp_path / "text.txt"
    data.write_text(small_text, encoding="utf-8")
    out = tmp_path / "four.safetensors"
    code = main(["train", "--data", str(data), "--preset", "ngram", "--ngram-n", "4", "--add-k", "0.05",
                 "--max-iters", "10", "--eval-iters", "2", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] < 2.0
