"""Fine-tuning through the one run path: a RunSpec from finetune_spec, trained by a JobRegistry."""

import json

import pytest
import torch

from lmcore.checkpoint import load_checkpoint, save_checkpoint
from lmcore.checkpoint_names import optimizer_path
from lmcore.errors import TokenizerError
from lmcore.finetune import chat_ids, encode_example, exact_match, lora_trainable_share, parse_examples
from lmcore.jobs import FINISHED, JobRegistry
from lmcore.models import build_model
from lmcore.models.config import ModelConfig
from lmcore.run import finetune_spec
from lmcore.tokenizers import CharTokenizer, ChatTokenizer
from lmcore.train import TrainConfig

TEXT = "the cat sat on the mat and the dog ran far away. " * 40
EXAMPLES = parse_examples("".join(json.dumps({"prompt": w, "response": w.upper()}) + "\n"
                                  for w in ["cat", "dog", "mat", "ran", "far", "sat", "the", "on"] * 4))  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ft")
    tok = CharTokenizer.train(TEXT + TEXT.upper())
    torch.manual_seed(0)
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32)
    return save_checkpoint(folder / "base.safetensors", build_model(cfg), tok), tok, folder


def settings(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(max_iters=6, batch_size=4, eval_interval=3, eval_iters=2, warmup_iters=1,
                                 lr=3e-3, device="cpu"), **kw})  # fmt: skip


@pytest.mark.parametrize("lora", [None, {"rank": 2}])
def test_a_fine_tuning_run_saves_a_chat_checkpoint_and_measures_forgetting(base, lora, tmp_path):
    path, tok, _ = base
    base_ids = torch.tensor(tok.encode(TEXT))
    spec = finetune_spec("ft", path, EXAMPLES, settings(), lora=lora, base_val_ids=base_ids)
    reg = JobRegistry(processes=False)
    job = reg.start(spec, tmp_path)
    assert job.wait(120) and job.status == FINISHED, job.error
    evals = [e for e in job.events_since(0) if e.val_loss is not None]
    assert len(evals) == 2 and all(e.base_val_loss is not None and e.base_val_loss > 0 for e in evals)
    assert all(e.val_bpb is None for e in evals)  # a masked loss has no bits per byte of the text
    assert evals[-1].sample.startswith("user: ") and "\nassistant: " in evals[-1].sample
    ckpt = load_checkpoint(job.checkpoint_path)  # a normal checkpoint, the adapters folded in
    assert isinstance(ckpt.tokenizer, ChatTokenizer) and ckpt.config.vocab_size == tok.vocab_size + 4
    assert ckpt.data_info["finetune"]["lora_rank"] == (lora and lora["rank"])
    assert not optimizer_path(job.checkpoint_path).exists()  # no resume state: Resume would train on the corpus
    snap = job.snapshot_model()
    assert all(torch.equal(snap.state_dict()[k], v) for k, v in ckpt.model.state_dict().items())
    share = ckpt.data_info["finetune"]["trainable_share"]
    assert share == 1.0 if lora is None else 0 < share < 0.2
    if lora is not None:  # the base's weights outside the adapted layers stayed as they were
        before = load_checkpoint(path).model.state_dict()
        after = ckpt.model.state_dict()
        assert torch.equal(after["h.0.ln_1.weight"], before["h.0.ln_1.weight"])
        assert not torch.equal(after["h.0.attn.c_attn.weight"], before["h.0.attn.c_attn.weight"])


def test_unseen_characters_are_refused_before_a_run_or_added_on_request(base):
    path, _, _ = base
    digits = parse_examples('{"prompt": "1+2", "response": "3"}\n')
    with pytest.raises(TokenizerError, match=r"'\+', '1', '2', '3'"):
        finetune_spec("ft", path, digits, settings())
    spec = finetune_spec("ft", path, digits, settings(), add_chars=True)
    assert spec.tokenizer.extra[4:] == ["+", "1", "2", "3"]


def test_the_trainable_share_of_lora_grows_with_the_rank(base):
    path, _, _ = base
    cfg = load_checkpoint(path).config
    shares = [lora_trainable_share(cfg, r) for r in (1, 4, 16)]
    assert 0 < shares[0] < shares[1] < shares[2] < 1


def test_chat_ids_are_the_trained_example_up_to_the_answer_and_exact_match_reads_it(base):
    path, tok, _ = base
    chat = ChatTokenizer(tok)
    ids, mask = encode_example(chat, EXAMPLES[0])
    prompt = chat_ids(chat, EXAMPLES[0][:1])
    assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)]) and all(mask[len(prompt):])
    torch.manual_seed(0)
    model = build_model(load_checkpoint(path).config.replace(vocab_size=chat.vocab_size)).eval()
    assert exact_match(model, chat, EXAMPLES[:4], max_new_tokens=4) == 0.0  # an untrained model answers nothing right


def test_a_chat_checkpoint_is_listed_with_its_tokenizer_type(base, tmp_path):
    from lmcore.checkpoint import list_checkpoints

    path, tok, _ = base
    chat = ChatTokenizer(tok)
    model = build_model(load_checkpoint(path).config.replace(vocab_size=chat.vocab_size))
    save_checkpoint(tmp_path / "chatty", model, chat)
    [row] = list_checkpoints(tmp_path)
    assert (row["error"], row["tokenizer"]) == (None, "chat")


def test_lora_trains_the_added_tokens_rows_alone_and_the_adapter_carries_them(base, tmp_path):
    from lmcore.finetune import (MaskedTokens, apply_lora, encode_examples, grow_vocab, load_with_adapter,
                                 save_adapter, train_new_rows, trainable_share)  # fmt: skip
    from lmcore.train import Trainer

    path, tok, _ = base
    ckpt = load_checkpoint(path)
    chat, old = ChatTokenizer(tok), tok.vocab_size
    model = grow_vocab(ckpt.model, chat.vocab_size)
    apply_lora(model, 2)
    assert train_new_rows(model, old)  # the embedding (and the head, tied or not)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = MaskedTokens(*encode_examples(chat, EXAMPLES), min_len=33)
    cfg = TrainConfig(batch_size=4, max_iters=3, lr=1e-2, warmup_iters=0, weight_decay=0.1, eval_interval=3,
                      eval_iters=1, device="cpu")  # fmt: skip
    Trainer(model, src, src, cfg).fit()
    after = model.state_dict()
    for k, v in after.items():
        if "lora_" in k:
            continue
        if v.dim() == 2 and v.shape[0] == chat.vocab_size:  # the old rows as they were, the added ones trained
            assert torch.equal(v[:old], before[k][:old]) and not torch.equal(v[old:], before[k][old:]), k
        else:
            assert torch.equal(v, before[k]), k
    assert trainable_share(model) == pytest.approx(lora_trainable_share(ckpt.config.replace(vocab_size=chat.vocab_size),
                                                                        2, old_vocab=old))  # fmt: skip
    adapter = save_adapter(tmp_path / "ad", model, ckpt.metadata["checkpoint_id"])
    loaded, _ = load_with_adapter(path, adapter)
    x = torch.tensor([encode_example(chat, EXAMPLES[0])[0]])
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)


def test_saving_a_lora_run_leaves_its_random_draws_as_they_were(base):
    """A LoRA run saves a merged copy at its evaluations; making the copy draws none of the numbers the run's
    dropout draws next, so a run trains the same whether it saves or not."""
    from lmcore.finetune import apply_lora, plain_copy

    path, tok, _ = base
    model = load_checkpoint(path).model
    apply_lora(model, 2)
    state = torch.get_rng_state()
    copy = plain_copy(model)
    assert torch.equal(torch.get_rng_state(), state)
    x = torch.tensor([tok.encode("the cat")])
    with torch.no_grad():
        assert torch.allclose(copy.eval()(x), model.eval()(x), atol=1e-5)


def test_a_library_fine_tune_without_somewhere_to_write_is_refused_before_reading(base, tmp_path):
    from lmcore.errors import ConfigError
    from lmcore.run import finetune

    path, _, _ = base
    missing = tmp_path / "not-there.jsonl"  # not read: the refusal comes first
    with pytest.raises(ConfigError, match="say where to write the result"):
        finetune(path, missing, settings())
    with pytest.raises(ConfigError, match="an adapter file needs a LoRA rank"):
        finetune(path, missing, settings(), adapter_out=tmp_path / "ad")
