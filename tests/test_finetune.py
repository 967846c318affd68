"""Fine-tuning: JSONL examples, the chat template, the loss mask, vocabulary growth and LoRA."""

import json
import random

import pytest
import torch

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.errors import CheckpointError, DataError, TokenizerError
from lmcore.finetune import (
    IGNORE,
    MaskedTokens,
    apply_lora,
    chat_tokenizer,
    encode_example,
    encode_examples,
    grow_vocab,
    load_with_adapter,
    merge_lora,
    parse_examples,
    prompt_ids,
    save_adapter,
)
from lmcore.models import build_model
from lmcore.models.base import lm_loss
from lmcore.models.config import ModelConfig
from lmcore.run import finetune
from lmcore.sample import SamplingConfig, generate
from lmcore.tokenizers import CharTokenizer, tokenizer_from_dict
from lmcore.train import TrainConfig

LETTERS = "abcdef"
ANSWERS = {"a": "bead", "b": "cafe", "c": "dab", "d": "face", "e": "fed", "f": "bad"}  # a small lookup task


def tiny(vocab: int, preset: str = "gpt2", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=vocab, n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, **kw)
    return build_model(cfg)


def reverse_task(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4))) for _ in range(n)]
    return [{"prompt": w, "response": w[::-1]} for w in words]


def lookup_task(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": k, "response": ANSWERS[k]} for k in (rng.choice(LETTERS) for _ in range(n))]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def base(tmp_path):
    tok = CharTokenizer.train(LETTERS + " \n")
    path = save_checkpoint(tmp_path / "base.safetensors", tiny(tok.vocab_size), tok)
    return path, tok


# --------------------------------------------------------------------------- data and template


def test_bad_jsonl_line_is_named_and_nothing_is_read():
    good = json.dumps({"prompt": "ab", "response": "ba"})
    with pytest.raises(DataError, match=r"line 3 is not valid JSON"):
        parse_examples("\n".join([good, good, "{oops", good]))
    with pytest.raises(DataError, match=r"line 2 needs text fields"):
        parse_examples(good + "\n" + json.dumps({"prompt": "x"}))
    with pytest.raises(DataError, match=r"line 1: each message needs a role"):
        parse_examples(json.dumps({"messages": [{"role": "bot", "content": "x"}]}))
    with pytest.raises(DataError, match=r"line 1 has no assistant message"):
        parse_examples(json.dumps({"messages": [{"role": "user", "content": "x"}]}))


def test_template_round_trips_through_the_checkpoint_dict():
    chat = chat_tokenizer(CharTokenizer.train("abc"))
    text = "<|user|>ab<|end|><|assistant|>ba<|end|>"
    assert chat.decode(chat.encode(text)) == text
    again = tokenizer_from_dict(json.loads(json.dumps(chat.to_dict())))
    assert again.encode(text) == chat.encode(text) and again.vocab_size == chat.vocab_size == 4 + 4


def test_unseen_characters_are_refused_by_name_or_added_on_request():
    ex = parse_examples(json.dumps({"prompt": "abz", "response": "q"}))
    with pytest.raises(TokenizerError, match=r"2 character\(s\).*'q', 'z'"):
        chat_tokenizer(CharTokenizer.train("abc"), ex)
    chat = chat_tokenizer(CharTokenizer.train("abc"), ex, add_chars=True)
    ids, _ = encode_example(chat, ex[0])
    assert chat.decode(ids) == "<|user|>abz<|end|><|assistant|>q<|end|>"


def test_mask_covers_exactly_the_assistant_tokens_and_its_end():
    chat = chat_tokenizer(CharTokenizer.train("abcxyz"))
    messages = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "ba"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "yz"},
    ]
    ids, mask = encode_example(chat, messages)
    trained = "".join(chat.token_str(i) if m else "." for i, m in zip(ids, mask))
    assert chat.decode(ids) == (
        "<|system|>x<|end|><|user|>ab<|end|><|assistant|>ba<|end|><|user|>c<|end|><|assistant|>yz<|end|>"
    )
    # BOS, <|system|> x <|end|>, <|user|> a b <|end|>, <|assistant|> then b a <|end|> ...
    assert trained == "." + "..." + "...." + "." + "ba<|end|>" + "..." + "." + "yz<|end|>"


def test_changing_a_prompt_target_changes_nothing_and_a_response_target_changes_the_loss():
    chat = chat_tokenizer(CharTokenizer.train("abc"))
    ids, targets = encode_examples(chat, parse_examples(json.dumps({"prompt": "abcab", "response": "cba"})))
    model = tiny(chat.vocab_size)
    x, y = ids[None, :-1], targets[None, 1:]
    logits = model(x)
    loss = lm_loss(logits, y)
    prompt_pos = [i for i in range(y.shape[1]) if y[0, i] == IGNORE]
    answer_pos = [i for i in range(y.shape[1]) if y[0, i] != IGNORE]
    assert prompt_pos and len(answer_pos) == 4  # "cba" and the end token
    # The prompt's targets are what the raw stream says (a prompt token): changing one changes nothing.
    y2 = y.clone()
    y2[0, prompt_pos[2]] = IGNORE  # already ignored: replace the underlying id instead
    ids2 = ids.clone()
    ids2[prompt_pos[2] + 1] = (ids2[prompt_pos[2] + 1] + 1) % 3
    _, t2 = ids2, torch.where(targets == IGNORE, torch.full_like(targets, IGNORE), ids2)
    assert torch.equal(lm_loss(logits, t2[None, 1:]), loss)
    y3 = y.clone()
    y3[0, answer_pos[0]] = (y3[0, answer_pos[0]] + 1) % 3
    assert not torch.equal(lm_loss(logits, y3), loss)


def test_masked_source_never_gives_a_window_without_a_trained_target():
    chat = chat_tokenizer(CharTokenizer.train("abc"))
    rows = [{"messages": [{"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "b"}]}] * 3
    ids, targets = encode_examples(chat, parse_examples("\n".join(json.dumps(r) for r in rows)))
    src = MaskedTokens(ids, targets)
    starts = torch.arange(len(src) - 9)
    t = src.target_windows(starts, 9)[:, 1:]
    assert bool(((t != IGNORE).sum(1) > 0).all())
    assert torch.equal(src.windows(starts, 9)[:, 1:][t != IGNORE], t[t != IGNORE])


# --------------------------------------------------------------------------- vocabulary growth


@pytest.mark.parametrize("preset,kw", [("gpt2", {}), ("llama", {"tie_weights": False}), ("mamba", {})])
def test_growing_the_vocabulary_keeps_old_logits(preset, kw):
    model = tiny(10, preset, **kw).eval()
    x = torch.randint(0, 10, (2, 12))
    before = model(x)
    grown = grow_vocab(model, 14).eval()
    after = grown(x)
    assert after.shape[-1] == 14
    # The old rows are kept exactly; the logits agree up to the matmul's rounding (a wider head).
    old = model.state_dict()
    for name, t in grown.state_dict().items():
        assert torch.equal(t[tuple(slice(0, n) for n in old[name].shape)], old[name]), name
    torch.testing.assert_close(after[..., :10], before, atol=1e-6, rtol=1e-6)
    if getattr(grown.config, "tie_weights", False):
        emb = [p for n, p in grown.named_parameters()]
        assert len(emb) == len(list(model.parameters()))  # still tied: no new parameter


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("preset", ["gpt2", "llama", "mamba"])
def test_lora_with_zero_b_equals_base_and_merged_equals_adapted(preset):
    model = tiny(12, preset).eval()
    x = torch.randint(0, 12, (2, 10))
    before = model(x)
    names = apply_lora(model, rank=4, alpha=8)
    assert names
    assert torch.equal(model(x), before)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapted = model(x)
    assert not torch.allclose(adapted, before)
    merged = merge_lora(model)(x)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_lora_trains_only_the_adapters_and_the_adapter_refuses_another_base(base, tmp_path):
    path, _ = base
    data = tmp_path / "task.jsonl"
    write_jsonl(data, reverse_task(40, 1))
    cfg = TrainConfig(batch_size=8, max_iters=20, lr=1e-2, warmup_iters=0, eval_interval=20, eval_iters=2, device="cpu")
    result = finetune(path, data, cfg, tmp_path / "out", lora_rank=4, adapter_out=tmp_path / "ad")
    assert 0 < result["trainable_share"] < 0.5
    # The run path's log beside the checkpoint: each evaluation with a held-out prompt answered.
    from lmcore import runlog

    evals = runlog.evals(runlog.read_log(result["out"]))
    assert [e["step"] for e in evals] == [20] and evals[0]["sample"].startswith("user: ")
    # The base file is untouched and the adapter rebuilds exactly the merged model.
    adapted, tok = load_with_adapter(path, result["adapter"])
    merged = load_checkpoint(result["out"])
    x = torch.tensor([prompt_ids(tok, "abc")])
    torch.testing.assert_close(adapted(x), merged.model(x), atol=1e-5, rtol=1e-5)
    grown = grow_vocab(load_checkpoint(path).model, tok.vocab_size)
    # Frozen base: every base weight inside the adapted model is bit-identical to the grown base,
    # but for the rows of the added tokens, which train beside the adapters.
    base_state, old = grown.state_dict(), load_checkpoint(path).config.vocab_size
    for name, t in adapted.state_dict().items():
        if "lora_" in name:
            continue
        want = base_state[name.replace(".base.", ".")]
        if t.dim() and t.shape[0] == tok.vocab_size:
            t, want = t[:old], want[:old]
        assert torch.equal(t, want), name
    other_tok = CharTokenizer.train(LETTERS + " \n")
    other = save_checkpoint(tmp_path / "other.safetensors", tiny(other_tok.vocab_size), other_tok)
    with pytest.raises(CheckpointError, match="another base model"):
        load_with_adapter(other, result["adapter"])


def test_a_lora_run_is_fixed_by_its_seed_whatever_was_drawn_before(base, tmp_path):
    path, _ = base
    data = tmp_path / "task.jsonl"
    write_jsonl(data, reverse_task(24, 1))
    cfg = TrainConfig(batch_size=4, max_iters=4, lr=1e-2, warmup_iters=0, eval_interval=4, eval_iters=1, device="cpu",
                      seed=3)  # fmt: skip
    results = []
    for i, other in enumerate((0, 1)):
        torch.manual_seed(other)  # whatever the notebook drew before: the adapters' first values must not depend on it
        results.append(finetune(path, data, cfg, tmp_path / f"out{i}", lora_rank=4, lora_dropout=0.1, add_chars=True))
    assert results[0]["val_loss"] == results[1]["val_loss"]
    assert results[0]["train_loss"] == results[1]["train_loss"]


def test_bad_line_trains_nothing(base, tmp_path):
    path, _ = base
    data = tmp_path / "task.jsonl"
    data.write_text(json.dumps({"prompt": "ab", "response": "ba"}) + "\n[1, 2]\n")
    cfg = TrainConfig(batch_size=4, max_iters=5, device="cpu")
    with pytest.raises(DataError, match="task.jsonl line 2"):
        finetune(path, data, cfg, tmp_path / "out")
    assert not (tmp_path / "out.safetensors").exists()


def answers(model, tok, prompts):
    end = tok.special_id("<|end|>")
    out = []
    for p in prompts:
        greedy = SamplingConfig(temperature=0)
        ids = [e.token_id for e in generate(model, prompt_ids(tok, p), 8, greedy, stop_ids=[end])]
        out.append(tok.decode([i for i in ids if i != end]))
    return out


def test_fine_tuned_model_learns_to_answer(base, tmp_path):
    path, _ = base
    data = tmp_path / "task.jsonl"
    write_jsonl(data, lookup_task(200, 2))
    cfg = TrainConfig(batch_size=16, max_iters=300, lr=5e-3, warmup_iters=10, eval_interval=300, eval_iters=4,
                      device="cpu", weight_decay=0.0)
    result = finetune(path, data, cfg, tmp_path / "out")
    ckpt = load_checkpoint(result["out"])
    tok = ckpt.tokenizer
    prompts = sorted(ANSWERS)
    right = sum(g == ANSWERS[p] for g, p in zip(answers(ckpt.model, tok, prompts), prompts)) / len(prompts)
    base_model = grow_vocab(load_checkpoint(path).model, tok.vocab_size).eval()
    base_right = sum(g == ANSWERS[p] for g, p in zip(answers(base_model, tok, prompts), prompts)) / len(prompts)
    assert right >= 5 / 6 and base_right == 0


# --------------------------------------------------------------------------- command line


def run_cli(*args, cwd):
    import os

    from tests.helpers import ROOT, run_lmcore

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return run_lmcore(*args, cwd=cwd, env=env, text=True)


def test_cli_finetune_then_chat(base, tmp_path):
    path, _ = base
    write_jsonl(tmp_path / "task.jsonl", lookup_task(200, 0))
    (tmp_path / "prompts.txt").write_text("a\nb\n\nc\n")
    r = run_cli("finetune", "--checkpoint", str(path), "--data", "task.jsonl", "--out", "ft", "--lr", "5e-3",
                "--weight-decay", "0", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == 300
    # The app's run path: its log has each evaluation with a held-out prompt answered.
    from lmcore import runlog

    evals = runlog.evals(runlog.read_log(tmp_path / "ft.safetensors"))
    assert [e["step"] for e in evals] == [100, 200, 300] and all(e["sample"].startswith("user: ") for e in evals)
    r = run_cli("generate", "--checkpoint", "ft.safetensors", "--chat", "--prompt", "a", "--temperature", "0",
                cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "bead")
    r = run_cli("generate", "--checkpoint", "ft.safetensors", "--chat", "--prompts-file", "prompts.txt",
                "--temperature", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows == [{"prompt": p, "response": ANSWERS[p]} for p in "abc"]
    # A base without the template, a bad line, an adapter beside another base: one line, status 2.
    r = run_cli("generate", "--checkpoint", str(path), "--chat", "--prompt", "a", cwd=tmp_path)
    assert r.returncode == 2 and "no chat template" in r.stderr and len(r.stderr.splitlines()) == 1
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": 3}\n')
    r = run_cli("finetune", "--checkpoint", str(path), "--data", "bad.jsonl", "--out", "x", cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl line 2" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
    r = run_cli("finetune", "--checkpoint", str(path), "--data", "task.jsonl", "--adapter-out", "ad",
                "--lora-rank", "2", "--max-iters", "5", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 0 < json.loads(r.stdout)["trainable_share"] < 0.5
    r = run_cli("generate", "--checkpoint", "ft.safetensors", "--adapter", "ad.safetensors", "--chat",
                "--prompt", "a", cwd=tmp_path)
    assert r.returncode == 2 and "another base model" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("export", "--checkpoint", str(path), "--adapter", "ad.safetensors", "--out", "hf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {"lora", "model.safetensors"} <= set(json.loads(r.stdout)["files"])
    assert sorted(p.name for p in (tmp_path / "hf" / "lora").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("preset", ["gpt2", "mamba"])
def test_lora_training_leaves_every_base_weight_bit_identical(preset):
    from lmcore.train import Trainer

    chat = chat_tokenizer(CharTokenizer.train(LETTERS))
    ids, targets = encode_examples(chat, parse_examples("\n".join(json.dumps(r) for r in lookup_task(60, 4))))
    model = tiny(chat.vocab_size, preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=2, dropout=0.1)
    src = MaskedTokens(ids, targets, min_len=33)
    cfg = TrainConfig(batch_size=4, max_iters=5, lr=1e-2, warmup_iters=0, eval_interval=5, eval_iters=1, device="cpu")
    Trainer(model, src, src, cfg).fit()
    after = model.state_dict()
    trained = [k for k in after if "lora_" in k]
    assert trained and any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in trained if "lora_B" in k)
    for name, t in after.items():
        if "lora_" not in name:
            assert torch.equal(t, before[name.replace(".base.", ".")]), name


# --------------------------------------------------------------------------- peft export


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_lora_adapter_exports_as_peft_reads_it(preset, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmcore.finetune import export_peft

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = CharTokenizer.train(LETTERS + " ")
    path = save_checkpoint(tmp_path / "base.safetensors", tiny(tok.vocab_size, preset), tok)
    chat = chat_tokenizer(tok)
    model = grow_vocab(load_checkpoint(path).model, chat.vocab_size)
    apply_lora(model, rank=2, alpha=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    base_id = load_checkpoint(path).metadata["checkpoint_id"]
    adapter = save_adapter(tmp_path / "ad", model, base_id, {"extra": list(chat.extra)})
    out = export_peft(path, adapter, tmp_path / "export")
    assert (out / "lora" / "adapter_config.json").exists() and (out / "lora" / "adapter_model.safetensors").exists()
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out), out / "lora").eval()
    ids = prompt_ids(chat, "abc")
    assert AutoTokenizer.from_pretrained(out)("<|user|>abc<|end|><|assistant|>")["input_ids"] == ids[1:]
    x = torch.tensor([ids])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, model(x), atol=1e-4, rtol=1e-4)
        plain = grow_vocab(load_checkpoint(path).model, chat.vocab_size).eval()
        assert not torch.allclose(plain(x), model(x), atol=1e-3)  # the adapter matters
