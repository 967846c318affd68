"""Exports work with transformers' usual idioms; opened back, they report unseen text in one line and keep their record."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmcore.errors import TokenizerError
from lmcore.hf import export_model, import_checkpoint, import_model
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer

from tests.helpers import ROOT, run_lmcore

TEXT = "hello world, a small corpus.\nanother line of it.\n"
UNSEEN = "x_0"  # none of these characters is in TEXT


def _export(tmp_path: Path, preset: str = "llama", steps: int = 0, documents: bool = False) -> Path:
    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset(preset, vocab_size=tok.vocab_size, n_layer=1, n_embd=16, block_size=32))
    train = {"steps": steps, "tokens_seen": 1234, "val_loss": 2.5} if steps else {}
    return export_model(model, tok, tmp_path / f"export-{preset}", train, {"name": "tiny", "documents": documents})


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_transformers_encodes_unseen_characters_and_generates_from_its_own_encoding(tmp_path: Path, preset) -> None:
    out = _export(tmp_path, preset)
    spec = json.loads((out / "tokenizer.json").read_text())
    assert spec["model"]["unk_token"] in spec["model"]["vocab"]  # the declared unknown token exists
    tok = AutoTokenizer.from_pretrained(out)
    assert "token_type_ids" not in tok("hello")
    assert len(tok(UNSEEN).input_ids) == len(UNSEEN)
    model = AutoModelForCausalLM.from_pretrained(out)
    for prompt in ("hello", "hello " + UNSEEN):
        generated = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False)
        assert generated.shape[1] > len(prompt)


def test_opened_back_an_export_reports_unseen_characters_in_one_line(tmp_path: Path) -> None:
    back = import_model(str(_export(tmp_path)))
    assert back.tokenizer.encode("hello") == CharTokenizer.train(TEXT).encode("hello")
    with pytest.raises(TokenizerError, match=r"3 character\(s\) never seen.*'0', '_', 'x'"):
        back.tokenizer.encode(UNSEEN)


def test_an_older_export_without_its_unknown_token_reports_it_too(tmp_path: Path) -> None:
    out = _export(tmp_path)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["model"]["unk_token"] = "<|unk|>"  # as exports used to write it: a token not in the vocabulary
    (out / "tokenizer.json").write_text(json.dumps(spec))
    back = import_model(str(out))
    with pytest.raises(TokenizerError, match="never seen"):
        back.tokenizer.encode("hello " + UNSEEN)


def test_cli_generate_with_an_unseen_character_says_one_line(tmp_path: Path) -> None:
    ckpt, _ = import_checkpoint(str(_export(tmp_path)), tmp_path / "back.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = run_lmcore("generate", "--checkpoint", str(ckpt), "--prompt", UNSEEN, "--max-new-tokens", "3",
                     "--device", "cpu", cwd=ROOT, env=env, text=True)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "never seen" in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1, run.stderr


def test_the_pages_of_an_opened_export_report_unseen_characters(tmp_path: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    out = _export(tmp_path)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/checkpoints.py").run()
    at.text_input(key="checkpoints.hf.source").set_value(str(out)).run()
    at.button(key="checkpoints.hf.open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    at.switch_page("views/generation.py").run()
    assert not at.exception, at.exception
    at.text_area(key="keep.generation.prompt").set_value(UNSEEN).run()  # the prompt box is drawn
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert errors and all("never seen" in e and "\n" not in e for e in errors), errors

    at.switch_page("views/attention.py").run()
    assert not at.exception, at.exception
    at.text_input(key="keep.attention.prompt").set_value("hello " + UNSEEN).run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error if "never seen" in e.value], [e.value for e in at.error]


def test_opening_an_exported_folder_keeps_its_name_free_its_sizes_readable_and_its_steps(
    tmp_path: Path, monkeypatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from lmcore.checkpoint import list_checkpoints, save_checkpoint
    from lmcore.hf import export_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    tok = CharTokenizer.train(TEXT)
    model = build_model(ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_embd=16, block_size=32))
    original = save_checkpoint(folder / "mymodel.safetensors", model, tok, train_state={"steps": 420, "val_loss": 2.0})
    exported = export_checkpoint(original, tmp_path / "exports" / "mymodel")  # the zip's folder has the same name
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/checkpoints.py").run()
    at.text_input(key="checkpoints.hf.source").set_value(str(exported)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.text_input(key="checkpoints.hf.name").value == "mymodel-2"
    shown = {m.label: m.value for m in at.metric}
    for label in ("Download / on disk", "Memory"):
        assert not shown[label].startswith(("0 ", "0.00 ")), shown
    assert "KB" in shown["Memory"], shown
    at.button(key="checkpoints.hf.open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rows = {r["name"]: r for r in list_checkpoints(folder)}
    assert rows["mymodel-2"]["steps"] == 420 and rows["mymodel"]["steps"] == 420
    table = at.dataframe[0].value
    assert list(table.loc[table["name"] == "mymodel-2", "steps"]) == [420]
    assert list(table.loc[table["name"] == "mymodel-2", "architecture"]) == ["gpt2 (imported)"]
    # The next suggestion moves on: the name just taken is not offered again.
    at.text_input(key="checkpoints.hf.source").set_value(str(exported) + "/").run()
    assert at.text_input(key="checkpoints.hf.name").value == "mymodel-3"


def test_a_model_from_elsewhere_is_listed_as_imported_not_as_zero_steps(tmp_path: Path) -> None:
    from lmcore.checkpoint import list_checkpoints

    out = _export(tmp_path)
    (out / "lmcore.json").unlink()  # as any transformers model: no training record of ours
    import_checkpoint(str(out), tmp_path / "ck" / "other.safetensors")
    [row] = list_checkpoints(tmp_path / "ck")
    assert row["steps"] is None and row["imported"]


def test_served_to_a_network_the_folder_box_opens_only_the_operators_folder(tmp_path: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    out = _export(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/checkpoints.py").run()
    import streamlit as st

    answers = []
    try:
        st.config.set_option("server.address", "0.0.0.0")
        for source in (str(out), "/etc", str(tmp_path / "nowhere")):
            at.text_input(key="checkpoints.hf.source").set_value(source).run()
            assert not at.exception and len(at.error) == 1, [e.value for e in at.error]
            answers.append(re.sub(r"'[^']*'", "SOURCE", at.error[0].value, count=1))
        monkeypatch.setenv("PLAYGROUND_HF_DIR", str(tmp_path))
        at.text_input(key="checkpoints.hf.source").set_value(str(out) + "/").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
    finally:
        st.config.set_option("server.address", "127.0.0.1")
    assert len(set(answers)) == 1, answers
