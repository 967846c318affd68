"""Tokenizers: exact round trips, BPE known answers and a slow reference, the JSON form, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcore.errors import TokenizerError
from lmcore.tokenizers import (
    BOS_TOKEN,
    TOKENIZERS,
    UNK_TOKEN,
    BPETokenizer,
    CharTokenizer,
    tokenizer_from_dict,
)
from lmcore.tokenizers.bpe import PATTERNS, merge_pair, text_pieces

ROUND_TRIP = [
    "",
    "hello",
    "Hello, world! It's 2024; isn't it?\n",
    "👋🏽 family: 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "line one\r\nline two\r\n\r\n",
    "a\x00b\x00\x00",
    "e\u0301 n\u0303 A\u030a \u0915\u094d\u0937",  # combining marks, Devanagari conjunct
    "你好，世界。今天天气很好。",
    "the cat sat on the mat. " * 300,
    "tabs\tand   spaces \u00a0\u2028\u3000 mixed\n\n\n",
    "literal <|bos|> text and <|bos",
    "1234567890 3.14159 -42",
]


@pytest.fixture(scope="module")
def train_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics)[:6])[:6000]


@pytest.fixture(scope="module")
def bpe(train_text: str) -> BPETokenizer:
    return BPETokenizer.train(train_text, vocab_size=300)


def reference_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Obviously correct BPE encoding: every merge, in training order, over every chunk."""
    out: list[int] = []
    for chunk in regex.findall(PATTERNS[tok.pattern], text):
        ids = list(chunk.encode("utf-8"))
        for k, pair in enumerate(tok.merges):
            ids = merge_pair(ids, pair, 256 + k)
        out.extend(ids)
    return out


def reference_merges(text: str, n_merges: int, pattern: str = "gpt4") -> list[tuple[int, int]]:
    """Obviously correct BPE training: recount every pair after every merge."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(PATTERNS[pattern], text)]
    merges = []
    for k in range(n_merges):
        stats = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
        if not stats:
            break
        best = max(stats.values())
        pair = min(p for p, c in stats.items() if c == best)  # ties: the smallest pair
        merges.append(pair)
        chunks = [merge_pair(ids, pair, 256 + k) for ids in chunks]
    return merges


# ----------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("text", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_round_trip(kind: str, text: str, bpe: BPETokenizer, train_text: str) -> None:
    # The character tokenizer only knows the characters it was trained on.
    tok = bpe if kind == "bpe" else CharTokenizer.train(train_text + text)
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.bos_id not in ids  # special tokens never come from plain text
    assert tok.decode(ids) == text


def test_bpe_compresses_repeated_text(bpe: BPETokenizer) -> None:
    text = "the cat sat on the mat. " * 300
    ids = bpe.encode(text)
    # 43 merges learned from English prose already save over a third of the bytes.
    assert len(ids) < 0.7 * len(text.encode("utf-8"))
    assert ids == reference_encode(bpe, text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trip_any_text(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert ids == reference_encode(bpe, text)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_char_round_trip_over_its_alphabet(train_text: str, data: st.DataObject) -> None:
    tok = CharTokenizer.train(train_text)
    text = data.draw(st.text(alphabet=st.sampled_from(tok.chars), max_size=200))
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_bpe_decodes_any_ids(bpe: BPETokenizer, data: st.DataObject) -> None:
    ids = data.draw(st.lists(st.integers(0, bpe.vocab_size - 1), max_size=50))
    text = bpe.decode(ids)
    assert isinstance(text, str)
    text.encode("utf-8")  # valid Unicode: stray bytes became U+FFFD, never lone surrogates


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab C1.'\n\r\t é", max_size=120), st.integers(1, 20))
def test_text_pieces_keep_the_chunks(text: str, size: int) -> None:
    # Pieces are cut only where every pattern ends a chunk anyway.
    pieces = list(text_pieces(text, size))
    assert "".join(pieces) == text
    for pattern in PATTERNS.values():
        assert [c for p in pieces for c in regex.findall(pattern, p)] == regex.findall(pattern, text)


# ----------------------------------------------------------------------- BPE known answers
def test_bpe_known_answer_respects_pre_split() -> None:
    # "ab ab abc" splits into "ab", " ab", " abc" (a=97, b=98, c=99, space=32).
    # Pair counts: (97,98)=3, (32,97)=2, (98,99)=1 -> merge (97,98) as 256.
    # Chunks become [256], [32,256], [32,256,99]: (32,256)=2, (256,99)=1 -> 257.
    # Chunks become [256], [257], [257,99]: (257,99)=1 -> 258. BOS follows as 259.
    tok = BPETokenizer.train("ab ab abc", vocab_size=260)
    assert tok.merges == [(97, 98), (32, 256), (257, 99)]
    assert tok.bos_id == 259 and tok.vocab_size == 260
    assert tok.encode("ab ab abc") == [256, 257, 258]
    # "abc" at the start of a chunk has no space, so it is not token 258: 256 then "c".
    assert tok.encode("abc ab") == [256, 99, 257]
    assert tok.encode("ba") == [98, 97]
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"ab", b" ab", b" abc"]


def test_bpe_known_answer_breaks_ties_by_smallest_pair() -> None:
    # "aaabdaaabac" is one chunk: a a a b d a a a b a c.
    # Pairs: (97,97)=4 (overlaps count), (97,98)=2, others 1 -> (97,97) as 256.
    # Now 256 a b d 256 a b a c: (256,97)=2 and (97,98)=2 tie; (97,98) is smaller -> 257.
    # Now 256 257 d 256 257 a c: (256,257)=2 -> 258, leaving 258 d 258 a c.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=260)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_bpe_long_and_repetitive_chunks_match_reference(bpe: BPETokenizer, train_text: str) -> None:
    # Long chunks, overlapping and repeated pairs: rank-order merging equals merging in turn.
    squashed = "".join(train_text.split())[:2000]  # one long run of letters and punctuation
    cases = [squashed, "the" * 200, "a" * 501, "ab" * 300, "🙂🎉" * 80, " " * 300 + "x", "é" * 100]
    for text in cases:
        ids = bpe.encode(text)
        assert ids == reference_encode(bpe, text)
        assert bpe.decode(ids) == text
    assert len(bpe.encode(squashed)) < len(squashed.encode("utf-8"))  # merges did happen


def test_bpe_training_matches_slow_reference(train_text: str) -> None:
    for pattern in PATTERNS:
        tok = BPETokenizer.train(train_text, vocab_size=300, pattern=pattern)
        assert tok.merges == reference_merges(train_text, 300 - 257, pattern)
        assert tok.encode(train_text) == reference_encode(tok, train_text)


def test_bpe_training_is_deterministic(train_text: str) -> None:
    a = BPETokenizer.train(train_text, vocab_size=290)
    b = BPETokenizer.train(train_text, vocab_size=290)
    assert a.merges == b.merges


def test_bpe_stops_when_pairs_run_out() -> None:
    tok = BPETokenizer.train("ab", vocab_size=400)
    assert tok.merges == [(97, 98)]
    assert tok.vocab_size == 258 and tok.bos_id == 257


def test_bpe_progress_reports_to_the_end(train_text: str) -> None:
    calls: list[tuple[int, int]] = []
    BPETokenizer.train(train_text, vocab_size=300, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (43, 43)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ----------------------------------------------------------------------- BPE details
def test_bpe_special_tokens_only_when_allowed(bpe: BPETokenizer) -> None:
    text = f"one{BOS_TOKEN}two"
    plain = bpe.encode(text)
    assert bpe.bos_id not in plain and bpe.decode(plain) == text
    allowed = bpe.encode(text, allowed_special="all")
    assert allowed.count(bpe.bos_id) == 1
    assert allowed == bpe.encode("one") + [bpe.bos_id] + bpe.encode("two")
    assert bpe.encode(text, allowed_special={BOS_TOKEN}) == allowed
    assert bpe.decode([bpe.bos_id]) == ""  # a boundary, not text
    assert bpe.token_str(bpe.bos_id) == BOS_TOKEN
    assert bpe.token_bytes(bpe.bos_id) == b""
    with pytest.raises(TokenizerError, match="unknown special"):
        bpe.encode(text, allowed_special={"<|eot|>"})


def test_bpe_extra_special_tokens() -> None:
    tok = BPETokenizer.train("ab ab abc", vocab_size=262, special_tokens=["<|bos|>", "<|pad|>"])
    # Only three merges exist in this text, so the specials follow them at 259 and 260.
    assert tok.special_ids == {"<|bos|>": 259, "<|pad|>": 260} and tok.vocab_size == 261
    assert tok.encode("<|pad|>x", allowed_special="all")[0] == tok.special_ids["<|pad|>"]
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.special_ids == tok.special_ids


def test_bpe_invalid_utf8_and_token_str(bpe: BPETokenizer) -> None:
    assert bpe.decode([0xE2]) == "\ufffd"
    assert bpe.decode([0xE2, 0x82, 0xAC]) == "€"  # three bytes make one character
    assert bpe.token_str(0xE2) == "\\xe2"
    assert bpe.token_str(ord(" ")) == "␣"
    assert bpe.token_str(ord("\n")) == "\\n"
    assert bpe.token_str(ord("A")) == "A"
    assert bpe.token_bytes(ord("A")) == b"A"
    spaced = [i for i in range(256, bpe.bos_id) if bpe.token_bytes(i).startswith(b" ")]
    assert spaced and all(bpe.token_str(i).startswith("␣") for i in spaced)


def test_bpe_rejects_bad_input(bpe: BPETokenizer) -> None:
    with pytest.raises(TokenizerError, match="too small"):
        BPETokenizer.train("some text", vocab_size=257)
    with pytest.raises(TokenizerError, match="whole number"):
        BPETokenizer.train("some text", vocab_size=300.5)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="empty"):
        BPETokenizer.train("", vocab_size=300)
    with pytest.raises(TokenizerError, match="surrogate U\\+D800"):
        bpe.encode("ok \ud800 not ok")
    with pytest.raises(TokenizerError, match="surrogate"):
        BPETokenizer.train("abc\udfff", vocab_size=300)
    with pytest.raises(TokenizerError, match="outside"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(TokenizerError, match="outside"):
        bpe.decode([-1])
    with pytest.raises(TokenizerError, match="pattern"):
        BPETokenizer.train("abc", vocab_size=300, pattern="gpt5")


def test_bpe_decode_accepts_tensors(bpe: BPETokenizer) -> None:
    import torch

    ids = bpe.encode("hello world")
    assert bpe.decode(torch.tensor(ids)) == "hello world"


# ----------------------------------------------------------------------- JSON form
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_to_dict_round_trip_through_json(kind: str, bpe: BPETokenizer, train_text: str) -> None:
    tok = bpe if kind == "bpe" else CharTokenizer.train(train_text, unk=True)
    d = json.loads(json.dumps(tok.to_dict()))
    again = tokenizer_from_dict(d)
    assert type(again) is type(tok)
    assert again.to_dict() == tok.to_dict()
    assert again.vocab_size == tok.vocab_size and again.bos_id == tok.bos_id
    sample = train_text[:500]
    assert again.encode(sample) == tok.encode(sample)
    assert [again.token_str(i) for i in range(tok.vocab_size)] == [tok.token_str(i) for i in range(tok.vocab_size)]


@pytest.mark.parametrize(
    "d",
    [
        {"type": "wordpiece"},
        {"type": ["bpe"]},
        ["bpe"],
        {"type": "bpe", "merges": "nope"},
        {"type": "bpe", "merges": [[97, 98], [300, 1]]},  # 300 does not exist yet
        {"type": "bpe", "merges": [[97, 98], [97, 98]]},  # repeated merge
        {"type": "bpe", "merges": [[97, True]]},
        {"type": "bpe", "merges": [], "pattern": r"(a+)+$"},  # only named patterns
        {"type": "bpe", "merges": [], "version": 99},
        {"type": "bpe", "merges": [], "special_tokens": ["<|bos|>", "<|bos|>"]},
        {"type": "char", "chars": 5},
        {"type": "char", "chars": "aab"},
        {"type": "char", "chars": "ab", "unk": "yes"},
    ],
)
def test_tokenizer_from_dict_rejects_damaged_data(d: object) -> None:
    with pytest.raises(TokenizerError):
        tokenizer_from_dict(d)  # type: ignore[arg-type]


def test_registry_names_both_tokenizers() -> None:
    assert TOKENIZERS["char"] is CharTokenizer
    assert TOKENIZERS["bpe"] is BPETokenizer


# ----------------------------------------------------------------------- char tokenizer
def test_char_vocabulary_is_sorted_with_bos() -> None:
    tok = CharTokenizer.train("hello world")
    assert tok.chars == " dehlorw"
    assert tok.bos_id == 8 and tok.vocab_size == 9
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.token_str(0) == "␣" and tok.token_str(tok.bos_id) == BOS_TOKEN
    assert tok.decode([3, tok.bos_id, 5]) == "ho"  # BOS decodes to nothing


def test_char_unseen_characters_are_named() -> None:
    tok = CharTokenizer.train("hello world")
    with pytest.raises(TokenizerError) as err:
        tok.encode("hello, wörld!")
    message = str(err.value)
    assert "','" in message and "'ö'" in message and "'!'" in message
    assert "\n" not in message


def test_char_unknown_token_option() -> None:
    tok = CharTokenizer.train("hello world", unk=True)
    ids = tok.encode("hé!")
    assert ids == [tok.encode("h")[0], tok.unk_id, tok.unk_id]
    assert tok.decode(ids) == "h\ufffd\ufffd"
    assert tok.token_str(tok.unk_id) == UNK_TOKEN
    assert tok.vocab_size == len(tok.chars) + 2


def test_char_rejects_empty_text_and_bad_ids() -> None:
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.train("")
    tok = CharTokenizer.train("abc")
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode([tok.vocab_size])
