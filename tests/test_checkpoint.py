"""Checkpoints: round trip, the file format, tied weights, every malformed file, names and folders."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lmcore.checkpoint as ck
from lmcore.checkpoint import (
    delete_checkpoint,
    import_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from lmcore.checkpoint_names import checkpoint_path, optimizer_path, sae_files, sae_path, sanitize_name
from lmcore.checkpoint_resume import load_resume_state, resume_settings
from lmcore.errors import CheckpointError
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import CharTokenizer
from lmcore.train import TrainConfig

TEXT = "hello world, the quick brown fox jumps over the lazy dog.\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tok():
    return CharTokenizer.train(TEXT)


def tiny(tok, preset="gpt2", seed=0, **overrides):
    torch.manual_seed(seed)
    sizes = dict(vocab_size=tok.vocab_size, block_size=16)
    if preset in ("gpt2", "llama"):
        sizes.update(n_layer=2, n_head=2, n_embd=32)
    elif preset in ("mamba", "mamba2", "lstm"):
        sizes.update(n_layer=2, n_embd=32)
    return build_model(ModelConfig.preset(preset, **{**sizes, **overrides})).eval()


@pytest.fixture
def good(tmp_path, tok):
    """A valid checkpoint file and the model it holds."""
    model = tiny(tok)
    path = save_checkpoint(
        tmp_path / "good.safetensors",
        model,
        tok,
        train_state={"steps": 5, "val_loss": 2.5, "seed": 1},
        data_info={"documents": True, "source": "names.txt"},
    )
    return path, model


def probe(tok):
    return torch.tensor([tok.encode("the quick brown ")])


# ---------------------------------------------------------------- round trip and format


@pytest.mark.parametrize("preset", ["gpt2", "llama", "bigram", "mamba", "mamba2", "lstm"])
def test_round_trip_gives_identical_logits(tmp_path, tok, preset):
    model = tiny(tok, preset)
    path = save_checkpoint(tmp_path / "m.safetensors", model, tok, train_state={"steps": 3})
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config
    assert ckpt.tokenizer.to_dict() == tok.to_dict()
    assert ckpt.train_state == {"steps": 3}
    assert ckpt.data_info == {"documents": False} and ckpt.documents is False
    assert not ckpt.model.training and ckpt.path == path
    with torch.no_grad():
        assert torch.equal(ckpt.model(probe(tok)), model(probe(tok)))


def test_all_metadata_values_are_strings_and_the_header_keys_are_fixed(good):
    path, _ = good
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert all(isinstance(v, str) for v in raw.values())
    # The golden list: changing it changes the file format.
    assert sorted(raw) == sorted(
        ["format", "config", "tokenizer", "train", "data", "created", "tied", "arch", "preset", "params", "lmcore", "checkpoint_id"]
    )
    assert raw["format"] == "lmcore/1"
    assert json.loads(raw["data"]) == {"documents": True, "source": "names.txt"}
    assert json.loads(raw["train"]) == {"steps": 5, "val_loss": 2.5, "seed": 1}
    assert json.loads(raw["config"])["arch"] == "transformer"
    assert json.loads(raw["tokenizer"])["type"] == "char"
    assert json.loads(raw["tied"]) == {"lm_head.weight": "wte.weight"}
    assert raw["created"].endswith("+00:00") and raw["params"].isdigit()


def test_plain_safetensors_reads_the_weights_with_one_copy_of_tied_ones(good):
    path, model = good
    weights = load_file(str(path))
    expected = set(model.state_dict()) - {"lm_head.weight"}
    assert set(weights) == expected
    for name, t in weights.items():
        assert torch.equal(t, model.state_dict()[name])


def test_tied_weights_survive_and_stay_tied(good, tok):
    path, model = good
    loaded = load_checkpoint(path).model
    assert loaded.lm_head.weight is loaded.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        loaded.wte.weight[0, 0] += 1.0
    assert loaded.lm_head.weight[0, 0] == loaded.wte.weight[0, 0]


def test_untied_models_store_both_matrices(tmp_path, tok):
    model = tiny(tok, tie_weights=False)
    path = save_checkpoint(tmp_path / "untied", model, tok)  # the suffix is added
    assert path.name == "untied.safetensors"
    assert {"wte.weight", "lm_head.weight"} <= set(load_file(str(path)))
    assert read_metadata(path)["tied"] == {}
    loaded = load_checkpoint(path).model
    assert loaded.lm_head.weight is not loaded.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_read_metadata_parses_json_values_without_loading_weights(good):
    path, _ = good
    meta = read_metadata(path)
    assert meta["config"]["n_layer"] == 2 and meta["train"]["steps"] == 5
    assert meta["data"]["documents"] is True and meta["tokenizer"]["type"] == "char"


def test_no_pickle_and_no_torch_load_in_the_checkpoint_code():
    modules = sorted(Path(ck.__file__).parent.glob("checkpoint*.py"))
    assert {m.stem for m in modules} >= {"checkpoint", "checkpoint_names", "checkpoint_header", "checkpoint_resume"}
    for module in modules:
        source = module.read_text()
        assert not re.search(r"torch\.load\(|^\s*(import|from) pickle", source, re.MULTILINE), module.name


# ---------------------------------------------------------------- atomic writes and resume state


def test_a_failed_write_leaves_the_old_file_intact(good, tok, monkeypatch):
    path, model = good
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", half_written)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, tiny(tok, seed=1), tok)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["good.safetensors"]  # no temporary file left


def test_resume_state_round_trips_through_safetensors(tmp_path, tok):
    model = tiny(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(probe(tok)).sum().backward()
    opt.step()
    state = {"version": 1, "step": 7, "best": None, "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
    path = save_checkpoint(tmp_path / "r.safetensors", model, tok, optimizer=state)
    assert optimizer_path(path).name == "r.optim.safetensors"
    back = load_resume_state(path)
    assert back["step"] == 7 and back["best"] is None and torch.equal(back["rng"], state["rng"])
    saved, loaded = state["optimizer"], back["optimizer"]
    assert loaded["param_groups"][0]["betas"] == (0.9, 0.95)  # tuples stay tuples
    assert set(loaded["state"]) == set(saved["state"])  # integer keys stay integers
    for k, s in saved["state"].items():
        for name, value in s.items():
            assert torch.equal(loaded["state"][k][name], value)
    fresh = torch.optim.AdamW(tiny(tok).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded)  # torch accepts it


def test_stale_resume_state_is_refused(tmp_path, tok):
    model = tiny(tok)
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "a.safetensors", model, tok, optimizer=opt)
    keep = optimizer_path(path).read_bytes()
    save_checkpoint(path, model, tok, optimizer=opt)  # new weights, new id
    optimizer_path(path).write_bytes(keep)  # the old optimizer file put back beside them
    with pytest.raises(CheckpointError, match="belongs to other weights"):
        load_resume_state(path)
    save_checkpoint(path, model, tok)  # weights only: a stale optimizer file is removed
    assert not optimizer_path(path).exists() and load_resume_state(path) is None


def test_resume_settings_rebuild_the_run_from_the_metadata(tmp_path, tok):
    model = tiny(tok, "llama")
    run = TrainConfig(max_iters=50, lr=1e-3, seed=7, time_budget_s=30.0)
    path = save_checkpoint(tmp_path / "r.safetensors", model, tok, train_state={"steps": 12, "config": run.to_dict()},
                           data_info={"documents": True, "source": "builtin:python-names"})  # fmt: skip
    got = resume_settings(path)
    assert got.config == model.config and got.tokenizer.to_dict() == tok.to_dict()
    assert got.steps == 12 and got.data_info == {"documents": True, "source": "builtin:python-names"}
    assert got.train_config == dataclasses.replace(run, time_budget_s=None)  # a budget is for one sitting
    more = resume_settings(path, {"max_iters": 80, "time_budget_s": 5.0})
    assert (more.train_config.max_iters, more.train_config.lr, more.train_config.time_budget_s) == (80, 1e-3, 5.0)
    bare = resume_settings(save_checkpoint(tmp_path / "bare.safetensors", model, tok))
    assert bare.steps == 0 and bare.train_config == TrainConfig() and bare.data_info == {"documents": False}
    broken = rewrite(path, tmp_path / "broken.safetensors", meta_update={"tokenizer": '{"type": "char", "chars": 5}'})
    with pytest.raises(CheckpointError, match="broken.safetensors holds an unusable tokenizer"):
        resume_settings(broken)


def test_a_checkpoint_whose_header_length_starts_like_a_pickle_loads(tmp_path, tok):
    # The first two bytes of a safetensors file are its header length: 80 05 is also
    # how a pickle starts. A real checkpoint with such a header must still load.
    model = tiny(tok)
    path = tmp_path / "m.safetensors"
    target = 0x0580 + 0x10000  # bytes 80 05 01 00 ...
    pad = 0
    for _ in range(50):
        save_checkpoint(path, model, tok, data_info={"source": "x" * pad})
        n = header_bytes(path) - 8
        if n == target:
            break
        pad += target - n
    assert path.read_bytes()[:2] == b"\x80\x05"
    loaded = load_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(probe(tok)), model(probe(tok)), rtol=0, atol=0)


# ---------------------------------------------------------------- malformed files


def rewrite(src: Path, dst: Path, tensors=None, metadata=None, drop=(), extra=None, meta_update=None, meta_drop=()):
    """A copy of a good checkpoint with some tensors or metadata changed."""
    t = load_file(str(src)) if tensors is None else tensors
    for name in drop:
        del t[name]
    t.update(extra or {})
    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata()) if metadata is None else metadata
    m.update(meta_update or {})
    for key in meta_drop:
        m.pop(key, None)
    save_file(t, str(dst), metadata=m or None)
    return dst


def header_bytes(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def cfg_json(**changes) -> str:
    base = ModelConfig.preset("gpt2", vocab_size=CharTokenizer.train(TEXT).vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return json.dumps({**base.to_dict(), **changes})


def _case(name):
    """Make the malformed file called ``name`` from the good one; returns (path, words in the message)."""

    def make(good_path: Path, d: Path):
        data = good_path.read_bytes()
        p = d / f"{name}.safetensors"
        w = load_file(str(good_path))
        if name == "missing":
            return d / "nope.safetensors", "no checkpoint"
        if name == "directory":
            p.mkdir()
            return p, "directory"
        if name == "empty":
            p.write_bytes(b"")
            return p, "empty"
        if name == "random":
            p.write_bytes(os.urandom(4096))
            return p, "not a valid safetensors"
        if name == "tiny":
            p.write_bytes(b"\x01\x02")
            return p, "too short"
        if name == "truncated_data":
            p.write_bytes(data[: len(data) - 100])
            return p, "truncated"
        if name == "truncated_header":
            p.write_bytes(data[: header_bytes(good_path) - 10])
            return p, "header"
        if name == "pickle":
            p.write_bytes(pickle.dumps({"wte.weight": [1.0, 2.0]}))
            return p, "pickle"
        if name == "torch_save":
            torch.save({"w": torch.zeros(3)}, p)  # writing only; lmcore must refuse to read it
            return p, "zip"
        if name == "huge_header":
            p.write_bytes(struct.pack("<Q", 2**62) + b"{}" + b"\0" * 64)
            return p, "header"
        if name == "header_not_json":
            p.write_bytes(struct.pack("<Q", 8) + b"notjson!" + b"\0" * 16)
            return p, "not JSON"
        if name == "no_metadata":
            return rewrite(good_path, p, metadata={}), "no lmcore metadata"
        if name == "no_format":
            return rewrite(good_path, p, meta_drop=["format"]), "no lmcore metadata"
        if name == "future_format":
            return rewrite(good_path, p, meta_update={"format": "lmcore/2"}), "lmcore/2"
        if name == "other_format":
            return rewrite(good_path, p, meta_update={"format": "pt"}), "not an lmcore checkpoint"
        if name == "no_config":
            return rewrite(good_path, p, meta_drop=["config"]), "lacks the metadata config"
        if name == "config_not_json":
            return rewrite(good_path, p, meta_update={"config": "{nope"}), "invalid JSON"
        if name == "config_not_object":
            return rewrite(good_path, p, meta_update={"config": "[1, 2]"}), "not a JSON object"
        if name == "config_invalid":
            return rewrite(good_path, p, meta_update={"config": cfg_json(n_embd=30, n_head=4)}), "divisible"
        if name == "config_unknown_field":
            return rewrite(good_path, p, meta_update={"config": cfg_json(flux=3)}), "unknown model config"
        if name == "config_unknown_arch":
            return rewrite(good_path, p, meta_update={"config": cfg_json(arch="gru")}), "unknown architecture"
        if name == "train_not_json":
            return rewrite(good_path, p, meta_update={"train": "{"}), "invalid JSON"
        if name == "tokenizer_unknown":
            return rewrite(good_path, p, meta_update={"tokenizer": '{"type": "sentencepiece"}'}), "unknown tokenizer"
        if name == "tokenizer_damaged":
            return rewrite(good_path, p, meta_update={"tokenizer": '{"type": "char", "chars": 5}'}), "tokenizer"
        if name == "tokenizer_vocab_mismatch":
            small = json.dumps(CharTokenizer.train("abc").to_dict())
            return rewrite(good_path, p, meta_update={"tokenizer": small}), "its tokenizer has 4 tokens"
        if name == "missing_tensor":
            return rewrite(good_path, p, drop=["h.0.mlp.c_fc.weight"]), "lacks tensors"
        if name == "extra_tensor":
            return rewrite(good_path, p, extra={"h.9.attn.weight": torch.zeros(2)}), "does not know"
        if name == "wrong_dtype":
            w["ln_f.weight"] = w["ln_f.weight"].double()
            return rewrite(good_path, p, tensors=w), "stored as float64"
        if name == "int_weights":
            w["wte.weight"] = torch.zeros_like(w["wte.weight"], dtype=torch.int32)
            return rewrite(good_path, p, tensors=w), "stored as int32"
        if name == "wrong_shape":
            w["wpe.weight"] = torch.zeros(8, 32)
            return rewrite(good_path, p, tensors=w), "shape"
        if name == "config_too_many_layers":  # must be refused before a million layers are built
            return rewrite(good_path, p, meta_update={"config": cfg_json(n_layer=1_000_000)}), "1,000,000 layers"
        if name == "config_one_layer_more":
            return rewrite(good_path, p, meta_update={"config": cfg_json(n_layer=3)}), "lacks tensors"
        if name == "config_shape_mismatch":
            return rewrite(good_path, p, meta_update={"config": cfg_json(n_embd=64)}), "shape"
        if name == "nan_weights":
            w["ln_f.weight"][0] = float("nan")
            return rewrite(good_path, p, tensors=w), "NaN"
        if name == "tied_to_nothing":
            return rewrite(good_path, p, meta_update={"tied": '{"lm_head.weight": "ghost.weight"}'}), "ties"
        if name == "tied_dropped":
            return rewrite(good_path, p, meta_update={"tied": "{}"}), "lacks tensors"
        raise AssertionError(name)

    return make


MALFORMED = [
    "missing", "directory", "empty", "random", "tiny", "truncated_data", "truncated_header", "pickle", "torch_save",
    "huge_header", "header_not_json", "no_metadata", "no_format", "future_format", "other_format", "no_config",
    "config_not_json", "config_not_object", "config_invalid", "config_unknown_field", "config_unknown_arch",
    "train_not_json", "tokenizer_unknown", "tokenizer_damaged", "tokenizer_vocab_mismatch", "missing_tensor",
    "extra_tensor", "wrong_dtype", "int_weights", "wrong_shape", "config_too_many_layers", "config_one_layer_more",
    "config_shape_mismatch", "nan_weights", "tied_to_nothing", "tied_dropped",
]  # fmt: skip


@pytest.mark.parametrize("name", MALFORMED)
def test_every_malformed_file_raises_one_line_checkpoint_error(good, tmp_path, name):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    path, words = _case(name)(good[0], bad_dir)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and words.lower() in message.lower(), message
    with pytest.raises(CheckpointError):  # the same file is refused on import too, and nothing is stored
        import_checkpoint(path.read_bytes() if path.is_file() else b"", "upload", tmp_path / "store")
    assert list((tmp_path / "store").iterdir()) == []


# ---------------------------------------------------------------- names and folders


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../x", "x"),
        ("/etc/passwd", "etc_passwd"),
        ("..\\..\\windows\\system32", "windows_system32"),
        ("my model", "my_model"),
        ("model.safetensors", "model"),
        ("model.optim.safetensors", "model"),
        (".hidden", "hidden"),
        ("con", "con_"),
        ("LPT1", "LPT1_"),
        ("naïve-模型", "naïve-模型"),
        ("a\x00b\nc", "a_b_c"),
        ("x" * 300, "x" * 100),
    ],
)
def test_sanitize_name(name, expected):
    assert sanitize_name(name) == expected


@pytest.mark.parametrize("name", ["", "   ", "..", "../..", "/", "...", "🙂", "\x00"])
def test_sanitize_name_refuses_names_with_nothing_usable(name):
    with pytest.raises(CheckpointError):
        sanitize_name(name)


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/../../b", "~root", "nul"])
def test_checkpoint_path_stays_inside_the_folder(tmp_path, name):
    path = checkpoint_path(tmp_path, name)
    assert path.parent == tmp_path.resolve() and path.name.endswith(".safetensors")
    assert ".." not in path.name and not path.name.startswith(".")


def test_list_import_and_delete(good, tmp_path, tok):
    path, _ = good
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    os.utime(tmp_path / "junk.safetensors", (1, 1))  # the oldest
    save_checkpoint(tmp_path / "resumable.safetensors", tiny(tok), tok, optimizer=torch.optim.AdamW(tiny(tok).parameters()))
    os.utime(tmp_path / "resumable.safetensors", (2**31, 2**31))  # the newest
    rows = list_checkpoints(tmp_path)
    assert [r["name"] for r in rows] == ["resumable", "good", "junk"]  # newest first, no .optim files
    good_row = rows[1]
    assert good_row["error"] is None and good_row["arch"] == "transformer" and good_row["preset"] == "gpt2"
    assert good_row["steps"] == 5 and good_row["val_loss"] == 2.5 and good_row["tokenizer"] == "char"
    assert good_row["params"] == tiny(tok).num_params() and good_row["vocab_size"] == tok.vocab_size
    assert good_row["size_bytes"] == path.stat().st_size
    assert rows[2]["error"] and "\n" not in rows[2]["error"] and rows[2]["arch"] is None
    assert list_checkpoints(tmp_path / "absent") == []

    store = tmp_path / "store"
    first = import_checkpoint(path.read_bytes(), "../../uploaded.safetensors", store)
    second = import_checkpoint(path.read_bytes(), "uploaded", store)
    assert (first.name, second.name) == ("uploaded.safetensors", "uploaded-2.safetensors")
    assert first.parent == store.resolve() and load_checkpoint(second).train_state["steps"] == 5
    assert sorted(p.name for p in store.iterdir()) == ["uploaded-2.safetensors", "uploaded.safetensors"]

    resumable = tmp_path / "resumable.safetensors"
    delete_checkpoint(resumable)
    assert not resumable.exists() and not optimizer_path(resumable).exists()
    with pytest.raises(CheckpointError):
        delete_checkpoint(resumable)
    with pytest.raises(CheckpointError):
        delete_checkpoint(tmp_path / "notes.txt")


def test_autoencoders_beside_a_checkpoint_are_listed_with_it_and_deleted_with_it_or_alone(tmp_path, tok):
    from lmcore.runlog import list_runs
    from lmcore.sae import SparseAutoencoder

    model = tiny(tok)
    for name in ("m", "m-2"):
        save_checkpoint(tmp_path / f"{name}.safetensors", model, tok, optimizer=torch.optim.AdamW(model.parameters()))
    first = sae_path(tmp_path / "m.safetensors", "blocks.1.hook_resid_post-64-k4")
    assert first.name == "m.sae-blocks_1_hook_resid_post-64-k4.safetensors"
    second = sae_path(tmp_path / "m.safetensors", "../other")
    assert second.parent == tmp_path and second.name == "m.sae-other.safetensors"
    theirs = sae_path(tmp_path / "m-2.safetensors", "blocks.1.hook_resid_post-64-k4")
    for path in (first, second, theirs):
        SparseAutoencoder(32, 64, 4, hook="blocks.1.hook_resid_post").save(path)
    rows = {r["name"]: r for r in ck.list_checkpoints(tmp_path)}
    assert sorted(rows) == ["m", "m-2"]  # an autoencoder is no model of its own
    assert rows["m"]["sae_files"] == [first, second] and rows["m-2"]["sae_files"] == [theirs]
    assert sorted(r["name"] for r in list_runs(tmp_path)) == ["m", "m-2"]
    assert sae_files(tmp_path / "m.safetensors") == [first, second]

    ck.delete_sae(second)  # one alone
    assert not second.exists() and first.exists() and (tmp_path / "m.safetensors").exists()
    with pytest.raises(CheckpointError, match="already be deleted"):
        ck.delete_sae(second)
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        ck.delete_sae(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not a checkpoint file name"):
        delete_checkpoint(first)
    delete_checkpoint(tmp_path / "m.safetensors")  # with the model
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m-2.safetensors", "m-2.optim.safetensors", theirs.name]
    )
