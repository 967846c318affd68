"""The Hugging Face bridge: exactness per family, and GPT-2 small's attention and generation speed.

Run: python3 bench/bench_hf.py [--prompt-tokens 128] [--new-tokens 32] [--repeats 3]

1. Exactness: a random transformers model of each family (GPT-2; Llama with
   4 heads and 2 key/value heads; Mamba), made locally with transformers' own
   classes and ``save_pretrained``; imported, and the largest absolute logit
   difference (float32) on the same ids; then exported again and loaded with
   ``AutoModelForCausalLM``: the largest difference the other way.
2. GPT-2 small shape (12 layers x 12 heads, width 768, vocabulary 50257,
   context 1024), random weights made locally (no download), imported: time of
   ``attention_maps`` for a ``--prompt-tokens`` prompt (every layer and head,
   what the attention page draws) and milliseconds per generated token through
   ``lmcore.sample.generate`` (greedy, after the prompt), beside transformers'
   own ``generate`` on the same model.

Prints one JSON object on stdout; progress goes to stderr. Timings are medians
over ``--repeats`` on whatever the machine is doing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import emit, log, machine, timed

from lmcore.hf import export_model, import_model
from lmcore.sample import SamplingConfig, generate


def tokenizer(vocab: int):
    """A byte-level tokenizer of ``vocab`` ids with <|endoftext|>: enough to save a loadable folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab_map = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab_map, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>"), vocab


def families(vocab: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    return {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=64, n_layer=2, n_head=4)),
        "llama": LlamaForCausalLM(
            LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        tie_word_embeddings=False)  # fmt: skip
        ),
        "mamba": MambaForCausalLM(MambaConfig(vocab_size=vocab, hidden_size=64, state_size=16, num_hidden_layers=2)),
    }


def exactness(tmp: Path) -> dict:
    from transformers import AutoModelForCausalLM

    tok, vocab = tokenizer(300)
    out = {}
    for k, (name, model) in enumerate(families(vocab).items()):
        torch.manual_seed(k)
        with torch.no_grad():  # weights of a real size, so that a wrong mapping would show
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        model.eval().save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        ids = torch.randint(0, 256, (1, 64))
        imported = import_model(str(tmp / name))
        with torch.no_grad():
            theirs = model(ids).logits
            ours = imported.model(ids)
            export_model(imported.model, imported.tokenizer, tmp / f"{name}-export")
            back = AutoModelForCausalLM.from_pretrained(tmp / f"{name}-export").eval()(ids).logits
        out[name] = {
            "import_max_abs_err": float((ours - theirs).abs().max()),
            "export_max_abs_err": float((back - ours).abs().max()),
            "logit_std": float(theirs.std()),
        }
        log(f"{name}: {out[name]}")
    return out


def gpt2_small(tmp: Path, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    log("building a random GPT-2 small (124M) ...")
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # the defaults are GPT-2 small's shape
    tok, _ = tokenizer(256)
    hf.save_pretrained(tmp / "gpt2-small")
    tok.save_pretrained(tmp / "gpt2-small")
    t = time.perf_counter()
    imported = import_model(str(tmp / "gpt2-small"))
    import_s = time.perf_counter() - t
    model = imported.model
    ids = torch.randint(0, 50257, (1, prompt_tokens))
    log("attention maps ...")
    attention_s = timed(lambda: model.attention_maps(ids), repeats).median
    maps_shape = list(model.attention_maps(ids).shape)
    prompt = ids[0].tolist()
    greedy = SamplingConfig(temperature=0)

    def ours() -> None:
        for _ in generate(model, prompt, new_tokens, greedy):
            pass

    def theirs() -> None:
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def prefill_only(n: int):
        return lambda: [None for _ in generate(model, prompt, n, greedy)]

    log("generation ...")
    total = timed(ours, repeats).median
    first = timed(prefill_only(1), repeats).median  # the prompt's prefill and the first token
    theirs_s = timed(theirs, repeats).median
    theirs_first = timed(
        lambda: hf.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0), repeats
    ).median
    return {
        "params": model.num_params(),
        "import_s": round(import_s, 2),
        "prompt_tokens": prompt_tokens,
        "attention_maps_s": round(attention_s, 3),
        "attention_maps_shape": maps_shape,
        "new_tokens": new_tokens,
        "ms_per_token": round(1000 * (total - first) / (new_tokens - 1), 1),
        "prefill_and_first_token_s": round(first, 3),
        "transformers_ms_per_token": round(1000 * (theirs_s - theirs_first) / (new_tokens - 1), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "machine": machine(),
            "exactness": exactness(Path(tmp)),
            "gpt2_small": gpt2_small(Path(tmp), args.prompt_tokens, args.new_tokens, args.repeats),
        }
    emit(result, indent=2)


if __name__ == "__main__":
    main()
