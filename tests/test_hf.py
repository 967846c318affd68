"""The Hugging Face bridge: import transformers' GPT-2, Llama and Mamba, export ours, proven by logits.

Every model here is a tiny random one made offline with transformers' own
classes and ``save_pretrained`` into tmp_path; no test touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
)

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.cli import main
from lmcore.errors import ConfigError, LMCoreError
from lmcore.hf import export_model, import_checkpoint, import_model
from lmcore.models import ModelConfig, build_model
from lmcore.sample import SamplingConfig, generate
from lmcore.tokenizers import BPETokenizer, CharTokenizer, HFTokenizer, tokenizer_from_dict

from tests.helpers import ROOT, run_lmcore, short_training_run

CORPUS = [
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "The quick brown fox jumps over the lazy dog; 12345 dogs don't mind.",
    "Ünïcödé and émoji 🙂 are text too:\tnewlines\nand  double  spaces.",
] * 10
PROMPT = "It was the quick fox, the age of 🙂 wisdom"
TOL = 1e-4

TINY = {
    "gpt2": lambda V: GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
    "gpt2-exact-gelu-untied": lambda V: GPT2LMHeadModel(
        GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=40,
                   activation_function="gelu", tie_word_embeddings=False, layer_norm_epsilon=1e-6)  # fmt: skip
    ),
    "llama-gqa-untied": lambda V: LlamaForCausalLM(
        LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=500.0,
                    tie_word_embeddings=False)  # fmt: skip
    ),
    "llama-gqa-tied": lambda V: LlamaForCausalLM(
        LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    ),
    "mamba": lambda V: MambaForCausalLM(
        MambaConfig(vocab_size=V + 3, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)
    ),
    # 4 heads of 16 channels; chunks of 8, so that the prompt ends inside a chunk
    "mamba2": lambda V: Mamba2ForCausalLM(
        Mamba2Config(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
                     num_heads=4, head_dim=16, n_groups=1, chunk_size=8, layer_norm_epsilon=1e-6)  # fmt: skip
    ),
}


def _shake(model: torch.nn.Module, seed: int) -> None:
    """Perturb every weight, so that a wrong mapping moves the logits far beyond the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def hf_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained with the ``tokenizers`` library, as GPT-2's is."""
    tk = FastTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, hf_tokenizer: PreTrainedTokenizerFast) -> dict[str, Path]:
    """Each tiny transformers model, perturbed, saved with its tokenizer: name -> folder."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for k, (name, make) in enumerate(TINY.items()):
        torch.manual_seed(k)
        model = make(len(hf_tokenizer))
        _shake(model, k)
        model.save_pretrained(root / name)
        hf_tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


def _their_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("name", list(TINY))
def test_import_gives_transformers_logits(saved: dict[str, Path], name: str) -> None:
    imported = import_model(str(saved[name]))
    ids = imported.tokenizer.encode(PROMPT)
    with torch.no_grad():
        ours = imported.model(torch.tensor([ids]))[0]
    theirs = _their_logits(saved[name], ids)
    assert theirs.std() > 0.5  # logits of a real size: a wrong mapping cannot hide under the tolerance
    assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-untied", "mamba", "mamba2"])
def test_greedy_generation_equals_transformers(saved: dict[str, Path], name: str) -> None:
    imported = import_model(str(saved[name]))
    prompt = imported.tokenizer.encode("The quick")
    ours = [e.token_id for e in generate(imported.model, prompt, 12, SamplingConfig(temperature=0))]
    model = AutoModelForCausalLM.from_pretrained(saved[name]).eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours == out[0, len(prompt) :].tolist()


def test_imported_tokenizer_travels_in_checkpoints(saved: dict[str, Path], tmp_path: Path) -> None:
    path, imported = import_checkpoint(str(saved["mamba"]), tmp_path / "m.safetensors")
    tok = imported.tokenizer
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == imported.model.config.vocab_size  # padded
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode(PROMPT) == tok.encode(PROMPT) and again.decode(tok.encode(PROMPT)) == PROMPT
    assert tok.token_str(tok.bos_id) == "<|endoftext|>" and tok.decode([tok.vocab_size - 1]) == ""
    assert b"".join(tok.token_bytes(i) for i in tok.encode(PROMPT)).decode() == PROMPT
    ckpt = load_checkpoint(path)
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids), imported.model(ids), rtol=0, atol=0)
    assert ckpt.tokenizer.encode(PROMPT) == tok.encode(PROMPT)


def _train_ours(tok, preset: str, **overrides) -> torch.nn.Module:
    text = "\n".join(CORPUS)
    cfg = ModelConfig.preset(preset, vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_embd=32, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    short_training_run(model, torch.tensor(tok.encode(text)), steps=8, lr=3e-3, batch=4)
    return model.eval()


EXPORTS = {
    "char-unk-gpt2-tanh": (
        lambda: CharTokenizer.train("\n".join(CORPUS), unk=True), "gpt2", {"gelu_approximate": "tanh"}
    ),
    "bpe-llama-gqa": (lambda: BPETokenizer.train("\n".join(CORPUS), vocab_size=300), "llama", {"n_kv_head": 2}),
    "bpe-llama-untied-bias": (lambda: BPETokenizer.train("\n".join(CORPUS), vocab_size=300), "llama",
                              {"tie_weights": False, "bias": True, "norm_eps": 1e-6}),  # fmt: skip
    "bpe-mamba": (lambda: BPETokenizer.train("\n".join(CORPUS), vocab_size=300, pattern="gpt2"), "mamba", {}),
    "bpe-mamba2-tied": (lambda: BPETokenizer.train("\n".join(CORPUS), vocab_size=300), "mamba2",
                        {"ssm_head_dim": 16, "d_state": 8, "chunk_size": 8}),  # fmt: skip
    "char-mamba2-untied": (lambda: CharTokenizer.train("\n".join(CORPUS), unk=True), "mamba2",
                           {"ssm_head_dim": 8, "d_state": 4, "tie_weights": False, "norm_eps": 1e-6}),  # fmt: skip
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_loads_with_auto_classes(name: str, tmp_path: Path) -> None:
    make_tok, preset, overrides = EXPORTS[name]
    tok = make_tok()
    model = _train_ours(tok, preset, **overrides)
    out = export_model(model, tok, tmp_path / "export", {"steps": 8, "val_loss": 3.2}, {"name": "tiny corpus"})
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md"} <= {p.name for p in out.iterdir()}  # fmt: skip
    assert "tiny corpus" in (out / "README.md").read_text()
    their_tok = AutoTokenizer.from_pretrained(out)
    for text in [PROMPT, *CORPUS[:3], "  spaces\n\n\nand 2024 digits's"]:
        if isinstance(tok, CharTokenizer) and not tok.unk and set(text) - set(tok.chars):
            continue
        assert their_tok(text, add_special_tokens=False).input_ids == tok.encode(text)
        if not isinstance(tok, CharTokenizer) or not set(text) - set(tok.chars):  # transformers drops UNK on decode
            assert their_tok.decode(tok.encode(text), skip_special_tokens=True) == tok.decode(tok.encode(text))
    assert their_tok.bos_token_id == tok.bos_id
    ids = tok.encode(PROMPT if not isinstance(tok, CharTokenizer) or tok.unk else CORPUS[0])[:32]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert (ours - _their_logits(out, ids)).abs().max() <= TOL
    # and back: bit-identical weights, the same tokenizer ids
    back = import_model(str(out))
    # The same config, but for values that build the same model (a SwiGLU ratio of the same width, Mamba's
    # default dt_rank made explicit) or that transformers does not keep (a Mamba has no context limit).
    came_back = back.model.config
    same = {**model.config.to_dict(), "preset": preset, "dropout": 0.0, "mlp_ratio": came_back.mlp_ratio}
    if preset == "mamba":
        same.update(dt_rank=model.config.dt_rank_value, block_size=came_back.block_size)
    if preset == "mamba2":
        same.update(block_size=came_back.block_size)
    assert came_back.to_dict() == same
    mine, again = model.state_dict(), back.model.state_dict()
    assert mine.keys() == again.keys() and all(torch.equal(mine[k], again[k]) for k in mine)
    assert back.tokenizer.encode(CORPUS[0]) == tok.encode(CORPUS[0]) and back.tokenizer.bos_id == tok.bos_id


REFUSED = [
    (GPT2Config(activation_function="relu"), "activation_function"),
    (GPT2Config(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (GPT2Config(add_cross_attention=True), "add_cross_attention"),
    (GPT2Config(scale_attn_weights=False), "scale_attn_weights"),
    (LlamaConfig(hidden_act="gelu"), "hidden_act"),
    (LlamaConfig(attention_bias=True), "attention_bias"),
    (LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=32), "head_dim"),
    (LlamaConfig(intermediate_size=100), "intermediate_size"),
    (MambaConfig(use_bias=True), "use_bias"),
    (MambaConfig(use_conv_bias=False), "use_conv_bias"),
    (MambaConfig(hidden_act="gelu"), "hidden_act"),
    (Mamba2Config(hidden_size=64, num_heads=8, head_dim=16, n_groups=1, use_bias=True), "use_bias"),
    (Mamba2Config(hidden_size=64, num_heads=8, head_dim=16, n_groups=1, time_step_limit=(0.0, 1.0)), "time_step_limit"),
    (Mamba2Config(hidden_size=64, num_heads=8, head_dim=16, n_groups=3), "n_groups"),
    (Mamba2Config(hidden_size=64, num_heads=8, head_dim=16, n_groups=1, rms_norm=False), "rms_norm"),
]


@pytest.mark.parametrize("config, field", REFUSED, ids=[f for _, f in REFUSED])
def test_configs_lmcore_cannot_express_are_refused(config, field: str, tmp_path: Path) -> None:
    config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=f"config field {field}=") as err:
        import_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_sliding_windows_and_other_families_are_refused(tmp_path: Path) -> None:
    config = LlamaConfig()
    config.sliding_window = 4096  # what Mistral-style configs carry
    config.save_pretrained(tmp_path / "window")
    with pytest.raises(ConfigError, match="sliding_window"):
        import_model(str(tmp_path / "window"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="model_type='bert'.*gpt2, llama, mamba"):
        import_model(str(tmp_path / "bert"))


def test_pickled_weights_and_missing_tokenizers_are_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(LMCoreError, match="never unpickles"):
        import_model(str(folder))
    (folder / "pytorch_model.bin").unlink()
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50)).save_pretrained(folder)
    with pytest.raises(LMCoreError, match="no tokenizer.json"):
        import_model(str(folder))


@pytest.mark.parametrize(
    "overrides, hint",
    [
        ({"pos": "rope"}, "llama preset"),
        ({"bias": False}, "biases on"),
        ({"n_kv_head": 2}, "grouped-query"),
    ],
)
def test_exports_transformers_cannot_load_are_refused(overrides: dict, hint: str, tmp_path: Path) -> None:
    tok = CharTokenizer.train("abc ")
    model = build_model(ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_embd=16, **overrides))
    with pytest.raises(ConfigError, match=hint):
        export_model(model, tok, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    lstm = build_model(ModelConfig.preset("lstm", vocab_size=tok.vocab_size, n_embd=16))
    with pytest.raises(ConfigError, match="gpt2, llama or mamba preset"):
        export_model(lstm, tok, tmp_path / "out")


def test_export_never_overwrites_a_folder(tmp_path: Path) -> None:
    tok = CharTokenizer.train("abc ")
    model = build_model(ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_embd=16))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_model(model, tok, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_cli_import_and_export(saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "llama.safetensors"
    assert main(["import", str(saved["llama-gqa-tied"]), "--out", str(ckpt)]) == 0
    assert '"family": "llama"' in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model.safetensors").exists()
    ids = import_model(str(saved["llama-gqa-tied"])).tokenizer.encode(PROMPT)
    torch.testing.assert_close(_their_logits(tmp_path / "back", ids), _their_logits(saved["llama-gqa-tied"], ids))
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "back")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_offline_hub_id_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
    run = run_lmcore("import", "someone/tiny-model", "--out", str(tmp_path / "x.safetensors"), cwd=ROOT, env=env,
                     text=True)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot reach the Hugging Face hub" in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_saved_checkpoints_without_the_new_fields_load_as_before(tmp_path: Path) -> None:
    tok = CharTokenizer.train("abc ")
    model = build_model(ModelConfig.preset("llama", vocab_size=tok.vocab_size, n_layer=1, n_embd=16))
    path = save_checkpoint(tmp_path / "old.safetensors", model, tok)
    cfg = model.config.to_dict()
    del cfg["norm_eps"], cfg["gelu_approximate"]
    assert ModelConfig.from_dict(cfg) == model.config  # the defaults are the old behaviour
    assert load_checkpoint(path).config == model.config


def test_the_app_opens_an_imported_model_and_shows_its_attention(
    saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from streamlit.testing.v1 import AppTest

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/checkpoints.py").run()
    at.text_input(key="checkpoints.hf.source").set_value(str(saved["llama-gqa-untied"])).run()
    assert not at.exception and not at.error
    shown = {m.label: m.value for m in at.metric}
    tok_and_model = import_model(str(saved["llama-gqa-untied"]))
    assert shown["Model"] == "Llama"  # known before loading
    assert shown["Parameters"] == f"{tok_and_model.model.num_params():,}"
    at.text_input(key="checkpoints.hf.name").set_value("tiny-llama").run()
    at.button(key="checkpoints.hf.open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert (folder / "tiny-llama.safetensors").exists()
    assert not at.get("download_button")[-1].proto.disabled  # "Export for transformers" is offered

    at.switch_page("views/attention.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    prompt = at.text_input(key="keep.attention.prompt").value
    one, grid, _ = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    tok = tok_and_model.tokenizer
    assert one["layout"]["xaxis"]["ticktext"] == [tok.token_str(i) for i in tok.encode(prompt)]
    assert len(grid["data"]) == 2 * 4  # every layer and head

    at.switch_page("views/checkpoints.py").run()
    at.text_input(key="checkpoints.hf.source").set_value(str(tmp_path / "nowhere")).run()
    assert not at.exception and len(at.error) == 1 and "hub id" in at.error[0].value


def test_an_imported_model_fine_tunes_as_a_new_run(saved: dict[str, Path], tmp_path: Path) -> None:
    from lmcore.jobs import FINISHED, JobRegistry, RunSpec
    from lmcore.train import TrainConfig

    path, imported = import_checkpoint(str(saved["gpt2"]), tmp_path / "gpt2.safetensors")
    before = {k: v.clone() for k, v in imported.model.state_dict().items()}
    ids = torch.tensor(imported.tokenizer.encode("\n".join(CORPUS)))
    split = int(len(ids) * 0.8)
    tc = TrainConfig(max_iters=6, batch_size=2, eval_interval=3, eval_iters=1, warmup_iters=1, lr=1e-3, device="cpu")
    reg = JobRegistry(max_concurrent=1)
    spec = RunSpec("gpt2", imported.model.config, imported.tokenizer, ids[:split], ids[split:], tc, init_from=path)
    job = reg.start(spec, tmp_path)
    assert job.wait(120) and job.status == FINISHED, job.error
    assert job.checkpoint_path != path.resolve()  # a new file; the imported checkpoint stays as it was
    tuned = load_checkpoint(job.checkpoint_path)
    assert tuned.train_state["steps"] == 6 and isinstance(tuned.tokenizer, HFTokenizer)
    assert not torch.equal(tuned.model.state_dict()["wte.weight"], before["wte.weight"])
    assert all(torch.equal(v, before[k]) for k, v in load_checkpoint(path).model.state_dict().items())


def test_mamba2_with_groups_of_b_and_c_imports_with_their_grouped_norm(
    hf_tokenizer: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n_groups = 2: B and C land in their groups, and the gated norm is per group (mamba_ssm's, their CUDA kernel's)."""
    from transformers.models.mamba2 import modeling_mamba2

    torch.manual_seed(5)
    config = Mamba2Config(vocab_size=len(hf_tokenizer), hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                          conv_kernel=4, num_heads=4, head_dim=16, n_groups=2, chunk_size=8)  # fmt: skip
    theirs = Mamba2ForCausalLM(config)
    _shake(theirs, 5)
    theirs.save_pretrained(tmp_path / "grouped")
    hf_tokenizer.save_pretrained(tmp_path / "grouped")
    imported = import_model(str(tmp_path / "grouped"))
    assert imported.model.config.n_groups == 2 and any("per group" in n for n in imported.notes)
    ids = imported.tokenizer.encode(PROMPT)
    with torch.no_grad():
        ours = imported.model(torch.tensor([ids]))[0]

    def grouped(self, hidden_states, gate=None):  # what their CUDA kernel computes: one norm per group
        g = (hidden_states.float() * torch.nn.functional.silu(gate.float())).unflatten(-1, (2, -1))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * g.flatten(-2).to(hidden_states.dtype)

    monkeypatch.setattr(modeling_mamba2.MambaRMSNormGated, "forward", grouped)
    expected = _their_logits(tmp_path / "grouped", ids)
    assert expected.std() > 0.5 and (ours - expected).abs().max() <= TOL
