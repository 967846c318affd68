"""The Surprise page and the attention page's head-score chart, driven through app.py with AppTest on real tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lmcore.checkpoint import save_checkpoint
from lmcore.data import build_tokenizer, corpus_from_text, encode_corpus, split_ids
from lmcore.models import ModelConfig, build_model
from lmcore.train import HeadScoresCallback, TrainConfig, Trainer
from tests.test_app_views import charts, open_page, texts

SURPRISE, ATTENTION = "views/surprise.py", "views/attention.py"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny (gpt2, trained with head scores at each eval) and table (a 3-gram)."""
    import pydoc_data.topics

    folder = tmp_path_factory.mktemp("inside")
    topics = pydoc_data.topics.topics
    text = "\n".join(topics[k] for k in sorted(topics)[:12])
    corpus = corpus_from_text(text, name="table")
    tok = build_tokenizer("char", corpus.text)
    train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
    table = build_model(ModelConfig.preset("ngram", vocab_size=tok.vocab_size, ngram_n=3))
    table.fit_counts(train_ids)
    save_checkpoint(folder / "table", table, tok)
    torch.manual_seed(0)
    tiny = build_model(
        ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    )
    cfg = TrainConfig(batch_size=8, max_iters=20, warmup_iters=2, eval_interval=10, eval_iters=2, device="cpu")
    trainer = Trainer(tiny, train_ids, val_ids, cfg, callbacks=[HeadScoresCallback()])
    trainer.fit()
    save_checkpoint(folder / "tiny", tiny, tok, train_state=trainer.train_state())
    return folder


@pytest.fixture
def ckpt_dir(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    return folder


def test_surprise_colours_each_token_and_shows_the_lens_and_embeddings(ckpt_dir: Path) -> None:
    at = open_page(SURPRISE)
    assert at.selectbox(key="keep.surprise.model_a").value.endswith("tiny.safetensors")
    html = " ".join(m.value for m in at.markdown if "<span" in m.value)
    text = at.text_area(key="keep.surprise.text").value
    assert html.count("<span") == len(text)  # a char model: one span per character
    assert "bits (p = " in html and "the model expected" in html
    assert "bits per token" in texts(at.caption)
    lens, emb = charts(at)
    assert len(lens["data"][0]["y"]) == 3  # the embedding and two blocks
    assert {t["name"] for t in emb["data"]} >= {"letter", "space"}


def test_surprise_compares_two_models_and_explains_what_a_table_cannot_show(ckpt_dir: Path) -> None:
    at = open_page(SURPRISE)
    at.checkbox(key="keep.surprise.compare").check().run()
    assert not at.exception
    assert at.selectbox(key="keep.surprise.model_b").value.endswith("table.safetensors")
    assert texts(at.caption).count("bits per token") == 2
    at.selectbox(key="keep.surprise.model_a").select("ckpt:" + str(ckpt_dir / "table.safetensors")).run()
    assert not at.exception
    errors = texts(at.error)
    assert "no residual stream" in errors and "no token embeddings" in errors
    assert not charts(at)


def test_attention_page_charts_head_scores_over_training(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    figure = next(c for c in charts(at) if c["layout"].get("yaxis", {}).get("title", {}).get("text", "").endswith("score"))
    assert len(figure["data"]) == 2 * 2  # a line per layer and head
    assert figure["data"][0]["x"] == [10, 20]
    assert all(0 <= y <= 1 and not math.isnan(y) for t in figure["data"] for y in t["y"])
