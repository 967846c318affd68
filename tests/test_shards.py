"""Token shards: prepare streams a corpus to train.bin/val.bin/meta.json, training reads them through memmap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.batches import TensorTokens
from lmcore.cli import main
from lmcore.data import get_batch
from lmcore.errors import DataError
from lmcore.shards import load_prepared, prepare
from lmcore.tokenizers import CharTokenizer


def shard_text(directory: Path) -> str:
    p = load_prepared(directory)
    ids = np.concatenate([p.train.read_all(), p.val.read_all()])
    return p.tokenizer.decode(ids.tolist())


def test_char_shards_decode_back_to_the_text(tmp_path: Path, english_text: str, monkeypatch) -> None:
    monkeypatch.setattr("lmcore.shards.CHUNK_BYTES", 1000)  # many pieces, and a split inside one
    src = tmp_path / "corpus.txt"
    src.write_text(english_text[:50_000], encoding="utf-8")
    meta = prepare(str(src), tmp_path / "out", "char", val_fraction=0.1)
    assert shard_text(tmp_path / "out") == english_text[:50_000]
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk["dtype"] == "uint16" and on_disk["tokenizer"] == CharTokenizer.train(english_text[:50_000]).to_dict()
    # Validation is the last tenth of the bytes (the text has multi-byte characters), cut between characters.
    data = english_text[:50_000].encode("utf-8")
    last_tenth = data[int(len(data) * 0.9) :].decode("utf-8", errors="ignore")
    assert on_disk["train_tokens"] + on_disk["val_tokens"] == 50_000
    assert abs(on_disk["val_tokens"] - len(last_tenth)) <= 1 and len(last_tenth) < 5000
    assert meta["source"] == str(src)
    assert (tmp_path / "out" / "train.bin").stat().st_size == 2 * on_disk["train_tokens"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_a_folder_of_text_files_with_bpe_trained_on_a_sample(tmp_path: Path, small_text: str) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text(small_text[5000:], encoding="utf-8")
    (folder / "a.txt").write_text(small_text[:5000].rstrip("\n"), encoding="utf-8")  # no final newline
    (folder / "skip.md").write_text("not a .txt file", encoding="utf-8")
    meta = prepare(str(folder), tmp_path / "out", "bpe", vocab_size=300, bpe_sample_bytes=2000)
    assert shard_text(tmp_path / "out") == small_text[:5000].rstrip("\n") + "\n" + small_text[5000:]
    assert meta["files"] == 2 and meta["vocab_size"] == 300
    assert "sample" in meta["vocabulary"]


def test_wide_vocabularies_use_uint32(tmp_path: Path) -> None:
    text = "".join(chr(0x10000 + i) for i in range(70_000)) * 2
    src = tmp_path / "wide.txt"
    src.write_text(text, encoding="utf-8")
    meta = prepare(str(src), tmp_path / "out", "char")
    assert meta["dtype"] == "uint32" and shard_text(tmp_path / "out") == text


def test_builtin_and_url_sources(tmp_path: Path, http_folder) -> None:
    base, folder, _ = http_folder
    (folder / "remote.txt").write_text("hello shards\n" * 300, encoding="utf-8")
    with pytest.raises(DataError, match="loopback address"):  # the one downloader's address rule
        prepare(f"{base}/remote.txt", tmp_path / "url", "char")
    assert not (tmp_path / "url").exists()
    prepare(f"{base}/remote.txt", tmp_path / "url", "char", allow_local_urls=True)
    assert shard_text(tmp_path / "url") == "hello shards\n" * 300
    assert [p.name for p in (tmp_path / "url").iterdir() if p.name.startswith(".")] == []  # the download is gone
    meta = prepare("builtin:python-docs", tmp_path / "builtin", "char")
    assert meta["source"] == "builtin:python-docs" and meta["train_tokens"] > 100_000


def test_memmap_batches_equal_in_memory_batches(tmp_path: Path, english_text: str) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text(english_text[:30_000], encoding="utf-8")
    prepare(str(src), tmp_path / "out", "char")
    p = load_prepared(tmp_path / "out")
    ids = torch.from_numpy(p.train.read_all().astype(np.int64))
    x1, y1 = get_batch(p.train, 8, 32, generator=torch.Generator().manual_seed(3))
    x2, y2 = get_batch(TensorTokens(ids), 8, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.long


def test_bad_sources_are_one_line_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1") * 100)
    with pytest.raises(DataError, match="not valid UTF-8"):
        prepare(str(tmp_path / "latin1.txt"), tmp_path / "out", "char")
    assert not (tmp_path / "out" / "train.bin").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        prepare(str(tmp_path / "empty"), tmp_path / "out", "char")
    with pytest.raises(DataError, match="meta.json"):
        load_prepared(tmp_path / "empty")
    assert main(["prepare", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no such file")


def test_train_from_prepared_shards_on_the_command_line(tmp_path: Path, english_text: str, capsys) -> None:
    src = tmp_path / "corpus.txt"
    src.write_text(english_text[:30_000], encoding="utf-8")
    assert main(["prepare", "--data", str(src), "--out", str(tmp_path / "data")]) == 0
    out = tmp_path / "m.safetensors"
    args = ["train", "--data", str(tmp_path / "data"), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "4", "--max-iters", "4", "--eval-interval", "2",
            "--eval-iters", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    from lmcore.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt.tokenizer.to_dict() == load_prepared(tmp_path / "data").tokenizer.to_dict()
    assert ckpt.data_info["source"] == str(tmp_path / "data")
    capsys.readouterr()
    assert main([*args[:3], "--tokenizer", "bpe", *args[3:]]) == 2
    assert "prepared data with its own vocabulary" in capsys.readouterr().err
