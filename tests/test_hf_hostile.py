"""Hostile Hugging Face folders are refused in one line, cheaply, without hanging, and never read outside themselves."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import hostile_hf as hostile
from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.errors import CheckpointError, ConfigError, LMCoreError, TokenizerError
from lmcore.hf import describe_source, import_model, locate_source
from lmcore.models import ModelConfig, build_model
from lmcore.tokenizers import HFTokenizer
from lmcore.tokenizers.hf import backtracking_hazard
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
# Importing torch, transformers and tokenizers takes about 350 MB; a refusal adds little to it.
CHEAP_MB = 150


def _one_line_refusal(result: dict, *words: str) -> None:
    assert result["rc"] == 2, result
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result
    assert all(w in lines[0] for w in words), result


# Each maker, and the words of its refusal. Measured before the bounds: 3.6 GB and a MemoryError
# traceback, 3.5 GB, 2.9 GB, 1.5 to 2.5 GB and 0.96 GB before the refusal.
COSTLY = {
    "large-config": (hostile.large_config, ["2,648,931,840 parameters", "does not belong"]),
    "mid-config": (hostile.mid_config, ["parameters", "does not belong"]),
    "million-layers": (hostile.many_layers, ["1,000,000 layers"]),
    "header-bomb": (hostile.header_bomb, ["header"]),
    "million-tokens": (hostile.many_tokens, ["tokenizer.json"]),
}


def test_import_and_describe_refuse_folders_that_cost_more_than_their_size(tmp_path: Path) -> None:
    """All of them in one process, whose peak memory (which only grows) stays near that of its imports."""
    commands, words = [], []
    for name, (maker, expected) in COSTLY.items():
        folder = maker(tmp_path)
        commands += [["import", str(folder), "--out", str(tmp_path / f"{name}.safetensors")], ["describe", str(folder)]]
        words += [expected, expected]
    commands.append(["describe", str(hostile.many_layers(tmp_path, 200_000))])  # killed for memory before
    words.append(["200,000 layers"])
    results = hostile.measure_cli(commands, ROOT, timeout_s=300)
    assert len(results) == len(commands), results[-1]
    for result, expected in zip(results, words):
        _one_line_refusal(result, *expected)
    assert results[-1]["growth_mb"] < CHEAP_MB, results
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_pipe_in_place_of_a_file_is_refused_without_waiting(tmp_path: Path) -> None:
    folders = [hostile.fifo_index(tmp_path), hostile.fifo_shard(tmp_path)]
    commands = [["import", str(f), "--out", str(tmp_path / "x.safetensors")] for f in folders]
    results = hostile.measure_cli(commands + [["describe", str(f)] for f in folders], ROOT, timeout_s=120)
    assert len(results) == 4, results[-1]
    for result in results:
        _one_line_refusal(result, "not a regular file")


def _outside_weights(tmp_path: Path) -> Path:
    elsewhere = hostile.valid(tmp_path / "elsewhere")
    return elsewhere / "model.safetensors"


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_a_shard_index_cannot_name_files_outside_the_folder(tmp_path: Path, how: str) -> None:
    folder = hostile.outside_index(tmp_path, _outside_weights(tmp_path), how)
    for read in (import_model, describe_source):
        with pytest.raises(CheckpointError, match="outside") as info:
            read(str(folder))
        assert "\n" not in str(info.value)


def test_a_weights_file_linked_to_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = hostile.symlinked_weights(tmp_path, _outside_weights(tmp_path))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        import_model(str(folder))
    (folder / "tokenizer.json").rename(folder / "real-tokenizer.json")
    (folder / "model.safetensors").unlink()
    shutil.copy(_outside_weights(tmp_path), folder / "model.safetensors")
    (folder / "tokenizer.json").symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    with pytest.raises(CheckpointError, match="outside the model folder"):
        import_model(str(folder))


def test_a_snapshot_of_the_hub_cache_still_opens_through_its_links(tmp_path: Path) -> None:
    """huggingface_hub keeps each file once in blobs/ and links the snapshot's names to it."""
    made = hostile.valid(tmp_path / "made")
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(made.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    assert import_model(str(snapshot)).model.num_params() > 0


def test_the_folder_box_gives_one_answer_for_missing_and_unreadable_folders(tmp_path: Path) -> None:
    hostile.valid(tmp_path / "allowed")
    answers = set()
    for source in ["/etc", str(tmp_path / "does-not-exist"), str(tmp_path), "/etc/passwd"]:
        with pytest.raises(ConfigError) as info:
            locate_source(source)
        answers.add(str(info.value).replace(repr(source), "SOURCE"))
    outside = hostile.valid(tmp_path / "outside")
    with pytest.raises(ConfigError) as info:
        locate_source(str(outside), allowed_root=tmp_path / "allowed")
    answers.add(str(info.value).replace(repr(str(outside)), "SOURCE"))
    assert len(answers) == 1, answers
    assert locate_source(str(tmp_path / "allowed" / "tiny"), allowed_root=tmp_path / "allowed")[0].is_dir()


# --------------------------------------------------------------------------- backtracking tokenizers


def test_patterns_that_backtrack_are_found_and_common_ones_are_not() -> None:
    from lmcore.tokenizers.bpe import PATTERNS

    gpt2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    llama3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")  # fmt: skip
    for safe in [gpt2, llama3, *PATTERNS.values(), r"[\s\S]", " {2,}", "(a|b){1,3}", r"(?:\r?\n)"]:
        assert backtracking_hazard(safe) is None, safe
    for bad in ["(a+)+$", "(a|aa)*", "((ab)*)+", "(?:x*y)*z", "([a-z]+){2,}", r"(\w|\d)+$"]:
        assert backtracking_hazard(bad) is not None, bad


def test_an_import_with_a_backtracking_tokenizer_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = hostile.backtracking_tokenizer(tmp_path)
    [result] = hostile.measure_cli([["import", str(folder), "--out", str(tmp_path / "x.safetensors")]], ROOT)
    _one_line_refusal(result, "(a+)+", "exponential")
    assert "panicked" not in result["stderr"]


def test_a_checkpoint_with_a_backtracking_tokenizer_is_refused_by_eval_and_generate(tmp_path: Path) -> None:
    folder = hostile.valid(tmp_path)
    imported = import_model(str(folder))
    spec = json.loads(imported.tokenizer.tokenizer_json)
    spec["pre_tokenizer"]["pattern"] = {"Regex": "(a+)+$"}
    d = {**imported.tokenizer.to_dict(), "tokenizer_json": json.dumps(spec)}
    # Write the hostile tokenizer into a checkpoint as another program could.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = save_checkpoint(tmp_path / "good.safetensors", imported.model, imported.tokenizer)
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    meta["tokenizer"] = json.dumps(d)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="exponential"):
        load_checkpoint(bad)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    text = tmp_path / "text.txt"
    text.write_text("a" * 5000 + "b")
    for cmd in (["generate", "--checkpoint", str(bad), "--prompt", "a" * 40 + "b", "--max-new-tokens", "2"],
                ["eval", "--checkpoint", str(bad), "--data", str(text)]):  # fmt: skip
        run = run_lmcore(*cmd, "--device", "cpu", cwd=ROOT, env=env, text=True)
        assert run.returncode == 2, run.stderr
        assert "panicked" not in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1, run.stderr


def test_a_pattern_the_check_lets_through_still_ends_in_a_tokenizer_error(tmp_path: Path) -> None:
    """Polynomial backtracking passes the static check; the regex engine's retry limit stops it."""
    imported = import_model(str(hostile.valid(tmp_path)))
    spec = json.loads(imported.tokenizer.tokenizer_json)
    spec["pre_tokenizer"]["pattern"] = {"Regex": "a*a*a*a*a*a*a*$"}
    tok = HFTokenizer(json.dumps(spec), bos_token="<|endoftext|>")
    start = time.process_time()
    with pytest.raises(TokenizerError, match="cannot encode"):
        tok.encode("a" * 300 + "!")
    assert time.process_time() - start < 30


def test_a_sharded_hub_snapshot_is_described_before_its_weights_are_fetched(tmp_path: Path) -> None:
    folder = hostile.fifo_shard(tmp_path)
    (folder / "model-00001-of-00001.safetensors").unlink()  # the index came, the shard not yet
    info = describe_source(str(folder))
    assert info["params"] > 0 and info["disk_bytes"] is None
    with pytest.raises(CheckpointError, match="cannot read"):
        import_model(str(folder))
