"""The benchmarks share bench/common.py: none edits sys.path or names the corpus itself, and each imports
as ``python bench/bench_x.py`` finds it (bench/ first on the path, lmcore from the environment).
No benchmark runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
# Scripts still on their own copies (sys.path edits, their own corpus path): drop a name once its script
# imports bench/common.py instead.
NOT_YET: set[str] = set()


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_uses_the_common_module_and_leaves_sys_path_alone(script: str) -> None:
    if script in NOT_YET:
        pytest.skip(f"{script} does not use bench/common.py yet")
    text = (BENCH / script).read_text(encoding="utf-8")
    assert "sys.path" not in text, f"{script} edits sys.path: import from bench/common.py (ROOT, tests_module)"
    assert "tinyshakespeare" not in text, f"{script} names the corpus itself: use common.CORPUS or read_corpus()"
    assert "from common import" in text, f"{script} does not use bench/common.py"


_IMPORT_ALL = """
import importlib.util, json, sys
failed = {}
for path in sys.argv[1:]:
    name = path.rsplit("/", 1)[-1][:-3]
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        assert callable(getattr(module, "main", None)), "no main()"
    except BaseException as e:
        failed[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failed))
"""


def test_each_benchmark_imports_from_its_own_folder() -> None:
    """One process imports every script by its path (``__name__`` is not ``__main__``, so nothing runs), with
    bench/ as the working folder and first on the path, as ``python bench/bench_x.py`` has it."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),  # lmcore, uninstalled
    }
    paths = [str(BENCH / s) for s in SCRIPTS]
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *paths], cwd=BENCH, env=env, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
