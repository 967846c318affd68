"""Run processes forked from one that has already imported torch: ``python -m lmcore.runs --launcher``.

Every run of the app is a process of its own (``lmcore.runs``). Started as a
new interpreter, each imports torch and lmcore, then what its first steps
need: about 5 CPU seconds before it trains (bench/bench_run_start.py). A
launcher pays that once per server: it imports them, then forks a run for
each run folder the server names, one line each on its standard input, and
answers with the run's process id on its standard output.

A forked run is what ``python -m lmcore.runs RUN_DIR`` would be: a session of
its own (a Ctrl-C of the server's terminal does not reach it), its output in
``RUN_DIR/output.log``, SIGTERM and SIGINT asking it to stop with a save. The
launcher reaps each run and writes its exit code to ``RUN_DIR/exit`` (as
``subprocess`` gives it: negative for a signal). When the server goes, the
launcher's input ends and it exits; the runs go on. This module is the
server's side; the launcher's loop is ``lmcore.runs.launch``.

The launcher is started by ``warm`` (the Training page calls it) or by the
first run, which does not wait for it: until it is ready, runs start as
fresh interpreters.

Only on Linux (unless the operator sets ``LMCORE_FORK_RUNS=0``), and only
while nothing has initialised CUDA in the launcher (a forked process cannot
use a CUDA context made before the fork): elsewhere ``start_run`` answers
None and the caller starts a fresh interpreter. The launcher holds about
300 MB of memory (torch, imported), which its runs share until they write.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

FORK_ENV = "LMCORE_FORK_RUNS"  # "0": start every run as a fresh interpreter
EXIT_FILE = "exit"  # the run's exit code, written by the launcher when it reaps it
ANSWER_S = 30.0  # a fork takes milliseconds; a launcher this slow to answer is replaced
_lock = threading.Lock()
_launcher: subprocess.Popen | None = None
_ready = False


def supported() -> bool:
    """Whether runs are forked here: on Linux (fork is safe after importing torch), unless ``LMCORE_FORK_RUNS=0``."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and os.environ.get(FORK_ENV, "1") != "0"


def run_env() -> dict[str, str]:
    """The environment a run process gets: this one's, with this process's import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def warm(wait_s: float = 0.0) -> bool:
    """Start this server's launcher if it is not running; True once it is ready to fork runs.

    ``wait_s``: how long to wait for it to finish importing (0: not at all).
    """
    global _launcher, _ready
    if not supported():
        return False
    with _lock:
        if _launcher is None or _launcher.poll() is not None:
            _launcher = subprocess.Popen(
                [sys.executable, "-m", "lmcore.runs", "--launcher"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env=run_env(), text=True, bufsize=1,
            )  # fmt: skip
            _ready = False
        if not _ready and _answered(_launcher, wait_s):  # it says "ready" once it has imported what a run needs
            _ready = _launcher.stdout.readline().strip() == "ready"
            if not _ready:
                _stop_launcher()
        return _ready


def start_run(run_dir: Path) -> int | None:
    """Fork the run in ``run_dir`` from this server's launcher; its pid, or None.

    None when forking is not supported here, or while the launcher is still
    importing (the first run of a server starts it and does not wait for it),
    or when it does not answer: the caller then starts ``python -m lmcore.runs
    RUN_DIR`` itself, as a fresh interpreter.
    """
    if not warm():
        return None
    with _lock:
        if _launcher is None:
            return None
        try:
            _launcher.stdin.write(f"{run_dir}\n")
            _launcher.stdin.flush()
            answer = _launcher.stdout.readline().strip() if _answered(_launcher, ANSWER_S) else ""
        except (OSError, ValueError):
            answer = ""
        if answer.isdigit():
            return int(answer)
        if answer != "no":  # "no": CUDA came up in the launcher, which forks no more; else it is broken
            _stop_launcher()
        return None


def _stop_launcher() -> None:
    global _launcher, _ready
    if _launcher is not None:
        with contextlib.suppress(OSError):
            _launcher.kill()
    _launcher, _ready = None, False


def _answered(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` has written a line to read within ``timeout`` seconds."""
    return bool(select.select([proc.stdout], [], [], timeout)[0])


class ForkedRun:
    """A forked run seen as ``subprocess.Popen`` sees its child: ``pid``, ``poll()``, ``returncode``, ``send_signal``."""

    def __init__(self, pid: int, run_dir: Path):
        self.pid, self.run_dir = pid, run_dir
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the run has ended (from the launcher's record), else None."""
        if self.returncode is None:
            try:
                self.returncode = int((self.run_dir / EXIT_FILE).read_text())
            except (OSError, ValueError):
                try:
                    os.kill(self.pid, 0)
                except (ProcessLookupError, PermissionError):  # gone unrecorded: its launcher went first
                    self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)
