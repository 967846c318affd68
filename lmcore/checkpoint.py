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

The state needed to resume training goes beside the weights in
``NAME.optim.safetensors`` with the same ``checkpoint_id`` (read back by
``lmcore.checkpoint_resume``). Saving never leaves a pair that cannot be
resumed: the optimizer state is written first to a temporary file named after
the new ``checkpoint_id``, then the weights replace the old ones (the commit:
they name that id), and only then does the optimizer file take its place. A
process killed at any instant leaves the old pair or the new one; a new pair
whose optimizer file is still under its temporary name is completed by the
next read. Temporary files of killed saves (they carry the writer's process
id) are removed at the next save or listing.

The header is read by ``lmcore.checkpoint_header``, at a cost bounded by the
file's size; loading then checks every tensor's name, dtype and shape against a
weightless model before any weight is read, and tokenizers are checked against
their limits from their declared sizes before they are built. Every malformed
file raises ``CheckpointError`` with a one-line reason. File names and paths
come from ``lmcore.checkpoint_names``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import lmcore
from lmcore.checkpoint_header import (
    FORMAT,
    MAX_NUMBER_CHARS,
    OPTIM_FORMAT,
    _one_line,
    _parse_metadata,
    _read_header,
)
from lmcore.checkpoint_names import (
    OPTIM_SUFFIX,
    SAE_INFIX,
    SUFFIX,
    checkpoint_path,
    companion_files,
    is_companion_file,
    is_sae_file,
    optimizer_path,
    sanitize_name,
)
from lmcore.errors import CheckpointError, ConfigError, LMCoreError
from lmcore.models import LanguageModel, ModelConfig, build_model, model_class
from lmcore.tokenizers import Tokenizer, tokenizer_from_dict

if TYPE_CHECKING:
    from lmcore.train import Trainer, TrainEvent

# A tokenizer.json may leave ids past its own tokens unused (a padded embedding); a counting
# model has no weights to bound such padding, so it may add at most this many.
MAX_COUNTING_PADDING = 1024
# A temporary file whose writer is still alive is only removed once it is this old.
_STALE_TEMP_S = 24 * 3600
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
# It is written as JSON in which each tensor is a reference into the file
# (read back by lmcore.checkpoint_resume._unpack).


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


# --------------------------------------------------------------------------- the two-file commit


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


def _resume_file(path: Path) -> tuple[Path, str | None]:
    """Where the resume state of checkpoint ``path`` is read now, and the ``checkpoint_id`` its weights name.

    A state still under its temporary name (a save killed after its weights were
    committed) is moved into place first, unless its writer may still be at work.
    """
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
    return opath, main_id


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


# --------------------------------------------------------------------------- loading


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
    _check_entries(header, tied, config, where)
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in sorted(header):
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


def _check_entries(header: dict[str, Any], tied: dict[str, str], config: ModelConfig, where: str) -> None:
    """CheckpointError unless the header's tensors are those the model of ``config`` saves, in its dtypes and shapes."""
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
