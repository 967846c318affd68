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
and ``LogFollower`` reads only whole lines, from where it stopped. A log is
input like any other file: everything that reads one goes through one
validating reader (``open_log``, ``check_record``) that opens regular files
only (never blocking on a FIFO or a device), reads at most ``MAX_LOG_BYTES``,
and keeps a line only when every field it knows has the type and range it
can mean (a step is a whole number from 0, a loss a finite number...); a bad
line is skipped and counted with its reason (``LogFollower.problem``), a bad
file listed with its reason (``list_runs``).
``compare_runs`` builds the side-by-side table of runs, ``memorising`` spots a
validation loss that rises while the training loss falls.
"""

from __future__ import annotations

import json
import math
import os
import stat as stat_mod
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from lmcore.checkpoint import read_metadata
from lmcore.checkpoint_names import LOG_SUFFIX, SUFFIX, is_companion_file, log_path  # noqa: F401  (log_path: re-exported)
from lmcore.errors import CheckpointError, LMCoreError

KINDS = ("start", "step", "eval", "end")
MAX_LOG_BYTES = 64 << 20  # what a reader takes of one log: a million-step run writes about 150 MB, its first 64 are shown
MAX_LINE_BYTES = 1 << 20  # a line with a text sample and head scores is a few kB
MAX_COUNT = 2**53  # steps, tokens, parameters: exact in a float, far past any run here
MAX_TEXT = 100_000  # characters of a sample, a source or an architecture's name
# Fields with numbers: name -> whether the number is a count (a whole number from 0) or any finite number
# ("time", "lr", rates and losses; a rate or a time below 0 means nothing, so they are bounded below too).
COUNTS = ("step", "tokens", "params", "tokens_per_step", "world_size", "grad_accum", "train_tokens")
NON_NEGATIVE = ("time", "lr", "grad_norm", "tokens_per_s", "val_ppl", "val_acc")
REALS = ("train_loss", "val_loss")
TEXTS = ("arch", "source", "sample")
FLAGS = ("stopped_early", "early_stopped")


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
        if getattr(e, "base_val_loss", None) is not None:
            record["base_val_loss"] = e.base_val_loss
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


def open_log(path: str | os.PathLike) -> IO[bytes]:
    """The log at ``path`` opened for reading: a regular file only, without ever blocking.

    FileNotFoundError when there is none; CheckpointError (one line) for a
    FIFO, a device, a folder or a file that cannot be read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read the run log {path.name}: {e.strerror or e}") from None
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"the run log {path.name} is not a regular file; remove it from the folder")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _number(value: Any, count: bool, non_negative: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return (0 if non_negative else -MAX_COUNT) <= value <= MAX_COUNT
    if count or not math.isfinite(value):
        return False
    return value >= 0 or not non_negative


def _head_scores(value: Any) -> bool:
    """{score: [[number per head] per layer]}, small."""
    if not isinstance(value, dict) or len(value) > 16:
        return False
    for name, layers in value.items():
        if not isinstance(name, str) or not isinstance(layers, list) or len(layers) > 1024:
            return False
        for heads in layers:
            if not isinstance(heads, list) or len(heads) > 1024:
                return False
            if not all(h is None or _number(h, False, False) for h in heads):
                return False
    return True


def _shallow(value: Any, depth: int = 3) -> bool:
    """A JSON value nested at most ``depth`` deep (the training config: a dict of plain values)."""
    todo = [(value, 0)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            if d >= depth:
                return False
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def check_record(record: Any) -> str | None:
    """Why ``record`` (one parsed line) is not a log record, in a few words; None when it is one."""
    if not isinstance(record, dict):
        return "a line is not a JSON object"
    if record.get("kind") not in KINDS:
        return "a line has no known kind"
    if "step" not in record:
        return "a line has no step"
    for key, value in record.items():
        if value is None and key != "step":
            continue
        if key in COUNTS and not _number(value, True, True):
            return f"{key} is not a whole number from 0 to {MAX_COUNT:,}"
        if key in NON_NEGATIVE and not _number(value, False, True):
            return f"{key} is not a finite number from 0"
        if key in REALS and not _number(value, False, False):
            return f"{key} is not a finite number"
        if key in TEXTS and not (isinstance(value, str) and len(value) <= MAX_TEXT):
            return f"{key} is not a short text"
        if key in FLAGS and not isinstance(value, bool):
            return f"{key} is not true or false"
        if key == "head_scores" and not _head_scores(value):
            return "head_scores is not a table of numbers per layer and head"
        if key == "config" and not (isinstance(value, dict) and _shallow(value)):
            return "config is not a flat object"
    return None


def parse_lines(data: bytes, problems: list[str] | None = None) -> tuple[list[dict[str, Any]], int]:
    """The records in ``data`` and how many bytes they used; a torn (unfinished) last line is left.

    A whole line that is not a valid record (damaged by hand or on purpose) is
    skipped; its reason is appended to ``problems`` when given.
    """
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            reason = f"a line is longer than {MAX_LINE_BYTES:,} bytes"
        else:
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):
                reason = "a line is not JSON (or nested too deep)"
            else:
                reason = check_record(record)
        if reason is None:
            records.append(record)
        elif problems is not None:
            problems.append(reason)
    return records, end


def describe_problems(problems: list[str]) -> str | None:
    """One line for the lines a reader skipped: how many, and the first reason."""
    if not problems:
        return None
    return f"{len(problems):,} line(s) skipped ({problems[0]})"


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
        with open_log(path) as f:
            data = f.read(MAX_LOG_BYTES)
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
    (deleted and started again) is read again from the beginning. ``problem``:
    one line on what was skipped (bad lines, a file that is not a regular
    file, the part past ``MAX_LOG_BYTES``), or None.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path if path.name.endswith(LOG_SUFFIX) else log_path(path)
        self.offset = 0
        self.records: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.error: str | None = None

    @property
    def problem(self) -> str | None:
        return self.error or describe_problems(self.skipped)

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open_log(self.path) as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:
                    self.offset, self.records, self.skipped = 0, [], []
                if size == self.offset:
                    return []
                if self.offset >= MAX_LOG_BYTES:
                    self.error = f"only the first {MAX_LOG_BYTES >> 20} MB of this log are read"
                    return []
                f.seek(self.offset)
                data = f.read(min(size, MAX_LOG_BYTES) - self.offset)
        except FileNotFoundError:
            return []
        except CheckpointError as e:
            self.error = str(e)
            return []
        new, used = parse_lines(data, self.skipped)
        self.offset += used
        self.records = resolve(self.records + new) if any(r.get("kind") == "start" for r in new) else self.records + new
        return new


def is_running(log: str | os.PathLike, within_s: float = 120.0) -> bool:
    """Whether a run is still writing its log: written to in the last ``within_s`` seconds, and not ended."""
    path = Path(log)
    try:
        with open_log(path) as f:
            stat = os.fstat(f.fileno())
            if time.time() - stat.st_mtime > within_s:
                return False
            f.seek(max(0, stat.st_size - (1 << 16)))
            records, _ = parse_lines(f.read(1 << 16))
    except (OSError, CheckpointError):
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
    except LMCoreError:
        meta = None
    if isinstance(meta, dict):  # shown only when each value is what it should be
        cfg = meta.get("config")
        if isinstance(cfg, dict):
            arch = cfg.get("preset") or cfg.get("arch")
            row["arch"] = arch if isinstance(arch, str) and len(arch) <= 100 else row["arch"]
        params = meta.get("params", "")
        if isinstance(params, str) and params.isdigit() and len(params) <= 16:
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
    has_checkpoint, mtime (of the newer file), error (why its log cannot be
    read: not a regular file; None when it can).
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
        elif name.endswith(SUFFIX) and not is_companion_file(name):
            stem = name.removesuffix(SUFFIX)
        else:
            continue
        try:
            st = path.stat()
        except OSError:
            continue  # vanished while listing
        mtime = st.st_mtime
        run = found.setdefault(
            stem,
            {"name": stem, "checkpoint": directory / (stem + SUFFIX), "log": None, "has_checkpoint": False,
             "mtime": 0.0, "error": None},
        )  # fmt: skip
        if name.endswith(LOG_SUFFIX):
            run["log"] = path
            if not stat_mod.S_ISREG(st.st_mode):
                run["error"] = "its log is not a regular file"
        else:
            run["has_checkpoint"] = True
        run["mtime"] = max(run["mtime"], mtime)
    return sorted(found.values(), key=lambda r: (r["mtime"], r["name"]), reverse=True)
