"""Resuming a run: the optimizer state saved beside a checkpoint, and the run's settings.

The state needed to resume training exactly (optimizer, random generators,
steps) lives beside checkpoint ``NAME.safetensors`` in ``NAME.optim.safetensors``:
tensors in the file, the nesting (param groups, steps) as JSON in its metadata,
and the same ``checkpoint_id`` as the weights, so a stale pair is caught. It is
written by ``lmcore.checkpoint.save_checkpoint`` together with the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lmcore.checkpoint import _resume_file, _tokenizer, read_metadata
from lmcore.checkpoint_header import OPTIM_FORMAT, _JSONRefused, _loads, _one_line, _read_header
from lmcore.checkpoint_names import optimizer_path
from lmcore.errors import CheckpointError
from lmcore.models import ModelConfig
from lmcore.tokenizers import Tokenizer
from lmcore.train import TrainConfig


def load_resume_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The resume state saved beside checkpoint ``path`` (``NAME.optim.safetensors``), or None.

    CheckpointError when the file exists but is damaged or belongs to other weights.
    A state still under its temporary name (a save killed after its weights were
    committed) is moved into place first.
    """
    path = Path(path)
    opath, main_id = _resume_file(path)
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


# The resume state's JSON skeleton refers to its tensors by name (see lmcore.checkpoint._pack).


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
