"""Memorised or new: the n-gram index and the novelty marking of generated text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcore.errors import ConfigError
from lmcore.interpret import ngram_index, novelty
from lmcore.models import ModelConfig, build_model
from lmcore.sample import SamplingConfig, generate


def test_known_answers() -> None:
    index = ngram_index(list(range(50)), 4)
    marks = novelty([99, 5, 6, 7, 8, 9, 98, 1, 2, 3], index, 4)
    assert marks.copied.tolist() == [False, True, True, True, True, True, False, False, False, False]
    assert marks.spans == [(1, 6)] and marks.span.tolist() == [0, 5, 5, 5, 5, 5, 0, 0, 0, 0]
    assert marks.novel_share == pytest.approx(0.5)
    assert novelty([1, 2, 3], index, 4).novel_share == 1.0  # shorter than a window: nothing to match
    assert novelty([], index, 4).novel_share == 1.0
    two = novelty([10, 11, 12, 13, 0, 20, 21, 22, 23], index, 4)
    assert two.spans == [(0, 4), (5, 9)]
    assert novelty([3, 2, 1, 0], index, 4).novel_share == 1.0  # the same tokens, another order
    with pytest.raises(ConfigError):
        ngram_index([1, 2], 0)


def test_a_run_of_filler_tokens_alone_is_not_a_copy() -> None:
    corpus = [7, 0, 0, 0, 0, 0, 0, 8, 1, 2, 3, 0, 0]  # 0 stands for a space
    index = ngram_index(corpus, 4)
    assert novelty([0, 0, 0, 0, 0], index, 4).copied.all()  # without the rule: spaces count as recited
    assert novelty([0, 0, 0, 0, 0], index, 4, filler_ids=[0]).novel_share == 1.0
    marks = novelty([8, 1, 2, 3, 0, 0], index, 4, filler_ids=[0])  # a real copy ending in spaces stays one
    assert marks.spans == [(0, 6)]


def test_greedy_output_of_a_memorising_model_is_copied_and_random_text_is_new() -> None:
    gen = torch.Generator().manual_seed(0)
    corpus = torch.randint(0, 40, (600,), generator=gen)  # random tokens: each 4-token context is unique
    table = build_model(ModelConfig.preset("ngram", vocab_size=40, ngram_n=5, add_k=0.01))
    table.fit_counts(corpus)
    index = ngram_index(corpus.tolist(), 8)
    prompt = corpus[100:104].tolist()
    out = [e.token_id for e in generate(table, prompt, 60, SamplingConfig(temperature=0.0))]
    recited = novelty(prompt + out, index, 8)
    assert recited.novel_share == 0.0 and recited.spans == [(0, 64)]
    noise = torch.randint(0, 40, (64,), generator=gen).tolist()
    assert novelty(noise, index, 8).novel_share == 1.0


def test_the_index_is_built_once_and_fast_on_a_large_corpus() -> None:
    ids = np.random.default_rng(0).integers(0, 5000, 1_000_000)
    index = ngram_index(ids, 8)
    assert novelty(ids[5000:5300], index, 8).novel_share == 0.0
