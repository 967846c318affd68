"""Each run of the app is a process of its own: stopped by a signal, alive after its server, timed by its recent steps.

Real tiny runs (``python -m lmcore.runs``) started through a ``JobRegistry``,
a "server" that is a real Python process which starts a run and exits, and the
Training page (AppTest) telling when the induction recipe ended before its head formed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lmcore import launcher
from lmcore.checkpoint import read_metadata
from lmcore.data import build_tokenizer, corpus_from_text, encode_corpus, split_ids
from lmcore.jobs import FINISHED, REGISTRY, STOPPED, JobRegistry, RunSpec, remaining_seconds
from lmcore.models import ModelConfig
from lmcore.recipes import INDUCTION_FORMED, best_induction
from lmcore.runlog import read_log
from lmcore.train import TrainConfig, TrainEvent
from ui import state as S

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180  # generous: the machine may be busy; tests never check timings


@pytest.fixture
def spec(small_text):
    def make(name: str = "run", **train) -> RunSpec:
        corpus = corpus_from_text(small_text, name="topics")
        tok = build_tokenizer("char", corpus.text)
        train_ids, val_ids = split_ids(encode_corpus(tok, corpus), 0.1)
        cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=16)
        values = dict(max_iters=30, batch_size=4, eval_interval=10, eval_iters=2, warmup_iters=5, lr=3e-3, device="cpu")
        return RunSpec(name, cfg, tok, train_ids, val_ids, TrainConfig(**{**values, **train}), data_info={"source": "topics"})

    return make


@pytest.fixture
def registry():
    reg = JobRegistry(max_concurrent=2)
    yield reg
    for job in reg.list():
        job.stop()
        job.wait(WAIT_S)


def test_a_run_is_its_own_process_in_its_own_session_and_a_signal_stops_it_with_a_save(registry, spec, tmp_path):
    job = registry.start(spec(max_iters=100_000, eval_interval=50_000), tmp_path)
    deadline = time.monotonic() + WAIT_S
    while len(job.events_since(0)) < 3:
        assert job.is_alive and time.monotonic() < deadline, f"no steps: {job.status} {job.error}"
        time.sleep(0.05)
    assert job.pid is not None and job.pid != os.getpid()
    assert os.getsid(job.pid) != os.getsid(0)  # a Ctrl-C of the server's terminal does not reach it
    os.kill(job.pid, signal.SIGTERM)  # as `kill PID` from a terminal, or Stop on the page
    assert job.wait(WAIT_S)
    assert job.status == STOPPED and job.error is None
    last = job.last_event()
    assert last.val_loss is not None  # evaluated once more, then saved
    assert read_metadata(job.checkpoint_path)["train"]["steps"] == last.step == job.saved_step


def _parent(pid: int) -> int:
    """The parent process id of ``pid`` (Linux's /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _state(pid: int) -> str | None:
    """A process's state letter (Linux's /proc: "Z" for a zombie), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


@pytest.mark.skipif(not launcher.supported(), reason="runs are forked on Linux only")
def test_on_linux_a_run_is_forked_from_the_launcher_and_its_exit_code_is_recorded(registry, spec, tmp_path):
    assert launcher.warm(wait_s=WAIT_S)  # what the Training page asks for when it opens
    job = registry.start(spec(), tmp_path)
    parent = _parent(job.pid)
    assert parent not in (os.getpid(), 1) and "--launcher" in Path(f"/proc/{parent}/cmdline").read_text()
    assert job.wait(WAIT_S) and job.status == FINISHED and job.error is None
    assert job._proc.returncode == 0  # read from the file the launcher wrote when it reaped the run
    second = registry.start(spec("second"), tmp_path)  # the same launcher forks the next run
    assert _parent(second.pid) == parent
    assert second.wait(WAIT_S) and second.status == FINISHED


@pytest.mark.skipif(not launcher.supported(), reason="runs are forked on Linux only")
def test_a_run_still_starts_when_the_launcher_has_died_and_the_next_launcher_forks_again(registry, spec, tmp_path):
    assert launcher.warm(wait_s=WAIT_S)
    first = registry.start(spec("first"), tmp_path)
    dead = _parent(first.pid)
    assert first.wait(WAIT_S) and first.status == FINISHED
    os.kill(dead, signal.SIGKILL)  # the launcher is gone (say, the kernel's out-of-memory killer)
    deadline = time.monotonic() + WAIT_S
    while _state(dead) not in ("Z", None):  # dead, not yet reaped by this process (its parent)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = registry.start(spec("after"), tmp_path)  # a fresh interpreter while a new launcher imports
    assert _parent(after.pid) == os.getpid()
    assert after.wait(WAIT_S) and after.status == FINISHED and after.error is None
    assert launcher.warm(wait_s=WAIT_S)
    again = registry.start(spec("again"), tmp_path)
    assert _parent(again.pid) not in (os.getpid(), dead)
    assert again.wait(WAIT_S) and again.status == FINISHED


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_with_forking_turned_off_a_run_is_a_fresh_interpreter(registry, spec, tmp_path, monkeypatch):
    monkeypatch.setenv(launcher.FORK_ENV, "0")
    job = registry.start(spec(), tmp_path)
    assert _parent(job.pid) == os.getpid()
    assert job.wait(WAIT_S) and job.status == FINISHED and job.error is None


SERVER = """
import os, sys
from lmcore.data import build_tokenizer, corpus_from_text, encode_corpus, split_ids
from lmcore.jobs import JobRegistry, RunSpec
from lmcore.models import ModelConfig
from lmcore.train import TrainConfig

text = open(sys.argv[1], encoding="utf-8").read()
tok = build_tokenizer("char", text)
train_ids, val_ids = split_ids(encode_corpus(tok, corpus_from_text(text, name="t")), 0.1)
cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=16)
tc = TrainConfig(max_iters=40, batch_size=4, eval_interval=20, eval_iters=2, warmup_iters=5, device="cpu")
job = JobRegistry().start(RunSpec("orphan", cfg, tok, train_ids, val_ids, tc), sys.argv[2])
print(job.pid, flush=True)
os._exit(0)  # the server is gone at once, as a killed or restarted one
"""


def test_a_run_goes_on_and_saves_after_the_server_that_started_it_is_gone(tmp_path, small_text):
    text = tmp_path / "corpus.txt"
    text.write_text(small_text, encoding="utf-8")
    folder = tmp_path / "checkpoints"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SERVER), str(text), str(folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=WAIT_S, check=True)  # fmt: skip
    pid = int(out.stdout.split()[0])
    log = folder / "orphan.metrics.jsonl"
    deadline = time.monotonic() + WAIT_S
    while not (log.exists() and any(r["kind"] == "end" for r in read_log(folder / "orphan.safetensors"))):
        assert time.monotonic() < deadline, "the run did not end on its own"
        time.sleep(0.2)
    end = [r for r in read_log(folder / "orphan.safetensors") if r["kind"] == "end"][-1]
    assert end["step"] == 40 and not end["stopped_early"]
    assert read_metadata(folder / "orphan.safetensors")["train"]["steps"] in (20, 40)  # the best evaluation
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the process ends once it has saved
            os.kill(pid, 0)
            time.sleep(0.1)


def _steps(times: list[float], evals: dict[int, float], max_iters: int) -> list[TrainEvent]:
    """Step events at the given step end times; an eval event (val loss set) after each step in ``evals``."""
    out = []
    for i, t in enumerate(times, start=1):
        out.append(TrainEvent(step=i, max_iters=max_iters, loss=1.0, lr=1e-3, tokens_seen=i, tokens_per_s=1.0,
                              grad_norm=1.0, elapsed_s=t))  # fmt: skip
        if i in evals:
            out.append(TrainEvent(step=i, max_iters=max_iters, loss=1.0, lr=1e-3, tokens_seen=i, tokens_per_s=1.0,
                                  grad_norm=1.0, elapsed_s=t, val_loss=1.0))  # fmt: skip
    return out


def _timeline(n: int, step_s, eval_every: int, eval_s: float) -> list[float]:
    """End time of each of ``n`` steps: step i takes step_s(i) seconds, plus eval_s after each evaluation."""
    t, times = 0.0, []
    for i in range(1, n + 1):
        t += step_s(i) + (eval_s if i > 1 and (i - 1) % eval_every == 0 else 0.0)
        times.append(t)
    return times


def test_the_time_left_counts_the_recent_step_time_and_the_evaluations_to_come():
    cfg = TrainConfig(max_iters=1000, eval_interval=100, eval_iters=10)
    # A slow start (the first 30 steps at 1 s: start-up, another run beside it), then 0.1 s a step;
    # each evaluation costs 3 s. After 500 steps: 500 steps and 5 evaluations are left.
    slow_then_fast = lambda i: 1.0 if i <= 30 else 0.1  # noqa: E731
    times = _timeline(500, slow_then_fast, 100, 3.0)
    events = _steps(times, {100: 0, 200: 0, 300: 0, 400: 0, 500: 0}, 1000)
    truth = 500 * 0.1 + 5 * 3.0
    assert remaining_seconds(events, cfg) == pytest.approx(truth, rel=0.05)
    # the average since the start (what a plain steps/elapsed estimate gives) is far off
    assert abs(500 / (500 / times[-1]) - truth) / truth > 0.3

    # No evaluation yet: the step time alone, plus a guess for the evaluations; none left at the end.
    early = _steps(_timeline(20, lambda i: 0.1, 100, 3.0), {}, 1000)
    assert remaining_seconds(early, cfg) >= 980 * 0.1
    assert remaining_seconds(_steps(_timeline(3, lambda i: 0.1, 100, 0), {}, 3), TrainConfig(max_iters=3)) == pytest.approx(
        TrainConfig(max_iters=3).eval_iters * 2 / 3 * 0.1
    )  # only the final evaluation is left
    assert remaining_seconds(early[:1], cfg) is None


def test_best_induction_reads_the_head_scores_of_the_evaluations():
    scores = lambda x: {"induction": [[0.01, x], [0.02, 0.0]], "previous_token": [[0.9, 0.9], [0.9, 0.9]]}  # noqa: E731
    events = [
        TrainEvent(step=s, max_iters=300, loss=1.0, lr=1e-3, tokens_seen=s, tokens_per_s=1.0, grad_norm=1.0, elapsed_s=s,
                   val_loss=1.0, head_scores=scores(x))  # fmt: skip
        for s, x in ((100, 0.05), (200, 0.6), (300, 0.4))
    ]
    assert best_induction(events) == (0.6, 200)
    assert best_induction(events[:1])[0] < INDUCTION_FORMED <= best_induction(events)[0]
    assert best_induction([]) is None


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    yield folder
    for job in REGISTRY.list():
        job.stop()
        job.wait(WAIT_S)


def test_the_page_says_when_an_induction_run_ended_before_its_head_formed(checkpoints):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=WAIT_S)
    at.run()
    at.switch_page("views/training.py").run()
    for key, value in (("iters", 4), ("warmup", 1), ("eval", 2), ("eval_iters", 1), ("batch", 4)):
        at.number_input(key=f"keep.train.{key}").set_value(value)
    at.text_input(key="keep.train.name").set_value("induction-head")  # the recipe's run name
    at.button(key="train_start").click().run()
    job = REGISTRY.get(at.session_state[S.ACTIVE_JOB])
    assert job.wait(WAIT_S) and job.status == FINISHED, job.error
    at.run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("ended before its induction head formed" in w for w in warnings), warnings
    assert best_induction(job.events)[0] < INDUCTION_FORMED
