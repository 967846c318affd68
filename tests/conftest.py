"""Shared fixtures: paths, the standard corpus, tiny configs."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# ----------------------------------------------------------------------- test tiers
# `make test-fast` runs `-m "not slow and not browser"`: a test is fast unless it is
# marked. Marks come from the tests themselves (@pytest.mark.slow) and from here:
# - `browser`: every test that uses the browser (the `browser` or `server` fixtures);
# - `slow`: every test of the modules below, which drive the whole app (Streamlit's
#   AppTest, real training runs behind its pages), run the command line in fresh
#   Python processes (each pays for importing torch) or serve hostile servers and
#   files; and the tests listed, which train for more than a second.
# A fast-tier run names the unmarked tests that took longer than FAST_LIMIT_S.
SLOW_MODULES = {
    # the app
    "test_app.py",
    "test_app_views.py",
    "test_keep_share.py",
    "test_model_page_views.py",
    "test_surprise_page.py",
    "test_training_page.py",
    # the command line and other processes
    "test_cli.py",
    "test_distributed.py",
    "test_hf.py",
    "test_hostile_checkpoints.py",
    "test_limits.py",
    "test_url_security.py",
    "test_address.py",
    "test_fetch.py",
    "test_hf_exports.py",
    "test_hf_hostile.py",
    "test_hostile_flags.py",
    "test_hostile_logs.py",
    "test_intervene_page.py",
    "test_page_choices.py",
    "test_run_process.py",
    "test_server_limits.py",
    "test_serving.py",
    "test_jobs.py",
    "test_features_page.py",
    "test_finetune.py",
    "test_finetune_page.py",
}
SLOW_TESTS = {
    "test_mamba.py::test_short_training_run_beats_the_unigram_loss",
    "test_mamba.py::test_trainer_with_torch_compile_matches_eager",
    "test_optim.py::test_bench_gpu_without_cuda_exits_with_one_clear_line",
    "test_optim.py::test_cli_trains_with_muon_and_the_switches_then_refuses_another_optimizer_on_resume",
    "test_optim.py::test_each_optimizer_trains_below_the_unigram_loss",
    "test_optim.py::test_training_page_starts_a_run_with_the_chosen_optimizer",
    "test_optim.py::test_training_page_starts_adamw_vs_muon_as_two_overlaid_runs",
    "test_package.py::test_the_readme_library_example_runs_in_a_core_install",
    "test_package.py::test_the_console_script_is_python_m_lmcore",  # two command lines, each importing torch
    "test_prepared_data.py::test_a_prepared_folder_is_the_corpus_its_vocabulary_is_used_and_a_run_trains_from_it",
    "test_prepared_data.py::test_a_bad_folder_gives_one_line_and_keeps_the_corpus",
    "test_prepared_data.py::test_a_reload_restores_the_prepared_folder_from_the_address",
    "test_runlog.py::test_a_run_writes_its_log_and_a_resumed_run_appends",
    "test_runlog.py::test_a_run_killed_with_sigkill_leaves_a_log_and_a_checkpoint_that_load",
    "test_runlog.py::test_the_training_page_lists_and_overlays_a_run_the_cli_writes",
    "test_train.py::test_short_run_beats_the_unigram_loss",
    "test_mamba2.py::test_short_training_run_beats_the_unigram_loss",
    "test_recipes.py::test_recipe_trains_a_few_steps",
    "test_sae.py::test_cli_trains_saves_and_prints_the_evaluation_as_one_json_line",
    "test_novelty.py::test_the_index_is_built_once_and_fast_on_a_large_corpus",
    "test_finetune_runs.py::test_a_fine_tuning_run_saves_a_chat_checkpoint_and_measures_forgetting",
}
FAST_LIMIT_S = 2.0
# The browser tests live in these files: `make test` collects only them for its browser run.
BROWSER_FILES = "test_browser*.py"
# Long tests that need only a core: `make test` runs them beside the browser tests (marked
# `beside_browser`), whose clicks and redraws leave part of the machine idle, instead of with the
# others, which keep both cores busy. The Makefile's browser run collects their files too.
BESIDE_BROWSER = {
    "test_recipes.py::test_induction_recipe_forms_an_induction_head",  # about 900 steps on one core
}
# The modules that take longest (measured), run first: two workers that start with the long
# ones and end with the short ones finish together, instead of one waiting for the other
# (`make test` passes --no-loadscope-reorder, which keeps this order).
LONGEST_FIRST = [
    "test_recipes.py",  # the induction recipe (beside the browser tests in `make test`)
    "test_distributed.py",
    "test_finetune.py",
    "test_cli.py",
    "test_package.py",
    "test_runlog.py",
    "test_run_process.py",
    "test_app.py",
    "test_hostile_checkpoints.py",
    "test_optim.py",
    "test_hf_hostile.py",
    "test_address.py",
    "test_app_views.py",
    "test_fetch.py",
    "test_sae.py",
    "test_hostile_flags.py",
    "test_serving.py",
    "test_jobs.py",
    "test_page_choices.py",
    "test_training_page.py",
]
_slow_in_fast: list[tuple[str, float]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"browser", "server"} & set(getattr(item, "fixturenames", ())):
            if not item.path.match(BROWSER_FILES):
                raise pytest.UsageError(f"{item.nodeid} drives the browser: move it to a tests/{BROWSER_FILES} file")
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if item.path.name in SLOW_MODULES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if name in BESIDE_BROWSER:
            item.add_marker(pytest.mark.beside_browser)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order stays


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.duration > FAST_LIMIT_S and "slow" not in report.keywords:
        _slow_in_fast.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    if _slow_in_fast:
        write = terminalreporter.write_line  # type: ignore[attr-defined]
        write(f"unmarked tests slower than {FAST_LIMIT_S:.0f} s (mark them slow, or list them in tests/conftest.py):")
        for nodeid, seconds in sorted(_slow_in_fast, key=lambda x: -x[1]):
            write(f"  {seconds:6.1f} s  {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def _run_launcher(request: pytest.FixtureRequest) -> None:
    """Start this process's run launcher (lmcore.launcher) when the session drives the app in this process.

    The app forks its runs from a launcher that has imported torch; the first run of a process
    starts one and, until it is ready, runs start as fresh interpreters (about 4 CPU seconds
    each). Started here, it has imported torch by the time the first test starts a run.
    """
    if any(item.path.name in SLOW_MODULES for item in request.session.items):
        from lmcore import launcher

        launcher.warm()


@pytest.fixture(scope="session")
def english_text() -> str:
    """About 465 KB of English: the built-in corpus (Python's own docs), on every machine.

    Tests read nothing outside the repository: no ``../shared``, no download.
    """
    from lmcore.data import load_corpus

    return load_corpus("builtin:python-docs").text


@pytest.fixture(scope="session")
def shakespeare_text(english_text: str) -> str:
    """The older name of ``english_text`` (it once read tiny Shakespeare from outside the repository)."""
    return english_text


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(small_text: str) -> tuple:
    """(char tokenizer, train ids, val ids) of ``small_text``, split 90/10."""
    from lmcore.data import split_ids
    from lmcore.tokenizers import CharTokenizer

    tok = CharTokenizer.train(small_text)
    ids = torch.tensor(tok.encode(small_text))
    train_ids, val_ids = split_ids(ids, 0.1)
    return tok, train_ids, val_ids


@pytest.fixture(scope="session")
def small_text() -> str:
    """A few KB of English with structure, always available (no network, no shared/)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics)[:12])


# ----------------------------------------------------------------------- a local web server
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server over a folder; yields (base URL, folder, paths requested)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    requested: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requested
    finally:
        httpd.shutdown()
        httpd.server_close()
