"""A training run as its own process: ``python -m lmcore.runs RUN_DIR``.

The app starts every run this way (``jobs.JobRegistry``), so a run and the
pages that watch it never share an interpreter: a page that redraws its
charts takes nothing from the run, and a run goes on when the server stops.

``RUN_DIR`` (a private folder, see ``jobs``) holds ``spec.pt``, written by
``jobs.write_spec``: the ``RunSpec``, the checkpoint path and the device. The
process reads it (and deletes it), then trains exactly as a run in a thread
of the app did: the same ``TrainingJob`` (initial weights from the seed,
head scores and a text sample at each evaluation, the checkpoint saved at
the evaluations that improve on the best, the run log appended at every
step beside the checkpoint). What it writes for whoever follows it:

- the run log ``NAME.metrics.jsonl`` (see ``runlog``): every step and eval;
- ``RUN_DIR/state.json``, replaced atomically whenever it changes: ``status``,
  ``error``, ``saved_step``, ``model_config``, ``result``, ``crashed`` (the
  traceback of an unexpected error), ``pid``;
- ``RUN_DIR/snapshot.safetensors`` with metadata ``seq``: the weights as
  they are, written when ``RUN_DIR/snapshot.request`` holds a newer number,
  and once more at the end.

``python -m lmcore.runs --launcher`` is the launcher ``lmcore.launcher``
starts on Linux: it imports all this once and forks such a run for each
run folder it is given (``launch``).

SIGTERM or SIGINT stops the run after its current step: it is evaluated,
saved, and ends as "stopped" (Stop in the app sends SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

# A Stop pressed while this process is still starting (importing torch takes a while) is
# kept, not lost to SIGTERM's default: the run stops, with a save, once it trains.
_STOP = threading.Event()


def _on_signal(signum: int, frame: Any) -> None:
    _STOP.set()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

import torch  # noqa: E402 - after the signal handlers
from safetensors.torch import save_file  # noqa: E402

from lmcore.jobs import SPEC_FILE  # noqa: E402 - the app's side of a run folder (it writes the spec)
from lmcore.launcher import EXIT_FILE  # noqa: E402 - the exit code the launcher records for a forked run

STATE_FILE = "state.json"
SNAPSHOT_FILE = "snapshot.safetensors"
SNAPSHOT_REQUEST = "snapshot.request"
POLL_S = 0.05


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON at once: a reader sees the old file or the new one."""
    from lmcore.runlog import _clean

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), default=str))
    os.replace(tmp, path)


class _CrashLog(logging.Handler):
    """Keeps the traceback of the unexpected error a job logs, for the state file."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.text = "".join(traceback.format_exception(*record.exc_info))


def _save_snapshot(job: Any, run_dir: Path, seq: int) -> None:
    model = job.snapshot_model()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # tied weights apart
    tmp = run_dir / (SNAPSHOT_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"seq": str(seq), "step": str(job.last_event().step if job.last_event() else 0)})
    os.replace(tmp, run_dir / SNAPSHOT_FILE)


def _request(run_dir: Path) -> int:
    try:
        return int((run_dir / SNAPSHOT_REQUEST).read_text() or 0)
    except (OSError, ValueError):
        return 0


def serve(run_dir: Path) -> int:
    """Train the run described in ``run_dir``; 0 once it has ended, however it ended."""
    from lmcore.errors import LMCoreError
    from lmcore.jobs import TrainingJob

    crash = _CrashLog()
    logging.getLogger("lmcore.jobs").addHandler(crash)
    payload = torch.load(run_dir / SPEC_FILE, weights_only=False)
    (run_dir / SPEC_FILE).unlink(missing_ok=True)  # the ids can be large; the process holds them now
    job = TrainingJob(payload["spec"], Path(payload["checkpoint_path"]), torch.device(payload["device"]))
    stop = _STOP
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def state() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "status": job.status,
            "error": job.error,
            "saved_step": job.saved_step,
            "model_config": job.model_config.to_dict(),
            "result": job.result,
            "crashed": crash.text,
        }

    written: dict[str, Any] | None = None
    served = 0
    job._start()
    while True:
        ended = job.wait(POLL_S)
        if stop.is_set() and job.status == "running":
            job.stop()
        asked = _request(run_dir)
        if asked > served and job._model is not None:
            try:
                _save_snapshot(job, run_dir, asked)
            except LMCoreError:
                pass
            served = asked
        now = state()
        if now != written and not ended:
            write_json(run_dir / STATE_FILE, now)
            written = now
        if ended:
            break
    if job._model is not None:
        _save_snapshot(job, run_dir, max(served, _request(run_dir)) + 1)
    write_json(run_dir / STATE_FILE, {**state(), "ended": True})
    return 0


def _forked(run_dir: str) -> int:
    """In a process forked by the launcher: become ``python -m lmcore.runs RUN_DIR``."""
    _STOP.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(os.path.join(run_dir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    return main([run_dir])


def _reap(children: dict[int, str]) -> None:
    """Record each ended run's exit code, then reap it: the record is there before the process is gone,
    so a server that finds the process gone finds its code (``launcher.ForkedRun.poll``)."""
    while children:
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # look, leave it waitable
        except ChildProcessError:
            return
        if ended is None:
            return
        run_dir = children.pop(ended.si_pid, None)
        if run_dir is not None:
            signalled = ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
            code = -ended.si_status if signalled else ended.si_status
            with contextlib.suppress(OSError):  # the follower may have removed the folder
                write_json(Path(run_dir) / EXIT_FILE, code)
        os.waitpid(ended.si_pid, 0)


def launch() -> int:
    """The launcher (``python -m lmcore.runs --launcher``, started by ``lmcore.launcher``): forks a run
    for each run folder named on its standard input and answers with its process id."""
    import torch._dynamo  # noqa: F401 - a run's first optimizer step imports it (sympy and all): ~1.7 s

    # Imported once here, inherited by every run forked below: with what a run imports as it
    # goes (its data, the head scores and the text sample at each evaluation), a forked run's
    # first step comes after a tenth of a second of CPU, not 4 seconds.
    import lmcore.data  # noqa: F401
    import lmcore.interpret  # noqa: F401
    import lmcore.sample  # noqa: F401

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C ends the server; its input then ends
    print("ready", flush=True)
    children: dict[int, str] = {}
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.2)
        _reap(children)
        if not ready:
            continue
        data = os.read(0, 65536)
        if not data:
            return 0  # the server is gone; the runs go on
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            _fork(os.fsdecode(line), children, torch.cuda.is_initialized())


def _fork(run_dir: str, children: dict[int, str], cuda_up: bool) -> None:
    if cuda_up:
        print("no", flush=True)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _forked(run_dir)
        except BaseException:  # noqa: BLE001 - the child must never return into the launcher's loop
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    children[pid] = run_dir
    print(pid, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--launcher"]:
        return launch()
    if len(args) != 1 or not (Path(args[0]) / SPEC_FILE).is_file():
        print("usage: python -m lmcore.runs RUN_DIR (a folder holding spec.pt, written by lmcore.jobs)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
