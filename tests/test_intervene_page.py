"""The Intervene page, driven through app.py with AppTest on real tiny models (a gpt2 and a Mamba)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmcore.checkpoint import save_checkpoint
from lmcore.data import build_tokenizer, corpus_from_text
from lmcore.models import ModelConfig, build_model
from tests.test_app_views import charts, open_page, texts, values

PAGE = "views/intervene.py"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pydoc_data.topics

    folder = tmp_path_factory.mktemp("intervene")
    topics = pydoc_data.topics.topics
    corpus = corpus_from_text("\n".join(topics[k] for k in sorted(topics)[:12]), name="topics")
    tok = build_tokenizer("char", corpus.text)
    for name, preset, extra in (("b-mamba", "mamba", dict(d_state=4)), ("a-gpt", "gpt2", dict(n_head=2))):
        torch.manual_seed(0)
        cfg = ModelConfig.preset(preset, vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_embd=32, **extra)
        save_checkpoint(folder / name, build_model(cfg), tok)  # the newest (the gpt) is the picker's first
    return folder


@pytest.fixture
def ckpt_dir(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    return folder


def test_switching_a_head_off_colours_the_loss_change_and_patches_the_induction_pair(ckpt_dir: Path) -> None:
    at = open_page(PAGE)
    assert "what the part *does*" in texts(at.markdown)
    assert at.selectbox(key="keep.intervene.model").value.endswith("a-gpt.safetensors")
    sweep, patch_resid, patch_heads, attr, attr_heads = charts(at)
    assert values(sweep["data"][0]["z"]).shape == (2, 2)  # layers x heads
    assert "residual stream restored" in patch_resid["layout"]["title"]["text"]
    assert len(patch_resid["data"][0]["x"]) == 50  # 25 + 25 tokens
    assert "Nothing is switched off" in texts(at.caption)
    assert "little to restore" in texts(at.caption)  # an untrained model: no clean-corrupted gap
    text = at.text_area(key="keep.intervene.text").value
    html = next(m.value for m in at.markdown if "<span" in m.value)
    assert html.count("<span") == len(text)  # a char model: one span per character
    assert "rgba(220, 40, 40, 0.00)" in html or "rgba(40, 90, 220, 0.00)" in html  # nothing changed yet

    at.button_group(key="intervene.heads.1").set_value([0]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Mean loss" in texts(at.caption) and "nats per token" in texts(at.caption)
    html = next(m.value for m in at.markdown if "<span" in m.value)
    assert "loss " in html and "-&gt;" in html and "before:" in html
    assert at.table  # top candidates before and after

    at.radio(key="intervene.pair").set_value("Name swap (python-names)").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "the loss on the second name" in texts(at.caption)


def steered_texts(at) -> list[str]:
    prompt = at.text_input(key="keep.intervene.steer_prompt").value
    return [c.value for c in at.code if c.value.startswith(prompt)]


def test_steering_changes_what_the_model_writes(ckpt_dir: Path) -> None:
    at = open_page(PAGE)
    at.slider(key="intervene.steer_scale").set_value(0.0).run()
    plain, same = steered_texts(at)
    assert plain == same  # scale 0: the plain model
    at.slider(key="intervene.steer_scale").set_value(20.0).run()
    assert not at.exception
    plain, pushed = steered_texts(at)
    assert plain != pushed


def test_a_mamba_gets_layers_and_channels_and_says_what_differs(ckpt_dir: Path) -> None:
    at = open_page(PAGE)
    at.selectbox(key="keep.intervene.model").select("ckpt:" + str(ckpt_dir / "b-mamba.safetensors")).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "no attention heads" in texts(at.info) and "state" in texts(at.info) and "Mamba-2" not in texts(at.info)
    assert "layer 1 · channel 17" in at.multiselect(key="intervene.channels").options
    at.button_group(key="intervene.layers").set_value([1]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Mean loss" in texts(at.caption)
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    assert any("residual stream restored" in t for t in titles)
    assert not any("head's output" in t for t in titles)
    assert "no heads to patch" in texts(at.caption)


@pytest.fixture
def mamba2_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    corpus = corpus_from_text("\n".join(topics[k] for k in sorted(topics)[:12]), name="topics")
    tok = build_tokenizer("char", corpus.text)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("mamba2", vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_embd=32, d_state=8)
    save_checkpoint(tmp_path / "m2", build_model(cfg), tok)
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    return tmp_path


def test_a_mamba2_gets_layers_and_channels_like_a_mamba(mamba2_dir: Path) -> None:
    at = open_page(PAGE)
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="keep.intervene.model").value.endswith("m2.safetensors")
    assert "no attention heads" in texts(at.info) and "Mamba-2" in texts(at.info)
    # Each channel says which of the state-space heads (16 channels each in the preset) owns it.
    options = at.multiselect(key="intervene.channels").options
    assert "layer 1 · channel 17 (head 1)" in options and "layer 0 · channel 15 (head 0)" in options
    at.button_group(key="intervene.layers").set_value([1]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Mean loss" in texts(at.caption)
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    assert any("residual stream restored" in t for t in titles)
    assert "no heads to patch" in texts(at.caption)
