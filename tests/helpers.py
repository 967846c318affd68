"""Small helpers shared by the tests: real training runs and real command-line runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from lmcore.models import lm_loss

ROOT = Path(__file__).resolve().parents[1]


def unigram_entropy(ids: torch.Tensor) -> float:
    """The loss (nats per token) of always predicting the tokens' own frequencies."""
    p = torch.bincount(ids).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def short_training_run(model, ids: torch.Tensor, steps: int, lr: float, batch: int = 16) -> float:
    """A few Adam steps on random windows of the first 90%; the mean loss on fixed windows of the rest."""
    n = int(len(ids) * 0.9)
    train, val = ids[:n], ids[n:]
    T = model.config.block_size
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(len(train) - T - 1, (batch,), generator=g)
        x = torch.stack([train[s : s + T] for s in starts])
        y = torch.stack([train[s + 1 : s + T + 1] for s in starts])
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    starts = range(0, len(val) - T - 1, T)
    x = torch.stack([val[s : s + T] for s in starts])
    y = torch.stack([val[s + 1 : s + T + 1] for s in starts])
    with torch.no_grad():
        return float(lm_loss(model(x), y))


def assert_checkpoint_round_trip(path: Path, model, tok, model_class: type, prompt: str) -> None:
    """Save ``model`` to one .safetensors file, load it back: the same keys, class, config and logits."""
    from safetensors.torch import load_file

    from lmcore.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(path, model, tok)
    stored = set(load_file(str(path)))
    assert stored <= set(model.state_dict())  # a tied head is stored once, under the embedding's name
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, model_class) and loaded.config == model.config
    mine, theirs = model.state_dict(), loaded.model.state_dict()
    assert set(theirs) == set(mine)
    for name, tensor in mine.items():
        assert torch.equal(theirs[name], tensor), name
    idx = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), model(idx), rtol=0, atol=0)


def assert_seeded_sampling_past_block_size(model, new_tokens: int, seed: int) -> None:
    """Sampling runs past the model's block size, and the same seed draws the same tokens."""
    from lmcore.sample import SamplingConfig, generate

    cfg = SamplingConfig(temperature=1.0, seed=seed)
    first = [e.token_id for e in generate(model, [1, 2, 3], max_new_tokens=new_tokens, sampling=cfg)]
    again = [e.token_id for e in generate(model, [1, 2, 3], max_new_tokens=new_tokens, sampling=cfg)]
    assert len(first) == new_tokens and first == again


# ------------------------------------------------------------- the command line in a process
# `python -m lmcore` in a fresh interpreter spends about 2 CPU seconds importing torch before
# the command starts, and the tests run it dozens of times. run_lmcore runs it in a process of
# its own, forked from a server process that imported torch and lmcore.cli once (the app's
# launcher starts runs the same way): with its own exit status, stdout, stderr, working folder
# and environment, as `python -m lmcore` has. What only a fresh interpreter shows (the console
# script, what importing costs, Ctrl-C) is tested through subprocess.
_SERVER = r"""
import json, os, resource, runpy, sys, traceback
import torch, lmcore.cli

def run(request):
    if request["address_space"]:  # a runaway allocation fails here, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (request["address_space"],) * 2)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, name in ((0, os.devnull), (1, request["out"]), (2, request["err"])):
        target = os.open(name, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin, sys.stdout, sys.stderr = (open(fd, mode, encoding="utf-8", closefd=False, buffering=1)
                                         for fd, mode in ((0, "r"), (1, "w"), (2, "w")))
    sys.argv = ["-m", *request["args"]]
    try:
        runpy.run_module("lmcore", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as e:  # as the interpreter reads it
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1

print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = run(json.loads(line))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""
_server: subprocess.Popen | None = None


def _read_line(fd: int, deadline: float) -> str | None:
    """One line from the server (unbuffered, so nothing waits in a buffer); None at the deadline."""
    import select
    import time

    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError("the lmcore fork server has exited")
        line += chunk
    return line.decode()


def _fork_server() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        import atexit
        import sys
        import time

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        _server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   env=env, cwd=ROOT)  # fmt: skip
        assert _server.stdout is not None
        assert _read_line(_server.stdout.fileno(), time.monotonic() + 300) == "ready\n"
        atexit.register(_server.kill)
    return _server


def run_lmcore(*args: str, cwd: Path | str, env: dict[str, str] | None = None, timeout: float = 300,
               text: bool = False, address_space: int | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """``subprocess.run([python, "-m", "lmcore", *args], capture_output=True)``, less the interpreter's start.

    ``address_space``: the process's RLIMIT_AS in bytes, as a ``preexec_fn`` would set it.
    """
    import json
    import signal
    import tempfile
    import time

    server = _fork_server()
    assert server.stdin is not None and server.stdout is not None
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
        request = {"args": list(args), "cwd": str(cwd), "env": dict(os.environ if env is None else env),
                   "out": out, "err": err, "address_space": address_space}  # fmt: skip
        server.stdin.write((json.dumps(request) + "\n").encode())
        server.stdin.flush()
        pid_line = _read_line(server.stdout.fileno(), time.monotonic() + 60)
        if pid_line is None:  # never signal a pid that was not read: 0 would be this process group
            raise RuntimeError("the lmcore fork server did not start the command within 60 s")
        pid = int(pid_line)
        status = _read_line(server.stdout.fileno(), time.monotonic() + timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            _read_line(server.stdout.fileno(), time.monotonic() + 60)
            raise subprocess.TimeoutExpired(["python", "-m", "lmcore", *args], timeout)
        stdout, stderr = Path(out).read_bytes(), Path(err).read_bytes()
    if text:
        return subprocess.CompletedProcess(["python", "-m", "lmcore", *args], int(status), stdout.decode(), stderr.decode())
    return subprocess.CompletedProcess(["python", "-m", "lmcore", *args], int(status), stdout, stderr)
