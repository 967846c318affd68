"""The Features page, driven through app.py with AppTest on a real tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmcore.checkpoint import save_checkpoint
from lmcore.data import build_tokenizer, load_corpus
from lmcore.models import ModelConfig, build_model
from tests.test_app_views import open_page, texts

PAGE = "views/features.py"


@pytest.fixture
def ckpt_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    text = load_corpus("builtin:python-docs").text  # what the page trains on: this local file it refuses
    (tmp_path / "text.txt").write_text(text[:2000], encoding="utf-8")
    tok = build_tokenizer("char", text)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "m", build_model(cfg), tok, data_info={"source": str(tmp_path / "text.txt")})
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))
    return tmp_path


def test_training_an_autoencoder_shows_its_evaluation_features_and_contexts(ckpt_dir: Path) -> None:
    at = open_page(PAGE)
    assert "sparse autoencoder" in texts(at.markdown)
    assert at.selectbox(key="features.hook").value == "blocks.1.hook_resid_post"
    assert at.text_input(key="features.text").value == "builtin:python-docs"  # the app reads no local paths
    at.selectbox(key="features.n").set_value(128)
    at.slider(key="features.k").set_value(4)
    at.number_input(key="features.tokens").set_value(5_000)
    at.button(key="features.train").click().run(timeout=120)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert "Cross-entropy recovered" in labels and "Dead features" in labels
    l0 = next(m for m in at.metric if m.label.startswith("L0"))
    assert 0 < float(l0.value) <= 4
    assert "held-out tokens at blocks.1.hook_resid_post" in texts(at.caption)
    table = at.dataframe[0].value
    assert {"feature", "density", "same token share"} <= set(table.columns)
    assert list(table["density"]) == sorted(table["density"], reverse=True)
    html = [m.value for m in at.markdown if "<span" in m.value]
    assert html and "outline:1px solid" in html[0]  # the peak token is framed
    assert len(at.table) == 2  # the tokens it pushes up and down
    before = html[0]
    second = int(table["feature"][1])  # the second densest: another feature, other contexts
    at.selectbox(key="features.feature").set_value(second).run()
    assert not at.exception, [e.message for e in at.exception]
    assert f"density {table['density'][1]:.2%}" in texts(at.markdown)
    assert next(m.value for m in at.markdown if "<span" in m.value) != before


def frame(at, column: str):
    """The first table on the page with this column (AppTest does not give a table's key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _train(at, tokens: int = 3_000):
    at.selectbox(key="features.n").set_value(128)
    at.slider(key="features.k").set_value(4)
    at.number_input(key="features.tokens").set_value(tokens)
    at.button(key="features.train").click().run(timeout=120)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_search_by_token_and_by_text_and_steering_side_by_side(ckpt_dir: Path) -> None:
    at = _train(open_page(PAGE))
    at.text_input(key="features.search_token").set_value("e").run()
    assert not at.exception, [e.message for e in at.exception]
    table = frame(at, "mean activation")
    assert {"feature", "mean activation", "fires on it"} <= set(table.columns) and len(table) >= 1
    assert list(table["mean activation"]) == sorted(table["mean activation"], reverse=True)
    at.text_input(key="features.search_token").set_value("the").run()
    assert "3 tokens" in texts(at.warning)
    at.text_area(key="features.search_text").set_value("def f(x):\n    return x").run()
    assert not at.exception, [e.message for e in at.exception]
    top = frame(at, "total")
    assert len(top) >= 1 and list(top["total"]) == sorted(top["total"], reverse=True)
    per_token = frame(at, "features")
    assert len(per_token) == len("def f(x):\n    return x") and per_token["features"].str.len().min() > 0
    at.text_input(key="keep.features.steer_prompt").set_value("def ")
    at.slider(key="features.steer_strength").set_value(0.0)
    at.button(key="features.steer").click().run(timeout=60)
    assert not at.exception, [e.message for e in at.exception]
    plain, steered = [c.value for c in at.code if c.value.startswith("def ")]
    assert plain == steered and plain.startswith("def ")  # strength 0: the plain model's text
    at.slider(key="features.steer_strength").set_value(100.0)
    at.button(key="features.steer").click().run(timeout=60)
    plain2, steered2 = [c.value for c in at.code if c.value.startswith("def ")]
    assert plain2 == plain and steered2 != plain  # the same seed: only the push differs
    assert "strength +100" in texts(at.markdown)


def test_a_saved_autoencoder_loads_again_and_goes_with_its_model_on_the_checkpoints_page(ckpt_dir: Path) -> None:
    from lmcore import sae as S

    at = _train(open_page(PAGE))
    name = "m.sae-blocks_1_hook_resid_post-128-k4.safetensors"
    at.button(key="features.save").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert f"Saved {name}" in texts(at.success)
    saved = ckpt_dir / name
    assert S.SparseAutoencoder.load(saved).config_dict()["n_features"] == 128
    recovered = next(m.value for m in at.metric if m.label == "Cross-entropy recovered")

    at = open_page(PAGE)  # a new session: nothing trained, the saved one can be loaded
    assert at.selectbox(key="features.saved").value == str(saved)
    at.button(key="features.load").click().run(timeout=60)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert f"Loaded from {name}" in texts(at.caption)
    assert next(m.value for m in at.metric if m.label == "Cross-entropy recovered") == recovered

    at = open_page("views/checkpoints.py", at)
    assert set(at.dataframe[0].value["name"]) == {"m"}  # the autoencoder is no model of its own
    assert at.selectbox(key="checkpoints.sae").value == str(saved)
    assert at.get("download_button")[-1].proto.label == "Download the autoencoder"
    at.button(key="checkpoints.sae_delete").click().run()
    assert not at.exception and not saved.exists() and (ckpt_dir / "m.safetensors").exists()
    assert f"Deleted {name}" in texts(at.success).replace("\\", "")

    S.SparseAutoencoder(16, 32, 2, hook="blocks.1.hook_resid_post").save(saved)  # another one, deleted with the model
    at.run()
    at.checkbox(key="checkpoints.confirm.m").check().run()
    assert "and its 1 autoencoder" in at.checkbox(key="checkpoints.confirm.m").label
    at.button(key="checkpoints.delete").click().run()
    assert not at.exception and sorted(p.name for p in ckpt_dir.iterdir()) == ["text.txt"]
