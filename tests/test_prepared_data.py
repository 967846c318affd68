"""A prepared folder (``lmcore prepare`` output) as the app's corpus: chosen on the data page, its
vocabulary used as it is, and a run trained from its memmapped splits. Real files in tmp_path,
a real tiny run, the pages through AppTest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lmcore import runlog
from lmcore.errors import DataError
from lmcore.jobs import FINISHED, REGISTRY
from lmcore.shards import load_prepared, prepare
from lmcore.tokenizers import CharTokenizer
from ui import state as S
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
RUN_S = 120


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_text: str) -> Path:
    folder = tmp_path / "data"
    source = tmp_path / "corpus.txt"
    source.write_text(small_text * 2, encoding="utf-8")  # longer than the page's preview of the folder
    prepare(str(source), folder / "docs", "char")
    monkeypatch.setenv("PLAYGROUND_DATA_DIR", str(folder))
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    yield folder
    for job in REGISTRY.list():
        job.stop()
        job.wait(RUN_S)


def choose(at: AppTest, picked: str | None = None, typed: str = "") -> AppTest:
    at.radio(key="keep.data.source").set_value("Prepared folder").run()
    if picked is not None:
        at.selectbox(key="data_prepared_pick").set_value(picked)
    at.text_input(key="data_prepared_path").set_value(typed)
    return at.button(key="data_prepared_use").click().run()


def test_a_prepared_folder_is_the_corpus_its_vocabulary_is_used_and_a_run_trains_from_it(data_dir: Path) -> None:
    data = load_prepared(data_dir / "docs")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    at.run()
    at.radio(key="keep.data.source").set_value("Prepared folder").run()
    assert at.selectbox(key="data_prepared_pick").options == ["docs"]
    choose(at, "docs")
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Training tokens"] == f"{len(data.train):,}" and metrics["Validation tokens"] == f"{len(data.val):,}"
    assert at.session_state[S.CORPUS].name == "docs"

    at.switch_page("views/vocabulary.py").run()
    assert not at.exception and not at.error
    assert "prepared folder" in at.info[0].value
    assert not [r for r in at.radio if r.key == "keep.vocab.kind"], "no vocabulary is built for prepared data"
    assert at.session_state[S.TOKENIZER].to_dict() == data.tokenizer.to_dict()
    assert {m.label: m.value for m in at.metric}["Tokens in the corpus"] == f"{len(data.train) + len(data.val):,}"

    at.switch_page("views/training.py").run()
    for key, value in [("iters", 4), ("warmup", 1), ("eval", 2), ("eval_iters", 2), ("batch", 4)]:
        at.number_input(key=f"keep.train.{key}").set_value(value)
    at.text_input(key="keep.train.name").set_value("from-shards")
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert job.wait(RUN_S) and job.status == FINISHED, job.error
    start = runlog.read_log(job.checkpoint_path)[0]
    assert start["train_tokens"] == len(data.train)  # the folder's whole split, not the page's preview
    assert start["source"] == str((data_dir / "docs").resolve())


@pytest.mark.parametrize(
    "typed, message",
    [("missing", "has no meta"), ("../elsewhere", "only folders under"), ("broken", "damaged")],
)
def test_a_bad_folder_gives_one_line_and_keeps_the_corpus(data_dir: Path, typed: str, message: str) -> None:
    (data_dir / "broken").mkdir()
    (data_dir / "broken" / "meta.json").write_text("{not json", encoding="utf-8")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    at.run()
    before = at.session_state[S.CORPUS]
    choose(at, typed=typed)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and "\n" not in at.error[0].value
    assert at.session_state[S.CORPUS] == before


def test_a_reload_restores_the_prepared_folder_from_the_address(data_dir: Path) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    at.run()
    choose(at, "docs")
    at.switch_page("views/vocabulary.py").run()
    address = dict(at.query_params)
    assert address["corpus"] == "prepared:docs"  # the folder, not its decoded preview

    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    again.query_params.update(address)
    again.run()
    assert not again.exception and not again.error
    assert again.session_state[S.PREPARED][1] == str((data_dir / "docs").resolve())
    assert again.session_state[S.TOKENIZER].to_dict() == load_prepared(data_dir / "docs").tokenizer.to_dict()


# ------------------------------------------------------------------ hostile folders
def _rewrite_meta(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def _hostile(folder: Path, kind: str, outside: Path) -> None:
    """Turn the good prepared ``folder`` into one kind of hostile folder."""
    train = folder / "train.bin"
    if kind == "symlink-out":
        train.unlink()
        train.symlink_to(outside)
    elif kind == "meta-symlink-out":
        (folder / "meta.json").unlink()
        (folder / "meta.json").symlink_to(outside)
    elif kind == "fifo":
        train.unlink()
        os.mkfifo(train)
    elif kind == "ids-over-vocab":
        ids = np.fromfile(train, dtype=np.uint16)
        ids[len(ids) // 2] = 60_000
        ids.tofile(train)
    elif kind == "small-vocab":
        _rewrite_meta(folder, tokenizer=CharTokenizer("ab").to_dict(), vocab_size=3)
    elif kind == "dtype-mismatch":
        _rewrite_meta(folder, dtype="uint32")
    elif kind == "odd-length":
        with open(train, "ab") as f:
            f.write(b"\x01")
    elif kind == "meta-list":
        (folder / "meta.json").write_text("[1, 2, 3]", encoding="utf-8")
    elif kind == "meta-deep":
        (folder / "meta.json").write_text("[" * 1000 + "]" * 1000, encoding="utf-8")
    elif kind == "meta-field-text":
        _rewrite_meta(folder, bytes="a lot")
    elif kind == "meta-token-count":
        _rewrite_meta(folder, train_tokens=10**12)
    elif kind == "empty-split":
        (folder / "val.bin").write_bytes(b"")
    else:
        raise AssertionError(kind)


HOSTILE = {
    "symlink-out": "outside the prepared folder",
    "meta-symlink-out": "outside the prepared folder",
    "fifo": "not a regular file",
    "ids-over-vocab": "holds token id 60,000 at position",
    "small-vocab": "the ids and the vocabulary do not belong together",
    "dtype-mismatch": "says dtype \"uint32\"",
    "odd-length": "not a whole number of uint16 ids",
    "meta-list": "holds a JSON list, not an object",
    "meta-deep": "nested too deeply",
    "meta-field-text": "has bytes \"a lot\", not a whole number",
    "meta-token-count": "says train_tokens 1,000,000,000,000",
    "empty-split": "holds no tokens",
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:INTERNAL-ONLY\n" * 100, encoding="utf-8")
    return secret


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_folder_is_one_line_before_anything_reads_it(data_dir: Path, outside: Path, kind: str) -> None:
    _hostile(data_dir / "docs", kind, outside)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_prepared(data_dir / "docs")
    message = str(err.value)
    assert HOSTILE[kind] in message and "\n" not in message and len(message) < 400, message
    assert time.monotonic() - start < 10  # a FIFO is not opened, a deep file not recursed into


@pytest.mark.parametrize("kind", ["symlink-out", "ids-over-vocab", "meta-list"])
def test_a_hostile_folder_is_one_line_on_the_data_page(data_dir: Path, outside: Path, kind: str) -> None:
    _hostile(data_dir / "docs", kind, outside)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    at.run()
    before = at.session_state[S.CORPUS]
    choose(at, typed="docs")
    assert not at.exception
    assert len(at.error) == 1 and HOSTILE[kind] in at.error[0].value
    assert at.session_state[S.CORPUS] == before
    assert not any("INTERNAL-ONLY" in c.value for c in at.code)


@pytest.mark.slow
def test_a_hostile_folder_is_one_line_in_train_on_the_command_line(data_dir: Path, outside: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for kind in ("symlink-out", "ids-over-vocab"):
        folder = data_dir / kind
        prepare(str(outside), folder, "char")
        _hostile(folder, kind, outside)
        run = run_lmcore("train", "--data", str(folder), "--n-layer", "1", "--n-embd", "8", "--n-head", "1",
                         "--block-size", "8", "--max-iters", "1", "--out", str(data_dir / "m.safetensors"),
                         cwd=os.getcwd(), env=env, text=True)  # fmt: skip
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and HOSTILE[kind] in run.stderr, run.stderr
        assert not (data_dir / "m.safetensors").exists()
