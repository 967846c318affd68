"""A run as files: ``NAME.metrics.jsonl`` beside ``NAME.safetensors``.

The log is append-only, one JSON object a line, each line flushed as it is
written, so another process (the app, ``tail -f``) can follow a run while it
trains and a crash loses at most the line being written. Every line has
``kind``, ``step``, ``tokens``, ``time`` (seconds of training since the run
began, across resumes), ``train_loss`` and ``lr``:

- ``"start"``: a run (or a resumed part of one) begins at ``step``; it also
  holds ``arch``, ``params``, ``tokens_per_step``, ``world_size``,
  ``grad_accum``, the training ``config`` and, from the caller, ``source`` and
  ``train_tokens`` (the size of the training split, for passes over the data). Lines already in the file past
  that step belong to a part of the run that was abandoned (the run resumed
  from an earlier checkpoint) and are dropped on read.
- ``"step"``: after each optimizer step; ``train_loss`` is that step's batch
  loss; adds ``grad_norm`` and ``tokens_per_s``.
- ``"eval"``: after each evaluation; ``train_loss`` is the mean over the fixed
  evaluation windows; adds ``val_loss``, ``val_ppl``, ``val_acc``,
  ``grad_norm``, ``tokens_per_s``, and ``sample`` and ``head_scores`` (per
  score, layer and head: see ``lmcore.interpret.head_scores``) when there are.
- ``"end"``: the run (or this part of it) ended; ``time`` includes the final
  evaluation; adds ``val_loss``, ``stopped_early`` and ``early_stopped``. A run
  that crashed has none.

Reading never fails on a torn last line (a crash mid-write): it is ignored,
and ``LogFollower`` reads only whole lines, from where it stopped.
``compare_runs`` builds the side-by-side table of runs, ``memorising`` spots a
validation loss that rises while the training loss falls.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from lmcore.checkpoint import OPTIM_SUFFIX, SUFFIX, read_metadata
from lmcore.errors import CheckpointError

LOG_SUFFIX = ".metrics.jsonl"


def log_path(checkpoint: str | os.PathLike) -> Path:
    """Where the log of checkpoint ``NAME.safetensors`` lives: ``NAME.metrics.jsonl``."""
    path = Path(checkpoint)
    name = path.name
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return path.with_name(stem + LOG_SUFFIX)


def checkpoint_of(log: str | os.PathLike) -> Path:
    """The checkpoint a log belongs to: ``NAME.metrics.jsonl`` -> ``NAME.safetensors``."""
    path = Path(log)
    return path.with_name(path.name.removesuffix(LOG_SUFFIX) + SUFFIX)


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunLogger:
    """A trainer callback that appends the run's log; rank 0 alone writes one.

    ``info`` goes into the start line (e.g. the data source). With
    ``own_evals=True`` the trainer's eval events are not written: the owner
    writes its own through ``log_eval`` (a job adds a text sample to them first).
    """

    def __init__(self, checkpoint: str | os.PathLike, info: dict[str, Any] | None = None, own_evals: bool = False):
        self.path = log_path(checkpoint)
        self.info = dict(info or {})
        self.own_evals = own_evals
        self._file: IO[str] | None = None
        self._last_lr: float | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if self._file.tell() > 0:
                self._end_torn_line()
        self._file.write(json.dumps(_clean(record), separators=(",", ":")) + "\n")
        self._file.flush()

    def _end_torn_line(self) -> None:
        """A crash may have left half a line: start on a new one, so the next record stays whole."""
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                assert self._file is not None
                self._file.write("\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- trainer callbacks --
    def on_start(self, trainer: Any) -> None:
        from lmcore.train import lr_schedule

        cfg, model = trainer.config, trainer.model
        self.write(
            {
                "kind": "start",
                "step": trainer.step,
                "tokens": trainer.tokens_seen,
                "time": round(trainer.elapsed_s, 3),
                "train_loss": trainer.last.get("train_loss"),
                "lr": lr_schedule(trainer.step, cfg),
                "arch": model.config.preset or model.config.arch,
                "params": model.num_params(),
                "tokens_per_step": trainer.tokens_per_step,
                "world_size": trainer.world_size,
                "grad_accum": cfg.grad_accum,
                "config": cfg.to_dict(),
                **self.info,
            }
        )

    def on_step(self, e: Any) -> None:
        self._last_lr = e.lr
        self.write(
            {
                "kind": "step",
                "step": e.step,
                "tokens": e.tokens_seen,
                "time": round(e.elapsed_s, 4),
                "train_loss": e.loss,
                "lr": e.lr,
                "grad_norm": e.grad_norm,
                "tokens_per_s": round(e.tokens_per_s, 1),
            }
        )

    def on_eval(self, e: Any) -> None:
        if not self.own_evals:
            self.log_eval(e)

    def log_eval(self, e: Any) -> None:
        record = {
            "kind": "eval",
            "step": e.step,
            "tokens": e.tokens_seen,
            "time": round(e.elapsed_s, 4),
            "train_loss": e.train_loss,
            "lr": e.lr,
            "val_loss": e.val_loss,
            "val_ppl": e.val_ppl,
            "val_acc": e.val_acc,
            "grad_norm": e.grad_norm,
            "tokens_per_s": round(e.tokens_per_s, 1),
        }
        if getattr(e, "val_bpb", None) is not None:
            record["val_bpb"] = e.val_bpb
        if e.sample is not None:
            record["sample"] = e.sample
        if getattr(e, "head_scores", None):
            record["head_scores"] = e.head_scores
        self.write(record)

    def on_end(self, result: dict[str, Any]) -> None:
        self.write(
            {
                "kind": "end",
                "step": result["step"],
                "tokens": result["tokens_seen"],
                "time": round(result["elapsed_s"], 4),
                "train_loss": result.get("train_loss"),
                "lr": self._last_lr,
                "val_loss": result.get("val_loss"),
                "stopped_early": result.get("stopped_early"),
                "early_stopped": result.get("early_stopped"),
            }
        )
        self.close()


# --------------------------------------------------------------------------- reading


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records in ``data`` and how many bytes they used; a torn (unfinished) last line is left.

    A whole line that is not a JSON object (damaged by hand, say) is skipped.
    """
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records, end


def resolve(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it stands: a ``start`` at step S drops the earlier lines past S."""
    out: list[dict[str, Any]] = []
    for r in records:
        if r.get("kind") == "start":
            while out and out[-1]["step"] > r["step"]:
                out.pop()
        out.append(r)
    return out


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every whole record of a log (``NAME.metrics.jsonl`` or its checkpoint's path); [] when there is none."""
    path = Path(path)
    if not path.name.endswith(LOG_SUFFIX):
        path = log_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CheckpointError(f"cannot read the run log {path.name}: {e.strerror or e}") from None
    return resolve(parse_lines(data)[0])


class LogFollower:
    """Reads a log another process is writing, a little at a time: ``poll()`` returns the new records.

    It keeps the byte offset of the last whole line it read, so each poll reads
    only what was appended since; a half-written line waits for the next poll.
    ``records`` holds the run as it stands (see ``resolve``). A file that shrank
    (deleted and started again) is read again from the beginning.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path if path.name.endswith(LOG_SUFFIX) else log_path(path)
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:
                self.offset, self.records = 0, []
            if size == self.offset:
                return []
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except FileNotFoundError:
            return []
        new, used = parse_lines(data)
        self.offset += used
        self.records = resolve(self.records + new) if any(r.get("kind") == "start" for r in new) else self.records + new
        return new


def is_running(log: str | os.PathLike, within_s: float = 120.0) -> bool:
    """Whether a run is still writing its log: written to in the last ``within_s`` seconds, and not ended."""
    path = Path(log)
    try:
        stat = path.stat()
        if time.time() - stat.st_mtime > within_s:
            return False
        with open(path, "rb") as f:
            f.seek(max(0, stat.st_size - (1 << 16)))
            records, _ = parse_lines(f.read())
    except OSError:
        return False
    return not records or records[-1].get("kind") != "end"


# --------------------------------------------------------------------------- views of a run


def series(records: Sequence[dict[str, Any]]) -> dict[str, list]:
    """The chart columns of ``lmcore.viz.series_from_events``, from log records."""
    from lmcore.viz import SERIES_KEYS

    out: dict[str, list] = {k: [] for k in SERIES_KEYS}
    for r in records:
        kind = r.get("kind")
        if kind == "step":
            out["step"].append(r["step"])
            out["tokens"].append(r.get("tokens"))
            out["loss"].append(r.get("train_loss"))
            out["lr"].append(r.get("lr"))
            out["tokens_per_s"].append(r.get("tokens_per_s"))
            out["grad_norm"].append(r.get("grad_norm"))
            out["elapsed_s"].append(r.get("time"))
        elif kind == "eval":
            out["eval_step"].append(r["step"])
            out["eval_tokens"].append(r.get("tokens"))
            out["train_loss"].append(r.get("train_loss"))
            out["val_loss"].append(r.get("val_loss"))
            out["val_ppl"].append(r.get("val_ppl"))
            out["val_acc"].append(r.get("val_acc"))
            out["sample"].append(r.get("sample"))
    return out


def evals(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation records that carry a validation loss."""
    return [r for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]


def epochs(records: Sequence[dict[str, Any]]) -> float | None:
    """Passes over the training split so far: tokens seen over ``train_tokens`` of the last start line."""
    starts = [r for r in records if r.get("kind") == "start" and r.get("train_tokens")]
    if not starts or not records or records[-1].get("tokens") is None:
        return None
    return records[-1]["tokens"] / starts[-1]["train_tokens"]


def best_eval(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation with the lowest validation loss (the earliest of equals), or None."""
    found = evals(records)
    return min(found, key=lambda r: r["val_loss"]) if found else None


def memorising(records: Sequence[dict[str, Any]], min_rise: float = 0.02) -> dict[str, Any] | None:
    """Whether validation loss has risen since its best while training loss kept falling.

    True (a dict: best_step, best_val, last_step, last_val, train_at_best,
    last_train) when the last evaluation's validation loss is above the best by
    more than ``min_rise`` (relative), at least two evaluations came after the
    best, and the training loss measured at the last evaluation is below the
    one at the best: the model learns its training text, not the language.
    """
    found = evals(records)
    best = best_eval(found)
    if best is None or best.get("train_loss") is None:
        return None
    last = found[-1]
    after = [r for r in found if r["step"] > best["step"]]
    if len(after) < 2 or last.get("train_loss") is None:
        return None
    if last["val_loss"] > best["val_loss"] * (1 + min_rise) and last["train_loss"] < best["train_loss"]:
        return {
            "best_step": best["step"],
            "best_val": best["val_loss"],
            "last_step": last["step"],
            "last_val": last["val_loss"],
            "train_at_best": best["train_loss"],
            "last_train": last["train_loss"],
        }
    return None


def run_summary(checkpoint: str | os.PathLike, records: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row of the comparison table, from the run's log and its checkpoint's metadata.

    Keys: run, arch, params, steps, tokens, epochs (passes over the training
    split, when the log says its size), wall_time_s, best_val_loss,
    best_step, final_val_loss, best_val_bpb (bits per byte at the best evaluation,
    the unit that compares vocabularies), val_acc (at the last evaluation), tokens_per_s
    (tokens over training time), memorising (bool).
    """
    checkpoint = Path(checkpoint)
    if records is None:
        records = read_log(checkpoint)
    starts = [r for r in records if r.get("kind") == "start"]
    row: dict[str, Any] = {
        "run": checkpoint.name.removesuffix(SUFFIX),
        "arch": starts[-1].get("arch") if starts else None,
        "params": starts[-1].get("params") if starts else None,
    }
    try:
        meta = read_metadata(checkpoint)
    except CheckpointError:
        meta = None
    if meta is not None:
        cfg = meta["config"]
        row["arch"] = cfg.get("preset") or cfg.get("arch") or row["arch"]
        params = meta.get("params", "")
        if params.isdigit():
            row["params"] = int(params)
    last = records[-1] if records else None
    found = evals(records)
    best = best_eval(found)
    steps_time = last.get("time") if last else None
    row.update(
        steps=last["step"] if last else None,
        tokens=last.get("tokens") if last else None,
        epochs=epochs(records),
        wall_time_s=steps_time,
        best_val_loss=best["val_loss"] if best else None,
        best_step=best["step"] if best else None,
        final_val_loss=found[-1]["val_loss"] if found else None,
        best_val_bpb=best.get("val_bpb") if best else None,
        val_acc=found[-1].get("val_acc") if found else None,
        tokens_per_s=(last["tokens"] / steps_time) if last and last.get("tokens") and steps_time else None,
        memorising=memorising(records) is not None,
    )
    return row


def compare_runs(checkpoints: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The comparison table: one ``run_summary`` row per checkpoint (its log read from disk)."""
    return [run_summary(c) for c in checkpoints]


def list_runs(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run in ``directory`` that has a log or a checkpoint, newest activity first.

    Each: name, checkpoint (Path, may not exist yet), log (Path or None),
    has_checkpoint, mtime (of the newer file).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found: dict[str, dict[str, Any]] = {}
    for path in directory.iterdir():
        name = path.name
        if name.startswith("."):
            continue
        if name.endswith(LOG_SUFFIX):
            stem = name.removesuffix(LOG_SUFFIX)
        elif name.endswith(SUFFIX) and not name.endswith(OPTIM_SUFFIX):
            stem = name.removesuffix(SUFFIX)
        else:
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue  # vanished while listing
        run = found.setdefault(
            stem,
            {"name": stem, "checkpoint": directory / (stem + SUFFIX), "log": None, "has_checkpoint": False, "mtime": 0.0},
        )
        if name.endswith(LOG_SUFFIX):
            run["log"] = path
        else:
            run["has_checkpoint"] = True
        run["mtime"] = max(run["mtime"], mtime)
    return sorted(found.values(), key=lambda r: (r["mtime"], r["name"]), reverse=True)
