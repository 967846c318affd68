"""What a notebook does through ``import lmcore``: train with a progress bar, save, and let
a loaded checkpoint continue a text in one call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import lmcore
from lmcore.errors import ConfigError, TokenizerError

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 20


def tiny_run(text: str, documents: bool = False, steps: int = STEPS, lr: float = 1e-3, **trainer_kwargs) -> tuple:
    corpus = lmcore.corpus_from_text(text, documents=documents)
    tok = lmcore.build_tokenizer("char", corpus.text)
    train_ids, val_ids = lmcore.split_ids(lmcore.encode_corpus(tok, corpus), 0.1)
    torch.manual_seed(0)
    model = lmcore.build_model(
        lmcore.ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    )
    config = lmcore.TrainConfig(batch_size=8, max_iters=steps, lr=lr, eval_interval=10, eval_iters=2, warmup_iters=2)
    trainer = lmcore.Trainer(model, train_ids, val_ids, config, **trainer_kwargs)
    return trainer, tok


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, small_text: str) -> Path:
    trainer, tok = tiny_run(small_text)
    trainer.fit()
    return lmcore.save_checkpoint(tmp_path_factory.mktemp("front") / "tiny.safetensors", trainer.model, tok)


# ------------------------------------------------------------------ the progress bar


def test_training_prints_nothing_without_a_progress_bar(small_text: str, capfd: pytest.CaptureFixture) -> None:
    trainer, _ = tiny_run(small_text)
    trainer.fit()
    assert capfd.readouterr() == ("", "")


def test_a_disabled_progress_bar_prints_nothing(small_text: str, capfd: pytest.CaptureFixture) -> None:
    trainer, _ = tiny_run(small_text, callbacks=[lmcore.ProgressBar(disable=True)])
    trainer.fit()
    assert capfd.readouterr() == ("", "")


def test_progress_true_draws_a_bar_to_the_end_with_the_evaluations_on_stderr(
    small_text: str, capfd: pytest.CaptureFixture
) -> None:
    trainer, _ = tiny_run(small_text, progress=True)
    result = trainer.fit()
    out, err = capfd.readouterr()
    assert out == ""  # stdout stays the caller's
    assert f"{STEPS}/{STEPS} [" in err and "tok/s" in err and f"loss {result['train_loss']:.4f}"[:9] in err
    evals = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", err)
    assert [int(s) for s, _ in evals] == [10, 20] and float(evals[-1][1]) == pytest.approx(result["val_loss"], abs=1e-4)


def test_a_progress_bar_follows_a_resumed_run_from_where_it_stands(small_text: str, tmp_path: Path) -> None:
    trainer, _ = tiny_run(small_text)
    trainer.fit()
    with (tmp_path / "bar.txt").open("w") as f:
        again, _ = tiny_run(small_text, callbacks=[lmcore.ProgressBar(file=f)])
        again.load_state_dict(trainer.state_dict())
        again.config.max_iters = STEPS + 10
        again.fit()
    text = (tmp_path / "bar.txt").read_text()
    assert f"{STEPS}/{STEPS + 10} [" in text and f"{STEPS + 10}/{STEPS + 10} [" in text


# ------------------------------------------------------------------ complete


def test_a_loaded_checkpoint_continues_a_text_in_one_call(saved: Path) -> None:
    ckpt = lmcore.load_checkpoint(saved)
    text = ckpt.complete("The ", max_new_tokens=40)
    assert isinstance(text, str) and len(text) == 40  # one character a token, the prompt not repeated
    assert ckpt.complete("The ", max_new_tokens=40) == text  # the same seed, the same text
    assert ckpt.complete("The ", max_new_tokens=40, seed=1) != text
    # Greedy equals the sampler's greedy choice, token by token.
    ids = ckpt.tokenizer.encode("The ")
    greedy = lmcore.generate(ckpt.model, ids, 15, lmcore.SamplingConfig(temperature=0))
    assert ckpt.complete("The ", 15, temperature=0) == ckpt.tokenizer.decode([e.token_id for e in greedy])
    assert ckpt.complete("", max_new_tokens=5)  # from nothing: starts at BOS


def test_complete_refuses_what_the_model_cannot_read_with_a_message(saved: Path) -> None:
    ckpt = lmcore.load_checkpoint(saved)
    with pytest.raises(TokenizerError):
        ckpt.complete("ROMEO: \u2603", max_new_tokens=5)  # a snowman: not in the vocabulary
    with pytest.raises(ConfigError, match="temperature"):
        ckpt.complete("The ", temperature=-1)


def test_a_documents_model_completes_one_document(tmp_path: Path) -> None:
    names = "\n".join(f"ab{'c' * (i % 3)}" for i in range(600))  # short documents: ab, abc, abcc
    trainer, tok = tiny_run(names, documents=True, steps=60, lr=1e-2)
    trainer.fit()
    path = lmcore.save_checkpoint(tmp_path / "names.safetensors", trainer.model, tok, data_info={"documents": True})
    ckpt = lmcore.load_checkpoint(path)
    assert ckpt.documents
    # It starts a new document (at BOS) and stops at the next BOS: one short name, no separator.
    done = [ckpt.complete("a", max_new_tokens=50, seed=seed) for seed in range(5)]
    assert all(len(text) < 10 and set(text) <= set("bc") for text in done), done
