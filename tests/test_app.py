"""The app's first four pages and its shell, driven with Streamlit's AppTest (no browser).

Every page renders in a fresh session; the newcomer's path (built-in corpus ->
character vocabulary -> tiny model -> a short training run -> a checkpoint on
disk) works by clicking through; bad input shows an inline error, never a
traceback. Training runs for real, in the process-level job registry.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lmcore.checkpoint import load_checkpoint
from lmcore.data import encode_corpus, split_ids
from lmcore.jobs import FINISHED, REGISTRY, RUNNING, STOPPED, RunSpec
from lmcore.models import build_model
from lmcore.train import TrainConfig
from ui import state as S
from ui.render import md

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["views/data.py", "views/vocabulary.py", "views/model.py", "views/training.py"]
RUN_S = 120  # generous timeouts for a busy machine; nothing here checks timings


@pytest.fixture(autouse=True)
def checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    limit = REGISTRY.max_concurrent
    yield folder
    for job in REGISTRY.list():  # no training thread outlives a test
        job.stop()
        job.wait(RUN_S)
    REGISTRY.max_concurrent = limit


def session(page: str = "views/data.py") -> AppTest:
    """A fresh browser session on ``page``."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
    at.run()
    if page != "views/data.py":
        at.switch_page(page)
        at.run()
    return at


def no_problems(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(v) -> list:
    """A trace's x or y from a figure's JSON: a list, or plotly's base64 typed array."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def wait_for(job) -> None:
    assert job.wait(RUN_S), "the training run did not end"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_in_a_fresh_session(page):
    at = session(page)
    no_problems(at)
    assert at.title[0].value == Path(page).stem.capitalize()
    assert len(at.main.markdown[0].value) > 100  # the page opens by saying what this step is
    assert at.get("page_link"), "every page links on to the next step or back to the one before"
    setup = " ".join(m.value for m in at.sidebar.markdown)
    assert "Set up so far" in setup and "python\\-docs" in setup  # the default corpus is loaded


def test_later_pages_say_what_was_filled_in_for_skipped_steps():
    at = session("views/training.py")
    no_problems(at)
    notes = " ".join(i.value for i in at.info)
    assert "character vocabulary" in notes and "Vocabulary page" in notes
    assert "tiny GPT-2" in notes and "Model page" in notes
    assert at.button(key="train_start").disabled is False


def test_the_newcomers_path_trains_and_saves_a_model(checkpoints):
    at = session()
    no_problems(at)
    assert at.radio[0].value == "Built-in" and at.selectbox[0].value == "python-docs"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Characters"] == f"{len(at.session_state[S.CORPUS].text):,}"

    at.switch_page("views/vocabulary.py").run()
    no_problems(at)
    tok = at.session_state[S.TOKENIZER]
    assert tok.kind == "char"
    (freq,) = chart_specs(at)
    counts = values(freq["data"][0]["y"])
    assert len(counts) == 40 and counts == sorted(counts, reverse=True)  # the default top-N, most frequent first
    assert at.dataframe[0].value.shape[0] == tok.vocab_size

    at.switch_page("views/model.py").run()
    no_problems(at)
    assert at.radio(key="keep.model.arch").value == "gpt2" and at.radio(key="keep.model.size").value == "tiny"
    params = int(next(m.value for m in at.metric if m.label == "Parameters").replace(",", ""))
    assert 10_000 < params < 1_000_000
    assert "digraph" in at.get("graphviz_chart")[0].proto.spec
    assert at.session_state[S.MODEL_CONFIG].vocab_size == tok.vocab_size

    at.switch_page("views/training.py").run()
    no_problems(at)
    at.number_input(key="keep.train.iters").set_value(30)
    at.number_input(key="keep.train.eval").set_value(10)
    at.number_input(key="keep.train.eval_iters").set_value(2)
    at.number_input(key="keep.train.batch").set_value(8)
    at.text_input(key="keep.train.name").set_value("my first model")
    at.button(key="train_start").click().run()
    no_problems(at)
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert job is not None and job.name == "my_first_model"
    wait_for(job)
    at.run()
    no_problems(at)
    assert job.status == FINISHED
    assert any("my_first_model.safetensors" in s.value for s in at.success)
    loss_chart = chart_specs(at)[0]
    assert [t["name"] for t in loss_chart["data"]] == ["my_first_model: train", "my_first_model: validation"]
    assert values(loss_chart["data"][0]["x"]) == list(range(1, 31))
    assert values(loss_chart["data"][1]["x"]) == [10, 20, 30]
    assert at.code, "the eval's text sample is shown"
    path = checkpoints / "my_first_model.safetensors"
    ckpt = load_checkpoint(path)
    assert ckpt.train_state["steps"] == 30
    assert ckpt.tokenizer.to_dict() == tok.to_dict()


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"\x00\x01\x02\x03binary\x00", "binary"), ("café".encode("latin-1"), "UTF-8")],
)
def test_a_bad_upload_shows_an_error_and_keeps_the_corpus(content, message):
    at = session()
    before = at.session_state[S.CORPUS_ID]
    at.radio[0].set_value("Upload a file").run()
    at.file_uploader[0].set_value(("junk.txt", content, "text/plain")).run()
    assert not at.exception
    assert len(at.error) == 1 and md(message).lower() in at.error[0].value.lower()
    assert at.session_state[S.CORPUS_ID] == before


def test_a_good_upload_and_a_paste_become_the_corpus():
    at = session()
    at.radio[0].set_value("Upload a file").run()
    at.file_uploader[0].set_value(("notes.txt", "hello world\n".encode() * 50, "text/plain")).run()
    no_problems(at)
    assert at.session_state[S.CORPUS].name == "notes.txt"
    assert at.session_state[S.CORPUS].text == "hello world\n" * 50

    at.radio[0].set_value("Paste text").run()
    at.text_area(key="keep.data.paste").set_value("   \n  ")
    at.button[0].click().run()
    assert not at.exception and len(at.error) == 1  # whitespace only
    assert at.session_state[S.CORPUS].name == "notes.txt"
    at.text_area(key="keep.data.paste").set_value("<b>bold</b> & more text")
    at.button[0].click().run()
    no_problems(at)
    assert at.session_state[S.CORPUS].text == "<b>bold</b> & more text"
    assert "<b>bold</b> & more text" in [c.value for c in at.code]  # shown as text, not markup


def test_the_names_corpus_is_read_one_document_per_line():
    at = session()
    at.selectbox(key="keep.data.builtin").set_value("python-names").run()
    no_problems(at)
    assert at.toggle(key="keep.data.documents").value is True
    corpus = at.session_state[S.CORPUS]
    assert corpus.documents
    assert next(m.value for m in at.metric if m.label == "Documents") == f"{len(corpus.docs):,}"
    at.toggle(key="keep.data.documents").set_value(False).run()
    assert not at.session_state[S.CORPUS].documents


def test_bpe_vocabulary_is_trained_on_request_with_its_charts():
    at = session("views/vocabulary.py")
    at.radio(key="keep.vocab.kind").set_value("bpe").run()
    no_problems(at)
    assert at.session_state[S.TOKENIZER].kind == "char"  # nothing is trained behind the user's back
    at.select_slider(key="keep.vocab.size").set_value(320).run()
    at.button[0].click().run()
    no_problems(at)
    tok = at.session_state[S.TOKENIZER]
    assert tok.kind == "bpe" and tok.vocab_size == 320
    freq, lengths = chart_specs(at)
    assert max(values(lengths["data"][0]["x"])) >= 2  # merges made tokens longer than one byte
    assert sum(values(lengths["data"][0]["y"])) == 320
    assert any(d.label.startswith("Download") for d in at.get("download_button"))


def test_the_token_explorer_escapes_what_it_shows():
    at = session("views/vocabulary.py")
    at.text_area(key="keep.vocab.probe").set_value('<script>alert("x")</script> & <b>').run()
    no_problems(at)
    (html,) = [m.value for m in at.markdown if "white-space:pre-wrap" in m.value]
    assert "<script" not in html and "<b>" not in html  # one span per character here, all escaped
    assert html.count("&lt;") == 2 * 3 and "&amp;" in html and "&quot;" in html  # text and hover, for each "<"
    at.text_area(key="keep.vocab.probe").set_value("emoji 🙂 never seen").run()
    assert not at.exception and "never seen" in at.error[0].value  # the char vocabulary names the character


def test_an_impossible_model_setting_is_reported_next_to_the_fields():
    at = session("views/model.py")
    good = at.session_state[S.MODEL_CONFIG]
    at.number_input(key="keep.model.n_head").set_value(3).run()  # 64 is not divisible by 3
    assert not at.exception
    assert len(at.error) == 1 and "Attention heads" in at.error[0].value
    assert at.session_state[S.MODEL_CONFIG] == good  # training keeps the last valid model
    at.number_input(key="keep.model.n_head").set_value(4).run()
    no_problems(at)
    assert at.session_state[S.MODEL_CONFIG].n_head == 4


def _rss_bytes() -> int:
    """This process's resident memory now (VmRSS in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_a_model_past_the_machines_memory_is_refused_without_building_it():
    at = session("views/model.py")
    good = at.session_state[S.MODEL_CONFIG]
    at.number_input(key="keep.model.n_layer").set_value(48)
    at.number_input(key="keep.model.n_embd").set_value(4096)
    before = _rss_bytes()
    at.run()  # 9.7 billion parameters: 155 GB of training state if it were built
    grown = _rss_bytes() - before
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "to train" in at.error[0].value and "\n" not in at.error[0].value
    assert grown < 100 * 2**20, f"the page grew the process by {grown / 2**20:.0f} MiB"
    assert at.session_state[S.MODEL_CONFIG] == good  # training keeps the last valid model


def test_switching_architecture_loads_its_preset_fields():
    at = session("views/model.py")
    at.radio(key="keep.model.arch").set_value("llama").run()
    no_problems(at)
    cfg = at.session_state[S.MODEL_CONFIG]
    assert (cfg.preset, cfg.norm, cfg.pos, cfg.mlp) == ("llama", "rmsnorm", "rope", "swiglu")
    at.radio(key="keep.model.size").set_value("small").run()
    assert (at.session_state[S.MODEL_CONFIG].n_layer, at.session_state[S.MODEL_CONFIG].n_embd) == (4, 128)
    at.radio(key="keep.model.arch").set_value("bigram").run()
    no_problems(at)
    assert at.session_state[S.MODEL_CONFIG].arch == "bigram"
    assert [n.label for n in at.number_input] == ["Context length"]


def test_runs_over_the_limit_are_refused_and_only_the_starting_session_controls_a_run():
    REGISTRY.max_concurrent = 1  # the operator's setting (LMCORE_MAX_RUNS); no widget changes it
    first = session("views/training.py")
    first.number_input(key="keep.train.iters").set_value(100_000)
    first.number_input(key="keep.train.eval").set_value(50_000)
    first.button(key="train_start").click().run()
    no_problems(first)
    job = REGISTRY.get(first.session_state[S.ACTIVE_JOB])
    assert job.status == RUNNING
    assert first.query_params["run"] == job.key  # the owner's address holds the key, not the id
    assert any(f"run={job.key}" in c.value for c in first.code)  # and a link to hand the run over on purpose
    assert not any(job.key in c.value for c in first.sidebar.code)  # never in the setup's "Copy link"

    second = session("views/training.py")  # another browser
    assert second.session_state.get(S.ACTIVE_JOB) is None
    assert not any(n.key == "train_max_concurrent" for n in second.number_input)  # no browser sets the limit
    assert any("Runs at once: **1**" in c.value and "LMCORE_MAX_RUNS=N" in c.value for c in second.caption)
    second.button(key="train_start").click().run()
    assert not second.exception
    assert len(second.error) == 1 and "limit is 1" in second.error[0].value
    # it sees that the run exists and what it trains, but cannot pick, stop or overlay it
    table = second.dataframe[0].value
    assert job.name in list(table["run"]) and not any(table["yours"])
    assert job.id not in second.selectbox(key="train_show").options
    assert second.button(key="train_stop").disabled
    assert not any(job.key in c.value or job.id in c.value for c in second.code)
    for guess in (job.id, job.id + "0" * 20, "0" * 32, "é" * 32, job.key.upper(), "x" * 100_000):  # an id, or a guessed key, in the address opens nothing
        other = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)
        other.query_params["run"] = guess
        other.run()
        assert other.session_state.get(S.ACTIVE_JOB) is None
        other.switch_page("views/training.py").run()
        assert other.button(key="train_stop").disabled
        assert other.query_params.get("run") is None
    assert job.status == RUNNING

    shared = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)  # the owner's own link: the key
    shared.query_params.update(dict(first.query_params))
    shared.run()
    shared.switch_page("views/training.py").run()
    no_problems(shared)
    assert shared.session_state[S.ACTIVE_JOB] == job.id
    shared.button(key="train_stop").click().run()
    wait_for(job)
    first.run()
    no_problems(first)
    assert job.status == STOPPED
    assert first.button(key="train_resume").disabled is False


def test_settings_survive_a_visit_to_another_page():
    at = session("views/training.py")
    at.number_input(key="keep.train.iters").set_value(1234).run()
    at.switch_page("views/model.py").run()
    at.radio(key="keep.model.arch").set_value("mamba").run()
    at.switch_page("views/data.py").run()
    at.switch_page("views/training.py").run()
    no_problems(at)
    assert at.number_input(key="keep.train.iters").value == 1234
    at.switch_page("views/model.py").run()
    assert at.radio(key="keep.model.arch").value == "mamba"
    assert at.session_state[S.MODEL_CONFIG].arch == "mamba"


def test_a_second_run_is_overlaid_on_the_first_to_compare():
    at = session("views/training.py")
    for key, value in (("keep.train.iters", 20), ("keep.train.eval", 10), ("keep.train.eval_iters", 2), ("keep.train.batch", 4)):
        at.number_input(key=key).set_value(value)
    at.button(key="train_start").click().run()
    first = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    wait_for(first)
    at.switch_page("views/model.py").run()
    at.radio(key="keep.model.arch").set_value("llama").run()
    at.switch_page("views/training.py").run()
    at.button(key="train_start").click().run()
    no_problems(at)
    second = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert second.id != first.id and second.model_config.preset == "llama"
    wait_for(second)
    at.run()
    no_problems(at)
    assert at.multiselect(key="train_compare").value == [first.id]
    names = [t["name"] for t in chart_specs(at)[0]["data"]]
    assert names == [f"{second.name}: train", f"{second.name}: validation", f"{first.name}: train", f"{first.name}: validation"]
    at.multiselect(key="train_compare").set_value([]).run()
    assert len(chart_specs(at)[0]["data"]) == 2
    assert at.session_state[S.COMPARE_JOBS] == []


def test_a_corpus_from_an_address_and_a_bad_address(tmp_path, monkeypatch, http_folder):
    monkeypatch.setenv("LMCORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LMCORE_ALLOW_LOCAL_URLS", "1")  # the operator's choice: the test server is local
    base, root, _ = http_folder
    text = "It was a dark and stormy night.\n" * 20
    (root / "book.txt").write_text(text, encoding="utf-8")
    at = session()
    at.radio[0].set_value("From a URL").run()
    at.text_input(key="keep.data.url").set_value(f"{base}/book.txt")
    at.button[0].click().run()
    no_problems(at)
    assert at.session_state[S.CORPUS].text == text
    for bad in (f"{base}/missing.txt", (root / "book.txt").as_uri(), str(root / "book.txt")):
        # A missing page, and local files: the address box never reads the server's own disk.
        at.text_input(key="keep.data.url").set_value(bad)
        at.button[0].click().run()
        assert not at.exception and len(at.error) == 1, bad
        assert at.session_state[S.CORPUS].text == text


def test_a_failed_run_shows_its_message_and_keeps_its_checkpoint(checkpoints):
    at = session("views/training.py")
    tok, cfg = at.session_state[S.TOKENIZER], at.session_state[S.MODEL_CONFIG]
    train_ids, val_ids = split_ids(encode_corpus(tok, at.session_state[S.CORPUS]), 0.1)
    settings = TrainConfig(max_iters=60, batch_size=4, eval_interval=2, eval_iters=2, warmup_iters=0, lr=1e3, grad_clip=0.0)
    job = REGISTRY.start(RunSpec("diverges", cfg, tok, train_ids, val_ids, settings), checkpoints)
    wait_for(job)
    at.session_state[S.OWNED_RUNS] = {job.id: job.key}  # handed to this session, as its link would
    at.session_state[S.ACTIVE_JOB] = job.id
    at.run()
    assert not at.exception
    assert job.status == "failed"
    assert [e.value for e in at.error] == [md(job.error)]
    assert "learning rate" in job.error
    if job.saved:
        assert any(f"step {job.saved_step}" in c.value for c in at.caption)


# ---------------------------------------------------------------- what a newcomer trips on
PASTED = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 5} times." for i in range(40))


def test_a_reload_restores_corpus_vocabulary_model_and_settings_from_the_address():
    at = session()
    at.radio[0].set_value("Paste text").run()
    at.text_area(key="keep.data.paste").set_value(PASTED)
    at.button[0].click().run()
    at.switch_page("views/vocabulary.py").run()
    at.radio(key="keep.vocab.kind").set_value("bpe").run()
    at.select_slider(key="keep.vocab.size").set_value(320).run()
    at.button[0].click().run()
    at.switch_page("views/model.py").run()
    at.radio(key="keep.model.arch").set_value("llama").run()
    at.number_input(key="keep.model.n_kv_head").set_value(1).run()
    at.switch_page("views/training.py").run()
    at.number_input(key="keep.train.iters").set_value(123).run()
    no_problems(at)
    address = dict(at.query_params)
    assert address["corpus"].startswith("text:") and PASTED not in address.values()  # the text stays on the server

    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S)  # the same address, a new session
    again.query_params.update(address)
    again.run()
    no_problems(again)
    assert again.session_state[S.CORPUS].text == PASTED
    tok = again.session_state[S.TOKENIZER]
    assert tok.to_dict() == at.session_state[S.TOKENIZER].to_dict()
    assert again.session_state[S.MODEL_CONFIG] == at.session_state[S.MODEL_CONFIG]
    assert again.session_state[S.MODEL_CONFIG].n_kv_head == 1
    again.switch_page("views/training.py").run()
    no_problems(again)
    assert again.number_input(key="keep.train.iters").value == 123
    again.switch_page("views/vocabulary.py").run()
    assert again.radio(key="keep.vocab.kind").value == "bpe" and not again.info  # no "press Train BPE"


def test_model_errors_name_the_fields_on_screen_and_the_suggestion_works():
    at = session("views/model.py")
    at.radio(key="keep.model.arch").set_value("llama").run()
    for key, value in (("keep.model.n_embd", 63), ("keep.model.n_head", 3), ("keep.model.n_kv_head", 3)):
        at.number_input(key=key).set_value(value).run()
        (error,) = at.error
        assert not re.search(r"n_embd|n_head|n_kv_head", error.value), error.value
        m = re.search(r"Try (.+) = (\d+)\.", error.value)
        assert m, error.value
        field = next(n for n in at.number_input if n.label == m.group(1))
        field.set_value(int(m.group(2))).run()
        no_problems(at)  # following the suggestion gives a valid model


def test_switching_architecture_keeps_the_context_length():
    at = session("views/model.py")
    at.number_input(key="keep.model.block_size").set_value(48).run()
    at.radio(key="keep.model.arch").set_value("mamba").run()
    no_problems(at)
    assert at.session_state[S.MODEL_CONFIG].block_size == 48


def test_the_swiglu_diagram_shows_the_width_the_model_builds():
    at = session("views/model.py")
    at.radio(key="keep.model.arch").set_value("llama").run()
    cfg = at.session_state[S.MODEL_CONFIG]
    hidden = build_model(cfg).h[0].mlp.c_proj.in_features  # 168 for a width of 64, not 2/3 × 256 = 170
    spec = at.get("graphviz_chart")[0].proto.spec
    assert f"{cfg.n_embd} → {hidden} → {cfg.n_embd}" in spec


def test_run_names_come_from_the_model_and_a_typed_name_stays_with_its_model(checkpoints):
    at = session("views/training.py")
    for key, value in (("keep.train.iters", 8), ("keep.train.eval", 4), ("keep.train.eval_iters", 1), ("keep.train.batch", 4), ("keep.train.warmup", 0)):
        at.number_input(key=key).set_value(value)
    at.run()
    at.switch_page("views/model.py").run()
    at.radio(key="keep.model.arch").set_value("llama").run()
    at.switch_page("views/training.py").run()
    at.text_input(key="keep.train.name").input("llama-gqa").run()
    at.button(key="train_start").click().run()
    no_problems(at)
    llama = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert llama.name == "llama-gqa"
    wait_for(llama)
    at.switch_page("views/model.py").run()
    at.radio(key="keep.model.arch").set_value("mamba").run()
    at.switch_page("views/training.py").run()
    assert at.text_input(key="keep.train.name").value == ""  # the name belonged to the llama
    assert "mamba-tiny.safetensors" in " ".join(c.value for c in at.caption)
    at.button(key="train_start").click().run()
    no_problems(at)
    mamba = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert mamba.id != llama.id and mamba.name == "mamba-tiny"
    wait_for(mamba)
    at.run()
    assert "mamba-tiny-2.safetensors" in " ".join(c.value for c in at.caption)  # a taken name gets a number, shown
    assert any("Run:** mamba\\-tiny · Mamba" in m.value for m in at.sidebar.markdown)
    at.switch_page("views/attention.py").run()
    options = at.selectbox(key="keep.attention.model").options
    assert len(options) == 2 and all("Saved:" not in o for o in options), options  # a run and its file: one entry


def test_the_log_scale_ticks_read_as_plain_numbers():
    at = session("views/vocabulary.py")
    at.toggle(key="keep.vocab.log").set_value(True).run()
    (freq,) = chart_specs(at)
    axis = freq["layout"]["yaxis"]
    assert axis["ticktext"] == [f"{v:g}" for v in axis["tickvals"]]  # whole numbers, not "5, 2, 100, 5, 2"
    assert {t[0] for t in axis["ticktext"]} <= {"1", "2", "5"} and axis["tickvals"] == sorted(axis["tickvals"])
