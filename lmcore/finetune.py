"""Fine-tuning on prompt/response pairs: a chat template, a loss mask, vocabulary growth and LoRA.

Data is JSONL, one example a line: ``{"prompt": ..., "response": ...}`` or
``{"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]}``.
Each message becomes ``<|role|>content<|end|>`` after a BOS token; the loss is
taken only on the assistant's tokens and the ``<|end|>`` that closes them
(the other targets are ``IGNORE``, which ``lm_loss``'s cross-entropy skips).
The examples are laid end to end into one stream the ``Trainer`` cuts windows
from, exactly as in pretraining (``MaskedTokens``).

LoRA (``apply_lora``) wraps chosen ``nn.Linear`` layers: ``y = W x + (alpha/r) B A dropout(x)``
with ``B`` zero at the start, so the wrapped model equals its base until it
trains; the base weights are frozen. ``merge_lora`` folds the update into ``W``
and gives back a plain model that saves as a normal checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from lmcore.errors import CheckpointError, ConfigError, DataError, TokenizerError
from lmcore.tokenizers import CharTokenizer, ChatTokenizer, Tokenizer
from lmcore.tokenizers.chat import SPECIAL_TOKENS

IGNORE = -100  # the target id cross-entropy skips (its default ignore_index)
ROLES = ("system", "user", "assistant")
MAX_LINE_CHARS = 1 << 20
ADAPTER_FORMAT = "lmcore-lora-1"


# --------------------------------------------------------------------------- data


def parse_examples(text: str, where: str = "the data") -> list[list[dict[str, str]]]:
    """The examples of JSONL ``text`` as message lists; DataError naming the first bad line.

    Blank lines are skipped. Nothing is returned unless every line is good.
    """
    examples: list[list[dict[str, str]]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        examples.append(_example(line, f"{where} line {n}"))
    if not examples:
        raise DataError(f"{where} holds no examples; write one JSON object a line")
    return examples


def read_examples(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    """``parse_examples`` of a UTF-8 JSONL file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path.name} line {line} is not UTF-8 text; save the file as UTF-8") from None
    return parse_examples(text, path.name)


def _example(line: str, where: str) -> list[dict[str, str]]:
    if len(line) > MAX_LINE_CHARS:
        raise DataError(f"{where} is longer than {MAX_LINE_CHARS:,} characters; split the example")
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise DataError(f"{where} is not valid JSON ({str(e).splitlines()[0]}); write one JSON object a line") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} is a JSON {type(obj).__name__}, not an object with prompt/response or messages")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
        out = []
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(
                    f"{where}: each message needs a role (system, user or assistant) and a text content"
                )
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(f"{where} has no assistant message, so nothing to learn; add the answer")
        return out
    prompt, response = obj.get("prompt"), obj.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError(f"{where} needs text fields \"prompt\" and \"response\" (or a \"messages\" list)")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# --------------------------------------------------------------------------- template


def chat_tokenizer(
    tokenizer: Tokenizer, examples: Iterable[list[dict[str, str]]] = (), add_chars: bool = False
) -> ChatTokenizer:
    """``tokenizer`` with the template's special tokens (kept as it is if it has them already).

    For a character vocabulary, characters of ``examples`` it has never seen are
    refused (TokenizerError naming them) or, with ``add_chars``, added as new tokens.
    """
    chat = tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)
    base = chat.base
    if isinstance(base, CharTokenizer) and not base.unk:
        known = set(base.chars) | set(chat.extra)
        unseen = sorted({ch for ex in examples for m in ex for ch in m["content"] if ch not in known})
        if unseen and not add_chars:
            shown = ", ".join(repr(ch) for ch in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
            raise TokenizerError(
                f"{len(unseen)} character(s) of the data are not in the model's vocabulary: {shown}; "
                "remove them or ask to add them to the vocabulary"
            )
        if unseen:
            chat = ChatTokenizer(base, list(chat.extra) + unseen)
    return chat


def encode_example(tok: ChatTokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """The ids of one example and, per id, whether it is trained (assistant content and its end)."""
    end = tok.special_id("<|end|>")
    ids, mask = [tok.bos_id], [False]
    for m in messages:
        body = encode_text(tok, m["content"])
        trained = m["role"] == "assistant"
        ids += [tok.special_id(f"<|{m['role']}|>")]
        mask += [False]
        ids += body + [end]
        mask += [trained] * (len(body) + 1)
    return ids, mask


def encode_text(tok: ChatTokenizer, text: str) -> list[int]:
    """The ids of plain text: special-token strings in it stay text; added characters get their ids."""
    added = {s: tok.special_id(s) for s in tok.extra if s not in SPECIAL_TOKENS}
    if not added:
        return tok.base.encode(text)
    ids: list[int] = []
    run: list[str] = []
    for ch in text:
        if ch in added:
            if run:
                ids += tok.base.encode("".join(run))
                run = []
            ids.append(added[ch])
        else:
            run.append(ch)
    if run:
        ids += tok.base.encode("".join(run))
    return ids


def prompt_ids(tok: ChatTokenizer, prompt: str) -> list[int]:
    """The ids a chat model continues to answer ``prompt``: BOS, the user turn, the assistant's tag."""
    return chat_ids(tok, [{"role": "user", "content": prompt}])


def chat_ids(tok: ChatTokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The ids a chat model continues to answer the conversation ``messages``: each turn in the template,
    then the assistant's tag."""
    ids = [tok.bos_id]
    for m in messages:
        ids += [tok.special_id(f"<|{m['role']}|>"), *encode_text(tok, m["content"]), tok.special_id("<|end|>")]
    return ids + [tok.special_id("<|assistant|>")]


def chat_reply(
    model: nn.Module,
    tok: Tokenizer,
    conversation: str | list[dict[str, str]],
    max_new_tokens: int = 200,
    sampling: Any = None,
) -> str:
    """The answer of a chat model to a prompt (or a conversation of messages), up to its end token.

    The prompt is wrapped in the template (``chat_ids``); generation stops at ``<|end|>``
    (or after ``max_new_tokens``), which is not part of the answer. ConfigError for a
    model without a chat template.
    """
    from lmcore.sample import generate

    if not isinstance(tok, ChatTokenizer):
        raise ConfigError("this model has no chat template; fine-tune it on prompt/response pairs first")
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    end = tok.special_id("<|end|>")
    ids = [e.token_id for e in generate(model, chat_ids(tok, messages), max_new_tokens, sampling, stop_ids=[end])]
    return tok.decode(ids)


def exact_match(
    model: nn.Module, tok: Tokenizer, examples: list[list[dict[str, str]]], max_new_tokens: int = 64
) -> float:
    """The share of ``examples`` whose last assistant message the model gives exactly (greedy), from the turns before it."""
    from lmcore.sample import SamplingConfig

    greedy = SamplingConfig(temperature=0.0)
    right = 0
    for ex in examples:
        last = max(i for i, m in enumerate(ex) if m["role"] == "assistant")
        right += chat_reply(model, tok, ex[:last], max_new_tokens, greedy) == ex[last]["content"]
    return right / max(len(examples), 1)


def encode_examples(tok: ChatTokenizer, examples: list[list[dict[str, str]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples end to end: ids (N,) and targets (N,) where untrained positions are IGNORE."""
    all_ids: list[int] = []
    all_mask: list[bool] = []
    for ex in examples:
        ids, mask = encode_example(tok, ex)
        all_ids += ids
        all_mask += mask
    ids = torch.tensor(all_ids, dtype=torch.long)
    targets = torch.where(torch.tensor(all_mask), ids, torch.full_like(ids, IGNORE))
    return ids, targets


class MaskedTokens:
    """A token stream with a loss mask: a ``TokenSource`` whose ``target_windows`` carry IGNORE.

    A window with no trained target at all would give a loss of 0/0, so such a
    start is moved forward to the next start whose window trains something.
    Short streams are repeated until they hold ``min_len`` tokens.
    """

    def __init__(self, ids: torch.Tensor, targets: torch.Tensor, min_len: int = 0):
        if not bool((targets != IGNORE).any()):
            raise DataError("the examples train no token; each needs an assistant answer")
        reps = max(1, math.ceil(min_len / max(len(ids), 1)))
        self.ids = ids.repeat(reps)
        self.targets = targets.repeat(reps)
        self._cum = torch.cat([torch.zeros(1, dtype=torch.long), (self.targets != IGNORE).long().cumsum(0)])

    def __len__(self) -> int:
        return len(self.ids)

    def _fix(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        n = len(self.ids) - length + 1
        s = starts.clamp(0, n - 1)
        ok = (self._cum[length : n + length] - self._cum[1 : n + 1]) > 0  # targets at s+1 .. s+length-1
        good = torch.nonzero(ok).flatten()
        if len(good) == 0:
            raise DataError("no window of the examples trains a token; use a longer block or longer answers")
        idx = torch.searchsorted(good, s).clamp(max=len(good) - 1)
        return good[idx]

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        s = self._fix(starts.reshape(-1), length)
        offsets = torch.arange(length)
        return self.ids[s[:, None] + offsets].reshape(*starts.shape, length)

    def target_windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        s = self._fix(starts.reshape(-1), length)
        offsets = torch.arange(length)
        return self.targets[s[:, None] + offsets].reshape(*starts.shape, length)

    def id_range(self) -> tuple[int, int]:
        return int(self.ids.min()), int(self.ids.max())


# --------------------------------------------------------------------------- vocabulary growth


def grow_vocab(model: nn.Module, vocab_size: int) -> nn.Module:
    """A copy of ``model`` for a larger vocabulary: old embedding/head rows kept exactly.

    The new rows start at the mean of the old ones (so new tokens start as an
    "average" token). Tied weights stay tied: the model is rebuilt from its config.
    """
    from lmcore.models import build_model

    config = model.config
    old = config.vocab_size
    if vocab_size == old:
        return model
    if vocab_size < old:
        raise ConfigError(f"cannot shrink a vocabulary of {old} to {vocab_size}")
    if getattr(model, "sized_by_data", False) or not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"a {config.arch} model learns no weights by gradient; fine-tune a neural model")
    new = build_model(config.replace(vocab_size=vocab_size))
    state = model.state_dict()
    new_state = new.state_dict()
    for name, t in new_state.items():
        src = state[name]
        if src.shape == t.shape:
            t.copy_(src)
            continue
        dims = [d for d in range(src.dim()) if src.shape[d] == old and t.shape[d] == vocab_size]
        if len(dims) != 1 or src.dim() != t.dim():
            raise ConfigError(f"cannot grow tensor {name!r} of shape {list(src.shape)} to a larger vocabulary")
        d = dims[0]
        t.narrow(d, 0, old).copy_(src)
        t.narrow(d, old, vocab_size - old).copy_(src.float().mean(d, keepdim=True).to(src.dtype).expand_as(
            t.narrow(d, old, vocab_size - old)))
    new.load_state_dict(new_state)
    new.train(model.training)
    return new.to(next(model.parameters()).device)


# --------------------------------------------------------------------------- LoRA

# Leaf names of the layers LoRA wraps by default, per architecture.
DEFAULT_TARGETS = {
    "transformer": ("c_attn", "c_proj", "c_fc"),  # attention and MLP projections
    "mamba": ("in_proj", "out_proj"),
    "mamba2": ("in_proj", "out_proj"),
}


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))``, with ``base`` frozen and B zero at the start."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # what code that reads layer.weight sees: the merged matrix
        return self.base.weight + self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t())


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Iterable[str] | None = None,
) -> list[str]:
    """Freeze ``model`` and wrap its target layers in LoRA adapters (in place); returns the wrapped names.

    ``targets`` are leaf names (e.g. ``c_attn``); by default the attention and MLP
    projections of a transformer, the in/out projections of a Mamba.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"the LoRA rank must be a whole number of at least 1, not {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"the LoRA dropout must be in [0, 1), not {dropout}")
    alpha = float(rank if alpha is None else alpha)
    arch = model.config.arch
    names = tuple(targets) if targets else DEFAULT_TARGETS.get(arch, ())
    if not names:
        raise ConfigError(f"LoRA has no default layers for a {arch} model; name the target modules")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for full, module in list(model.named_modules()):
        for leaf, child in list(module.named_children()):
            if leaf in names and isinstance(child, nn.Linear):
                setattr(module, leaf, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{full}.{leaf}" if full else leaf)
    if not wrapped:
        raise ConfigError(f"no layer of this {arch} model is named {', '.join(names)}; check the target modules")
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_share(model: nn.Module) -> float:
    """The share of parameters that train (counting tied ones once; of an embedding or head whose
    added rows alone train, those rows)."""
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)

    def training(p: torch.Tensor) -> int:
        start = getattr(p, "_new_rows_from", None)
        return p.numel() if start is None else (p.shape[0] - start) * p[0].numel()

    return sum(training(p) for p in params if p.requires_grad) / max(total, 1)


def train_new_rows(model: nn.Module, old_vocab: int) -> list[str]:
    """Let the rows of the tokens added after ``old_vocab`` train (embedding and head) beside LoRA adapters.

    LoRA freezes the embedding and the head, but the chat tokens' rows start as the
    mean of the old rows, and a head row that is the mean of the others can never
    give the most likely token: frozen, the model could never end its answer. The
    old rows get a zero gradient and no weight decay, so they stay bit-identical.
    Returns the names of the parameters whose new rows train.
    """
    vocab = model.config.vocab_size
    if vocab <= old_vocab:
        return []
    wrapped = {id(m.base) for m in lora_layers(model).values()}
    names = []
    for name, module in model.named_modules():
        if id(module) in wrapped or not isinstance(module, (nn.Embedding, nn.Linear)):
            continue
        p = module.weight
        if p.dim() != 2 or p.shape[0] != vocab or getattr(p, "_new_rows_from", None) is not None:
            continue  # not a vocabulary-sized matrix, or tied to one already done
        keep = torch.zeros(vocab, 1)
        keep[old_vocab:] = 1.0
        p.requires_grad_(True)
        p._no_weight_decay = True  # decay would move the old rows, whose gradient is zero
        p._new_rows_from = old_vocab
        p.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype))
        names.append(f"{name}.weight" if name else "weight")
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (in place) and return the plain model, all weights trainable."""
    for name, layer in lora_layers(model).items():
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        base = layer.base
        base.weight.add_((layer.scale * (layer.lora_B.float() @ layer.lora_A.float())).to(base.weight.dtype))
        setattr(parent, name.rpartition(".")[2], base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_adapter(path: str | os.PathLike, model: nn.Module, base_id: str, info: dict[str, Any] | None = None) -> Path:
    """Write the adapters of ``model`` alone (A and B of each layer) with the base's identity."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ConfigError("this model has no LoRA adapters to save; fine-tune with a LoRA rank")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().float().contiguous().cpu()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().float().contiguous().cpu()
    for name, p in model.named_parameters():  # the added tokens' rows, trained beside the adapters
        start = getattr(p, "_new_rows_from", None)
        if start is not None and p.requires_grad:
            tensors[f"{name}.new_rows"] = p[start:].detach().float().contiguous().cpu()
    first = next(iter(layers.values()))
    meta = {
        "format": ADAPTER_FORMAT,
        "base_checkpoint_id": str(base_id),
        "rank": str(first.rank),
        "alpha": str(first.alpha),
        "targets": json.dumps(sorted({n.rpartition(".")[2] for n in layers})),
        "info": json.dumps(info or {}, sort_keys=True),
    }
    path = Path(path)
    if not path.name.endswith(".safetensors"):
        path = path.with_name(path.name + ".safetensors")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
    except OSError as e:
        raise CheckpointError(f"cannot write the adapter {path}: {e.strerror or e}") from None
    return path


def load_adapter(path: str | os.PathLike, model: nn.Module, base_id: str) -> dict[str, Any]:
    """Wrap ``model`` with the adapters of ``path`` (in place); CheckpointError beside another base."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path.name} is not a readable adapter file ({why})") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path.name} is not a LoRA adapter saved by lmcore; choose an adapter file")
    if meta.get("base_checkpoint_id") != str(base_id):
        raise CheckpointError(
            f"{path.name} was trained on another base model (checkpoint id {meta.get('base_checkpoint_id')}); "
            "load it beside the checkpoint it was fine-tuned from"
        )
    try:
        rank, alpha, targets = int(meta["rank"]), float(meta["alpha"]), json.loads(meta["targets"])
        info = json.loads(meta.get("info", "{}"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path.name} has damaged adapter metadata ({e}); save the adapter again") from None
    apply_lora(model, rank, alpha, 0.0, targets)
    layers = lora_layers(model)
    expected = {f"{n}.lora_{ab}" for n in layers for ab in "AB"}
    rows = {k for k in tensors if k.endswith(".new_rows")}
    params = dict(model.named_parameters())
    if set(tensors) - rows != expected or any(k.removesuffix(".new_rows") not in params for k in rows):
        raise CheckpointError(f"{path.name} does not match this model's layers; it belongs to another model")
    with torch.no_grad():
        for name, layer in layers.items():
            for ab in "AB":
                src, dst = tensors[f"{name}.lora_{ab}"], getattr(layer, f"lora_{ab}")
                if src.shape != dst.shape:
                    raise CheckpointError(
                        f"{path.name}: {name}.lora_{ab} has shape {list(src.shape)}, not {list(dst.shape)}"
                    )
                dst.copy_(src.to(dst.dtype))
        for key in rows:  # the added tokens' rows of the embedding and head, trained beside the adapters
            src, dst = tensors[key], params[key.removesuffix(".new_rows")]
            if src.dim() != 2 or src.shape[1:] != dst.shape[1:] or not 0 < src.shape[0] <= dst.shape[0]:
                raise CheckpointError(f"{path.name}: {key} has shape {list(src.shape)}, which this model cannot take")
            dst[dst.shape[0] - src.shape[0] :].copy_(src.to(dst.dtype))
    return info


def load_with_adapter(base: str | os.PathLike, adapter: str | os.PathLike) -> tuple[nn.Module, ChatTokenizer]:
    """The base checkpoint grown to the adapter's vocabulary and wrapped with its adapters."""
    from lmcore.checkpoint import load_checkpoint

    ckpt = load_checkpoint(base)
    base_id = str(ckpt.metadata.get("checkpoint_id", ""))
    model = ckpt.model
    # The adapter's info names the tokens it added; load_adapter says what is wrong with a bad file.
    try:
        from safetensors import safe_open

        with safe_open(str(adapter), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
        extra = json.loads(meta.get("info", "{}")).get("extra", list(SPECIAL_TOKENS))
    except Exception:
        extra = list(SPECIAL_TOKENS)
    base_tok = ckpt.tokenizer.base if isinstance(ckpt.tokenizer, ChatTokenizer) else ckpt.tokenizer
    tok = ChatTokenizer(base_tok, extra)
    model = grow_vocab(model, tok.vocab_size)
    load_adapter(adapter, model, base_id)
    model.eval()
    return model, tok


# --------------------------------------------------------------------------- peft export


def _peft_tensors(family: str, config: Any, model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """peft's names and tensors for the adapters of ``model`` (GPT-2 or Llama layout), and the target modules."""
    from lmcore.hf import _rope_rows_to_hf
    from lmcore.models.layers import swiglu_hidden

    out: dict[str, torch.Tensor] = {}
    modules: set[str] = set()

    def put(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        out[f"base_model.model.{name}.lora_A.weight"] = a.detach().float().contiguous().clone()
        out[f"base_model.model.{name}.lora_B.weight"] = b.detach().float().contiguous().clone()
        modules.add(name.rpartition(".")[2])

    for name, layer in lora_layers(model).items():
        a, b = layer.lora_A, layer.lora_B
        if family == "gpt2":
            put(f"transformer.{name}", a, b)
            continue
        i, part = name.split(".")[1], name.split(".", 2)[2]  # h.{i}.attn.c_attn
        pre = f"model.layers.{i}."
        if part == "attn.c_attn":
            H, KV, hd = config.n_head, config.kv_heads, config.head_dim
            q, k, v = b.split((H * hd, KV * hd, KV * hd))
            put(pre + "self_attn.q_proj", a, _rope_rows_to_hf(q, H))
            put(pre + "self_attn.k_proj", a, _rope_rows_to_hf(k, KV))
            put(pre + "self_attn.v_proj", a, v)
        elif part == "attn.c_proj":
            put(pre + "self_attn.o_proj", a, b)
        elif part == "mlp.c_fc":
            gate, up = b.split(swiglu_hidden(config.n_embd, config.mlp_ratio))
            put(pre + "mlp.gate_proj", a, gate)
            put(pre + "mlp.up_proj", a, up)
        elif part == "mlp.c_proj":
            put(pre + "mlp.down_proj", a, b)
        else:
            raise ConfigError(f"the adapter of {name} has no place in a transformers Llama; export it merged")
    return out, sorted(modules)


def export_peft(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export the base (grown to the adapter's vocabulary) as a transformers folder, and the adapter
    beside it in ``lora/`` as peft reads it: ``adapter_config.json`` and ``adapter_model.safetensors``.

    The adapter has a folder of its own so that loading the export gives the base alone;
    ``PeftModel.from_pretrained(base, out / "lora")`` adds the adapter.
    """
    from safetensors.torch import save_file

    from lmcore.checkpoint import load_checkpoint
    from lmcore.hf import export_family, export_model

    adapted, tok = load_with_adapter(base, adapter)
    family = export_family(adapted.config)
    if family not in ("gpt2", "llama"):
        raise ConfigError(f"LoRA adapters export for GPT-2 and Llama models only, not {family}; export it merged")
    ckpt = load_checkpoint(base)
    plain = grow_vocab(ckpt.model, tok.vocab_size)
    # The exported base carries the added tokens' trained rows (the adapter's other tensors stay apart).
    mine = plain.state_dict()
    plain.load_state_dict({k: v for k, v in adapted.state_dict().items() if k in mine}, strict=False)
    tensors, modules = _peft_tensors(family, adapted.config, adapted)
    first = next(iter(lora_layers(adapted).values()))
    out = export_model(plain, tok, out, ckpt.train_state, ckpt.data_info)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(out),
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
        "bias": "none",
        "inference_mode": True,
    }
    try:
        (out / "lora").mkdir()
        save_file(tensors, str(out / "lora" / "adapter_model.safetensors"), metadata={"format": "pt"})
        (out / "lora" / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"cannot write the adapter beside the export in {out}: {e.strerror or e}") from None
    return out


# --------------------------------------------------------------------------- runs (lmcore.jobs)


def extends(new: Tokenizer, old: Tokenizer) -> bool:
    """Whether ``new`` is ``old`` with chat tokens (and maybe characters) added after its vocabulary."""
    if new.to_dict() == old.to_dict():
        return True
    if not isinstance(new, ChatTokenizer):
        return False
    if isinstance(old, ChatTokenizer):
        return new.base.to_dict() == old.base.to_dict() and new.extra[: len(old.extra)] == old.extra
    return new.base.to_dict() == old.to_dict()


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` as a plain model of its config has it: LoRA adapters folded in.

    The model itself is left as it is (its adapters keep training); a model without
    adapters gives its own state dict.
    """
    module = getattr(model, "_orig_mod", model)
    layers = lora_layers(module)
    state = module.state_dict()
    if not layers:
        return state
    out = {k: v for k, v in state.items() if not any(k.startswith(name + ".") for name in layers)}
    with torch.no_grad():
        for name, layer in layers.items():
            out[f"{name}.weight"] = layer.weight.detach()
            if layer.base.bias is not None:
                out[f"{name}.bias"] = layer.base.bias.detach()
    return out


def plain_copy(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """A plain model (no adapters) with the weights ``model`` computes with now, on ``device``."""
    from lmcore.models import build_model

    module = getattr(model, "_orig_mod", model)
    # The copy's drawn weights are overwritten: drawn in a fork, the run's own draws (dropout) go on as they were.
    with torch.random.fork_rng(devices=[]):
        copy = build_model(module.config, device=device)
    copy.load_state_dict({k: v.detach().to(device, copy=True) for k, v in plain_state_dict(module).items()})
    return copy


def lora_trainable_share(
    config: Any, rank: int, targets: Iterable[str] | None = None, old_vocab: int | None = None
) -> float:
    """The share of a model's weights that LoRA adapters of ``rank`` train, with the rows of the tokens
    added after ``old_vocab`` (the model is built without memory)."""
    from lmcore.models import build_model

    with torch.device("meta"):
        model = build_model(config)
    apply_lora(model, rank, None, 0.0, targets)
    if old_vocab is not None:
        train_new_rows(model, old_vocab)
    return trainable_share(model)


def merged_checkpoint_callback(path: str | os.PathLike, tokenizer: Tokenizer, keep: str = "best",
                               data_info: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """A ``CheckpointCallback`` that saves a LoRA run as a normal checkpoint: the adapters folded into a copy.

    No resume state is saved: the optimizer's state belongs to the adapters, which the file no longer has.
    """
    from lmcore.checkpoint import CheckpointCallback, save_checkpoint

    class MergedCheckpointCallback(CheckpointCallback):
        def on_eval(self, event: Any) -> None:
            if self.keep == "best" and self.best is not None and not event.val_loss < self.best:
                return
            self.best = event.val_loss if self.best is None else min(self.best, event.val_loss)
            trainer = self.trainer
            with trainer.lock:
                plain = plain_copy(trainer.model)
            self.saved_path = save_checkpoint(self.path, plain, self.tokenizer, train_state=trainer.train_state(),
                                              data_info=self.data_info)  # fmt: skip
            self.saved_step = event.step

    return MergedCheckpointCallback(path, tokenizer, keep=keep, data_info=data_info, save_optimizer=False)


class BaseLossCallback:
    """Adds ``base_val_loss`` to every evaluation: the loss on the base model's own kind of text.

    Fine-tuning on a task makes a model forget some of what it knew; this measures
    how much, as a curve: the (unmasked) next-token loss on fixed windows of
    ``ids`` (plain text encoded with the base's vocabulary).
    """

    def __init__(self, ids: Any, windows: int = 8, seed: int = 0):
        from lmcore.batches import as_source

        self.source = as_source(ids)
        self.windows = windows
        self.seed = seed
        self._starts: torch.Tensor | None = None

    def on_measure(self, trainer: Any) -> dict[str, Any]:
        from lmcore.train import score_windows

        T = trainer.block_size
        n = len(self.source) - T
        if n < 1:
            return {}
        if self._starts is None:
            g = torch.Generator().manual_seed(self.seed)
            self._starts = torch.randint(0, n, (self.windows,), generator=g)
        w = self.source.windows(self._starts, T + 1)
        with trainer.lock:
            loss, _, count = score_windows(trainer.model, [w], device=trainer.device).tolist()
        return {"base_val_loss": loss / count}
