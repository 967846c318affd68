"""The package: a core install without the app's or the Hugging Face bridge's packages,
the front door (``import lmcore``), one version, the console script, the lock, and the
README's library example run as it stands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import lmcore

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# What a core install (`pip install .`) lacks: the `app` and `hf` extras and what they bring.
NOT_IN_CORE = ["streamlit", "plotly", "pandas", "transformers", "tokenizers", "huggingface_hub", "peft", "accelerate"]
CORE_MODULES = [
    "lmcore",
    "lmcore.models",
    "lmcore.train",
    "lmcore.sample",
    "lmcore.data",
    "lmcore.checkpoint",
    "lmcore.checkpoint_names",
    "lmcore.checkpoint_header",
    "lmcore.checkpoint_resume",
    "lmcore.cli",
    "lmcore.interpret",
    "lmcore.tokenizers",
    "lmcore.shards",
    "lmcore.runlog",
    "lmcore.recipes",
]
# Run first in a child Python: the packages above cannot be imported there.
BLOCK = f"import sys\nfor name in {NOT_IN_CORE!r}:\n    sys.modules[name] = None\n"


def run_without_extras(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_core_imports_with_the_app_and_hf_packages_missing(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import importlib
        for name in {CORE_MODULES!r}:
            importlib.import_module(name)
        import lmcore, lmcore.cli
        for name in lmcore.__all__:
            getattr(lmcore, name)
        lmcore.cli.build_parser()
        print("imported", len(lmcore.__all__))
        """
    )
    run = run_without_extras(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"imported {len(lmcore.__all__)}"


def test_the_blocking_really_blocks(tmp_path: Path) -> None:
    """The check above can fail: a module importing one of those packages is refused."""
    run = run_without_extras("import lmcore.viz", tmp_path)  # the figure module: plotly, on purpose
    assert run.returncode != 0 and "plotly" in run.stderr


def test_the_front_door_gives_what_a_notebook_needs() -> None:
    needed = {
        "load_corpus", "build_tokenizer", "encode_corpus", "split_ids", "CharTokenizer", "BPETokenizer",
        "ModelConfig", "build_model", "TrainConfig", "Trainer", "save_checkpoint", "load_checkpoint",
        "generate", "SamplingConfig", "__version__",
    }  # fmt: skip
    assert needed <= set(lmcore.__all__) and len(set(lmcore.__all__)) == len(lmcore.__all__)
    from lmcore.checkpoint import load_checkpoint
    from lmcore.models import build_model
    from lmcore.train import Trainer

    assert lmcore.load_checkpoint is load_checkpoint and lmcore.build_model is build_model and lmcore.Trainer is Trainer
    assert set(lmcore.__all__) <= set(dir(lmcore))
    with pytest.raises(AttributeError, match="no attribute 'Trainr'"):
        lmcore.Trainr  # noqa: B018


def test_importing_lmcore_is_light(tmp_path: Path) -> None:
    """`import lmcore` (and the errors module) load no torch: names load on first use."""
    code = "import lmcore, lmcore.errors, sys\nprint('torch' in sys.modules)\nlmcore.Trainer\nprint('torch' in sys.modules)"
    run = run_without_extras(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]


def test_one_version_in_one_place() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lmcore.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", lmcore.__version__)


def test_the_console_script_is_python_m_lmcore(tmp_path: Path) -> None:
    import importlib

    import lmcore.__main__ as main_module

    module, _, attr = PYPROJECT["project"]["scripts"]["lmcore"].partition(":")
    assert getattr(importlib.import_module(module), attr) is main_module.main
    as_module = subprocess.run([sys.executable, "-m", "lmcore", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert as_module.returncode == 0 and "train" in as_module.stdout
    script = Path(sys.executable).parent / "lmcore"
    if script.exists():  # an environment with the package installed (`make test`, CI)
        run = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0 and run.stdout == as_module.stdout


def _requirements() -> dict[str, list[Requirement]]:
    project = PYPROJECT["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def _locked() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_the_core_needs_none_of_the_app_or_hf_packages() -> None:
    core = {r.name.lower() for r in _requirements()["core"]}
    assert core == {"torch", "safetensors", "numpy", "regex", "tqdm"}
    assert {r.name for r in _requirements()["app"]} == {"streamlit", "plotly", "pandas"}
    assert {r.name for r in _requirements()["hf"]} == {"transformers"}


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    locked = _locked()
    for group, reqs in _requirements().items():
        for req in reqs:
            if req.name == "lmcore":  # the dev extra includes the app and hf extras
                assert req.extras == {"app", "hf"}
                continue
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            assert name in locked, f"{req.name} ({group}) is not in requirements.lock: run `make lock`"
            assert req.specifier.contains(locked[name], prereleases=True), (group, str(req), locked[name])
            # Every range stops below a major release, but for torch (pinned exactly) and
            # calendar-versioned packages (no major releases to stop below).
            if name not in {"torch", "regex", "packaging"}:
                assert any(s.operator == "<" for s in req.specifier), f"{req} has no upper bound"


def readme_library_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## The library\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's library section has no python example"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_library_example_runs_in_a_core_install(tmp_path: Path) -> None:
    example = readme_library_example()
    assert example.lstrip().startswith("import lmcore\n")  # one import: the front door
    run = run_without_extras(example, tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "mine.safetensors").exists()
    # The progress bar ran to its end, with the evaluations written above it.
    assert re.search(r"\b(\d+)/\1 \[", run.stderr) and "val loss" in run.stderr, run.stderr[-2000:]
    text = run.stdout.strip()
    assert len(text) >= 50 and text.count(" ") >= 5, text  # words, not nothing


def test_make_test_runs_the_tests_set_beside_the_browser_tests_once() -> None:
    # `make test` leaves them out of its first run and collects their files for the browser run:
    # a file missing there would drop its test from `make test` without a word.
    import importlib
    from fnmatch import fnmatch

    from tests.conftest import BESIDE_BROWSER

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    browser_run = re.search(r"^BROWSER_RUN := (.+)$", makefile, re.M)
    assert browser_run is not None
    globs = browser_run.group(1).split()
    assert BESIDE_BROWSER
    for test in BESIDE_BROWSER:
        file, function = test.split("::")
        assert any(fnmatch(f"tests/{file}", g) for g in globs), (test, globs)
        assert callable(getattr(importlib.import_module(f"tests.{file[:-3]}"), function, None)), f"{test} is not a test"
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None
    commands = recipe.group(1)
    assert '-m "not browser and not beside_browser"' in commands
    assert '-m "browser or beside_browser" $(BROWSER_RUN)' in commands
