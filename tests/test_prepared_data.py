"""A prepared folder (``lmcore prepare`` output) as the app's corpus: chosen on the data page, its
vocabulary used as it is, and a run trained from its memmapped splits. Real files in tmp_path,
a real tiny run, the pages through AppTest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lmcore import runlog
from lmcore.jobs import FINISHED, REGISTRY
from lmcore.shards import load_prepared, prepare
from ui import state as S

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
