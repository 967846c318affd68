"""The training page's views of a run: passes over the data beside steps, accuracy and perplexity beside the loss.

A real tiny run started from the page (AppTest), in the process-level job registry.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lmcore import runlog
from lmcore.jobs import FINISHED, REGISTRY
from lmcore.recipes import INDUCTION_VOCAB, recipe
from ui import state as S

ROOT = Path(__file__).resolve().parents[1]
RUN_S = 120


@pytest.fixture(autouse=True)
def checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    yield folder
    for job in REGISTRY.list():
        job.stop()
        job.wait(RUN_S)


def values(v) -> list:
    """A trace's x or y from a figure's JSON: a list, or plotly's base64 typed array."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def training_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    at.run()
    at.switch_page("views/training.py").run()
    assert not at.exception
    return at


def start_run(at: AppTest, name: str, iters: int, eval_every: int, eval_iters: int, warmup: int = 1):
    """Set the page's settings (batch 4), press Start, and return the run it started."""
    settings = [("iters", iters), ("warmup", warmup), ("eval", eval_every), ("eval_iters", eval_iters), ("batch", 4)]
    for key, value in settings:
        at.number_input(key=f"keep.train.{key}").set_value(value)
    at.text_input(key="keep.train.name").set_value(name)
    at.button(key="train_start").click().run()
    return REGISTRY.get(at.session_state[S.ACTIVE_JOB])


def test_a_run_shows_passes_over_the_data_and_its_accuracy_and_perplexity_curves(checkpoints: Path) -> None:
    at = training_page()
    job = start_run(at, "epochs", iters=12, eval_every=6, eval_iters=2, warmup=2)
    assert job.wait(RUN_S) and job.status == FINISHED
    at.run()
    assert not at.exception and not at.error

    train_tokens = job.data_info["train_tokens"]
    seen = job.events[-1].tokens_seen
    assert seen == 12 * 4 * job.model_config.block_size
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Passes over the data"] == f"{seen / train_tokens:.2f}"

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    evals = [e for e in job.events if e.val_loss is not None]
    by_title = {s["layout"]["yaxis"]["title"]["text"]: s for s in specs if s["layout"].get("yaxis", {}).get("title")}
    acc, ppl = by_title["next-token accuracy"], by_title["perplexity"]
    assert values(acc["data"][0]["x"]) == [6, 12]
    assert values(acc["data"][0]["y"]) == pytest.approx([e.val_acc for e in evals])
    assert values(ppl["data"][0]["y"]) == pytest.approx([e.val_ppl for e in evals])

    # the same run read from its log: the saved runs table counts the passes too
    records = runlog.read_log(job.checkpoint_path)
    assert runlog.epochs(records) == pytest.approx(seen / train_tokens)
    # and bits per byte, the unit in which runs with other vocabularies compare: in the log and the runs table
    assert [r["val_bpb"] for r in runlog.evals(records)] == pytest.approx([e.val_bpb for e in evals])
    assert any("val bits/byte" in d.value.columns for d in at.dataframe)


def test_resume_continues_the_shown_run_from_its_checkpoint_up_to_the_iterations_set(checkpoints: Path) -> None:
    at = training_page()
    first = start_run(at, "again", iters=6, eval_every=6, eval_iters=1)
    assert first.wait(RUN_S) and first.status == FINISHED
    at.run()
    at.button(key="train_resume").click().run()  # still 6 iterations: nothing left to do
    assert [e.value for e in at.error] == ["'again' has already trained 6 steps; set Iterations above 6 to continue it."]
    assert at.session_state[S.ACTIVE_JOB] == first.id

    at.number_input(key="keep.train.iters").set_value(9).run()
    at.button(key="train_resume").click().run()
    assert not at.exception and not at.error
    resumed = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert resumed.id != first.id and resumed.resumed_from == first.checkpoint_path
    assert resumed.wait(RUN_S) and resumed.status == FINISHED
    assert resumed.checkpoint_path == first.checkpoint_path  # the same file goes on
    assert [e.step for e in resumed.events if e.val_loss is None] == [7, 8, 9]
    assert resumed.train_config.max_iters == 9 and resumed.train_config.batch_size == 4
    assert resumed.model_config == first.model_config and resumed.tokenizer.to_dict() == first.tokenizer.to_dict()


def test_the_induction_recipe_sets_up_its_corpus_vocabulary_and_model_and_trains_them(checkpoints: Path) -> None:
    at = training_page()
    at.button(key="train_induction").click().run()
    assert not at.exception and not at.error
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    job.stop()
    assert job.wait(RUN_S)
    model_cfg, train_cfg = recipe("induction", INDUCTION_VOCAB + 1)
    # the built-in corpus, a character vocabulary of its 256 symbols (+ document start), the recipe's model
    assert at.session_state[S.CORPUS].source == "builtin:induction"
    assert at.session_state[S.TOKENIZER].vocab_size == INDUCTION_VOCAB + 1
    assert job.model_config == at.session_state[S.MODEL_CONFIG] == model_cfg
    # the recipe's own schedule (constant rate, no weight decay), not the page's defaults
    tc = job.train_config
    assert (tc.max_iters, tc.batch_size, tc.lr, tc.min_lr, tc.weight_decay) == (3000, 64, 3e-3, 3e-3, 0.0)
    assert job.name.startswith("induction-head")
    # the page's settings and the data page's choice show the recipe too
    at.run()
    assert at.number_input(key="keep.train.iters").value == 3000
    assert at.number_input(key="keep.train.batch").value == 64
    at.switch_page("views/data.py").run()
    assert not at.exception
    assert at.session_state[S.CORPUS].source == "builtin:induction"  # the data page keeps it


def test_the_induction_recipe_with_no_free_run_slot_says_so_and_keeps_the_session(checkpoints: Path) -> None:
    at = training_page()
    limit = REGISTRY.max_concurrent
    REGISTRY.max_concurrent = 1
    try:
        busy = start_run(at, "busy", iters=100_000, eval_every=100_000, eval_iters=1)
        assert busy.is_alive
        corpus, config = at.session_state[S.CORPUS], at.session_state[S.MODEL_CONFIG]
        at.button(key="train_induction").click().run()
        assert not at.exception
        assert any("as many runs as the server allows" in e.value for e in at.error)
        assert at.session_state[S.CORPUS] is corpus and at.session_state[S.MODEL_CONFIG] == config
        assert not any(j.name.startswith("induction-head") for j in REGISTRY.running())
    finally:
        REGISTRY.max_concurrent = limit
