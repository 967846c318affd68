"""The model page's n-gram choice and its live parameter counts, through app.py with AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcore.jobs import REGISTRY
from tests.test_app_views import open_page
from ui import state as S


def test_an_ngram_picked_on_the_model_page_trains_from_the_training_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = open_page("views/model.py")
    at.radio(key="keep.model.arch").set_value("ngram").run()
    at.number_input(key="keep.model.ngram_n").set_value(4).run()
    at.number_input(key="keep.model.add_k").set_value(0.5).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cfg = at.session_state[S.MODEL_CONFIG]
    assert cfg.arch == "ngram" and cfg.ngram_n == 4 and cfg.add_k == 0.5
    assert "ngram" in str(at.query_params["arch"])  # the link carries it
    at.switch_page("views/training.py").run()
    for key, value in (("keep.train.iters", 4), ("keep.train.eval", 2), ("keep.train.eval_iters", 1), ("keep.train.batch", 4), ("keep.train.warmup", 0)):
        at.number_input(key=key).set_value(value)
    at.run()
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert job.wait(60) and job.status == "finished", job.error
    assert job.model_config.arch == "ngram" and job.model_config.ngram_n == 4


def test_how_it_works_shows_live_numbers_on_model_training_and_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = open_page("views/model.py")
    total = at.metric[0].value  # "Parameters"
    latex = [x.value.strip("$\n") for x in at.get("latex")]
    assert any(x.startswith("N = ") and x.endswith(total.replace(",", "{,}")) for x in latex), (latex, total)
    assert any("12 \\cdot 64^2" in x for x in latex)  # the tiny GPT-2's width
    at.switch_page("views/training.py").run()
    for key, value in (("keep.train.iters", 4), ("keep.train.eval", 2), ("keep.train.eval_iters", 1), ("keep.train.batch", 4), ("keep.train.warmup", 0)):
        at.number_input(key=key).set_value(value)
    at.run()
    at.button(key="train_start").click().run()
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert job.wait(60)
    at.run()
    assert not at.exception
    lr = job.events[-1].lr
    assert any(x.value.strip("$\n").startswith(f"\\eta_t = {lr:.3g}") for x in at.get("latex"))
    at.switch_page("views/generation.py").run()
    at.button(key="generation.go").click().run()
    assert not at.exception
    assert any("\\text{ nats}" in x.value and "bits" in x.value for x in at.get("latex"))


@pytest.mark.parametrize("change", ["architecture", "field"])
def test_a_model_change_holds_when_the_next_page_is_opened_before_this_one_redraws(change: str) -> None:
    # A click on another page can reach a busy server before the Model page has run again for
    # the change: the widget's callback (which runs first, whatever comes next) keeps it.
    at = open_page("views/model.py")
    if change == "architecture":
        at.radio(key="keep.model.arch").set_value("mamba")
    else:
        at.number_input(key="keep.model.n_layer").set_value(3)
    at.switch_page("views/training.py").run()  # the Training page runs, not the Model page
    assert not at.exception and not at.error, [e.value for e in at.error]
    cfg = at.session_state[S.MODEL_CONFIG]
    assert (cfg.arch == "mamba") if change == "architecture" else (cfg.n_layer == 3), cfg
    assert f"Model: {'Mamba' if change == 'architecture' else 'GPT-2'}" in " ".join(m.value for m in at.markdown)


def test_a_corpus_chosen_holds_when_the_next_page_is_opened_before_the_data_page_redraws() -> None:
    at = open_page("views/data.py")
    at.selectbox(key=S.DATA_BUILTIN).set_value("python-names")
    at.switch_page("views/model.py").run()  # the Model page runs, not the Data page
    assert not at.exception and not at.error, [e.value for e in at.error]
    corpus = at.session_state[S.CORPUS]
    assert corpus.name == "python-names" and corpus.documents  # a list of names: one document per line
