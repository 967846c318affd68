"""What the benchmarks share: the checkout, the standard corpus, timing, progress, the machine and the output.

``python bench/bench_x.py`` puts bench/ on the import path, so a script says ``from common import ...``;
lmcore comes from the environment (``pip install -e .``). Progress goes to stderr, the result (one JSON
object) to stdout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def corpus_path() -> Path:
    """The standard corpus (tiny Shakespeare); exits with one line saying where to put it when it is missing."""
    if not CORPUS.exists():
        log(f"the standard corpus {CORPUS} is missing; put tinyshakespeare.txt there to run this benchmark")
        sys.exit(2)
    return CORPUS


def read_corpus() -> str:
    return corpus_path().read_text(encoding="utf-8")


class Timing:
    """The seconds of each timed call of one function, and what its last call returned."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.result: Any = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def ms(self, digits: int = 2) -> dict[str, float]:
        return {"best_ms": round(self.best * 1e3, digits), "median_ms": round(self.median * 1e3, digits)}


def timed(fns: Callable[[], Any] | Mapping[str, Callable[[], Any]], repeats: int = 1, warmup: bool = False,
          rounds: bool = False) -> Any:  # fmt: skip
    """Time ``repeats`` calls of one function (a Timing), or of each of several, by name, taking turns
    round by round so that a shared machine's slow moments fall on all of them alike (a dict of Timings).

    ``warmup``: call each once first, untimed. ``rounds``: log each round's seconds to stderr.
    """
    table = {"": fns} if callable(fns) else dict(fns)
    if warmup:
        for fn in table.values():
            fn()
    out = {name: Timing() for name in table}
    for r in range(repeats):
        for name, fn in table.items():
            t0 = time.perf_counter()
            result = fn()
            out[name].seconds.append(time.perf_counter() - t0)
            out[name].result = result
        if rounds:
            log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {v.seconds[-1]:.3f}s" for k, v in out.items()))
    return out[""] if callable(fns) else out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a result was measured on: CPU model and cores, Python, torch and its threads."""
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip


def emit(result: Any, indent: int | None = 1) -> None:
    """The benchmark's result: one JSON object on stdout."""
    print(json.dumps(result, indent=indent))


def tests_module(name: str) -> ModuleType:
    """tests/NAME.py (a helper the tests use too, such as the app server), imported from its file."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
