"""Training runs in their own processes (or background threads), safe to poll from a user interface.

``JobRegistry.start(spec, folder)`` starts the run a ``RunSpec`` describes as
its own process (``python -m lmcore.runs``, see ``lmcore.runs``) and returns a
``RunProcess`` that follows it through its run log and state file: the pages
that watch a run never share an interpreter (nor its lock) with it, Stop is
SIGTERM (the run evaluates, saves and ends "stopped"), and a run goes on when
the server that started it stops. ``JobRegistry(processes=False)`` runs each
in a thread of this process instead (what the run process itself does).
Both kinds of job answer the same questions (``events_since``, ``progress``,
``snapshot_model``, ``stop``, ``wait``...).

A ``TrainingJob`` runs one ``lmcore.run.Run`` (the path every run takes, the
command line's too) in a daemon thread. The thread
never touches the UI: it appends every ``TrainEvent`` to ``job.events`` (under
a lock), saves the model to one checkpoint file at each eval and at the end,
and records how the run ended in ``job.status`` / ``job.error``. A UI polls
``events_since(i)`` and ``progress()`` as often as it likes.

``JobRegistry.start(spec, folder)`` starts the run a ``RunSpec`` describes.
It keeps the jobs of the whole process, so a run outlives the
browser tab or page that started it, and caps how many train at once.
``REGISTRY`` is the process-level instance the app uses; its limit of runs
at once is the operator's: ``LMCORE_MAX_RUNS`` in the environment (default
``DEFAULT_MAX_RUNS``). A new run must fit in the memory the device has free
beside the estimates of the runs already training.

Ownership: every job has a public ``id`` (it names the run) and a secret
``key`` (32 hex digits, never derived from the id). Whoever holds the key may
attach to the run and stop it; the app keeps the keys of the runs a browser
session started in that session (``JobRegistry.by_key`` finds a run by its key).

Status: "running" -> "stopping" (stop asked) -> "stopped"; "running" ->
"finished" (max_iters or the time budget reached) or "failed" (a
``LMCoreError`` such as a NaN loss, or an unexpected exception, which is logged
with its traceback and reported as one line; the thread, never the server, ends).
A failed run keeps the checkpoint of its last good eval.

Threads: training uses torch's process-wide intra-op thread pool at its
default size (``torch.get_num_threads()``); concurrent runs share it.
``torch.set_num_threads`` is process-global, so changing it for one run would
change it for every other run and for the app itself: we leave it alone.

Determinism: a run's initial weights are drawn with its seed (see ``lmcore.run``),
batches come from the trainer's own seeded generator and samples from the
sampler's, so a run repeats exactly, also beside another run. Dropout is the
exception: it draws from torch's global generator, which concurrent runs share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from lmcore.checkpoint import CheckpointCallback
from lmcore.checkpoint_names import MAX_NAME_BYTES, MAX_NAME_CHARS, checkpoint_path, sanitize_name
from lmcore.device import describe_device, resolve_device
from lmcore.errors import ConfigError, LMCoreError, TrainingError
from lmcore.finetune import plain_state_dict
from lmcore.launcher import ForkedRun, run_env, start_run, warm
from lmcore.models import LanguageModel, ModelConfig, build_model
from lmcore.models.estimate import available_memory, check_fits, estimate_memory, format_bytes
from lmcore.run import Run, RunSpec
from lmcore.runlog import log_path, parse_lines
from lmcore.train import Trainer, TrainConfig, TrainEvent

logger = logging.getLogger(__name__)

RUNNING, STOPPING, FINISHED, STOPPED, FAILED = "running", "stopping", "finished", "stopped", "failed"
ACTIVE_STATUSES = (RUNNING, STOPPING)

# Runs training at once when the operator sets no LMCORE_MAX_RUNS, and the most it may say.
DEFAULT_MAX_RUNS = 2
MAX_RUNS_CEILING = 64
MAX_RUNS_ENV = "LMCORE_MAX_RUNS"
# The time-left estimate reads this many of the latest events, and times steps over the
# later ETA_RECENT_SHARE of the training time so far, at least the last ETA_RECENT_S
# seconds and ETA_MIN_STEPS steps: it leaves a slow start behind, follows a lasting change
# of pace, and does not chase every busy half-minute of a shared machine (bench/RESULTS.md).
ETA_WINDOW = 4000
ETA_RECENT_S = 30.0
ETA_RECENT_SHARE = 0.5
ETA_MIN_STEPS = 10
# How often a RunProcess reads its run's log and state file.
FOLLOW_S = 0.2
# How long snapshot_model waits for the run process to write the weights.
SNAPSHOT_WAIT_S = 60.0


def remaining_seconds(events: list[TrainEvent], cfg: TrainConfig) -> float | None:
    """Seconds until a run reaches ``cfg.max_iters``, from its latest events; None until two steps are seen.

    The steps still to take at the recent step time (the mean over the later
    half of the steps' time so far, at least ``ETA_RECENT_S`` seconds: a run that
    speeds up or slows down for good is followed, the first, slower steps drop
    out, a busy minute of the machine is averaged over), plus
    the evaluations still to come at their measured cost: the gap between the
    step before an evaluation and the step after it, less one step (a guess from
    the step time and ``eval_iters`` until one has been seen).
    """
    steps = [e for e in events if e.val_loss is None]
    evaluated = {e.step for e in events if e.val_loss is not None}
    plain: list[tuple[float, float]] = []  # (time, seconds of one step)
    spanning: list[float] = []  # seconds from a step to the next when an evaluation came between
    for a, b in zip(steps, steps[1:]):
        gap = b.elapsed_s - a.elapsed_s
        if b.step != a.step + 1 or not gap >= 0:
            continue
        if a.step in evaluated:
            spanning.append(gap)
        else:
            plain.append((b.elapsed_s, gap))
    if not plain:
        return None
    window = max(ETA_RECENT_S, ETA_RECENT_SHARE * plain[-1][0])
    recent = [d for t, d in plain if t >= plain[-1][0] - window]
    if len(recent) < ETA_MIN_STEPS:
        recent = [d for _, d in plain[-ETA_MIN_STEPS:]]
    step_s = sum(recent) / len(recent)
    if spanning:
        last = spanning[-3:]
        eval_s = max(0.0, sum(last) / len(last) - step_s)
    else:
        eval_s = step_s * 2 * cfg.eval_iters / 3  # forward passes over eval_iters batches of each split
    step, end, every = events[-1].step, int(cfg.max_iters), int(cfg.eval_interval)
    evals = max(0, end // every - step // every)  # the evaluations at multiples of eval_interval still ahead
    if end % every and end not in evaluated:
        evals += 1  # the final evaluation
    if step and step % every == 0 and step not in evaluated:
        evals += 1  # the one under way
    return max(0, end - step) * step_s + evals * eval_s


class TrainingJob:
    """One training run in a background thread. Create through ``JobRegistry.start``.

    Public attributes: id, name, status, error, events (append-only list of
    TrainEvent), model_config, train_config, tokenizer, data_info,
    checkpoint_path, started_at, finished_at, device, device_name, result
    (Trainer.fit's dict once ended), resumed_from.
    """

    def __init__(self, spec: RunSpec, checkpoint_path: Path, device: torch.device):
        self.id = uuid.uuid4().hex[:12]
        self.key = secrets.token_hex(16)  # the capability to attach and stop: see the module's notes
        self.memory_estimate = 0  # bytes the fit check counted for this run (JobRegistry.start)
        self.keep = spec.keep
        self.name = spec.name
        self.model_config = spec.model_config
        self.train_config = spec.train_config
        self.tokenizer = spec.tokenizer
        self.data_info = {"documents": False, **(spec.data_info or {})}
        self.checkpoint_path: Path | None = checkpoint_path
        self.resumed_from = spec.resume_from
        self.init_from = spec.init_from
        self.lora = spec.lora
        self.device = device
        self.device_name = describe_device(device)
        self.sample_tokens = spec.sample_tokens
        self.status = RUNNING
        self.error: str | None = None
        self.result: dict[str, Any] | None = None
        self.events: list[TrainEvent] = []
        self.started_at = time.time()
        self.finished_at: float | None = None

        self._lock = threading.Lock()
        self._spec: RunSpec | None = spec  # the data with it: dropped when the run ends
        self._model: LanguageModel | None = None
        self._trainer: Trainer | None = None
        self._stop_requested = False
        self._checkpointer: CheckpointCallback | None = None
        self._first_step: int | None = None  # step of the first event (resumed runs start later)
        self._last_event_at: float | None = None  # wall time the last event was seen
        self._thread = threading.Thread(target=self._run, name=f"lmcore-train-{self.id}", daemon=True)

    # ------------------------------------------------------------------ control
    def _start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the run to stop after its current step; it saves and ends as "stopped"."""
        with self._lock:
            if self.status != RUNNING:
                return
            self.status = STOPPING
            self._stop_requested = True
            trainer = self._trainer
        if trainer is not None:
            trainer.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (or ``timeout`` seconds pass); True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def is_alive(self) -> bool:
        """Whether the training thread is still going (running, stopping, or saving)."""
        return self._thread.is_alive()

    # ------------------------------------------------------------------ reading
    def events_since(self, i: int = 0) -> list[TrainEvent]:
        """The events from index ``i`` on (a copy): poll with the length seen so far."""
        with self._lock:
            return self.events[i:]

    def last_event(self) -> TrainEvent | None:
        with self._lock:
            return self.events[-1] if self.events else None

    def last_eval(self) -> TrainEvent | None:
        """The most recent event that carries a validation loss."""
        with self._lock:
            for e in reversed(self.events):
                if e.val_loss is not None:
                    return e
        return None

    def progress(self) -> dict[str, Any]:
        """step, max_iters, fraction (0..1), elapsed_s, eta_s (None until it can be told)."""
        with self._lock:
            last = self.events[-1] if self.events else None
            first_step = self._first_step
        cfg = self.train_config
        end = self.finished_at or time.time()
        elapsed = end - self.started_at
        step = last.step if last is not None else 0
        max_iters = int(cfg.max_iters)
        fraction = step / max_iters if max_iters > 0 else 0.0
        eta = None
        if last is not None and first_step is not None and step > first_step and self.is_alive:
            eta = self._eta(cfg)
        budget = cfg.time_budget_s
        if budget:
            fraction = max(fraction, elapsed / budget)
            eta = min(eta, budget - elapsed) if eta is not None else budget - elapsed
        if self.status == FINISHED:
            fraction = 1.0
        if eta is not None:
            eta = max(0.0, eta)
        return {"step": step, "max_iters": max_iters, "fraction": min(1.0, max(0.0, fraction)), "elapsed_s": elapsed, "eta_s": eta}

    def _eta(self, cfg: TrainConfig) -> float | None:
        with self._lock:
            events = list(self.events[-ETA_WINDOW:])
        since = time.time() - self._last_event_at if self._last_event_at is not None else 0.0
        left = remaining_seconds(events, cfg)
        return None if left is None else left - since

    def snapshot_model(self) -> LanguageModel:
        """A CPU copy of the model in eval mode, safe to take while training goes on.

        The trainer updates the weights under ``trainer.lock``; the copy is
        taken under the same lock, so it is never half-updated (it waits at
        most for one optimizer update). TrainingError when the run has no model.
        """
        with self._lock:
            model, trainer = self._model, self._trainer
        if model is None:
            raise TrainingError(f"the run '{self.name}' has no model yet ({self.error or 'it is still starting'})")
        module = getattr(model, "_orig_mod", model)
        lock = trainer.lock if trainer is not None else contextlib.nullcontext()
        with lock:  # a LoRA run's adapters folded in: the copy is a plain model of model_config
            state = {k: v.detach().to("cpu", copy=True) for k, v in plain_state_dict(module).items()}
        copy = build_model(self.model_config, device="cpu")
        copy.load_state_dict(state)
        return copy.eval()

    # ------------------------------------------------------------------ the thread
    # Callback methods: called by the Trainer in this job's thread.
    def on_step(self, event: TrainEvent) -> None:
        with self._lock:
            if self._first_step is None:
                self._first_step = event.step - 1
            self.events.append(event)
            self._last_event_at = time.time()

    def on_eval(self, event: TrainEvent) -> None:
        with self._lock:  # the Run has added the text sample (and logged the eval)
            if self._first_step is None:
                self._first_step = event.step
            self.events.append(event)
            self._last_event_at = time.time()

    def _run(self) -> None:
        try:
            run = Run(self._spec, self.checkpoint_path, self.device, callbacks=[self])
            trainer = run.build()
            with self._lock:
                self._model, self._trainer, self._checkpointer = run.model, trainer, run.checkpointer
                self.model_config, self.data_info = run.model_config, run.data_info
                stop_now = self._stop_requested
            if stop_now:
                trainer.stop()
            result = run.fit()
            with self._lock:
                self.result = result
                self.status = STOPPED if self._stop_requested and result["stopped_early"] else FINISHED
        except LMCoreError as e:
            self._fail(str(e))
        except Exception as e:  # noqa: BLE001 - a bug must end this run, never the server
            logger.exception("training run %s (%s) crashed", self.id, self.name)
            self._fail(f"unexpected error: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
        finally:
            with self._lock:
                self.finished_at = time.time()
                # Free what only training needed (the data); keep the model for snapshots.
                self._spec = None
                self._trainer = None

    @property
    def saved(self) -> bool:
        """Whether checkpoint_path holds weights of this run (written at its evals)."""
        return self._checkpointer is not None and self._checkpointer.saved_path is not None

    @property
    def saved_step(self) -> int | None:
        """The step of the weights in checkpoint_path, or None before the first eval."""
        return None if self._checkpointer is None else self._checkpointer.saved_step

    def _fail(self, message: str) -> None:
        with self._lock:
            self.status = FAILED
            self.error = message or "training failed"


class RunCrashed(Exception):
    """An unexpected error inside a run process; its message is the process's traceback."""


def _event(record: dict[str, Any], max_iters: int, loss: float) -> TrainEvent:
    """The TrainEvent a step or eval line of a run log stands for (nulls, NaN in the log, back to NaN)."""

    def num(key: str, default: float = math.nan) -> float:
        v = record.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    common = dict(step=int(record["step"]), max_iters=max_iters, lr=num("lr"), tokens_seen=int(record.get("tokens") or 0),
                  tokens_per_s=num("tokens_per_s", 0.0), grad_norm=num("grad_norm"), elapsed_s=num("time", 0.0))  # fmt: skip
    if record.get("kind") == "step":
        return TrainEvent(loss=num("train_loss"), **common)
    return TrainEvent(loss=loss, train_loss=num("train_loss"), val_loss=num("val_loss"), val_ppl=num("val_ppl"),
                      val_acc=num("val_acc"), val_bpb=record.get("val_bpb") if isinstance(record.get("val_bpb"), float) else None,
                      sample=record.get("sample"), head_scores=record.get("head_scores"),
                      base_val_loss=record.get("base_val_loss") if isinstance(record.get("base_val_loss"), float) else None,
                      **common)  # fmt: skip


SPEC_FILE = "spec.pt"  # the run folder's spec, read (and deleted) by the run process (lmcore.runs)


def write_spec(run_dir: Path, spec: Any, checkpoint_path: Path, device: torch.device) -> None:
    """Write what the run process needs into ``run_dir`` (the spec's ids and tokenizer included)."""
    tmp = run_dir / (SPEC_FILE + ".tmp")
    torch.save({"spec": spec, "checkpoint_path": str(checkpoint_path), "device": str(device)}, tmp)
    os.replace(tmp, run_dir / SPEC_FILE)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (the run process's state file), or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunProcess(TrainingJob):
    """One training run in its own process (``python -m lmcore.runs``), followed through its files.

    The same public attributes and methods as ``TrainingJob``; a thread of this
    process reads the run's log (the events) and state file (status, error,
    saved step, result) every ``FOLLOW_S`` seconds. ``stop`` sends SIGTERM;
    ``snapshot_model`` asks the process for its weights and waits for them.
    """

    def __init__(self, spec: RunSpec, checkpoint_path: Path, device: torch.device):
        super().__init__(spec, checkpoint_path, device)
        self._dir = Path(tempfile.mkdtemp(prefix="lmcore-run-"))
        self._log = log_path(checkpoint_path)
        self._offset = self._log.stat().st_size if self._log.exists() else 0  # a resumed run appends
        self._proc: subprocess.Popen | ForkedRun | None = None
        self._state: dict[str, Any] = {}
        self._state_mtime: int | None = None
        self._last_loss = math.nan
        self._asked = 0
        self._final: dict[str, torch.Tensor] | None = None  # the weights it ended with
        self._thread = threading.Thread(target=self._follow, name=f"lmcore-follow-{self.id}", daemon=True)

    @property
    def pid(self) -> int | None:
        """The run process's id (None before it starts)."""
        return None if self._proc is None else self._proc.pid

    def _start(self) -> None:
        write_spec(self._dir, self._spec, self.checkpoint_path, self.device)
        self._spec = None  # the ids live in the file now, then in the process
        # The process imports what this one can (the same sys.path), and a server's
        # Ctrl-C does not reach it (a session of its own): it outlives the server.
        # On Linux it is forked from a process that has imported torch already (lmcore.launcher).
        pid = start_run(self._dir)
        if pid is not None:
            self._proc = ForkedRun(pid, self._dir)
        else:
            with open(self._dir / "output.log", "wb") as out:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "lmcore.runs", str(self._dir)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=run_env(), start_new_session=True,
                )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Ask the run to stop after its current step (SIGTERM); it saves and ends as "stopped"."""
        with self._lock:
            if self.status != RUNNING:
                return
            self.status = STOPPING
            self._stop_requested = True
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    # -- following the process --
    def _read(self) -> None:
        try:
            with open(self._log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            data = b""
        records, used = parse_lines(data)
        self._offset += used
        events = []
        for r in records:
            if r.get("kind") not in ("step", "eval") or not isinstance(r.get("step"), int):
                continue
            e = _event(r, int(self.train_config.max_iters), self._last_loss)
            if not e.is_eval:
                self._last_loss = e.loss
            events.append(e)
        state_path = self._dir / "state.json"
        with contextlib.suppress(OSError):
            mtime = state_path.stat().st_mtime_ns
            if mtime != self._state_mtime:
                self._state = read_json(state_path) or self._state
                self._state_mtime = mtime
        with self._lock:
            if events:
                if self._first_step is None:
                    first = events[0]
                    self._first_step = first.step if first.is_eval else first.step - 1
                self.events.extend(events)
                self._last_event_at = time.time()
            if self._state.get("model_config"):
                with contextlib.suppress(LMCoreError):
                    self.model_config = ModelConfig.from_dict(self._state["model_config"])

    def _follow(self) -> None:
        assert self._proc is not None
        while self._proc.poll() is None:
            self._read()
            time.sleep(FOLLOW_S)
        self._read()
        state = self._state
        with self._lock:
            self.result = state.get("result")
            if state.get("ended") and state.get("status") in (FINISHED, STOPPED, FAILED):
                self.status = state["status"]
                self.error = state.get("error")
            elif self._stop_requested and self._proc.returncode == -signal.SIGTERM:
                self.status = STOPPED  # stopped while it was starting, before it could catch the signal
            else:
                self.status = FAILED
                self.error = (
                    f"the training process ended unexpectedly (exit code {self._proc.returncode}); "
                    "the last checkpoint it saved is kept"
                )
            self.finished_at = time.time()
        if state.get("crashed") or self.status == FAILED and not state.get("ended"):
            tail = state.get("crashed") or self._output_tail()
            logger.error("training run %s (%s) crashed", self.id, self.name, exc_info=RunCrashed(tail))
        # Keep the weights it ended with (for snapshots, as a thread's run keeps its model), not its folder.
        self._final = self._read_snapshot()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _output_tail(self, n: int = 4000) -> str:
        try:
            return (self._dir / "output.log").read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def saved_step(self) -> int | None:
        step = self._state.get("saved_step")
        return step if isinstance(step, int) else None

    @property
    def saved(self) -> bool:
        return self.saved_step is not None

    def snapshot_model(self) -> LanguageModel:
        """A CPU copy of the model in eval mode: the weights the run process has now (or ended with)."""
        path = self._dir / "snapshot.safetensors"
        if self.is_alive:
            self._asked += 1
            with contextlib.suppress(OSError):  # the run may be ending: its folder goes
                tmp = self._dir / "snapshot.request.tmp"
                tmp.write_text(str(self._asked))
                os.replace(tmp, self._dir / "snapshot.request")
            deadline = time.monotonic() + SNAPSHOT_WAIT_S
            while self.is_alive and time.monotonic() < deadline:
                if self._snapshot_seq(path) >= self._asked:
                    state = self._read_snapshot()
                    if state is not None:
                        return self._model_from(state)
                time.sleep(0.02)
        if not self.is_alive:
            return self._model_from(self._final)
        return self._model_from(self._read_snapshot())

    def _read_snapshot(self) -> dict[str, torch.Tensor] | None:
        from safetensors import safe_open

        path = self._dir / "snapshot.safetensors"
        if self._snapshot_seq(path) < 0:
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # noqa: BLE001 - replaced or removed while read
            return None

    def _model_from(self, state: dict[str, torch.Tensor] | None) -> LanguageModel:
        if state is None:
            raise TrainingError(f"the run '{self.name}' has no model yet ({self.error or 'it is still starting'})")
        copy = build_model(self.model_config, device="cpu")
        copy.load_state_dict(state)
        return copy.eval()

    @staticmethod
    def _snapshot_seq(path: Path) -> int:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return int((f.metadata() or {}).get("seq", 0))
        except Exception:  # noqa: BLE001 - missing, or not yet whole: no snapshot
            return -1


class JobRegistry:
    """The training jobs of this process; at most ``max_concurrent`` train at once.

    ``processes=True`` (the default): each run is a process of its own
    (``RunProcess``); False: a thread of this process (``TrainingJob``).
    """

    def __init__(self, max_concurrent: int | None = None, keep: int = 50, processes: bool = True):
        self.processes = processes
        self._lock = threading.Lock()
        self._jobs: dict[str, TrainingJob] = {}
        self.max_concurrent = max_runs_from_env() if max_concurrent is None else max_concurrent
        self.keep = keep  # ended jobs beyond this many (oldest first) are forgotten

    def warm(self) -> None:
        """Get ready to start runs at once: the launcher that forks them (``lmcore.launcher``) starts importing."""
        if self.processes:
            warm()

    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    @max_concurrent.setter
    def max_concurrent(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TrainingError(f"the number of concurrent runs must be a whole number of at least 1, got {n!r}")
        self._max_concurrent = n

    def start(self, spec: RunSpec, checkpoint_dir: str | Path) -> TrainingJob:
        """Start the run ``spec`` describes in a process of its own (or a thread) and return its job.

        Settings that can be checked at once raise here (ConfigError for the
        model or device, or a model whose training would not fit in the
        device's free memory; CheckpointError for the name, TrainingError when
        ``max_concurrent`` runs are already training); anything found while
        training ends the job as "failed". The checkpoint goes to
        ``checkpoint_dir/<sanitized name>.safetensors``, with a numeric suffix
        when that file exists or another run writes it, unless it is the file
        being resumed. Names are cut to fit the file system (see ``sanitize_name``).
        """
        spec.train_config.validate()
        device = resolve_device(spec.train_config.device)
        resume = Path(spec.resume_from).resolve() if spec.resume_from is not None else None
        init = Path(spec.init_from).resolve() if spec.init_from is not None else None
        if resume is None:
            check_fits(spec.model_config, spec.train_config.batch_size, device)  # validates; refuses before building
        elif not resume.exists():
            raise TrainingError(f"cannot resume: {resume.name} is no longer in the checkpoint folder")
        try:
            needs = estimate_memory(spec.model_config, spec.train_config.batch_size)["total"]
        except LMCoreError:
            needs = 0  # a resumed run's config is checked when its checkpoint loads
        if init is not None and not init.exists():
            raise TrainingError(f"cannot fine-tune: {init.name} is no longer in the checkpoint folder")
        base = sanitize_name(spec.name)
        directory = Path(checkpoint_dir)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            running = [j for j in self._jobs.values() if j.is_alive]
            if len(running) >= self.max_concurrent:
                raise TrainingError(
                    f"{len(running)} run(s) are already training and the limit is {self.max_concurrent}; "
                    "wait for one to finish or stop one (the limit is the server's setting, "
                    f"{MAX_RUNS_ENV})"
                )
            _check_room(needs, running, device)
            taken = {j.checkpoint_path for j in running}
            path, k = checkpoint_path(directory, base), 1
            while path in taken or (path.exists() and path != resume):
                k += 1
                suffix = f"-{k}"  # the base is cut, never the suffix, so every k names a new file
                cut = sanitize_name(base[: MAX_NAME_CHARS - len(suffix)], MAX_NAME_BYTES - len(suffix))
                path = checkpoint_path(directory, cut + suffix)
            kind = RunProcess if self.processes else TrainingJob
            job = kind(dataclasses.replace(spec, name=path.stem, resume_from=resume, init_from=init), path, device)
            job.memory_estimate = needs
            self._jobs[job.id] = job
            self._forget_old()
            job._start()
        return job

    def _forget_old(self) -> None:
        ended = [j for j in self._jobs.values() if not j.is_alive]
        ended.sort(key=lambda j: j.started_at)
        for j in ended[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[j.id]

    def get(self, job_id: str | None) -> TrainingJob | None:
        """The job with this id, or None (unknown, or forgotten)."""
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def by_key(self, key: str | None) -> TrainingJob | None:
        """The job whose secret ``key`` this is, or None (a wrong key, an id, or a job forgotten)."""
        if not isinstance(key, str) or len(key) != 32 or not all(c in "0123456789abcdef" for c in key):
            return None  # not a key (compare_digest wants plain ASCII of one length)
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if secrets.compare_digest(job.key, key):
                return job
        return None

    def list(self) -> list[TrainingJob]:
        """Every job, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted(jobs, key=lambda j: j.started_at, reverse=True)

    def running(self) -> list[TrainingJob]:
        return [j for j in self.list() if j.is_alive]

    def free_slots(self) -> int:
        """How many more runs may start now (``max_concurrent`` less those training)."""
        return max(0, self.max_concurrent - len(self.running()))


def max_runs_from_env() -> int:
    """The operator's limit of runs at once: ``LMCORE_MAX_RUNS`` (1 to ``MAX_RUNS_CEILING``), else the default.

    A value that is not such a number is logged and the default used: a server
    starts whatever its environment says.
    """
    text = os.environ.get(MAX_RUNS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RUNS
    if text.isdigit() and 1 <= int(text) <= MAX_RUNS_CEILING:
        return int(text)
    logger.warning("%s=%r is not a whole number from 1 to %d; using %d", MAX_RUNS_ENV, text[:40], MAX_RUNS_CEILING,
                   DEFAULT_MAX_RUNS)  # fmt: skip
    return DEFAULT_MAX_RUNS


def _check_room(needs: int, running: list[TrainingJob], device: torch.device) -> None:
    """ConfigError when a run needing ``needs`` bytes and the runs training would not fit in ``device``'s free memory.

    The runs already going count at their estimates (a run that has not yet
    allocated its memory still will), so several starts in a row cannot
    together promise more than there is.
    """
    same = [j for j in running if j.device == device]
    reserved = sum(j.memory_estimate for j in same)
    if not reserved:
        return  # alone on the device: check_fits has judged it
    free = available_memory(device)
    if free is not None and needs + reserved > free:
        raise ConfigError(
            f"this run needs about {format_bytes(needs)} to train and the {len(same)} run(s) already training "
            f"on it are estimated at {format_bytes(reserved)}, together more than the {format_bytes(free)} free; "
            "wait for a run to end, stop one, or train a smaller model"
        )


REGISTRY = JobRegistry()
