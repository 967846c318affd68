"""What a checkpoint's files are called, and where they lie.

A checkpoint is ``NAME.safetensors``; the files that go with it lie beside it:
its resume state ``NAME.optim.safetensors``, its run log ``NAME.metrics.jsonl``
(``lmcore.runlog``) and its sparse autoencoders ``NAME.sae-LABEL.safetensors``.
``sanitize_name`` makes any text a NAME that stays in its folder and fits the
file system's limits. Nothing here reads or writes a file (``sae_files`` lists a
folder).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from lmcore.errors import CheckpointError

SUFFIX = ".safetensors"
OPTIM_SUFFIX = ".optim.safetensors"
LOG_SUFFIX = ".metrics.jsonl"  # the run log beside a checkpoint (lmcore.runlog)
MAX_NAME_CHARS = 100
# File systems cap a name at 255 bytes (UTF-8 as Linux and macOS count them).
# A stem of at most this many leaves room for ".optim.safetensors", a temporary
# file's ".<pid>-<32 hex>.tmp" around it (61 bytes in all), and a "-2" that
# tells two runs apart.
MAX_NAME_BYTES = 180
# Device names Windows reserves whatever the extension; avoided so files can be copied there.
_RESERVED_NAMES = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}


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
