"""Checkpoints: one self-contained ``.safetensors`` file per model.

The file holds the weights under their module names (``wte.weight``,
``blocks.0.attn.c_attn.weight``...) and, in the safetensors ``__metadata__``
map (string values only), everything else needed to use the model:

- ``format``: ``lmcore/1``;
- ``config``: the ModelConfig as JSON;
- ``tokenizer``: the tokenizer's ``to_dict()`` as JSON;
- ``train``: JSON of the training state (steps, tokens seen, losses, seed, time);
- ``data``: JSON of what the model was trained on (``documents``, ``source``);
- ``created``: ISO 8601 time of writing (UTC);
- ``tied``: JSON map alias -> kept name for tensors that share storage;
- ``arch``, ``preset``, ``params``, ``lmcore``, ``checkpoint_id``: for listings.

Tied weights (the token embedding doubling as the output head) share storage,
which ``safetensors.save_file`` refuses; we store one copy, record the alias in
``tied`` and tie the parameters again on load. Any safetensors reader can still
read the weights (``safetensors.torch.load_file``); nothing is ever pickled and
``torch.load`` is never called.

The optimizer and random-generator state needed to resume training exactly
live beside the checkpoint in ``NAME.optim.safetensors``: tensors in the file,
the nesting (param groups, steps) as JSON in its metadata, and the same
``checkpoint_id`` so a stale pair is caught.

Saving never leaves a pair that cannot be resumed: the optimizer state is
written first to a temporary file named after the new ``checkpoint_id``, then
the weights replace the old ones (the commit: they name that id), and only then
does the optimizer file take its place. A process killed at any instant leaves
the old pair or the new one; a new pair whose optimizer file is still under its
temporary name is completed by the next read. Temporary files of killed saves
(they carry the writer's process id) are removed at the next save or listing.

Reading costs at most a small multiple of the file's size: the header is
refused before it is parsed when it holds more tensor entries than any model
can need, JSON is refused when nested more than ``MAX_JSON_DEPTH`` deep or
holding numbers longer than ``MAX_NUMBER_CHARS``, and tokenizers are checked
against their limits from their declared sizes before they are built.
Every malformed file raises ``CheckpointError`` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
import time
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import lmcore
from lmcore.errors import CheckpointError, ConfigError, LMCoreError
from lmcore.models import LanguageModel, ModelConfig, build_model, model_class
from lmcore.tokenizers import Tokenizer, tokenizer_from_dict
from lmcore.train import TrainConfig

if TYPE_CHECKING:
    from lmcore.train import Trainer, TrainEvent

FORMAT = "lmcore/1"
OPTIM_FORMAT = "lmcore-optim/1"
SUFFIX = ".safetensors"
OPTIM_SUFFIX = ".optim.safetensors"
LOG_SUFFIX = ".metrics.jsonl"  # the run log beside a checkpoint (lmcore.runlog)
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger declared header is hostile or broken
# Tensor entries in a checkpoint's header: over 1,300 transformer layers. Checking the
# names and shapes of a model takes about a millisecond per tensor, so this bounds it.
MAX_TENSORS = 16_384
# Per layer, and outside the layers, no architecture saves more than this many tensors.
_MAX_TENSORS_PER_LAYER = 32
# An optimizer-state file holds a few tensors per parameter (Adam: step, two moments).
MAX_OPTIM_TENSORS = 4 * MAX_TENSORS
MAX_JSON_DEPTH = 32  # lmcore writes at most 5 levels
# What each metadata field can need, checked on its text before it is parsed: characters, and
# JSON containers ('{' or '['), which bound the objects a parse creates. A run's "train" keeps one
# small object per evaluation; a BPE tokenizer one pair per merge (at most 262,144).
_FIELD_LIMITS = {
    "config": (64 << 10, 1_000),
    "data": (64 << 10, 1_000),
    "train": (32 << 20, 200_000),
    "tokenizer": (MAX_HEADER_BYTES, 300_000),
    "tied": (4 << 20, 1_000),
}
# Numbers in a run's "train" metadata: counts, and measurements (None where not measured).
_TRAIN_COUNTS = ("steps", "max_iters", "tokens_seen", "seed")
_TRAIN_NUMBERS = ("train_loss", "val_loss", "val_ppl", "val_acc", "best_val_loss", "elapsed_s")
# A tokenizer.json may leave ids past its own tokens unused (a padded embedding); a counting
# model has no weights to bound such padding, so it may add at most this many.
MAX_COUNTING_PADDING = 1024
MAX_NUMBER_CHARS = 40  # a seed, a token count or a float's repr is far shorter
# A temporary file whose writer is still alive is only removed once it is this old.
_STALE_TEMP_S = 24 * 3600
MAX_NAME_CHARS = 100
# Device names Windows reserves whatever the extension; avoided so files can be copied there.
_RESERVED_NAMES = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
# Metadata keys every lmcore checkpoint carries.
REQUIRED_KEYS = ("format", "config", "tokenizer")
# The process's umask, read once: temporary files are created 0600 and get the
# permissions an ordinary new file would have before they are renamed into place.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class Checkpoint:
    """A loaded checkpoint: a ready model (eval mode) and everything saved with it."""

    model: LanguageModel
    tokenizer: Tokenizer
    config: ModelConfig
    metadata: dict[str, Any]  # every metadata value, JSON ones parsed
    train_state: dict[str, Any] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)  # always has "documents": bool
    path: Path | None = None

    @property
    def documents(self) -> bool:
        """Whether the model was trained in documents mode (BOS between documents)."""
        return bool(self.data_info.get("documents", False))

    def complete(
        self,
        prompt: str = "",
        max_new_tokens: int = 200,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> str:
        """The text the model writes after ``prompt`` (the prompt itself is not repeated).

        ``load_checkpoint(path).complete("ROMEO:", max_new_tokens=100)``. Generation
        starts and stops as the model was trained: a documents-mode model begins
        a new document at BOS and ends at the next one. The same seed gives the
        same text; temperature 0 is greedy. A prompt the tokenizer cannot encode
        raises ``TokenizerError``, a bad setting ``ConfigError``.
        """
        from lmcore.sample import SamplingConfig, generate, prompt_start

        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        tok = self.tokenizer
        ids = prompt_start(tok.encode(prompt), tok.bos_id, self.documents)
        stop_ids = [tok.bos_id] if self.documents else None
        new = [e.token_id for e in generate(self.model, ids, max_new_tokens, sampling, stop_ids=stop_ids)]
        return tok.decode(new)


# --------------------------------------------------------------------------- names


# File systems cap a name at 255 bytes (UTF-8 as Linux and macOS count them).
# A stem of at most this many leaves room for ".optim.safetensors", a temporary
# file's ".<pid>-<32 hex>.tmp" around it (61 bytes in all), and a "-2" that
# tells two runs apart.
MAX_NAME_BYTES = 180


def sanitize_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A safe file stem from any text: no separators, no dots, no control characters.

    Letters and digits of any script are kept; everything else becomes ``_``.
    A trailing ``.safetensors`` is dropped. The stem is cut to 100 characters
    and to ``max_bytes`` bytes of UTF-8 (never inside a character), so that
    every file named after it fits the file system's 255-byte limit. Examples:
    "../../x" -> "x", "/etc/passwd" -> "etc_passwd", "con" -> "con_",
    "my model" -> "my_model".
    """
    if not isinstance(name, str):
        raise CheckpointError("a checkpoint name must be text")
    name = unicodedata.normalize("NFKC", name).strip()
    if name.lower().endswith(OPTIM_SUFFIX):
        name = name[: -len(OPTIM_SUFFIX)]
    elif name.lower().endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    # Dots go too: no "..", no hidden files, no ".optim" look-alikes.
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    stem = re.sub(r"_+", "_", stem).strip("_-")[:MAX_NAME_CHARS]
    stem = stem.encode("utf-8", errors="replace")[:max_bytes].decode("utf-8", errors="ignore").strip("_-")
    if not stem:
        raise CheckpointError(f"the name {name!r} has no usable characters; use letters, digits, '-' or '_'")
    if stem.lower() in _RESERVED_NAMES:
        stem += "_"
    return stem


def checkpoint_path(directory: str | os.PathLike, name: str) -> Path:
    """``directory/<sanitized name>.safetensors``, guaranteed to lie inside ``directory``."""
    base = Path(directory).resolve()
    path = (base / (sanitize_name(name) + SUFFIX)).resolve()
    if path.parent != base:
        raise CheckpointError(f"the name {name!r} would leave the checkpoint folder; choose a plain name")
    return path


def log_path(checkpoint: str | os.PathLike) -> Path:
    """Where the run log of checkpoint ``NAME.safetensors`` lives: ``NAME.metrics.jsonl`` (``lmcore.runlog``)."""
    path = Path(checkpoint)
    name = path.name
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return path.with_name(stem + LOG_SUFFIX)


def optimizer_path(path: str | os.PathLike) -> Path:
    """Where the resume state of checkpoint ``path`` lives: ``NAME.optim.safetensors``."""
    path = Path(path)
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    return path.with_name(stem + OPTIM_SUFFIX)


# A sparse autoencoder trained on checkpoint NAME lives beside it as NAME.sae-LABEL.safetensors.
# Checkpoint names hold no dots (sanitize_name), so no checkpoint is named like one.
SAE_INFIX = ".sae-"
_MAX_SAE_LABEL_BYTES = 48  # NAME (<= 180 bytes) + ".sae-" + LABEL + ".safetensors.tmp" fits 255 bytes


def sae_path(path: str | os.PathLike, label: str) -> Path:
    """Where checkpoint ``path``'s sparse autoencoder ``label`` lives: ``NAME.sae-LABEL.safetensors``.

    The label is made a plain name as checkpoint names are ("blocks.2.hook_resid_post-1024-k16" ->
    "blocks_2_hook_resid_post-1024-k16").
    """
    path = Path(path)
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    return path.with_name(stem + SAE_INFIX + sanitize_name(label, _MAX_SAE_LABEL_BYTES) + SUFFIX)


def is_sae_file(name: str) -> bool:
    """Whether a file name is that of a sparse autoencoder saved beside a checkpoint."""
    return name.endswith(SUFFIX) and SAE_INFIX in name and not name.startswith(".")


def is_companion_file(name: str) -> bool:
    """Whether a ``.safetensors`` file name belongs to a checkpoint beside it (resume state, an SAE), not a model."""
    return name.endswith(OPTIM_SUFFIX) or is_sae_file(name)


def sae_files(path: str | os.PathLike) -> list[Path]:
    """The sparse autoencoders saved beside checkpoint ``path``, by name."""
    probe = sae_path(path, "x")
    prefix = probe.name[: probe.name.index(SAE_INFIX) + len(SAE_INFIX)]
    try:
        with os.scandir(probe.parent) as entries:
            found = [Path(e.path) for e in entries if e.name.startswith(prefix) and is_sae_file(e.name)]
    except OSError:
        return []
    return sorted(found)


def companion_files(path: str | os.PathLike) -> list[Path]:
    """Every file that belongs to checkpoint ``path`` and goes with it: resume state, run log, sparse autoencoders.

    The one place that knows them: deleting a checkpoint deletes these, and
    listings leave those with a ``.safetensors`` name out of the models.
    """
    return [optimizer_path(path), log_path(path), *sae_files(path)]


def delete_sae(path: str | os.PathLike) -> None:
    """Remove one sparse autoencoder saved beside a checkpoint (``NAME.sae-LABEL.safetensors``)."""
    path = Path(path)
    if not is_sae_file(path.name):
        raise CheckpointError(f"{path.name} is not an autoencoder file name (NAME.sae-LABEL.safetensors)")
    try:
        path.unlink()
    except FileNotFoundError:
        raise CheckpointError(f"no autoencoder at {path}; it may already be deleted") from None
    except OSError as e:
        raise CheckpointError(f"cannot delete {path}: {e.strerror or e}") from None


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    train_state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    data_info: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` to one .safetensors file atomically; return its path.

    ``optimizer`` is either a torch optimizer or a whole resume state (the
    nested dict of ``Trainer.state_dict()``); it goes to ``NAME.optim.safetensors``.
    A path without the ``.safetensors`` suffix gets it.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        path = path.with_name(path.name + SUFFIX)
    if path.name.endswith(OPTIM_SUFFIX):
        raise CheckpointError(f"{path.name} is the name of an optimizer-state file; choose another checkpoint name")
    module = getattr(model, "_orig_mod", model)  # save the uncompiled module, never torch.compile's wrapper
    config: ModelConfig = module.config
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}; "
            "save the tokenizer the model was built for"
        )
    tensors, tied = _unique_tensors(module.state_dict())
    checkpoint_id = uuid.uuid4().hex
    metadata = {
        "format": FORMAT,
        "config": config.to_json(),
        "tokenizer": json.dumps(tokenizer.to_dict(), sort_keys=True),
        "train": _dumps(train_state or {}),
        "data": _dumps({"documents": False, **(data_info or {})}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tied": json.dumps(tied, sort_keys=True),
        "arch": config.arch,
        "preset": config.preset,
        "params": str(module.num_params()),
        "lmcore": lmcore.__version__,
        "checkpoint_id": checkpoint_id,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path.parent)
        opath = optimizer_path(path)
        if optimizer is None:
            _atomic_save(tensors, metadata, path)
            # Only now: a stale resume state must not be paired with the new weights.
            opath.unlink(missing_ok=True)
            return path
        state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        packed: dict[str, torch.Tensor] = {}
        skeleton = _pack(state, "state", packed)
        meta = {"format": OPTIM_FORMAT, "checkpoint_id": checkpoint_id, "state": _dumps(skeleton)}
        # The optimizer state goes first, under a temporary name that carries the new id;
        # the weights' rename is the commit, and the optimizer file follows it.
        with _temporary(opath, checkpoint_id) as pending:
            try:
                _write_synced(packed, meta, pending)
                _atomic_save(tensors, metadata, path)
            except BaseException:
                pending.unlink(missing_ok=True)
                raise
            os.replace(pending, opath)
    except OSError as e:
        raise CheckpointError(f"cannot write the checkpoint {path}: {e.strerror or e}") from None
    return path


# Names of the temporary files this process is writing now (for other processes: see _in_use).
_WRITING: set[str] = set()


@contextlib.contextmanager
def _temporary(path: Path, tag: str | None = None) -> Iterator[Path]:
    """A temporary name ``.NAME.PID-TAG.tmp`` beside ``path``, marked as being written while in use.

    The name says which process writes it, so a killed writer's leftovers can be told apart.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{tag or uuid.uuid4().hex}.tmp")
    _WRITING.add(tmp.name)
    try:
        yield tmp
    finally:
        _WRITING.discard(tmp.name)


def _write_synced(tensors: dict[str, torch.Tensor], metadata: dict[str, str], tmp: Path) -> None:
    """save_file into the new file ``tmp``, flushed to disk, with an ordinary new file's permissions."""
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    with _temporary(path) as tmp:
        try:
            _write_synced(tensors, metadata, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d{1,10})-(?P<tag>[0-9a-f]{32})\.tmp", re.DOTALL)


def _in_use(name: str) -> bool:
    """Whether the writer of the temporary file ``name`` may still be writing it.

    On Windows, where signal 0 would end a process, another process's file is assumed in use.
    """
    pid = int(_TEMP_NAME.fullmatch(name)["pid"])
    if pid == os.getpid():
        return name in _WRITING
    if os.name == "nt" or pid <= 0:
        return os.name == "nt"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Remove the temporary files that killed saves left in ``directory``; complete their committed pairs.

    A temporary file is stale when its writer (the process id in its name) is
    gone, or after a day. An optimizer state whose weights already name it (a
    save killed between its two renames) is moved into place instead.
    Best effort: a file that cannot be removed is left alone.
    """
    directory = Path(directory)
    try:
        with os.scandir(directory) as found:
            entries = [e for e in found if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if m is None:
                # Temporaries of older versions carry no process id: only old ones are surely stale.
                if SUFFIX in entry.name and age > 3600:
                    os.unlink(entry.path)
                continue
            if _in_use(entry.name) and age < _STALE_TEMP_S:
                continue
            target = directory / m["target"]
            if target.name.endswith(OPTIM_SUFFIX) and _checkpoint_id(_weights_path(target)) == m["tag"]:
                os.replace(entry.path, target)
            else:
                os.unlink(entry.path)
        except OSError:
            continue


def _pending_optimizer(opath: Path, checkpoint_id: str) -> Path | None:
    """The optimizer state for ``checkpoint_id`` still under its temporary name beside ``opath``, if any."""
    try:
        with os.scandir(opath.parent) as entries:
            for entry in entries:
                m = _TEMP_NAME.fullmatch(entry.name)
                if m and m["target"] == opath.name and m["tag"] == checkpoint_id:
                    return Path(entry.path)
    except OSError:
        pass
    return None


def _weights_path(opath: Path) -> Path:
    """The checkpoint that optimizer-state file ``opath`` belongs to."""
    return opath.with_name(opath.name[: -len(OPTIM_SUFFIX)] + SUFFIX)


def _checkpoint_id(path: Path) -> str | None:
    """The ``checkpoint_id`` in the metadata of ``path``, or None if it has none or cannot be read."""
    try:
        _, raw = _read_header(path)
    except CheckpointError:
        return None
    return raw.get("checkpoint_id")


def _storage_key(t: torch.Tensor) -> tuple:
    """Identifies tensors that are the very same view of the same memory."""
    if t.numel() == 0:  # empty tensors hold no memory to share (an unfitted n-gram's tables)
        return ("empty", id(t))
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One CPU copy per shared tensor; returns (tensors, {alias: kept name}).

    The first name in module order is kept (the embedding comes before the head).
    """
    kept: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    storages: set[tuple] = set()
    for name, t in state.items():
        key = _storage_key(t)
        if key in kept:
            tied[name] = kept[key]
            continue
        kept[key] = name
        out = t.detach().to("cpu").contiguous()
        # Distinct views of one storage (rare: buffers sliced from another) must be copied apart.
        storage = (out.untyped_storage().data_ptr(),)
        if storage in storages and out.numel() > 0:
            out = out.clone()
            storage = (out.untyped_storage().data_ptr(),)
        storages.add(storage)
        tensors[name] = out
    return tensors, tied


def _dumps(value: Any) -> str:
    """JSON with non-finite floats written as null, so every reader can parse it."""
    return json.dumps(_finite(value), sort_keys=True, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# The resume state is a nested structure (dicts with int keys, tuples, tensors).
# It is written as JSON in which each tensor is a reference into the file.


def _pack(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path
        n = 1
        while key in tensors:
            n += 1
            key = f"{path}#{n}"
        # Written at once by the caller's thread, between optimizer steps: no copy needed.
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot store a state key of type {type(k).__name__}")
            items.append([k, _pack(v, f"{path}.{k}", tensors)])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_pack(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a value of type {type(obj).__name__} in a resume state")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"the optimizer-state file lacks the tensor {key!r}; it is damaged")
            return tensors[key]
        if set(obj) == {"__tuple__"} and isinstance(obj["__tuple__"], list):
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__dict__"} and isinstance(obj["__dict__"], list):
            out = {}
            for item in obj["__dict__"]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                    raise CheckpointError("the optimizer-state file has a malformed entry; it is damaged")
                out[item[0]] = _unpack(item[1], tensors)
            return out
        raise CheckpointError("the optimizer-state file has an unknown structure; it is damaged")
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


# --------------------------------------------------------------------------- reading


class _JSONRefused(ValueError):
    """JSON that is invalid, or that would cost far more to use than its size."""


def _parse_number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise _JSONRefused(f"a {len(text):,}-character number")
        return kind(text)

    return parse


_PARSE_INT, _PARSE_FLOAT = _parse_number(int), _parse_number(float)


def _loads(data: str) -> Any:
    """Parse JSON read from a file; _JSONRefused when invalid, too deep or with absurd numbers."""
    try:
        value = json.loads(data, parse_int=_PARSE_INT, parse_float=_PARSE_FLOAT)
    except RecursionError:
        raise _JSONRefused(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError:
        raise _JSONRefused("invalid JSON") from None
    # The parser itself stops near the interpreter's recursion limit; the code that walks
    # these values later (to print or store them) must never get near it.
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise _JSONRefused(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
            if isinstance(child, (dict, list))
        ]
    return value


_METADATA_KEY = re.compile(rb'\s*\{\s*"__metadata__"\s*:\s*')


def _leading_metadata(raw: bytes) -> tuple[Any, int] | None:
    """The header's leading ``__metadata__`` value (safetensors writes it first) and the byte offset after it.

    Parsed from growing prefixes, so the cost is that of the metadata, not of the
    tensor entries after it. None when the header does not start with it.
    """
    m = _METADATA_KEY.match(raw)
    if m is None:
        return None
    start, size = m.end(), 1 << 20
    while True:
        text = raw[start : start + size].decode("utf-8", "surrogateescape")
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            if start + size >= len(raw):
                return None
            size *= 4
            continue
        except (RecursionError, ValueError):  # refused with its reason by the full parse
            return None
        return value, start + len(text[:end].encode("utf-8", "surrogateescape"))


def _entry_limit(metadata: Any) -> int:
    """The most tensor entries a header with this leading metadata can need.

    Bounded by the config's layer count where the metadata names one, else by
    what any checkpoint (or optimizer-state file) can hold.
    """
    if not isinstance(metadata, dict):
        return MAX_TENSORS
    if metadata.get("format") == OPTIM_FORMAT:
        return MAX_OPTIM_TENSORS
    try:
        n_layer = _loads(metadata["config"])["n_layer"]
    except (_JSONRefused, KeyError, TypeError):
        return MAX_TENSORS
    if not isinstance(n_layer, int) or n_layer < 1:
        return MAX_TENSORS
    return min(MAX_TENSORS, _MAX_TENSORS_PER_LAYER * (n_layer + 1))


def _open_regular(path: Path, shown: str) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; never blocks on a pipe or device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {shown}; check the path") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; pass the .safetensors file inside it")
    not_regular = f"{shown} is not a regular file (a pipe, device or socket); pass a .safetensors file"
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(not_regular)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the first look
        f.close()
        raise CheckpointError(not_regular)
    return f


def _read_header(path: str | os.PathLike, display_name: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Check the file's framing by hand and parse its JSON header: (tensor entries, metadata).

    Gives one-line reasons for the common ways a file is not a safetensors
    file at all, before the safetensors parser sees it. The work is bounded by
    the header's size, and a header with more tensor entries than its config
    can need is refused before they are parsed.
    """
    path = Path(path)
    shown = display_name or path.name
    with _open_regular(path, display_name or str(path)) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            if size == 0:
                raise CheckpointError(f"{shown} is empty; it is not a checkpoint")
            # A safetensors file: a little-endian header length, then the JSON header. Its
            # first bytes can look like a pickle's (a 1408-byte header starts 80 05), so
            # the signatures of other formats are only read where the framing fails.
            framed = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8
            if not framed and head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                raise CheckpointError(
                    f"{shown} is a Python pickle (torch.save), not safetensors; lmcore never unpickles files"
                )
            if not framed and head[:4] == b"PK\x03\x04":
                raise CheckpointError(
                    f"{shown} is a zip archive (torch.save's format), not safetensors; lmcore never unpickles files"
                )
            if len(head) < 8:
                raise CheckpointError(f"{shown} is too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head[:8])
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{shown} is not a valid safetensors file: it declares a {n}-byte header")
            if n > size - 8:
                raise CheckpointError(
                    f"{shown} is truncated or not a safetensors file: "
                    f"it declares a {n}-byte header in a {size}-byte file"
                )
            f.seek(8)
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    # Every key in JSON is followed by a colon, so the colons after the metadata bound the
    # tensor entries (a real entry has four keys): counted in C, before any parsing.
    lead = _leading_metadata(raw)
    limit = _entry_limit(lead[0] if lead else None)
    if raw.count(b":", lead[1] if lead else 0) > 4 * limit + 4:
        raise CheckpointError(
            f"{shown} is not a usable checkpoint: its header holds more tensor entries than "
            f"its config can need (at most {limit:,}); the file is damaged or hostile"
        )
    body = raw
    if lead is not None:
        # The metadata is parsed already: the entries after it are parsed as an object of their own.
        rest = raw[lead[1] :].lstrip()
        body = b"{" + (rest[1:] if rest[:1] == b"," else rest)
    try:
        header = _loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{shown} is not a valid safetensors file: its header is not JSON") from None
    except _JSONRefused as e:
        what = "is not JSON" if str(e) == "invalid JSON" else f"holds {e}"
        raise CheckpointError(f"{shown} is not a valid safetensors file: its header {what}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shown} is not a valid safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if lead is not None:
        metadata = lead[0] if metadata is None else []  # a second __metadata__ is malformed
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(f"{shown} has malformed metadata (safetensors metadata must map names to text)")
    if len(header) > limit:
        raise CheckpointError(
            f"{shown} is not a usable checkpoint: its header holds {len(header):,} tensor entries, "
            f"more than its config can need (at most {limit:,}); the file is damaged or hostile"
        )
    data_len = size - 8 - n
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise CheckpointError(f"{shown} is truncated or damaged: tensor {name!r} lies outside the file")
    return header, metadata or {}


# The tokenizer's type in its JSON text: the one "type" key outside a string (every tokenizer's
# dict is flat; text inside strings has its quotes escaped).
_TOKENIZER_TYPE = re.compile(r'(?<!\\)"type":\s*"(\w{1,20})"')


def _parse_metadata(
    raw: dict[str, str], where: str, stored: int | None = None, listing: bool = False
) -> dict[str, Any]:
    """Check the lmcore keys and parse the JSON ones; CheckpointError naming the problem.

    ``stored``: how many tensors the file holds; the ``tied`` aliases of them must not
    outnumber them (counted before they are parsed).
    """
    if not raw or "format" not in raw:
        raise CheckpointError(f"{where} has no lmcore metadata; it was not saved by lmcore (or was stripped)")
    fmt = raw["format"]
    if fmt != FORMAT:
        if fmt.startswith("lmcore/"):
            raise CheckpointError(f"{where} uses format {fmt!r}; this version of lmcore reads {FORMAT!r}")
        raise CheckpointError(f"{where} has format {fmt!r}, not an lmcore checkpoint ({FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{where} lacks the metadata {', '.join(missing)}; the file is damaged")
    # Each alias is one "name": "stored name" pair, so it has one colon.
    if stored is not None and raw.get("tied", "").count(":") > stored:
        raise CheckpointError(f"{where} ties more names than its {stored:,} stored tensors; the file is damaged")
    meta: dict[str, Any] = dict(raw)
    for key, kind in (("config", dict), ("tokenizer", dict), ("train", dict), ("data", dict), ("tied", dict)):
        if key not in raw:
            meta[key] = {}
            continue
        if listing and key == "tokenizer":  # a listing shows only its type: the merges stay unparsed
            found = _TOKENIZER_TYPE.findall(raw[key][:MAX_HEADER_BYTES])
            if len(found) == 2 and "chat" in found:  # a chat tokenizer holds its base tokenizer's type too
                found = ["chat"]
            meta[key] = {"type": found[0]} if len(found) == 1 else {}
            continue
        max_chars, max_containers = _FIELD_LIMITS[key]
        text = raw[key]
        containers = text.count("{") + text.count("[")
        if len(text) > max_chars or containers > max_containers:
            what = f"{len(text):,} characters" if len(text) > max_chars else f"{containers:,} JSON objects and lists"
            raise CheckpointError(
                f"{where} has {what} in its {key!r} metadata, more than it can need; the file is damaged or hostile"
            )
        try:
            value = _loads(raw[key])
        except _JSONRefused as e:
            raise CheckpointError(f"{where} has {e} in its {key!r} metadata; the file is damaged") from None
        if not isinstance(value, kind):
            raise CheckpointError(f"{where} has a {key!r} metadata that is not a JSON object; the file is damaged")
        meta[key] = value
    try:
        meta["config_obj"] = ModelConfig.from_dict(meta["config"]).validate()
    except LMCoreError as e:
        raise CheckpointError(f"{where} holds an unusable model config: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} holds an unusable model config ({_one_line(e)})") from None
    tok_type = meta["tokenizer"].get("type")
    from lmcore.tokenizers import TOKENIZERS

    if tok_type not in TOKENIZERS:
        raise CheckpointError(
            f"{where} uses an unknown tokenizer type {tok_type!r}; this version knows {', '.join(TOKENIZERS)}"
        )
    if not all(type(k) is str and type(v) is str for k, v in meta["tied"].items()):
        raise CheckpointError(f"{where} has a malformed 'tied' metadata; the file is damaged")
    _check_train(meta["train"], where)
    params = raw.get("params")
    if params is not None and not (params.isdigit() and len(params) <= MAX_NUMBER_CHARS):
        raise CheckpointError(f"{where} has a 'params' metadata that is not a count; the file is damaged")
    data = meta["data"]
    data["documents"] = bool(data.get("documents", False))
    return meta


def _check_train(train: dict[str, Any], where: str) -> None:
    """CheckpointError when a known field of the training record has the wrong type."""
    for key in _TRAIN_COUNTS:
        value = train.get(key)
        if value is not None and not (type(value) is int and value >= 0):
            raise CheckpointError(f"{where} has a {key!r} in its training record that is not a count; it is damaged")
    for key in _TRAIN_NUMBERS:
        value = train.get(key)
        if value is not None and type(value) not in (int, float):
            raise CheckpointError(f"{where} has a {key!r} in its training record that is not a number; it is damaged")
    for key, kind in (("config", dict), ("history", list)):
        if train.get(key) is not None and not isinstance(train[key], kind):
            raise CheckpointError(f"{where} has a malformed {key!r} in its training record; it is damaged")
    if any(not isinstance(entry, dict) for entry in train.get("history") or []):
        raise CheckpointError(f"{where} has a malformed 'history' in its training record; it is damaged")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's metadata (JSON values parsed), without loading any weights.

    Raises CheckpointError for anything that is not a readable lmcore checkpoint.
    """
    _, raw = _read_header(path)
    meta = _parse_metadata(raw, Path(path).name)
    meta.pop("config_obj")
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", *, display_name: str | None = None
) -> Checkpoint:
    """Load and fully validate a checkpoint: a model in eval mode on ``device``, and its tokenizer.

    ``display_name`` is how messages call the file (e.g. "the uploaded file").
    """
    path = Path(path)
    where = display_name or path.name
    header, raw = _read_header(path, display_name)
    meta = _parse_metadata(raw, where, stored=len(header))
    config: ModelConfig = meta.pop("config_obj")
    tokenizer = _tokenizer(meta, where)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{where} is inconsistent: its tokenizer has {tokenizer.vocab_size} tokens "
            f"but its model {config.vocab_size}"
        )
    own = tokenizer.summary().get("tokenizer_size")
    padded = isinstance(own, int) and config.vocab_size > own + MAX_COUNTING_PADDING
    if padded and model_class(config.arch).sized_by_data:
        raise CheckpointError(
            f"{where} declares a vocabulary of {config.vocab_size:,} for a tokenizer of {own:,} tokens; "
            "a counting model cannot pad it that far (its cost would not be bounded by the file)"
        )
    # Check names, dtypes and shapes against a weightless ("meta") model first, so a
    # hostile config cannot make us allocate a huge model before the file is checked.
    tied: dict[str, str] = meta["tied"]
    in_file = set(header)
    # Aliases, counted apart from the stored tensors (at most one each), cannot make the
    # layer-count check below build more than twice what the file really holds.
    provided = in_file | set(tied)
    expected = _expected_tensors(config, where, len(provided))
    missing = sorted(set(expected) - provided)
    extra = sorted(provided - set(expected))
    if missing:
        raise CheckpointError(f"{where} lacks tensors its config needs: {_names(missing)}; the file is damaged")
    if extra:
        raise CheckpointError(f"{where} has tensors its config does not know: {_names(extra)}; the file is damaged")
    bad_alias = sorted(a for a, t in tied.items() if t not in in_file)
    if bad_alias:
        raise CheckpointError(f"{where} ties {_names(bad_alias)} to tensors that are not in the file; it is damaged")
    for name, (dtype, shape) in expected.items():
        entry = header[tied.get(name, name)]
        got_dtype = entry.get("dtype") if isinstance(entry, dict) else None
        got_shape = entry.get("shape") if isinstance(entry, dict) else None
        if got_dtype != _SAFETENSORS_DTYPES.get(dtype):
            shown = _dtype(_TORCH_DTYPES[got_dtype]) if got_dtype in _TORCH_DTYPES else repr(got_dtype)
            raise CheckpointError(f"{where}: tensor {name!r} is stored as {shown} but the model needs {_dtype(dtype)}")
        # Counting models (n-grams) size their tables by the data: only the rank is fixed.
        sized_by_data = model_class(config.arch).sized_by_data and isinstance(got_shape, list)
        if got_shape != shape and not (sized_by_data and len(got_shape) == len(shape)):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {got_shape} but its config needs {shape}")
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in sorted(in_file):
                state[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where} is not a valid safetensors file ({_one_line(e)})") from None
    for alias, target in tied.items():
        state[alias] = state[target]
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinite values; the model is unusable")
    try:
        model = build_model(config)
    except LMCoreError as e:
        raise CheckpointError(f"{where} holds a model that cannot be built: {e}") from None
    _check_shared_agree(model, state, where)
    model.load_state_dict(state, strict=True)
    _retie(model, tied)
    model.eval()
    if torch.device(device).type != "cpu":
        model.to(device)
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        config=config,
        metadata=meta,
        train_state=meta["train"],
        data_info=meta["data"],
        path=path,
    )


def _tokenizer(meta: dict[str, Any], where: str) -> Tokenizer:
    """The tokenizer of parsed metadata; CheckpointError when it cannot be built."""
    try:
        return tokenizer_from_dict(meta["tokenizer"])
    except LMCoreError as e:
        raise CheckpointError(f"{where} holds an unusable tokenizer: {e}") from None
    except Exception as e:  # a damaged tokenizer dict may break its from_dict in any way
        raise CheckpointError(f"{where} holds a damaged tokenizer ({type(e).__name__}: {_one_line(e)})") from None


# torch dtype -> the name safetensors writes in its header
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH_DTYPES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _expected_tensors(config: ModelConfig, where: str, available: int) -> dict[str, tuple[torch.dtype, list[int]]]:
    """Name -> (dtype, shape) of every tensor the model of ``config`` saves, without allocating it.

    Even weightless, a model has one module object per layer: a config that claims
    far more layers than the file's ``available`` tensors could fill would take
    minutes and gigabytes to build, so the count is checked first, from models of
    one and two layers.
    """
    need = 0
    try:
        with torch.device("meta"):
            if config.n_layer > 2:
                one, two = (len(build_model(replace(config, n_layer=k)).state_dict()) for k in (1, 2))
                need = one + (config.n_layer - 1) * (two - one)
            if need <= available:
                model = build_model(config)
    except LMCoreError as e:
        raise CheckpointError(f"{where} holds a model that cannot be built: {e}") from None
    if need > available:
        raise CheckpointError(
            f"{where} lacks tensors its config needs: {config.n_layer:,} layers take {need:,} "
            f"tensors but the file has {available:,}; the file is damaged"
        )
    return {name: (t.dtype, list(t.shape)) for name, t in model.state_dict().items()}


def _check_shared_agree(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """A model that ties tensors the file stores twice must get equal values, or loading would pick one."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict().items():
        groups.setdefault(_storage_key(t), []).append(name)
    for names in groups.values():
        first = state[names[0]]
        for other in names[1:]:
            if state[other] is not first and not torch.equal(state[other], first):
                raise CheckpointError(f"{where}: {other!r} and {names[0]!r} must be equal (tied) but differ")


def _retie(model: torch.nn.Module, tied: dict[str, str]) -> None:
    """Make every alias the very same Parameter as its target (a model may not tie on its own)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, target in tied.items():
        if alias in params and target in params and params[alias] is not params[target]:
            owner, _, attr = alias.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, params[target])


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


# --------------------------------------------------------------------------- resume state


def load_resume_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The resume state saved beside checkpoint ``path`` (``NAME.optim.safetensors``), or None.

    CheckpointError when the file exists but is damaged or belongs to other weights.
    A state still under its temporary name (a save killed after its weights were
    committed) is moved into place first.
    """
    path = Path(path)
    opath = optimizer_path(path)
    main_id = _checkpoint_id(path)
    if main_id is not None:
        pending = _pending_optimizer(opath, main_id)
        if pending is not None:
            # The weights name this state: a save was stopped between its two renames.
            if _in_use(pending.name):
                opath = pending  # its writer is about to move it: read it where it is
            else:
                with contextlib.suppress(OSError):
                    os.replace(pending, opath)
                if not opath.exists():
                    opath = pending
    if not opath.exists():
        return None
    header, raw = _read_header(opath)
    where = optimizer_path(path).name
    if raw.get("format") != OPTIM_FORMAT or "state" not in raw:
        raise CheckpointError(
            f"{where} is not an lmcore optimizer-state file; delete it to train from the weights only"
        )
    if main_id != raw.get("checkpoint_id"):
        raise CheckpointError(
            f"{where} belongs to other weights than {path.name}; delete it to train from the weights only"
        )
    try:
        skeleton = _loads(raw["state"])
        with safe_open(str(opath), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in header}
    except _JSONRefused as e:
        raise CheckpointError(f"{where} has {e} in its state; it is damaged") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where} is not a valid safetensors file ({_one_line(e)})") from None
    state = _unpack(skeleton, tensors)
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} does not hold a resume state; it is damaged")
    return state


@dataclass(frozen=True)
class ResumeSettings:
    """How to go on with the run saved in a checkpoint, read from its metadata alone."""

    config: ModelConfig
    tokenizer: Tokenizer
    steps: int  # optimizer steps already done
    train_config: TrainConfig
    data_info: dict[str, Any]  # always has "documents": bool


def resume_settings(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ResumeSettings:
    """The model config, tokenizer, steps done and training settings of the checkpoint at ``path``.

    No weights are loaded. The training settings are the run's own with
    ``overrides`` on top, less its time budget (a budget is for one sitting,
    not the whole run). CheckpointError for an unreadable file, ConfigError for
    an unknown setting.
    """
    meta = read_metadata(path)
    saved = dict(meta["train"].get("config") or {})
    saved.pop("time_budget_s", None)
    return ResumeSettings(
        config=ModelConfig.from_dict(meta["config"]),
        tokenizer=_tokenizer(meta, Path(path).name),
        steps=int(meta["train"].get("steps") or 0),
        train_config=TrainConfig.from_dict({**saved, **(overrides or {})}),
        data_info=meta["data"],
    )


# --------------------------------------------------------------------------- folders


def list_checkpoints(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every checkpoint in ``directory``, newest first; bad files are listed with ``error`` set."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    _remove_stale_temporaries(directory)
    rows = []
    saes: dict[str, list[Path]] = {}  # checkpoint stem -> its autoencoders
    for path in directory.glob("*" + SUFFIX):
        if is_sae_file(path.name):
            saes.setdefault(path.name[: path.name.index(SAE_INFIX)], []).append(path)
        if is_companion_file(path.name) or path.name.startswith(".") or not path.is_file():
            continue
        try:
            stat = path.stat()
        except OSError:
            continue  # vanished while listing
        row: dict[str, Any] = {
            "name": path.name[: -len(SUFFIX)],
            "path": path,
            "size_bytes": stat.st_size,
            "created": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds"),
            "arch": None,
            "preset": None,
            "params": None,
            "tokenizer": None,
            "vocab_size": None,
            "steps": None,
            "val_loss": None,
            "documents": None,
            "imported": False,
            "error": None,
            "_mtime": stat.st_mtime,
        }
        try:
            _, raw = _read_header(path)
            meta = _parse_metadata(raw, path.name, listing=True)
        except CheckpointError as e:
            row["error"] = str(e)
        else:
            cfg, train = meta["config"], meta["train"]
            params = meta.get("params") or ""
            row.update(
                created=meta.get("created") if isinstance(meta.get("created"), str) else row["created"],
                arch=cfg.get("arch"),
                preset=cfg.get("preset") or None,
                params=int(params) if params.isdigit() and len(params) <= MAX_NUMBER_CHARS else None,
                tokenizer=meta["tokenizer"].get("type"),
                vocab_size=cfg.get("vocab_size"),
                steps=train.get("steps"),
                val_loss=train.get("val_loss"),
                documents=meta["data"]["documents"],
                imported="imported_from" in train,
            )
        rows.append(row)
    rows.sort(key=lambda r: (r["_mtime"], r["name"]), reverse=True)
    for row in rows:
        del row["_mtime"]
        row["sae_files"] = sorted(saes.get(row["name"], []))
    return rows


def import_checkpoint(data: bytes, name: str, directory: str | os.PathLike) -> Path:
    """Validate uploaded bytes fully (as ``load_checkpoint``), then store them under a free name.

    An existing file is never overwritten: ``name``, ``name-2``, ``name-3``... is used.
    """
    directory = Path(directory)
    stem = sanitize_name(name)
    with _temporary(directory / (stem + SUFFIX)) as tmp:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(directory)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise CheckpointError(f"cannot store the checkpoint in {directory}: {e.strerror or e}") from None
        try:
            load_checkpoint(tmp, display_name="the uploaded file")
            os.chmod(tmp, 0o666 & ~_UMASK)
            for n in range(1, 10_000):
                target = checkpoint_path(directory, stem if n == 1 else f"{stem}-{n}")
                try:
                    os.link(tmp, target)  # fails if the name is taken: no silent overwrite, even in a race
                except FileExistsError:
                    continue
                except OSError:  # file systems without hard links
                    if target.exists():
                        continue
                    os.replace(tmp, target)
                return target
            raise CheckpointError(f"too many checkpoints named {stem!r}; choose another name")
        finally:
            tmp.unlink(missing_ok=True)


def delete_checkpoint(path: str | os.PathLike) -> None:
    """Remove a checkpoint and its companion files: optimizer state, run log, sparse autoencoders."""
    path = Path(path)
    if not path.name.endswith(SUFFIX) or is_companion_file(path.name):
        raise CheckpointError(f"{path.name} is not a checkpoint file name (NAME.safetensors)")
    files = [path, *companion_files(path)]
    if not any(f.exists() for f in files):
        raise CheckpointError(f"no checkpoint at {path}; it may already be deleted")
    try:
        for f in files:
            f.unlink(missing_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot delete {path}: {e.strerror or e}") from None


class CheckpointCallback:
    """A Trainer callback that saves the model (with its resume state) at evaluations.

    ``keep="best"`` writes only when the validation loss improves on the best so
    far (the file always holds the best model); ``keep="last"`` writes at every
    evaluation. ``data_info`` (e.g. ``{"documents": True, "source": "builtin:python-names"}``)
    is stored in the checkpoint so generation and evaluation read data the way
    the model was trained.
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Any,
        keep: str = "best",
        data_info: dict[str, Any] | None = None,
        save_optimizer: bool = True,
    ):
        if keep not in ("best", "last"):
            raise ConfigError(f"keep must be 'best' or 'last', got {keep!r}")
        self.path = Path(path)
        if not self.path.name.endswith(".safetensors"):
            self.path = self.path.with_name(self.path.name + ".safetensors")
        self.tokenizer = tokenizer
        self.keep = keep
        self.data_info = dict(data_info or {})
        self.save_optimizer = save_optimizer
        self.trainer: Trainer | None = None
        self.best: float | None = None
        self.saved_step: int | None = None  # the step of the weights in the file
        self.saved_path: Path | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        # Resuming into the same file: it already holds the best of the earlier part
        # of the run. A new file gets the first evaluation whatever its loss.
        if self.best is None and self.path.exists():
            self.best = trainer.best_val_loss

    def on_eval(self, event: TrainEvent) -> None:
        assert self.trainer is not None, "on_start must come first"
        if self.keep == "best" and self.best is not None and not event.val_loss < self.best:
            return
        self.best = event.val_loss if self.best is None else min(self.best, event.val_loss)
        trainer = self.trainer
        self.saved_path = save_checkpoint(
            self.path,
            trainer.model,
            self.tokenizer,
            train_state=trainer.train_state(),
            optimizer=trainer.state_dict() if self.save_optimizer else None,
            data_info=self.data_info,
        )
        self.saved_step = event.step
