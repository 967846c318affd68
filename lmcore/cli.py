"""The command line: ``python -m lmcore train | generate | eval | info``.

- ``train`` builds a vocabulary and a model from a corpus, trains it and saves
  the best checkpoint (by validation loss) to ``--out``, with its optimizer
  state beside it so ``--resume`` continues the run exactly.
- ``generate`` prints the prompt and then the generated text on stdout, token by
  token, and nothing else. In documents mode (recorded in the checkpoint) it
  starts a new document at BOS and stops at the next BOS.
- ``eval`` prints one JSON line: loss, perplexity, accuracy, tokens.
- ``info`` prints one JSON line: config, tokenizer summary, train state, params.

Progress goes to stderr. A user's mistake (bad file, bad flag value, bad
checkpoint, Ctrl-C during training) prints one line, ``error: ...``, on stderr
and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from lmcore.errors import ConfigError, LMCoreError

# Model flags: (flag, ModelConfig field, type, help)
_MODEL_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--n-layer", "n_layer", int, "number of blocks"),
    ("--n-head", "n_head", int, "attention heads"),
    ("--n-kv-head", "n_kv_head", int, "key/value heads (1 = multi-query; default: one per head)"),
    ("--n-embd", "n_embd", int, "width of the residual stream"),
    ("--block-size", "block_size", int, "context length in tokens"),
    ("--dropout", "dropout", float, "dropout probability"),
    ("--norm", "norm", str, "layernorm or rmsnorm"),
    ("--pos", "pos", str, "learned or rope"),
    ("--mlp", "mlp", str, "gelu or swiglu"),
    ("--mlp-ratio", "mlp_ratio", float, "MLP hidden width / n_embd"),
    ("--d-state", "d_state", int, "Mamba: state size per channel"),
    ("--d-conv", "d_conv", int, "Mamba: causal convolution width"),
    ("--expand", "expand", int, "Mamba: inner width factor"),
    ("--ngram-n", "ngram_n", int, "n-gram: predict from the previous n - 1 tokens (1-5)"),
    ("--add-k", "add_k", float, "n-gram: add-k smoothing constant"),
]
_MODEL_SWITCHES = [("bias", "biases in linear layers and norms"), ("tie_weights", "share embedding and output head")]


def _non_finite_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _non_finite_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_non_finite_to_none(v) for v in value]
    return value


def _json_line(value: Any) -> str:
    return json.dumps(_non_finite_to_none(value), default=str)


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressBar:
    """Training progress on a stream: a bar refreshed in place on a terminal, evals as lines.

    Off a terminal (a log file, a pipe) the bar is written as a plain line at
    every tenth of the run instead.
    """

    def __init__(self, stream: TextIO, width: int = 24, refresh_s: float = 0.1):
        self.stream = stream
        self.width = width
        self.refresh_s = refresh_s
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = 0.0
        self._open = False  # a bar is on the current line
        self._next_log = 0

    def _bar(self, e: Any) -> str:
        frac = min(1.0, e.step / max(1, e.max_iters))
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = e.tokens_per_s
        eta = ""
        if e.step and e.elapsed_s > 0:
            eta = f" eta {_fmt_duration(e.elapsed_s / e.step * (e.max_iters - e.step))}"
        tok_s = f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"
        return (
            f"[{bar}] {e.step}/{e.max_iters} loss {e.loss:.4f} lr {e.lr:.2e} "
            f"|g| {e.grad_norm:.2f} {tok_s} tok/s{eta}"
        )

    def on_step(self, e: Any) -> None:
        if self.tty:
            now = time.monotonic()
            if now - self._last < self.refresh_s and e.step != e.max_iters:
                return
            self._last = now
            self.stream.write("\r\x1b[K" + self._bar(e))
            self._open = True
        elif e.step >= self._next_log or e.step == e.max_iters:
            self.stream.write(self._bar(e) + "\n")
            self._next_log = e.step + max(1, e.max_iters // 10)
        self.stream.flush()

    def on_eval(self, e: Any) -> None:
        self._end_line()
        self.stream.write(
            f"step {e.step}: train loss {e.train_loss:.4f}, val loss {e.val_loss:.4f}, "
            f"val ppl {e.val_ppl:.2f}, val acc {e.val_acc:.1%}\n"
        )
        self.stream.flush()

    def _end_line(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- train


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {field: getattr(args, field) for _, field, _, _ in _MODEL_FLAGS}
    values.update({name: getattr(args, name) for name, _ in _MODEL_SWITCHES})
    return {k: v for k, v in values.items() if v is not None}


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["batch_size", "max_iters", "lr", "min_lr", "warmup_iters", "weight_decay", "grad_clip",
             "eval_interval", "eval_iters", "seed", "device", "dtype", "compile"]
    values = {name: getattr(args, name) for name in names}
    values["time_budget_s"] = args.time_budget
    return {k: v for k, v in values.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from lmcore.checkpoint import load_checkpoint, load_resume_state
    from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
    from lmcore.device import describe_device, resolve_device
    from lmcore.models import ModelConfig, build_model
    from lmcore.train import CheckpointCallback, HeadScoresCallback, TrainConfig, Trainer

    overrides = _train_overrides(args)
    device = resolve_device(overrides.get("device", "auto"))
    state = None
    if args.resume:
        if _model_overrides(args) or args.tokenizer or args.vocab_size or args.documents:
            raise ConfigError("--resume continues a saved model: drop the model, tokenizer and --documents flags")
        ckpt = load_checkpoint(args.resume)
        state = load_resume_state(args.resume)
        if state is None:
            raise ConfigError(
                f"{Path(args.resume).name} has no optimizer state beside it (NAME.optim.safetensors), "
                "so it cannot be resumed exactly"
            )
        saved = dict(ckpt.train_state.get("config") or {})
        saved.pop("time_budget_s", None)  # a budget is for one sitting, not the whole run
        tc = TrainConfig.from_dict({**saved, **overrides})
        model, tokenizer = ckpt.model, ckpt.tokenizer
        source = args.data or ckpt.data_info.get("source")
        if not source:
            raise ConfigError("the checkpoint does not say which data it was trained on; pass --data")
        documents = ckpt.documents
        val_fraction = args.val_fraction if args.val_fraction is not None else ckpt.data_info.get("val_fraction", 0.1)
        out = Path(args.out or args.resume)
        corpus = load_corpus(source, documents=documents)
    else:
        if not args.data:
            raise ConfigError("no data given; pass --data FILE or --data builtin:python-docs")
        if not args.out:
            raise ConfigError("no output file given; pass --out FILE.safetensors")
        if "warmup_iters" not in overrides and "max_iters" in overrides:
            # The default warmup suits the default length; keep it to a tenth of a shorter run.
            overrides["warmup_iters"] = min(TrainConfig.warmup_iters, overrides["max_iters"] // 10)
        tc = TrainConfig(**overrides)
        tc.validate()
        val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
        out = Path(args.out)
        corpus = load_corpus(args.data, documents=args.documents)
        documents = corpus.documents
        kind = args.tokenizer or "char"
        progress = None
        if kind == "bpe":  # the slow one: say what is going on
            _say(f"building a BPE vocabulary from {corpus.name} ({len(corpus.text):,} characters)")
            progress = _bpe_progress()
        tokenizer = build_tokenizer(kind, corpus.text, vocab_size=args.vocab_size, progress=progress)
        config = ModelConfig.preset(args.preset, vocab_size=tokenizer.vocab_size, **_model_overrides(args))
        config.validate()
        torch.manual_seed(tc.seed)  # the same seed builds the same initial weights
        model = build_model(config)
    ids = encode_corpus(tokenizer, corpus)
    train_ids, val_ids = split_ids(ids, val_fraction)
    data_info = {"documents": documents, "source": corpus.source, "name": corpus.name, "val_fraction": val_fraction}
    saver = CheckpointCallback(out, tokenizer, keep=args.keep, data_info=data_info)
    trainer = Trainer(model, train_ids, val_ids, tc, callbacks=[ProgressBar(sys.stderr), HeadScoresCallback(), saver], device=device)
    if state is not None:
        trainer.load_state_dict(state)
    cfg = model.config
    _say(
        f"training {cfg.preset or cfg.arch} ({model.num_params() / 1e6:.2f}M parameters) on {describe_device(device)}: "
        f"{len(train_ids):,} training and {len(val_ids):,} validation tokens, vocabulary {tokenizer.vocab_size}"
        + (f", from step {trainer.step}" if state is not None else "")
    )

    interrupted = []

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: finish the step, evaluate and save. A second one quits at once.
        interrupted.append(signum)
        trainer.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _say("\nstopping after this step (press Ctrl-C again to quit without saving)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    saved = saver.saved_path
    where = f"saved {saved} (step {saver.saved_step})" if saved else f"nothing saved to {out}"
    if interrupted:
        _say(f"error: interrupted at step {result['step']} of {tc.max_iters}; {where}; continue with --resume {out}")
        return 2
    end = "stopped (time budget)" if result["stopped_early"] else "finished"
    _say(f"{end} at step {result['step']}: val loss {result['val_loss']:.4f}; {where}")
    print(_json_line({**result, "checkpoint": str(saved) if saved else None}), flush=True)
    return 0


def _bpe_progress() -> Any:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done >= total:
            last[0] = now
            end = "\n" if done >= total else ""
            sys.stderr.write(f"\r  {done}/{total}{end}")
            sys.stderr.flush()

    return progress


# --------------------------------------------------------------------------- generate


class _Utf8Out:
    """Text to stdout as UTF-8 whatever the locale says, flushed on every write."""

    def __init__(self) -> None:
        self.buffer = getattr(sys.stdout, "buffer", None)

    def write(self, text: str) -> None:
        if not text:
            return
        if self.buffer is not None:
            self.buffer.write(text.encode("utf-8", errors="replace"))
            self.buffer.flush()
        else:  # a replaced sys.stdout (tests capturing output)
            sys.stdout.write(text)
            sys.stdout.flush()


def cmd_generate(args: argparse.Namespace) -> int:
    from lmcore.checkpoint import load_checkpoint
    from lmcore.device import resolve_device
    from lmcore.sample import SamplingConfig, generate

    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    sampling.validate()
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be 0 or more, got {args.max_new_tokens}")
    ckpt = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    tok = ckpt.tokenizer
    prompt = args.prompt or ""
    ids = tok.encode(prompt)
    if ckpt.documents or not ids:
        ids = [tok.bos_id] + ids  # a document (or anything, with no prompt) starts at BOS
    stop_ids = [tok.bos_id] if ckpt.documents else None
    out = _Utf8Out()
    out.write(prompt)
    pending: list[int] = []
    for event in generate(ckpt.model, ids, args.max_new_tokens, sampling, stop_ids=stop_ids):
        pending.append(event.token_id)
        text = tok.decode(pending)
        # A byte-level token may end inside a multi-byte character: wait for the rest.
        if text.endswith("\ufffd") and len(pending) < 4:
            continue
        out.write(text)
        pending = []
    if pending:
        out.write(tok.decode(pending))
    if sys.stdout.isatty():
        out.write("\n")
    return 0


# --------------------------------------------------------------------------- eval, info


def cmd_eval(args: argparse.Namespace) -> int:
    from lmcore.checkpoint import load_checkpoint
    from lmcore.data import encode_corpus, load_corpus
    from lmcore.device import resolve_device
    from lmcore.train import evaluate_ids

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    corpus = load_corpus(args.data, documents=ckpt.documents)
    ids = encode_corpus(ckpt.tokenizer, corpus)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    result = evaluate_ids(ckpt.model, ids, batch_size=args.batch_size, device=device, max_tokens=args.max_tokens)
    print(_json_line(result), flush=True)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from lmcore.checkpoint import load_checkpoint, optimizer_path

    ckpt = load_checkpoint(args.checkpoint)
    meta = ckpt.metadata
    info = {
        "path": str(ckpt.path),
        "format": meta.get("format"),
        "created": meta.get("created"),
        "config": ckpt.config.to_dict(),
        "tokenizer": ckpt.tokenizer.summary(),
        "train": ckpt.train_state,
        "data": ckpt.data_info,
        "params": ckpt.model.num_params(),
        "resumable": optimizer_path(ckpt.path).exists(),
    }
    print(_json_line(info), flush=True)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from lmcore.device import DEVICE_CHOICES
    from lmcore.models import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m lmcore", description="Train, sample and inspect small language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate,eval,info}")

    t = sub.add_parser("train", help="train a model on a text corpus and save it")
    data = t.add_argument_group("data")
    data.add_argument("--data", help="a text file, an http(s) URL, or builtin:NAME (e.g. builtin:python-docs)")
    data.add_argument("--documents", action="store_true", default=None, help="one document per line, BOS between them")
    data.add_argument("--val-fraction", type=float, help="share of tokens kept for validation (default 0.1)")
    data.add_argument("--tokenizer", choices=["char", "bpe"], help="vocabulary kind (default char)")
    data.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 512)")
    model = t.add_argument_group("model")
    model.add_argument("--preset", choices=list(PRESETS), default="gpt2", help="starting architecture (default gpt2)")
    for flag, field, kind, text in _MODEL_FLAGS:
        model.add_argument(flag, dest=field, type=kind, help=text)
    for name, text in _MODEL_SWITCHES:
        model.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction, help=text)
    train = t.add_argument_group("training")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--max-iters", type=int, help="total optimizer steps (when resuming: of the whole run)")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--min-lr", type=float, help="where the cosine ends (default lr / 10)")
    train.add_argument("--warmup-iters", type=int)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (0 = off)")
    train.add_argument("--eval-interval", type=int)
    train.add_argument("--eval-iters", type=int, help="batches per evaluation")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=DEVICE_CHOICES)
    train.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16"], help="auto: bf16 autocast on CUDA, fp32 elsewhere"
    )
    train.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    train.add_argument("--time-budget", type=float, metavar="S", help="stop after S seconds")
    output = t.add_argument_group("output")
    output.add_argument("--out", help="the checkpoint file to write (FILE.safetensors)")
    output.add_argument(
        "--keep", choices=["best", "last"], default="best", help="keep the best val loss (default) or the last eval"
    )
    output.add_argument("--resume", metavar="FILE", help="continue a run saved with its optimizer state")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="print a prompt and its continuation")
    g.add_argument("--checkpoint", required=True, metavar="FILE")
    g.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="loss, perplexity and accuracy of a checkpoint on a text")
    e.add_argument("--checkpoint", required=True, metavar="FILE")
    e.add_argument("--data", required=True, help="a text file, an http(s) URL, or builtin:NAME")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-tokens", type=int, help="evaluate only the first N tokens")
    e.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="what a checkpoint holds, as one JSON line")
    i.add_argument("--checkpoint", required=True, metavar="FILE")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 a user error)."""
    args = build_parser().parse_args(argv)  # bad flags: argparse prints usage and exits 2
    try:
        return args.func(args)
    except LMCoreError as e:
        _say(f"error: {e}")
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # e.g. `generate | head`: the reader has gone
            # Point stdout at nothing so the interpreter's final flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        name = f": {e.filename}" if e.filename else ""
        _say(f"error: {e.strerror or e}{name}")
    except KeyboardInterrupt:
        _say("error: interrupted")
    return 2
