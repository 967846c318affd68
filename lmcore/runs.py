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

SIGTERM or SIGINT stops the run after its current step: it is evaluated,
saved, and ends as "stopped" (Stop in the app sends SIGTERM).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
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

STATE_FILE = "state.json"
SNAPSHOT_FILE = "snapshot.safetensors"
SNAPSHOT_REQUEST = "snapshot.request"
POLL_S = 0.05


def write_json(path: Path, data: dict[str, Any]) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / SPEC_FILE).is_file():
        print("usage: python -m lmcore.runs RUN_DIR (a folder holding spec.pt, written by lmcore.jobs)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
