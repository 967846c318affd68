"""The command line: ``python -m lmcore prepare | train | generate | eval | info | import | export | sae``.

- ``prepare`` tokenizes a corpus of any size into a folder of token shards
  (``lmcore.shards``) that ``train --data DIR`` reads through numpy.memmap.


- ``train`` builds a vocabulary and a model from a corpus, trains it and saves
  the best checkpoint (by validation loss) to ``--out``, with its optimizer
  state beside it so ``--resume`` continues the run exactly, and appends to
  the run's log ``NAME.metrics.jsonl`` (a text sample at each evaluation):
  the same run as the app's (``lmcore.run``). Under ``torchrun`` every process
  trains one share of each step (DistributedDataParallel); rank 0 alone
  prints, logs and saves.
- ``generate`` prints the prompt and then the generated text on stdout, token by
  token, and nothing else. In documents mode (recorded in the checkpoint) it
  starts a new document at BOS and stops at the next BOS.
- ``eval`` prints one JSON line: loss, perplexity, accuracy, tokens, bpb (bits per UTF-8 byte).
- ``info`` prints one JSON line: config, tokenizer summary, train state, params.
- ``import`` turns a transformers GPT-2, Llama or Mamba (a save_pretrained
  folder or a hub id) into a checkpoint; ``export`` writes a checkpoint as a
  folder transformers loads. Both print one JSON line.
- ``sae`` trains a sparse autoencoder on a checkpoint's activations at one hook
  point (``lmcore.sae``), saves it to ``--out`` and prints its evaluation on
  held-out text as one JSON line.

Progress goes to stderr. A user's mistake (bad file, bad flag value, bad
checkpoint, Ctrl-C during training) prints one line, ``error: ...``, on stderr
and exits with status 2; no traceback. That holds for argparse's own errors
too (an unknown flag, a bad choice, a number out of range): one line naming
the flag and, where there are choices, the valid ones. ``train`` refuses a
model too big for the machine's free memory before reading any data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from lmcore.errors import ConfigError, LMCoreError
from lmcore.sample import MAX_NEW_TOKENS  # noqa: F401 (generate's cap, declared with max_new_tokens)

MAX_SEED = 2**32 - 1
_MAX_COUNT = 2**31 - 1  # steps, batch sizes, token counts: far past any run, far below an overflow


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (and exit status 2).

    ``error: --preset: invalid choice 'gpt9' (choose from gpt2, llama, ...); see
    python -m lmcore train --help`` instead of argparse's usage dump. Subparsers
    are built with the parser's own class, so they inherit this.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {_argparse_message(message)}; see {self.prog} --help\n")


def _argparse_message(message: str) -> str:
    """argparse's message, shorter: "argument --x: ..." -> "--x: ...", choices unquoted, one line."""
    message = re.sub(r"^argument ([^:]+): ", r"\1: ", " ".join(message.split()))
    choice = re.search(r"invalid choice: (.+?) \(choose from (.*)\)$", message)
    if choice:
        choices = ", ".join(c.strip().strip("'\"") for c in choice[2].split(","))
        message = f"{message[: choice.start()]}invalid choice {choice[1]} (choose from {choices})"
    return message


def _whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` (to ``hi``), with a one-line reason when not."""
    span = f"from {lo:,} to {hi:,}" if hi is not None else f"of at least {lo:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be a whole number {span}, got {text}")
        return value

    return parse


def _finite(text: str) -> float:
    """An argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_up_to(hi: float) -> Callable[[str], float]:
    """An argparse type: a number more than 0 and at most ``hi``."""

    def parse(text: str) -> float:
        value = _finite(text)
        if not 0 < value <= hi:
            raise argparse.ArgumentTypeError(f"must be more than 0 and at most {hi:g}, got {text}")
        return value

    return parse


_SIZE = _whole(1)  # model sizes: ModelConfig.validate caps each, the memory check the whole model
_COUNT = _whole(1, _MAX_COUNT)
_SEED = _whole(0, MAX_SEED)

# The argparse type of a declared number with bounds (low, high): see lmcore.settings.add_flags.
_FLAG_TYPES: dict[str, Callable[[Any, Any], Any]] = {"int": lambda lo, hi: _whole(lo, hi), "float": lambda lo, hi: _finite}
_LOCAL_URLS_HELP = "let an http(s) --data URL reach this machine or its local network (refused by default)"


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


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- train


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from lmcore.models import ModelConfig
    from lmcore.settings import flag_values

    return flag_values(args, ModelConfig)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from lmcore.settings import flag_values
    from lmcore.train import TrainConfig

    return flag_values(args, TrainConfig)


def _sampling(args: argparse.Namespace) -> tuple[Any, int]:
    """(the SamplingConfig, max_new_tokens) that ``generate``'s flags set; the declared defaults for the rest."""
    from lmcore.sample import MAX_NEW, SAMPLING_SETTINGS, SamplingConfig
    from lmcore.settings import flag_values

    given = flag_values(args, SAMPLING_SETTINGS)
    max_new = given.pop(MAX_NEW.name, MAX_NEW.default)
    return SamplingConfig(**given).validate(), max_new


def _out_path(out: str, name: str) -> Path:
    """Where ``--out`` writes: the file itself, or inside a folder (``DIR/`` or an existing one).

    In a folder the file is ``name``, or ``NAME-2``, ``NAME-3``... if taken, so nothing saved is replaced.
    """
    from lmcore.checkpoint_names import SUFFIX, checkpoint_path

    path = Path(out)
    if not (out.endswith(("/", os.sep)) or path.is_dir()):
        return path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} names a folder but {path} is a file; pass FILE.safetensors or a folder")
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    for n in range(1, 10_000):
        target = checkpoint_path(path, stem if n == 1 else f"{stem}-{n}")
        if not target.exists():
            return target
    raise ConfigError(f"the folder {out} already holds {stem}-2 to {stem}-9999; pass --out FILE.safetensors")


def _load_data(
    source: str, documents: bool, tokenizer: Any, val_fraction: float, allow_local_urls: bool = False
) -> tuple[Any, Any, Any, str]:
    """(train, val, corpus name, source) of a prepared folder (memmapped) or a text corpus (in memory)."""
    from lmcore.data import encode_corpus, load_corpus, split_ids
    from lmcore.shards import is_prepared, load_prepared

    if is_prepared(source):
        prepared = load_prepared(source)
        if prepared.tokenizer.to_dict() != tokenizer.to_dict():
            raise ConfigError(f"{source} was prepared with another vocabulary than the checkpoint's; prepare it again")
        return prepared.train, prepared.val, Path(source).name, str(source)
    corpus = load_corpus(source, documents=documents, allow_local_urls=allow_local_urls)
    train_ids, val_ids = split_ids(encode_corpus(tokenizer, corpus), val_fraction)
    return train_ids, val_ids, corpus.name, corpus.source


def cmd_train(args: argparse.Namespace) -> int:
    from lmcore import distributed

    try:
        return _train(args, distributed.init_from_env(args.device or "auto"))
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, dist: Any) -> int:
    """The run the flags describe, trained through ``lmcore.run`` with a progress bar and Ctrl-C; its result lines."""
    from lmcore.device import describe_device
    from lmcore.run import Run
    from lmcore.train import ProgressBar

    say = _say if dist.is_main else (lambda msg: None)  # rank 0 alone prints
    if args.out:
        _check_out_name(Path(args.out))
        if not (args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()):  # a folder: the name is ours
            _check_component(Path(args.out).name, "--out")
    spec, out = _resume_spec(args) if args.resume else _new_spec(args, dist, say)
    # Rank 0 alone measures, samples, saves and logs (lmcore.run); the others train their share of each step.
    run = Run(spec, out, dist.device, callbacks=[ProgressBar(file=sys.stderr)] if dist.is_main else [])
    trainer = run.build()
    model, tc, cfg = trainer.model, spec.train_config, trainer.model.config
    where = describe_device(dist.device) + (f" x {dist.world_size} processes" if dist.world_size > 1 else "")
    say(
        f"training {cfg.preset or cfg.arch} ({model.num_params() / 1e6:.2f}M parameters) on {where}: "
        f"{len(spec.train_ids):,} training and {len(spec.val_ids):,} validation tokens, "
        f"vocabulary {spec.tokenizer.vocab_size}" + (f", from step {trainer.step}" if spec.resume_from else "")
    )
    say(
        f"effective batch: {tc.batch_size} windows x {cfg.block_size} tokens x {tc.grad_accum} accumulation "
        f"x {dist.world_size} processes = {trainer.tokens_per_step:,} tokens per step"
    )
    result, interrupted = _fit(run, say)
    if not dist.is_main:
        return 0
    saver = run.checkpointer
    saved = saver.saved_path
    where = f"saved {saved} (step {saver.saved_step})" if saved else f"nothing saved to {out}"
    if interrupted:
        _say(f"error: interrupted at step {result['step']} of {tc.max_iters}; {where}; continue with --resume {out}")
        return 2
    end = "stopped (time budget)" if result["stopped_early"] else "finished"
    _say(f"{end} at step {result['step']}: val loss {result['val_loss']:.4f}; {where}")
    print(_json_line({**result, "checkpoint": str(saved) if saved else None}), flush=True)
    return 0


def _fit(run: Any, say: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """``run.fit()`` and whether Ctrl-C stopped it: the first finishes the step, evaluates and saves; a second quits."""
    from lmcore.train import ProgressBar

    interrupted = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        run.trainer.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say("\nstopping after this step (press Ctrl-C again to quit without saving)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
        for cb in run.callbacks:  # the bar's line ends before any message below it
            if isinstance(cb, ProgressBar):
                cb.close()
    return result, bool(interrupted)


def _resume_spec(args: argparse.Namespace) -> tuple[Any, Path]:
    """``train --resume``: the run saved in the checkpoint, on its data (or ``--data``), and where it goes on saving.

    Only the checkpoint's metadata is read here; the run loads its weights and resume state.
    """
    from lmcore.checkpoint_names import optimizer_path
    from lmcore.checkpoint_resume import load_resume_state, resume_settings
    from lmcore.run import RunSpec

    if _model_overrides(args) or args.tokenizer or args.vocab_size or args.documents:
        raise ConfigError("--resume continues a saved model: drop the model, tokenizer and --documents flags")
    saved = resume_settings(args.resume, _train_overrides(args))  # the run's own settings, less its time budget
    if not optimizer_path(args.resume).exists() and load_resume_state(args.resume) is None:
        raise ConfigError(
            f"{Path(args.resume).name} has no optimizer state beside it (NAME.optim.safetensors), "
            "so it cannot be resumed exactly"
        )
    info = saved.data_info
    source = args.data or info.get("source")
    if not source:
        raise ConfigError("the checkpoint does not say which data it was trained on; pass --data")
    documents = bool(info.get("documents"))
    val_fraction = args.val_fraction if args.val_fraction is not None else info.get("val_fraction", 0.1)
    keep = args.keep or info.get("keep") or "best"  # the run's own choice unless overridden
    out = _out_path(args.out, Path(args.resume).name) if args.out else Path(args.resume)
    train_ids, val_ids, data_name, source = _load_data(
        source, documents, saved.tokenizer, val_fraction, args.allow_local_urls
    )
    data_info = {"documents": documents, "source": source, "name": data_name, "val_fraction": val_fraction, "keep": keep}
    spec = RunSpec(out.stem, saved.config, saved.tokenizer, train_ids, val_ids, saved.train_config,
                   data_info=data_info, resume_from=args.resume, keep=keep)  # fmt: skip
    return spec, out


def _new_spec(args: argparse.Namespace, dist: Any, say: Callable[[str], None]) -> tuple[Any, Path]:
    """``train --data``: a new model of the flags' shape, its vocabulary and the data's splits; nothing read
    before the model is known to fit."""
    from lmcore.data import build_tokenizer, encode_corpus, load_corpus, split_ids
    from lmcore.models import ModelConfig
    from lmcore.models.estimate import check_fits
    from lmcore.run import RunSpec
    from lmcore.shards import is_prepared, load_prepared
    from lmcore.train import TrainConfig

    overrides = _train_overrides(args)
    if not args.data:
        raise ConfigError("no data given; pass --data FILE or --data builtin:python-docs")
    if not args.out:
        raise ConfigError("no output file given; pass --out FILE.safetensors")
    if "warmup_iters" not in overrides and "max_iters" in overrides:
        # The default warmup suits the default length; keep it to a tenth of a shorter run.
        overrides["warmup_iters"] = min(TrainConfig.warmup_iters, overrides["max_iters"] // 10)
    kind = args.tokenizer or "char"
    if kind == "char" and args.vocab_size is not None:
        raise ConfigError(
            "--vocab-size sets the size of a BPE vocabulary; a char vocabulary is the corpus's own characters: "
            "drop --vocab-size or add --tokenizer bpe"
        )
    tc = TrainConfig(**overrides)
    tc.validate()
    # Refuse a model too big for this machine before reading any data: the
    # smallest vocabulary gives a lower bound; the real one is checked below.
    check_fits(ModelConfig.preset(args.preset, vocab_size=2, **_model_overrides(args)), tc.batch_size, dist.device)
    val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
    keep = args.keep or "best"
    out = _out_path(args.out, f"{args.preset}.safetensors")
    if is_prepared(args.data):
        if args.tokenizer or args.vocab_size or args.documents:
            raise ConfigError(
                f"{args.data} is prepared data with its own vocabulary: drop --tokenizer, --vocab-size and --documents"
            )
        prepared = load_prepared(args.data)
        tokenizer, documents = prepared.tokenizer, False
        train_ids, val_ids, data_name, source = prepared.train, prepared.val, Path(args.data).name, str(args.data)
        val_fraction = prepared.meta.get("val_fraction", val_fraction)
    else:
        corpus = load_corpus(args.data, documents=args.documents, allow_local_urls=args.allow_local_urls)
        documents = corpus.documents
        progress = None
        if kind == "bpe":  # the slow one: say what is going on
            say(f"building a BPE vocabulary from {corpus.name} ({len(corpus.text):,} characters)")
            progress = _bpe_progress() if dist.is_main else None
        tokenizer = build_tokenizer(kind, corpus.text, vocab_size=args.vocab_size, progress=progress)
        train_ids, val_ids = split_ids(encode_corpus(tokenizer, corpus), val_fraction)
        data_name, source = corpus.name, corpus.source
    config = ModelConfig.preset(args.preset, vocab_size=tokenizer.vocab_size, **_model_overrides(args))
    check_fits(config, tc.batch_size, dist.device)  # validates, and counts without building
    data_info = {
        "documents": documents,
        "source": source,
        "name": data_name,
        "val_fraction": val_fraction,
        "keep": keep,  # how `--resume` goes on saving
    }
    # The run draws the initial weights with the seed, as the app's runs do (lmcore.run).
    return RunSpec(out.stem, config, tokenizer, train_ids, val_ids, tc, data_info=data_info, keep=keep), out


# Characters and names one platform or another refuses, or reads as a path: a
# checkpoint or export name travels (zip entries, other machines), so it must be
# one plain component everywhere.
_UNSAFE_CHARS = set('\\/<>:"|?*')
_DEVICE_NAMES = {"con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10))}


def _check_component(name: str, flag: str) -> None:
    """Refuse a file or folder name that is not one safe component on every platform.

    No separator of either kind (``a\\..\\evil`` is three components on Windows
    and in a zip archive unpacked there), no ``..``, no control characters, none
    of Windows' reserved characters or device names, no trailing dot or space.
    """
    bad = sorted({ch for ch in name if ch in _UNSAFE_CHARS or not ch.isprintable()})
    if bad or name in (".", "..") or name.endswith((".", " ")) or name.split(".")[0].lower() in _DEVICE_NAMES:
        shown = "".join(ch if ch.isprintable() else "?" for ch in name)
        why = f"holds {' '.join(repr(ch) for ch in bad)}" if bad else "is not a plain name"
        raise ConfigError(
            f"{flag}: the name {shown!r} {why}; a saved model is named by one plain component "
            "(letters, digits, spaces, '-', '_' and '.'), with its folder given before a '/'"
        )


def _check_out_name(out: Path) -> None:
    """Refuse an output name the file system would refuse only at the first save, after training.

    A file name holds at most 255 bytes; the optimizer file adds ".optim.safetensors"
    and a save's temporary file ".<random>.tmp" to the stem: the stem gets the
    run names' budget.
    """
    from lmcore.checkpoint_names import MAX_NAME_BYTES

    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    size = len(stem.encode("utf-8", errors="surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"the output name is {size} bytes long and file names hold at most 255 bytes with the "
            f"'.optim.safetensors' file beside it; give --out a name of at most {MAX_NAME_BYTES} bytes "
            f"(about {MAX_NAME_BYTES // 3} characters of a non-Latin script)"
        )


def cmd_prepare(args: argparse.Namespace) -> int:
    from lmcore.shards import prepare

    last = [0.0]
    started = time.monotonic()
    tty = sys.stderr.isatty()

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        # A terminal gets a bar redrawn twice a second; a log file one line per stage.
        if (tty and now - last[0] >= 0.5) or done >= total:
            last[0] = now
            mb_s = done / 1e6 / max(now - started, 1e-9)
            frac = done / max(total, 1)
            bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
            sys.stderr.write(("\r\x1b[K" if tty else "") + f"{stage:9s} [{bar}] {done / 1e6:,.1f}/{total / 1e6:,.1f} MB {mb_s:.1f} MB/s")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    if args.tokenizer == "bpe":
        _say(f"training the BPE vocabulary on a sample of at most {args.bpe_sample_mb:g} MB of the corpus")
    meta = prepare(
        args.data,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        bpe_sample_bytes=int(args.bpe_sample_mb * 1e6),
        progress=progress,
        bpe_progress=_bpe_progress() if args.tokenizer == "bpe" else None,
        allow_local_urls=args.allow_local_urls,
    )
    if args.tokenizer == "bpe":
        _say(meta["vocabulary"])
    _say(
        f"prepared {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens "
        f"({meta['dtype']}, vocabulary {meta['vocab_size']}) in {args.out}"
    )
    summary = {k: v for k, v in meta.items() if k != "tokenizer"}
    print(_json_line({**summary, "out": str(args.out)}), flush=True)
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
    from lmcore.sample import generate, prompt_start

    if getattr(args, "chat", False) or getattr(args, "prompts_file", None) or getattr(args, "adapter", None):
        return _chat_generate(args)
    sampling, max_new = _sampling(args)
    ckpt = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    tok = ckpt.tokenizer
    prompt = args.prompt or ""
    ids = prompt_start(tok.encode(prompt), tok.bos_id, ckpt.documents)
    stop_ids = [tok.bos_id] if ckpt.documents else None
    out = _Utf8Out()
    out.write(prompt)
    pending: list[int] = []
    for event in generate(ckpt.model, ids, max_new, sampling, stop_ids=stop_ids):
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


def _chat_generate(args: argparse.Namespace) -> int:
    """``generate --chat``: wrap each prompt in the chat template and print only the answer."""
    import json

    from lmcore.checkpoint import load_checkpoint
    from lmcore.device import resolve_device
    from lmcore.errors import DataError
    from lmcore.finetune import chat_reply, load_with_adapter
    from lmcore.tokenizers import ChatTokenizer

    if not args.chat:
        raise ConfigError("--prompts-file and --adapter answer as a chat model: add --chat")
    if args.prompts_file and args.prompt:
        raise ConfigError("give either --prompt or --prompts-file, not both")
    sampling, max_new = _sampling(args)
    if args.prompts_file:
        try:
            prompts = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or e
            raise DataError(f"cannot read the prompts file {args.prompts_file}: {why}") from None
        prompts = [p for p in prompts if p.strip()]
    else:
        prompts = [args.prompt]
    device = resolve_device(args.device)
    if args.adapter:
        model, tok = load_with_adapter(args.checkpoint, args.adapter)
        model.to(device)
    else:
        ckpt = load_checkpoint(args.checkpoint, device=device)
        model, tok = ckpt.model, ckpt.tokenizer
    if not isinstance(tok, ChatTokenizer):
        raise ConfigError(f"{Path(args.checkpoint).name} has no chat template; fine-tune it first (lmcore finetune)")
    out = _Utf8Out()
    for prompt in prompts:
        answer = chat_reply(model, tok, prompt, max_new, sampling)
        if args.prompts_file:
            out.write(json.dumps({"prompt": prompt, "response": answer}) + "\n")
        else:
            out.write(answer + ("\n" if sys.stdout.isatty() else ""))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a checkpoint on JSONL prompt/response pairs (full or LoRA) as the app does; one JSON line."""
    from lmcore.run import finetune_result, finetune_run
    from lmcore.train import ProgressBar, TrainConfig

    if args.out:
        _check_out_name(Path(args.out))
    targets = [t for t in args.lora_targets.split(",") if t] if args.lora_targets else None
    overrides = {"max_iters": 300, "eval_interval": 100, "eval_iters": 10, **_train_overrides(args)}
    overrides.setdefault("warmup_iters", min(20, overrides["max_iters"]))  # fine-tuning runs are short
    tc = TrainConfig(**overrides).validate()
    lora = None if args.lora_rank is None else {
        "rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": targets}  # fmt: skip
    run = finetune_run(args.checkpoint, args.data, tc, args.out or None, lora=lora, adapter_out=args.adapter_out,
                       add_chars=args.add_chars, callbacks=[ProgressBar(file=sys.stderr)])  # fmt: skip
    run.build()
    result, interrupted = _fit(run, _say)
    result = finetune_result(run, result, args.adapter_out)
    if interrupted:
        written = [result[k] for k in ("out", "adapter") if k in result]
        _say(f"error: interrupted at step {result['step']} of {tc.max_iters}; "
             + (f"saved {' and '.join(written)}" if written else "nothing saved"))  # fmt: skip
        return 2
    keys = ("step", "train_loss", "val_loss", "val_acc", "elapsed_s", "trainable_share", "out", "adapter")
    print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


# --------------------------------------------------------------------------- eval, info


def cmd_eval(args: argparse.Namespace) -> int:
    from lmcore.checkpoint import load_checkpoint
    from lmcore.data import encode_corpus, load_corpus
    from lmcore.device import resolve_device
    from lmcore.train import evaluate_ids

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    corpus = load_corpus(args.data, documents=ckpt.documents, allow_local_urls=args.allow_local_urls)
    ids = encode_corpus(ckpt.tokenizer, corpus)
    result = evaluate_ids(
        ckpt.model, ids, batch_size=args.batch_size, device=device, max_tokens=args.max_tokens, tokenizer=ckpt.tokenizer
    )
    print(_json_line(result), flush=True)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from lmcore.checkpoint import load_checkpoint
    from lmcore.checkpoint_names import optimizer_path

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


def cmd_import(args: argparse.Namespace) -> int:
    from lmcore.hf import import_checkpoint

    _check_component(Path(args.out).name, "--out")
    _say(f"importing {args.source} ...")
    path, imported = import_checkpoint(args.source, args.out)
    info = {"path": str(path), "family": imported.family, "params": imported.model.num_params(), "notes": imported.notes}
    print(_json_line(info), flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lmcore.hf import export_checkpoint

    if Path(args.out).name:  # "." and "/" name no new folder
        _check_component(Path(args.out).name, "--out")
    if getattr(args, "adapter", None):  # the base and, beside it, the LoRA adapter as peft reads it
        from lmcore.finetune import export_peft

        out = export_peft(args.checkpoint, args.adapter, args.out)
    else:
        out = export_checkpoint(args.checkpoint, args.out)
    print(_json_line({"path": str(out), "files": sorted(p.name for p in out.iterdir())}), flush=True)
    return 0


def cmd_sae(args: argparse.Namespace) -> int:
    from lmcore.checkpoint import load_checkpoint
    from lmcore.data import encode_corpus, load_corpus
    from lmcore.device import resolve_device
    from lmcore.sae import check_hook, default_hook, evaluate_sae, train_sae

    if args.k > args.n_features:
        raise ConfigError(f"--k must be at most --n-features ({args.n_features}), got {args.k}")
    ckpt = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    check_hook(ckpt.model, args.hook or default_hook(ckpt.model))
    source = args.data or ckpt.data_info.get("source")
    if not source:
        raise ConfigError(f"{Path(args.checkpoint).name} does not record its training text; pass --data")
    corpus = load_corpus(source, documents=ckpt.documents, allow_local_urls=args.allow_local_urls)
    ids = encode_corpus(ckpt.tokenizer, corpus)
    held = min(args.eval_tokens, len(ids) // 10)  # the last tenth (at most --eval-tokens) is held out
    train_ids = ids[: len(ids) - held][: args.max_tokens]
    _say(f"training an SAE on {len(train_ids):,} tokens ...")
    sae = train_sae(
        ckpt.model, train_ids, hook=args.hook, n_features=args.n_features, k=args.k, epochs=args.epochs, seed=args.seed
    )
    result = evaluate_sae(ckpt.model, sae, ids[len(ids) - held :] if held >= 2 else train_ids)
    sae.save(args.out)
    print(_json_line({"path": str(args.out), "n_features": sae.n_features, "k": sae.k, **result}), flush=True)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from lmcore.data import MAX_CORPUS_BYTES
    from lmcore.device import DEVICE_CHOICES
    from lmcore.models import PRESETS, ModelConfig
    from lmcore.models.config import MAX_FIELD
    from lmcore.sample import SAMPLING_SETTINGS
    from lmcore.settings import add_flags
    from lmcore.train import MAX_WINDOWS, TrainConfig

    # Every number is bounded by what it can mean, so that no value reaches an allocation or a loop unchecked.
    windows = _whole(1, MAX_WINDOWS)  # batch sizes and micro-batches: TrainConfig also bounds their products
    vocab = _whole(1, MAX_FIELD)  # no model's vocabulary can be larger (BPE checks its own smallest size)
    bpe_sample_mb = _positive_up_to(MAX_CORPUS_BYTES / 1e6)  # the most text the app trains a BPE on, too

    parser = OneLineParser(
        prog="python -m lmcore", description="Train, sample and inspect small language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = sub.add_parser("prepare", help="tokenize a corpus of any size into token shards for train --data DIR")
    pr.add_argument("--data", required=True, help="a text file, a folder of .txt files, an http(s) URL, or builtin:NAME")
    pr.add_argument("--tokenizer", choices=["char", "bpe"], default="char", help="vocabulary kind (default char)")
    pr.add_argument("--vocab-size", type=vocab, help="BPE vocabulary size (default 512)")
    pr.add_argument("--val-fraction", type=_finite, default=0.1, help="share of the text kept for validation (default 0.1)")
    pr.add_argument(
        "--bpe-sample-mb", type=bpe_sample_mb, default=4.0,
        help=f"BPE is trained on this many MB of the corpus (default 4, at most {MAX_CORPUS_BYTES / 1e6:g})",
    )
    pr.add_argument("--out", required=True, metavar="DIR", help="folder for train.bin, val.bin and meta.json")
    pr.add_argument("--allow-local-urls", action="store_true", help=_LOCAL_URLS_HELP)
    pr.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="train a model on a text corpus and save it")
    data = t.add_argument_group("data")
    data.add_argument(
        "--data", help="a text file, an http(s) URL, builtin:NAME (e.g. builtin:python-docs), or a folder from prepare"
    )
    data.add_argument("--documents", action="store_true", default=None, help="one document per line, BOS between them")
    data.add_argument("--val-fraction", type=_finite, help="share of tokens kept for validation (default 0.1)")
    data.add_argument("--tokenizer", choices=["char", "bpe"], help="vocabulary kind (default char)")
    data.add_argument("--vocab-size", type=vocab, help="BPE vocabulary size (default 512; bpe only)")
    data.add_argument("--allow-local-urls", action="store_true", help=_LOCAL_URLS_HELP)
    model = t.add_argument_group("model")
    model.add_argument("--preset", choices=list(PRESETS), default="gpt2", help="starting architecture (default gpt2)")
    add_flags(model, ModelConfig, _FLAG_TYPES)  # one per declared field (lmcore.models.config)
    train = t.add_argument_group("training")
    add_flags(train, TrainConfig, _FLAG_TYPES)  # one per declared field (lmcore.train.TrainConfig)
    output = t.add_argument_group("output")
    output.add_argument(
        "--out", help="the checkpoint file to write (FILE.safetensors), or a folder (DIR/) to write it in"
    )
    output.add_argument(
        "--keep", choices=["best", "last"],
        help="keep the best val loss (default) or the last eval; a resumed run keeps its choice",
    )
    output.add_argument("--resume", metavar="FILE", help="continue a run saved with its optimizer state")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="print a prompt and its continuation")
    g.add_argument("--checkpoint", required=True, metavar="FILE")
    g.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    add_flags(g, SAMPLING_SETTINGS, _FLAG_TYPES)  # one per declared setting (lmcore.sample.SamplingConfig)
    g.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    g.add_argument("--chat", action="store_true", help="answer as a fine-tuned chat model; print the answer only")
    g.add_argument("--prompts-file", metavar="FILE", help="with --chat: one prompt a line; one JSON line per answer")
    g.add_argument("--adapter", metavar="FILE", help="with --chat: a LoRA adapter to apply to --checkpoint")
    g.set_defaults(func=cmd_generate)

    f = sub.add_parser("finetune", help="fine-tune a checkpoint on JSONL prompt/response pairs (full or LoRA)")
    f.add_argument("--checkpoint", required=True, metavar="BASE")
    f.add_argument("--data", required=True, metavar="FILE.jsonl", help='{"prompt", "response"} or {"messages"} a line')
    f.add_argument("--out", metavar="FILE", help="the fine-tuned checkpoint to write (LoRA merged into it)")
    f.add_argument("--adapter-out", metavar="FILE", help="the LoRA adapter alone (needs --lora-rank)")
    f.add_argument("--add-chars", action="store_true", help="add characters a char vocabulary has never seen")
    f.add_argument("--lora-rank", type=_whole(1, 4096), metavar="R", help="LoRA adapters of rank R (default: full)")
    f.add_argument("--lora-alpha", type=_finite, help="LoRA scale alpha (default: the rank)")
    f.add_argument("--lora-dropout", type=_finite, default=0.0)
    f.add_argument("--lora-targets", metavar="NAMES", help="layer names, comma-separated")
    add_flags(f, TrainConfig, _FLAG_TYPES, bare=True)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("eval", help="loss, perplexity and accuracy of a checkpoint on a text")
    e.add_argument("--checkpoint", required=True, metavar="FILE")
    e.add_argument("--data", required=True, help="a text file, an http(s) URL, or builtin:NAME")
    e.add_argument("--allow-local-urls", action="store_true", help=_LOCAL_URLS_HELP)
    e.add_argument("--batch-size", type=windows, default=16)
    e.add_argument("--max-tokens", type=_COUNT, help="evaluate only the first N tokens")
    e.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="what a checkpoint holds, as one JSON line")
    i.add_argument("--checkpoint", required=True, metavar="FILE")
    i.set_defaults(func=cmd_info)

    im = sub.add_parser("import", help="a transformers GPT-2, Llama or Mamba as a checkpoint")
    im.add_argument("source", help="a folder saved with save_pretrained, or a hub id such as gpt2")
    im.add_argument("--out", required=True, metavar="FILE", help="the checkpoint file to write (FILE.safetensors)")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="a checkpoint as a folder transformers' Auto classes load")
    ex.add_argument("--checkpoint", required=True, metavar="FILE")
    ex.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")
    ex.add_argument("--adapter", metavar="FILE", help="a LoRA adapter of --checkpoint, written beside it for peft")
    ex.set_defaults(func=cmd_export)

    sa = sub.add_parser("sae", help="train a sparse autoencoder on a checkpoint's activations; print its evaluation")
    sa.add_argument("--checkpoint", required=True, metavar="FILE")
    sa.add_argument("--out", required=True, metavar="FILE", help="the SAE file to write (FILE.safetensors)")
    sa.add_argument("--data", help="the text to train on (default: the one the checkpoint records)")
    sa.add_argument("--allow-local-urls", action="store_true", help=_LOCAL_URLS_HELP)
    sa.add_argument("--hook", help="the hook point (default: the residual stream after the middle block)")
    sa.add_argument("--n-features", type=_whole(1, 65536), default=1024, help="dictionary size (default 1024)")
    sa.add_argument("--k", type=_whole(1, 65536), default=16, help="active features per token (default 16)")
    sa.add_argument("--epochs", type=_positive_up_to(100), default=1.0, help="passes over the text (default 1)")
    sa.add_argument("--max-tokens", type=_COUNT, help="train on at most the first N tokens")
    sa.add_argument("--eval-tokens", type=_COUNT, default=50_000, help="held-out tokens to evaluate on (default 50,000)")
    sa.add_argument("--seed", type=_SEED, default=0)
    sa.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    sa.set_defaults(func=cmd_sae)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 a user error)."""
    args = build_parser().parse_args(argv)  # bad flags: one line on stderr, exit 2 (OneLineParser)
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
    except MemoryError:  # a safety net: the estimates refuse what they can foresee before allocating
        _say("error: out of memory; use a smaller model, batch or corpus")
    return 2
