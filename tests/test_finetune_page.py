"""Fine-tuning in the app: the Training page's pairs mode (a real run in its own process) and the chat view."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.data import build_tokenizer, load_corpus
from lmcore.finetune import chat_reply
from lmcore.jobs import FINISHED, REGISTRY
from lmcore.models import ModelConfig, build_model
from lmcore.sample import SamplingConfig
from lmcore.tokenizers import ChatTokenizer
from tests.test_app_views import charts, open_page, texts
from ui import state as S
from ui.render import TRAINED_COLOR

ROOT = Path(__file__).resolve().parents[1]
RUN_S = 120


@pytest.fixture(scope="module")
def base_tok():
    return build_tokenizer("char", load_corpus("builtin:python-docs").text)  # the app's default corpus


@pytest.fixture
def folder(tmp_path, monkeypatch, base_tok):
    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    cfg = ModelConfig.preset("gpt2", vocab_size=base_tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32)
    save_checkpoint(folder / "base", build_model(cfg), base_tok)
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    yield folder
    for job in REGISTRY.list():
        job.stop()
        job.wait(RUN_S)


def pairs_mode() -> AppTest:
    at = open_page("views/training.py", AppTest.from_file(str(ROOT / "app.py"), default_timeout=RUN_S).run())
    at.radio(key="train_finetune_mode").set_value("pairs").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_a_bad_line_is_one_error_naming_it_and_nothing_can_start(folder):
    before = {job.id for job in REGISTRY.list()}  # runs other tests in this process left behind
    at = pairs_mode()
    at.radio(key="train_pairs_source").set_value("paste").run()
    at.text_area(key="train_pairs_paste").set_value('{"prompt": "a", "response": "b"}\n{"prompt": 3}\n').run()
    assert [e.value.replace("\\", "") for e in at.error] == [
        'the pasted text line 2 needs text fields "prompt" and "response" (or a "messages" list)']
    assert not [b for b in at.button if b.key == "train_pairs_start"]
    assert {job.id for job in REGISTRY.list()} == before
    at.text_area(key="train_pairs_paste").set_value('{"prompt": "a", "response": "\u00e9t\u00e9"}\n').run()
    assert "not in the model's vocabulary: '\u00e9'" in texts(at.error).replace("\\", "")  # a char vocabulary refuses unseen characters
    at.checkbox(key="train_pairs_add_chars").check().run()
    assert not at.error and "grows by 5 tokens" in texts(at.caption)


def test_a_task_shows_its_trained_tokens_and_a_lora_run_trains_with_the_forgetting_curve(folder):
    at = pairs_mode()
    assert "What it teaches:" in texts(at.caption)
    shown = [m.value for m in at.markdown if TRAINED_COLOR in m.value]
    assert len(shown) == 3 and "&lt;|assistant|&gt;" in shown[0]  # the mask: the answers highlighted
    at.radio(key="train_pairs_method").set_value("lora").run()
    at.number_input(key="train_pairs_rank").set_value(2).run()
    share = next(c.value for c in at.caption if "of the weights train" in c.value)
    for key, value in (("iters", 6), ("warmup", 1), ("eval", 3), ("eval_iters", 1), ("batch", 4)):
        at.number_input(key=f"keep.train.{key}").set_value(value)
    at.button(key="train_pairs_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert job.wait(RUN_S) and job.status == FINISHED, job.error
    assert job.name == "base-uppercase" and job.data_info["finetune"]["lora_rank"] == 2
    assert f"{job.data_info['finetune']['trainable_share']:.2%}" in share
    at.run()
    assert not at.exception
    titles = [c["layout"]["yaxis"]["title"]["text"] for c in charts(at) if c["layout"].get("yaxis", {}).get("title")]
    assert "loss on the base's text" in titles
    assert "answers a held-out prompt" in texts(at.markdown)
    ckpt = load_checkpoint(job.checkpoint_path)
    assert isinstance(ckpt.tokenizer, ChatTokenizer)


def test_the_generation_page_chats_with_a_fine_tuned_model_and_not_with_a_plain_one(folder, base_tok):
    at = open_page("views/generation.py")
    assert not at.chat_input  # a plain model: no chat view
    chat = ChatTokenizer(base_tok)
    torch.manual_seed(1)
    cfg = ModelConfig.preset("gpt2", vocab_size=chat.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32)
    path = save_checkpoint(folder / "chatty", build_model(cfg), chat)
    at = open_page("views/generation.py")
    picker = at.selectbox(key=S.GENERATION_MODEL)
    picker.select_index(next(i for i, o in enumerate(picker.options) if "chatty" in o)).run()
    assert at.chat_input
    at.chat_input(key="generation.chat_input").set_value("abc").run()
    assert not at.exception and not at.error
    ckpt = load_checkpoint(path)
    expected = chat_reply(ckpt.model, ckpt.tokenizer, "abc", 200, SamplingConfig(temperature=0.8, seed=0))
    said = [(m.name, m.children[0].value if m.children else None) for m in at.chat_message]
    assert [(n, t) for n, t in said] == [("user", "abc"), ("assistant", expected or "(an empty answer: the end token came first)")]
