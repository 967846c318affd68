"""The attention, generation and checkpoint pages, driven through app.py with Streamlit's AppTest.

Models are real: tiny transformers, a bigram and a documents-mode model, each
trained for a few dozen steps and saved with lmcore's checkpoint code into a
temporary folder that the app reads through PLAYGROUND_CHECKPOINT_DIR.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.data import build_tokenizer, corpus_from_text, encode_corpus, get_batch
from lmcore.models import ModelConfig, build_model, lm_loss
from ui import state

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
ATTENTION, GENERATION, CHECKPOINTS = "views/attention.py", "views/generation.py", "views/checkpoints.py"

def train_and_save(path: Path, text: str, preset: str, documents: bool = False, steps: int = 20) -> Path:
    """A real model: char vocabulary, a few AdamW steps on random windows, saved as a checkpoint."""
    corpus = corpus_from_text(text, name=path.stem, documents=documents)
    tok = build_tokenizer("char", corpus.text)
    ids = encode_corpus(tok, corpus)
    config = ModelConfig.preset(preset, vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = get_batch(ids, 8, config.block_size, generator=gen)  # (B, T), (B, T)
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_checkpoint(
        path, model, tok, train_state={"steps": steps, "val_loss": loss.item()}, data_info={"documents": documents}
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of checkpoints: tiny (gpt2), flat (bigram), names (llama, documents mode), snake (mamba)."""
    import pydoc_data.topics

    folder = tmp_path_factory.mktemp("saved")
    topics = pydoc_data.topics.topics
    text = "\n".join(topics[k] for k in sorted(topics)[:12])
    names = "\n".join(sorted({n for n in dir(str) + dir(list) + dir(dict) if not n.startswith("_")}))
    train_and_save(folder / "flat", text, "bigram")
    train_and_save(folder / "names", names, "llama", documents=True)
    train_and_save(folder / "snake", text, "mamba", steps=10)
    train_and_save(folder / "tiny", text, "gpt2")  # saved last: the newest, listed first
    return folder


@pytest.fixture
def ckpt_dir(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the saved folder, so tests that upload or delete do not meet."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(saved, folder)
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    return folder


@pytest.fixture
def empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    return folder


def open_page(page: str, at: AppTest | None = None) -> AppTest:
    if at is None:
        at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(data) -> np.ndarray:
    """Numbers of a figure's JSON: a list, or plotly's base64 typed array for numpy input."""
    if isinstance(data, dict) and "bdata" in data:
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = data.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.array(data, dtype=float)


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


# ---------------------------------------------------------------- nothing trained yet


@pytest.mark.parametrize("page", [ATTENTION, GENERATION])
def test_model_pages_say_what_to_do_first(empty_dir: Path, page: str) -> None:
    at = open_page(page)
    assert "no model" in texts(at.info).lower()
    links = [p.proto.page for p in at.get("page_link")]
    assert any("training" in p for p in links) and any("checkpoints" in p for p in links)
    assert not at.get("plotly_chart")


def test_checkpoints_page_with_an_empty_folder(empty_dir: Path) -> None:
    at = open_page(CHECKPOINTS)
    assert "no saved models" in texts(at.info).lower()
    assert not at.dataframe
    assert at.file_uploader  # uploading is possible even with nothing saved


# ---------------------------------------------------------------- attention


def test_attention_heatmaps_show_the_prompt_tokens(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    assert at.selectbox(key=state.ATTENTION_MODEL).value == "ckpt:" + str(ckpt_dir / "tiny.safetensors")
    prompt = at.text_input(key="keep.attention.prompt").value
    assert prompt  # a default the model can encode
    one, grid, avg = charts(at)
    tok = load_checkpoint(ckpt_dir / "tiny.safetensors").tokenizer
    expected = [tok.token_str(i) for i in tok.encode(prompt)]
    assert one["layout"]["xaxis"]["ticktext"] == expected == one["layout"]["yaxis"]["ticktext"]
    assert len(grid["data"]) == 2 * 2  # every layer and head of the tiny model
    assert "average over 2 heads" in avg["layout"]["title"]["text"]
    z = values(one["data"][0]["z"])
    np.testing.assert_allclose(np.nansum(z, axis=1), 1.0, atol=1e-3)  # softmax rows
    assert np.isnan(z[0, 1:]).all()  # the future is blank

    at.selectbox(key="attention.layer").set_value(1)
    at.selectbox(key="attention.head").set_value(1).run()
    assert not at.exception
    assert charts(at)[0]["layout"]["title"]["text"].startswith("layer 1 · head 1 · ")  # then the model and prompt


def test_prompts_are_never_markup(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    at.text_input(key="keep.attention.prompt").input("<b>x</b>").run()
    assert not at.exception and not at.error
    ticks = charts(at)[0]["layout"]["xaxis"]["ticktext"]
    assert ticks[:3] == ["&lt;", "b", "&gt;"]  # plotly shows the entities as the characters
    assert not any("<" in t for t in ticks)
    open_page(GENERATION, at)
    at.text_area(key="keep.generation.prompt").input("<b>x</b>").run()
    text = generate(at, max_new=5)
    assert text.startswith("<b>x</b>")  # shown literally, in a code block
    assert all("<b>" not in m.value for m in at.markdown)  # never in markdown, where it could render


def test_attention_charts_head_roles_from_the_run_log_of_a_checkpoint(ckpt_dir: Path) -> None:
    """A run still training in another process logs each evaluation before its checkpoint carries it."""
    from lmcore.runlog import RunLogger
    from lmcore.train import HeadScoresCallback, TrainConfig, Trainer

    path = ckpt_dir / "tiny.safetensors"
    at = open_page(ATTENTION)
    assert len(charts(at)) == 3 and "No head scores were recorded" in texts(at.caption)  # a file without history

    ckpt = load_checkpoint(path)
    ids = torch.tensor(ckpt.tokenizer.encode("the cat sat on the mat, the dog sat on the log. " * 20))
    tc = TrainConfig(batch_size=4, max_iters=4, warmup_iters=1, eval_interval=2, eval_iters=1, device="cpu")
    logger = RunLogger(path)
    Trainer(ckpt.model, ids[:800], ids[800:], tc, callbacks=[HeadScoresCallback(), logger]).fit()
    logger.close()
    at.run()
    assert not at.exception
    *_, scores = charts(at)
    assert scores["layout"]["xaxis"]["title"]["text"] == "step"
    assert sorted({x for trace in scores["data"] for x in values(trace["x"]).tolist()}) == [2, 4]
    assert len(scores["data"]) == 2 * 2  # a line per layer and head


def test_attention_reports_unseen_characters_inline(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    at.text_input(key="keep.attention.prompt").input("snow ☃ man").run()
    assert not at.exception
    assert "never seen" in texts(at.error) and "☃" in texts(at.error)
    assert not at.get("plotly_chart")


def test_attention_crops_a_prompt_longer_than_the_context(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    at.text_input(key="keep.attention.prompt").input("the " * 20).run()
    assert "only its last 32" in texts(at.caption)
    assert len(charts(at)[0]["layout"]["xaxis"]["ticktext"]) == 32


def test_attention_explains_architectures_without_maps(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    at.selectbox(key=state.ATTENTION_MODEL).set_value("ckpt:" + str(ckpt_dir / "flat.safetensors")).run()
    assert not at.exception
    assert "not available for this architecture" in texts(at.info)
    assert not at.get("plotly_chart")


def test_mamba_shows_its_implicit_attention(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    at.selectbox(key=state.ATTENTION_MODEL).set_value("ckpt:" + str(ckpt_dir / "snake.safetensors")).run()
    assert not at.exception and not at.error
    assert "Channel group" in [s.label for s in at.selectbox]  # the unit names the selector
    assert "implicit attention" in texts(at.caption)
    one, grid, avg = charts(at)
    assert one["layout"]["title"]["text"].startswith("layer 0 · channel group 0 · ")
    assert grid["layout"]["annotations"][0]["text"] == "layer 0 · channel group 0"
    assert "channel groups" in avg["layout"]["title"]["text"]
    z = values(one["data"][0]["z"])
    assert np.isfinite(z[np.tril_indices(z.shape[0])]).all() and np.isnan(z[0, 1:]).all()


# ---------------------------------------------------------------- generation


def generate(at: AppTest, max_new: int = 30) -> str:
    at.number_input(key="keep.generation.max_new_tokens").set_value(max_new)
    at.button(key="generation.go").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, texts(at.error)
    return at.code[0].value


def test_generation_writes_text_and_shows_candidates(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    prompt = at.text_area(key="keep.generation.prompt").value
    text = generate(at)
    result = at.session_state["generation.result"]
    assert text == prompt + result["text"] and len(result["ids"]) == 30
    candidates = charts(at)[0]
    bars, diamonds = candidates["data"]
    assert 1 <= len(values(bars["x"])) <= 11 and values(bars["x"]).sum() <= 1 + 1e-6
    assert values(diamonds["x"]).sum() <= 1 + 1e-6

    at.slider(key="generation.position").set_value(3).run()
    assert "token 3" in charts(at)[0]["layout"]["title"]["text"]
    assert text == at.code[0].value  # looking at candidates keeps the text

    again = generate(at)
    assert again == text  # same seed, same settings, same model: same text
    at.slider(key="generation.position").set_value(25).run()
    assert len(generate(at, max_new=10)) < len(text)  # a shorter text after looking far into a longer one
    at.number_input(key="keep.generation.max_new_tokens").set_value(30)
    at.number_input(key="keep.generation.seed").set_value(7)
    assert generate(at) != text


def test_greedy_generation_draws_the_favourite(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    at.slider(key="keep.generation.temperature").set_value(0.0)
    generate(at, max_new=10)
    for position in at.session_state["generation.result"]["candidates"]:
        assert position[0][2] == 1.0  # greedy: all the drawing mass on the most likely token


def test_top_k_one_is_greedy_whatever_the_temperature(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    at.slider(key="keep.generation.temperature").set_value(0.0)
    greedy = generate(at, max_new=15)
    at.slider(key="keep.generation.temperature").set_value(1.5)
    at.number_input(key="keep.generation.top_k").set_value(1)
    assert generate(at, max_new=15) == greedy
    at.number_input(key="keep.generation.top_k").set_value(5000)  # above the vocabulary: no filter, no error
    at.selectbox(key=state.GENERATION_MODEL).set_value("ckpt:" + str(ckpt_dir / "flat.safetensors"))
    generate(at, max_new=5)


def test_generation_reports_bad_prompts_and_settings(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    at.text_area(key="keep.generation.prompt").input("☃").run()
    at.button(key="generation.go").click().run()
    assert not at.exception
    assert "never seen" in texts(at.error)
    at.text_area(key="keep.generation.prompt").input("").run()
    at.button(key="generation.go").click().run()
    assert "type a prompt" in texts(at.info).lower()


def test_temperature_explorer_replots_the_distribution(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    explorer = [c for c in charts(at) if "entropy" in c["layout"]["title"]["text"]]
    ghost, now = explorer[0]["data"]
    np.testing.assert_allclose(values(now["y"]), values(ghost["y"]), rtol=1e-5)  # at temperature 1 both are the model's own
    at.slider(key="keep.generation.explorer_temperature").set_value(0.0).run()
    (cold,) = [c for c in charts(at) if "entropy" in c["layout"]["title"]["text"]]
    assert values(cold["data"][1]["y"])[0] == pytest.approx(1.0)  # temperature 0: all mass on the favourite
    assert "entropy 0.00" in cold["layout"]["title"]["text"]


def test_two_models_side_by_side(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    left, right = at.selectbox(key=state.COMPARE_MODEL_A), at.selectbox(key=state.COMPARE_MODEL_B)
    assert left.value != right.value  # two models to compare from the start
    at.selectbox(key=state.COMPARE_MODEL_A).set_value("ckpt:" + str(ckpt_dir / "tiny.safetensors"))
    at.selectbox(key=state.COMPARE_MODEL_B).set_value("ckpt:" + str(ckpt_dir / "flat.safetensors"))
    at.number_input(key="keep.generation.max_new_tokens").set_value(20)
    at.button(key="generation.compare_go").click().run()
    assert not at.exception and not at.error
    pair = at.session_state["generation.compare_result"]
    prompt = at.text_area(key="keep.generation.prompt").value
    assert all(t is not None and len(t) > 0 for t in pair["texts"])
    shown = [c.value for c in at.code]
    assert prompt + pair["texts"][0] in shown and prompt + pair["texts"][1] in shown


def test_documents_model_starts_at_bos_and_stops_at_the_next(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    at.selectbox(key=state.GENERATION_MODEL).set_value("ckpt:" + str(ckpt_dir / "names.safetensors")).run()
    assert "separate documents" in texts(at.caption)
    at.text_area(key="keep.generation.prompt").input("").run()
    generate(at, max_new=200)
    result = at.session_state["generation.result"]
    bos = load_checkpoint(ckpt_dir / "names.safetensors").tokenizer.bos_id
    assert bos not in result["ids"]
    assert "\n" not in result["text"]  # one document: a name, not a list of them


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_are_listed(ckpt_dir: Path) -> None:
    (ckpt_dir / "broken.safetensors").write_bytes(b"\x00" * 64)
    at = open_page(CHECKPOINTS)
    table = at.dataframe[0].value
    assert set(table["name"]) == {"tiny", "flat", "names", "snake", "broken"}
    tiny = table[table["name"] == "tiny"].iloc[0]
    assert tiny["architecture"] == "gpt2" and tiny["steps"] == 20 and tiny["tokenizer"].startswith("char")
    assert tiny["parameters"] > 0
    broken = table[table["name"] == "broken"].iloc[0]
    assert broken["problem"]  # bad files are listed with their error, never hidden
    at.selectbox(key="keep.checkpoints.selected").set_value("broken").run()
    assert at.error and at.button(key="checkpoints.load").disabled


def test_junk_upload_is_refused_on_arrival_in_plain_words_and_nothing_written(ckpt_dir: Path) -> None:
    before = sorted(p.name for p in ckpt_dir.iterdir())
    at = open_page(CHECKPOINTS)
    junk = b"\x90" * 8 + b"not a checkpoint" * 50  # its first 8 bytes declare an absurd header length
    at.file_uploader(key="checkpoints.upload").set_value(("junk.safetensors", junk, "application/octet-stream"))
    at.run()
    assert not at.exception
    # Checked the moment it arrives: the plain message first, the technical reason after it, no Save.
    (error,) = at.error
    assert error.value.replace("\\", "").startswith("**junk.safetensors is not a checkpoint")
    assert any("What is wrong with it" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "checkpoints.import"]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before

    good = (ckpt_dir / "tiny.safetensors").read_bytes()
    at.file_uploader(key="checkpoints.upload").set_value(("tiny.safetensors", good, "application/octet-stream"))
    at.run()
    assert not at.error and any("is a valid checkpoint" in s.value for s in at.success)


def test_upload_names_are_sanitised(ckpt_dir: Path) -> None:
    data = (ckpt_dir / "tiny.safetensors").read_bytes()
    at = open_page(CHECKPOINTS)
    at.file_uploader(key="checkpoints.upload").set_value(("tiny.safetensors", data, "application/octet-stream"))
    at.run()
    (name_box,) = [t for t in at.text_input if t.label == "Save as"]
    name_box.input("../../x").run()
    at.button(key="checkpoints.import").click().run()
    assert not at.exception and not at.error
    assert (ckpt_dir / "x.safetensors").exists()
    assert not (ckpt_dir.parent.parent / "x.safetensors").exists() and not (ckpt_dir.parent / "x.safetensors").exists()
    assert "Saved as x.safetensors" in texts(at.success).replace("\\", "")  # markdown escapes aside
    assert "x" in set(at.dataframe[0].value["name"])


def test_load_into_session_becomes_the_default_model(ckpt_dir: Path) -> None:
    at = open_page(ATTENTION)
    assert at.selectbox(key=state.ATTENTION_MODEL).value.endswith("tiny.safetensors")
    open_page(CHECKPOINTS, at)
    at.selectbox(key="keep.checkpoints.selected").set_value("names").run()
    at.button(key="checkpoints.load").click().run()
    assert at.session_state[state.LOADED_CHECKPOINT] == str(ckpt_dir / "names.safetensors")
    assert "names is loaded" in texts(at.success)
    open_page(ATTENTION, at)
    assert at.selectbox(key=state.ATTENTION_MODEL).value == "ckpt:" + str(ckpt_dir / "names.safetensors")
    open_page(GENERATION, at)
    assert at.selectbox(key=state.GENERATION_MODEL).value == "ckpt:" + str(ckpt_dir / "names.safetensors")


def test_delete_needs_confirmation(ckpt_dir: Path) -> None:
    (ckpt_dir / "flat.optim.safetensors").write_bytes(b"resume state")
    at = open_page(CHECKPOINTS)
    at.selectbox(key="keep.checkpoints.selected").set_value("flat").run()
    assert at.button(key="checkpoints.delete").disabled
    at.checkbox(key="checkpoints.confirm.flat").check().run()
    at.button(key="checkpoints.delete").click().run()
    assert not at.exception
    assert not (ckpt_dir / "flat.safetensors").exists() and not (ckpt_dir / "flat.optim.safetensors").exists()
    assert (ckpt_dir / "tiny.safetensors").exists()
    assert "Deleted flat" in texts(at.success)
    assert "flat" not in set(at.dataframe[0].value["name"])


# ---------------------------------------------------------------- a training run of this server


def test_the_current_run_is_the_default_model(empty_dir: Path) -> None:
    import pydoc_data.topics

    from lmcore.jobs import REGISTRY, RunSpec
    from lmcore.train import TrainConfig

    text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)[:6])
    corpus = corpus_from_text(text)
    tok = build_tokenizer("char", corpus.text)
    ids = encode_corpus(tok, corpus)
    config = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    tc = TrainConfig(batch_size=4, max_iters=20, eval_interval=10, eval_iters=2, warmup_iters=2, device="cpu")
    n = len(ids) * 9 // 10
    job = REGISTRY.start(RunSpec("app-views-run", config, tok, ids[:n], ids[n:], tc), empty_dir)
    assert job.wait(timeout=120), "the tiny run did not finish"
    assert job.status == "finished", job.error

    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[state.ACTIVE_JOB] = job.id
    at.run()
    open_page(ATTENTION, at)
    picker = at.selectbox(key=state.ATTENTION_MODEL)
    assert picker.value == "job:" + job.id
    assert picker.options[picker.index].startswith("Current run: app-views-run")
    assert len(charts(at)) == 4  # one head, all heads, the average, and head scores over training
    open_page(GENERATION, at)
    assert generate(at, max_new=10)


# ---------------------------------------------------------------- wording and state a newcomer meets


def test_generation_wording_labels_and_a_switch_of_model(ckpt_dir: Path) -> None:
    at = open_page(GENERATION)
    generate(at, max_new=1)
    assert "1 new token from" in texts(at.caption)  # not "1 tokens"
    sliders = [s.label for s in at.slider]
    assert len(sliders) == len(set(sliders)), sliders  # the two temperatures are told apart
    at.selectbox(key=state.GENERATION_MODEL).set_value("ckpt:" + str(ckpt_dir / "flat.safetensors")).run()
    assert not at.exception
    assert "new token" not in texts(at.caption) and "generation.result" not in at.session_state or (
        at.session_state["generation.result"] is None
    )  # another model's text is not shown as this one's


def test_prompts_start_from_a_line_of_the_corpus_in_use(ckpt_dir: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.radio[0].set_value("Paste text").run()
    at.text_area(key="keep.data.paste").set_value("the cat sat on the mat\nand then it ran off\n" * 20)
    at.button[0].click().run()
    open_page(ATTENTION, at)
    assert at.text_input(key="keep.attention.prompt").value == "the cat sat on the mat"
    open_page(GENERATION, at)
    assert at.text_area(key="keep.generation.prompt").value == "the cat sat on the mat"
