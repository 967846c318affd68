"""What the pages keep and follow: the corpus in use, the user's choices across page switches, the recipe's
settings and what a chart leaves out; driven through app.py with AppTest on real tiny models and runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui import state as S

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
DATA, VOCABULARY, TRAINING = "views/data.py", "views/vocabulary.py", "views/training.py"


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=120).run()


def go(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def paste_corpus(at: AppTest, text: str) -> None:
    go(at, DATA)
    at.radio(key=S.DATA_SOURCE).set_value("Paste text").run()
    at.text_area(key=S.DATA_PASTE).set_value(text).run()
    at.button[[b.label for b in at.button].index("Use this text")].click().run()
    assert not at.exception and at.session_state[S.CORPUS].text == text


def test_the_token_explorer_follows_a_newly_pasted_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = go(app(), VOCABULARY)
    first = at.text_area(key=S.VOCAB_PROBE).value
    assert first and first == at.session_state[S.CORPUS].text[: len(first)]
    text = "abba cab\nbad cab abba\n" * 20
    paste_corpus(at, text)
    go(at, VOCABULARY)
    assert not at.error, [e.value for e in at.error]  # no "never seen" for the old corpus's characters
    probe = at.text_area(key=S.VOCAB_PROBE).value
    assert probe == text[: len(probe)] and probe


# ---------------------------------------------------------------- choices kept across page switches
from tests.test_app_views import ckpt_dir, saved  # noqa: E402, F401  (a folder of tiny saved models)

ATTENTION, CHECKPOINTS = "views/attention.py", "views/checkpoints.py"


def test_the_attention_model_picker_keeps_its_choice_across_a_page_switch(ckpt_dir: Path) -> None:
    at = go(app(), ATTENTION)
    picker = at.selectbox(key=S.ATTENTION_MODEL)
    other = "ckpt:" + str(ckpt_dir / "names.safetensors")
    assert picker.value != other and any(o.startswith("Saved: names") for o in picker.options)
    picker.set_value(other).run()
    go(at, DATA)
    go(at, ATTENTION)
    assert at.selectbox(key=S.ATTENTION_MODEL).value == other


def test_the_checkpoints_pick_the_hf_source_and_the_saved_runs_pick_survive_a_page_switch(ckpt_dir: Path) -> None:
    at = go(app(), CHECKPOINTS)
    picker = at.selectbox(key=S.CHECKPOINT_SELECTED)
    assert picker.value != "snake"
    picker.set_value("snake").run()
    typed = str(ckpt_dir / "not-a-model-folder")
    at.text_input(key=S.HF_SOURCE).set_value(typed).run()
    go(at, DATA)
    go(at, CHECKPOINTS)
    assert at.selectbox(key=S.CHECKPOINT_SELECTED).value == "snake"
    assert at.text_input(key=S.HF_SOURCE).value == typed

    go(at, TRAINING)
    at.multiselect(key=S.SAVED_RUNS_PICK).set_value(["tiny", "flat"]).run()
    go(at, DATA)
    go(at, TRAINING)
    assert at.multiselect(key=S.SAVED_RUNS_PICK).value == ["tiny", "flat"]
    box = next(e for e in at.expander if e.label.startswith("Saved runs"))
    assert box.proto.expanded


# ---------------------------------------------------------------- the logit lens says what it draws
from tests.test_surprise_page import folder  # noqa: E402, F401  (tiny: a gpt2 with head scores; table: a 3-gram)

SURPRISE = "views/surprise.py"


def test_the_logit_lens_text_and_figure_agree_and_its_cells_are_legible(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from lmcore.checkpoint import load_checkpoint
    from lmcore.interpret import logit_lens

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    at = go(app(), SURPRISE)
    text = "The value of the expression is returned when the function ends, and then some more."
    at.text_area(key=S.SURPRISE_TEXT).set_value(text).run()
    assert not at.exception
    said = " ".join(m.value for m in at.markdown)
    assert "top row reads the embedding" in said and "bottom row (after the last block) is the model's real prediction" in said
    lens = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if json.loads(c.proto.spec)["data"][0]["type"] == "heatmap")
    rows, layout = lens["data"][0]["y"], lens["layout"]
    # Drawn top down: the embedding first, the output last, at the bottom.
    assert rows[0] == "embedding" and rows[-1].endswith("= output")
    assert layout["yaxis"]["autorange"] == "reversed"
    # The bottom row's guesses are the model's real next-token predictions.
    ckpt = load_checkpoint(folder / "tiny.safetensors")
    ids = ckpt.tokenizer.encode(text)
    cells = lens["data"][0]["text"]
    shown = len(cells[-1])
    real = logit_lens(ckpt.model, ids[:shown])[-1].argmax(-1)
    assert [c for c in cells[-1]] == [ckpt.tokenizer.token_str(int(i)).replace("<", "&lt;") for i in real]
    # Few enough positions for a legible cell each, written large enough to read; the rest by a slider.
    assert shown <= 24 < len(ids)
    assert lens["data"][0]["textfont"]["size"] >= 12
    at.slider(key="surprise.lens_start").set_value(5).run()
    lens = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if json.loads(c.proto.spec)["data"][0]["type"] == "heatmap")
    assert lens["layout"]["xaxis"]["ticktext"][0] == ckpt.tokenizer.token_str(ids[5])


# ---------------------------------------------------------------- the induction recipe's settings
def test_the_induction_recipe_says_what_it_sets_and_gives_the_settings_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmcore.jobs import REGISTRY

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = go(app(), TRAINING)
    try:
        at.number_input(key=S.TRAIN_ITERS).set_value(77).run()
        at.number_input(key=S.TRAIN_BATCH).set_value(5).run()
        box = next(e for e in at.expander if e.label.startswith("Recipe"))
        said = " ".join(m.value for m in box.markdown)
        for setting in ("3,000 iterations", "batch 64", "learning rate 0.003", "seed 1337", "weight decay 0"):
            assert setting in said
        assert "come back when you choose another corpus" in said

        at.button(key="train_induction").click().run()
        REGISTRY.get(at.session_state[S.ACTIVE_JOB]).stop()
        assert at.number_input(key=S.TRAIN_ITERS).value == 3000 and at.number_input(key=S.TRAIN_BATCH).value == 64
        at.number_input(key=S.TRAIN_SEED).set_value(9).run()  # changed after the recipe: stays
        # Leaving the recipe by choosing another corpus gives the user's settings back.
        paste_corpus(at, "abba cab\nbad cab abba\n" * 40)
        go(at, TRAINING)
        assert at.number_input(key=S.TRAIN_ITERS).value == 77 and at.number_input(key=S.TRAIN_BATCH).value == 5
        assert at.number_input(key=S.TRAIN_LR).value == pytest.approx(2e-3)  # never set: the page's default
        assert at.number_input(key=S.TRAIN_SEED).value == 9
        assert any("your own training settings are back" in i.value for i in at.info)

        # Or with the button, staying on the recipe's corpus.
        at.button(key="train_induction").click().run()
        REGISTRY.get(at.session_state[S.ACTIVE_JOB]).stop()
        assert at.number_input(key=S.TRAIN_ITERS).value == 3000
        at.button(key="train_recipe_back").click().run()
        assert not at.exception
        assert at.number_input(key=S.TRAIN_ITERS).value == 77 and at.number_input(key=S.TRAIN_BATCH).value == 5
        assert at.session_state[S.CORPUS].source == "builtin:induction"
        assert not any(b.key == "train_recipe_back" for b in at.button)
    finally:
        for job in REGISTRY.list():
            job.stop()
            job.wait(60)


# ---------------------------------------------------------------- tokens per second, named
def test_the_two_tokens_per_second_figures_are_named_and_the_overall_ones_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from lmcore.jobs import FINISHED
    from tests.test_training_page import start_run

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = go(app(), TRAINING)
    job = start_run(at, "speed", iters=12, eval_every=4, eval_iters=2)
    assert job.wait(120) and job.status == FINISHED
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert "Tokens / s while stepping" in metrics and "Tokens per second" not in metrics
    line = next(c.value for c in at.caption if c.value.startswith("Overall: "))
    live_overall = float(re.match(r"Overall: ([\d,]+) tokens / s", line).group(1).replace(",", ""))
    last = job.events[-1]
    assert live_overall == pytest.approx(last.tokens_seen / last.elapsed_s, rel=0.01, abs=1)
    at.multiselect(key=S.SAVED_RUNS_PICK).set_value(["speed"]).run()
    table = next(d.value for d in at.dataframe if "tokens / s overall" in d.value.columns)
    assert "tokens / s" not in table.columns  # no second figure under the live view's name
    assert float(table["tokens / s overall"].iloc[0]) == pytest.approx(live_overall, rel=0.25)


# ---------------------------------------------------------------- live charts: runs on the same data
def test_live_charts_overlay_runs_on_the_same_data_and_name_the_hidden_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from lmcore.jobs import REGISTRY
    from tests.test_training_page import start_run

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = go(app(), TRAINING)
    try:
        first = start_run(at, "docs-run", iters=4, eval_every=4, eval_iters=1)
        assert first.wait(120)
        twin = start_run(at, "docs-twin", iters=4, eval_every=4, eval_iters=1)
        assert twin.wait(120)
        at.run()
        assert at.multiselect(key=S.OVERLAY_RUNS).value == [first.id]  # the same corpus: overlaid
        paste_corpus(at, "abba cab\nbad cab abba\n" * 40)
        go(at, TRAINING)
        other = start_run(at, "abba-run", iters=4, eval_every=4, eval_iters=1)
        assert other.wait(120)
        at.run()
        assert not at.exception
        overlay = at.multiselect(key=S.OVERLAY_RUNS)
        assert overlay.value == [] and not overlay.options  # nothing on this data to compare with
        note = next(c.value for c in at.caption if c.value.startswith("Not offered")).replace("\\", "")
        assert "docs-twin" in note and "docs-run" in note
        loss = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert {t.get("legendgroup") or t.get("name") for t in loss["data"]} <= {"abba-run", None}
        # Asked for, they are overlaid again, as they were chosen before.
        at.toggle(key=S.TRAIN_OVERLAY_ALL).set_value(True).run()
        assert set(at.multiselect(key=S.OVERLAY_RUNS).value) == {first.id, twin.id}
        loss = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert "docs-twin" in json.dumps(loss["data"])
    finally:
        for job in REGISTRY.list():
            job.stop()
            job.wait(60)


# ---------------------------------------------------------------- smaller things
GENERATION = "views/generation.py"


def test_a_finished_run_says_why_it_saved_at_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmcore.jobs import FINISHED
    from tests.test_training_page import start_run

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = go(app(), TRAINING)
    job = start_run(at, "why", iters=8, eval_every=4, eval_iters=1)
    assert job.wait(120) and job.status == FINISHED
    at.run()
    saved = next(s.value for s in at.success if s.value.startswith("Saved to"))
    assert f"at step {job.saved_step:,}: its best validation point (validation loss" in saved


def test_documents_mode_writes_n_documents_and_judges_short_ones_whole(ckpt_dir: Path) -> None:
    names = "\n".join(sorted({n for n in dir(str) + dir(list) + dir(dict) if not n.startswith("_")}))
    at = app()
    paste_corpus(at, names)
    at.toggle(key=S.DATA_DOCUMENTS).set_value(True).run()
    assert at.session_state[S.CORPUS].documents
    go(at, GENERATION)
    at.selectbox(key=S.GENERATION_MODEL).set_value("ckpt:" + str(ckpt_dir / "names.safetensors")).run()
    at.text_area(key=S.GENERATION_PROMPT).input("").run()
    at.number_input(key=S.GENERATION_N_DOCS).set_value(4).run()
    at.number_input(key=S.GENERATION_MAX_NEW).set_value(6).run()  # short documents: under the 8-token window
    at.button(key="generation.go").click().run()
    assert not at.exception and not at.error
    result = at.session_state[S.GENERATION_RESULT]
    assert len(result["more"]) == 3 and all("\n" not in d for d in result["more"])
    said = " ".join(m.value for m in at.markdown)
    assert "is one of the documents of" in said or "is new" in said
    assert "shorter than the 8-token window" in " ".join(c.value for c in at.caption)


def test_the_surprise_comparison_starts_with_a_model_that_reads_the_text(ckpt_dir: Path, tmp_path: Path) -> None:
    from tests.test_app_views import train_and_save

    # A newer model whose vocabulary lacks the text's characters: listed first, so the old default.
    train_and_save(ckpt_dir / "digits", "0123456789 " * 200, "gpt2", steps=2)
    at = go(app(), "views/surprise.py")
    at.selectbox(key=S.SURPRISE_MODEL_A).set_value("ckpt:" + str(ckpt_dir / "tiny.safetensors")).run()
    at.text_area(key=S.SURPRISE_TEXT).set_value("The value is returned.").run()
    at.checkbox(key=S.SURPRISE_COMPARE).check().run()
    assert not at.exception
    second = at.selectbox(key=S.SURPRISE_MODEL_B).value
    assert not second.endswith("digits.safetensors") and second != at.selectbox(key=S.SURPRISE_MODEL_A).value
    assert not any("reads fewer than two tokens" in i.value for i in at.info)
    assert not at.error


def test_the_attention_page_follows_a_run_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmcore.jobs import REGISTRY
    from tests.test_training_page import start_run

    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    at = go(app(), TRAINING)
    try:
        job = start_run(at, "going", iters=100_000, eval_every=2, eval_iters=1)
        while not job.saved:
            job.wait(0.2)
        go(at, ATTENTION)
        assert at.selectbox(key=S.ATTENTION_MODEL).value == "job:" + job.id
        assert any("is training" in c.value and "redraws at each of its evaluations" in c.value for c in at.caption)
    finally:
        for j in REGISTRY.list():
            j.stop()
            j.wait(60)
