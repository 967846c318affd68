"""Hostile visitors of one shared server: addresses, run logs, other browsers' runs. Prints JSON.

Each attack is tried in this process through Streamlit's AppTest (the
process plays the server): an attack holds when no page shows a traceback or
a range error, a value outside its field's bounds never reaches a widget, no
BPE is trained past the page's largest size, no reader blocks, and another
browser cannot follow or stop a run it did not start nor change the limit of
runs at once. Prints attacks tried and held, the ones that did not hold, and
the process's peak memory (ru_maxrss). Run from a checkout's root:
``python bench/hostile_server.py`` (uses only names that every version has,
so it also measures the code before a fix).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
TMP = Path(tempfile.mkdtemp(prefix="hostile-server-"))
os.environ["PLAYGROUND_CHECKPOINT_DIR"] = str(TMP / "checkpoints")

from streamlit.testing.v1 import AppTest  # noqa: E402

from lmcore.checkpoint import save_checkpoint  # noqa: E402
from lmcore.data import build_tokenizer  # noqa: E402
from lmcore.models import ModelConfig, build_model  # noqa: E402

APP = str(ROOT / "app.py")
PAGES = ["views/vocabulary.py", "views/model.py", "views/training.py", "views/generation.py"]
BASE = {"corpus": "builtin:python-docs", "tok": "char"}
ADDRESSES = [
    "temp=5", "temp=inf", "temp=nan", "temp=-1", "top_p=5", "top_p=0", "top_k=-1", "top_k=abc", "new=999999",
    "gseed=-1", "iters=0", "iters=1e9", "batch=100000", "lr=5", "lr=nan", "warmup=-1", "eval=0",
    "eval_iters=99999", "seed=-1", "budget=-5", "muon_lr=100", "optimizer=evil", "device=tpu",
    "name=" + "n" * 500, "val=0.9", "docs=2", "prompt=" + "p" * 20_000,
    "arch=gpt2&n_layer=1000", "arch=gpt2&n_embd=100000", "arch=gpt2&dropout=0.9", "arch=gpt2&n_head=0",
    "arch=gpt2&block_size=100000", "arch=gpt2&norm=evil", "arch=gpt2&bias=7", "arch=mamba&d_conv=1048576",
    "arch=mamba&expand=inf", "arch=ngram&ngram_n=99", "arch=ngram&add_k=inf", "arch=gpt2&size=huge",
    "arch=gpt2&n_layer=" + "9" * 400,
]  # fmt: skip
VOCABS = ["1000000", "5000", "-5", "nan"]


def _params(text: str) -> dict[str, str]:
    out = dict(BASE)
    for part in text.split("&"):
        k, v = part.split("=", 1)
        out[k] = v
    return out


def _pages_draw(at: AppTest) -> str | None:
    """None when every page draws without an exception; else what broke."""
    at.run()
    if at.exception:
        return at.exception[0].value.splitlines()[0][:120]
    for page in PAGES:
        at.switch_page(page).run()
        if at.exception:
            return f"{page}: {at.exception[0].value.splitlines()[0][:120]}"
    return None


def address_attacks(results: list) -> None:
    for text in ADDRESSES:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update(_params(text))
        try:
            problem = _pages_draw(at)
        except Exception as e:  # noqa: BLE001 - a crash of the harness counts as not held
            problem = f"{type(e).__name__}: {str(e)[:100]}"
        results.append({"theme": "address", "attack": text[:60], "held": problem is None, "why": problem})
    for vocab in VOCABS:
        at = AppTest.from_file(APP, default_timeout=300)
        at.query_params.update({**BASE, "tok": "bpe", "vocab": vocab, "arch": "gpt2"})
        try:
            at.run()
            tok = at.session_state["tokenizer"] if "tokenizer" in at.session_state else None
            problem = (at.exception[0].value[:100] if at.exception else
                       f"BPE of {tok.vocab_size} trained" if tok is not None and tok.kind == "bpe" and tok.vocab_size > 4096 else None)  # fmt: skip
        except Exception as e:  # noqa: BLE001
            problem = f"{type(e).__name__}: {str(e)[:100]}"
        results.append({"theme": "address", "attack": f"tok=bpe&vocab={vocab}", "held": problem is None, "why": problem})


BAD_LINES = {
    "text step": '{"kind":"step","step":"ten","tokens":1}',
    "list step": '{"kind":"step","step":[1,2],"tokens":1}',
    "negative step": '{"kind":"step","step":-5,"tokens":1}',
    "400-digit tokens": '{"kind":"step","step":2,"tokens":' + "9" * 400 + "}",
    "400-digit time": '{"kind":"step","step":2,"time":' + "9" * 400 + "}",
    "text loss": '{"kind":"step","step":2,"train_loss":"low"}',
    "list val_loss": '{"kind":"eval","step":2,"val_loss":[1]}',
    "NaN loss": '{"kind":"eval","step":2,"val_loss":NaN}',
    "dict sample": '{"kind":"eval","step":2,"sample":{"a":1}}',
    "deep nesting": '{"kind":"step","step":2,"x":' + "[" * 100_000 + "]" * 100_000 + "}",
    "text train_tokens": '{"kind":"start","step":0,"train_tokens":"many","tokens":5}',
}
GOOD = [
    '{"kind":"start","step":0,"tokens":0,"time":0.0,"lr":0.0,"arch":"gpt2","params":10,"train_tokens":640}',
    '{"kind":"eval","step":1,"tokens":64,"time":0.2,"train_loss":3.9,"lr":0.001,"val_loss":3.8,"val_ppl":44.7,"val_acc":0.1}',
]


def _training_page_with_runs(timeout: float) -> str | None:
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.switch_page("views/training.py").run()
    if at.exception:
        return at.exception[0].value.splitlines()[0][:120]
    pick = [m for m in at.multiselect if m.key == "runs_pick"]
    if pick:
        pick[0].set_value(list(pick[0].options)).run()
    if at.exception:
        return at.exception[0].value.splitlines()[0][:120]
    return None


def log_attacks(results: list) -> None:
    folder = Path(os.environ["PLAYGROUND_CHECKPOINT_DIR"])
    for name, line in BAD_LINES.items():
        for old in folder.glob("*.metrics.jsonl"):
            old.unlink()
        (folder / f"{name.replace(' ', '-')}.metrics.jsonl").write_text("\n".join([GOOD[0], line, GOOD[1]]) + "\n")
        try:
            problem = _training_page_with_runs(120)
        except Exception as e:  # noqa: BLE001
            problem = f"{type(e).__name__}: {str(e)[:100]}"
        results.append({"theme": "run log", "attack": name, "held": problem is None, "why": problem})
    for old in folder.glob("*.metrics.jsonl"):
        old.unlink()
    fifo = folder / "trap.metrics.jsonl"
    os.mkfifo(fifo)
    try:
        problem = _training_page_with_runs(30)
    except Exception as e:  # noqa: BLE001 - a page that never finishes: the reader blocked
        problem = f"{type(e).__name__}: {str(e)[:100]}"
    finally:
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # frees a reader stuck on it
        time.sleep(0.5)
        os.close(fd)
        fifo.unlink()
    results.append({"theme": "run log", "attack": "FIFO named like a log", "held": problem is None, "why": problem})


def ownership_attacks(results: list) -> None:
    from lmcore.jobs import REGISTRY

    first = AppTest.from_file(APP, default_timeout=120)
    first.run()
    first.switch_page("views/training.py").run()
    first.number_input(key="keep.train.iters").set_value(100_000)
    first.number_input(key="keep.train.eval").set_value(50_000)
    first.button(key="train_start").click().run()
    job = REGISTRY.get(first.session_state["active_job"])
    try:
        other = AppTest.from_file(APP, default_timeout=120)
        other.query_params["run"] = job.id
        other.run()
        other.switch_page("views/training.py").run()
        attached = other.session_state["active_job"] == job.id if "active_job" in other.session_state else False
        results.append({"theme": "runs", "attack": "?run=<another browser's run id>", "held": not attached,
                        "why": "attached" if attached else None})  # fmt: skip
        if attached and not other.button(key="train_stop").disabled:
            other.button(key="train_stop").click().run()
        results.append({"theme": "runs", "attack": "Stop another browser's run", "held": job.status == "running",
                        "why": None if job.status == "running" else "stopped"})  # fmt: skip
        picker = [s for s in other.selectbox if s.key == "train_show"]
        listed = bool(picker) and job.id in picker[0].options
        results.append({"theme": "runs", "attack": "pick another browser's run under Runs on this server",
                        "held": not listed, "why": "its id is offered" if listed else None})  # fmt: skip
        widget = [n for n in other.number_input if n.key == "train_max_concurrent"]
        results.append({"theme": "runs", "attack": "raise Runs at once from a browser", "held": not widget,
                        "why": "a widget sets the server's limit" if widget else None})  # fmt: skip
    finally:
        for j in REGISTRY.list():
            j.stop()
            j.wait(120)


def main() -> None:
    tok = build_tokenizer("char", "abcdefghijklmnopqrstuvwxyz .\n")
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16)
    Path(os.environ["PLAYGROUND_CHECKPOINT_DIR"]).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(os.environ["PLAYGROUND_CHECKPOINT_DIR"]) / "tiny", build_model(cfg), tok)
    results: list = []
    for attacks in (address_attacks, log_attacks, ownership_attacks):
        attacks(results)
    print(json.dumps({
        "tried": len(results),
        "held": sum(r["held"] for r in results),
        "by_theme": {t: f"{sum(r['held'] for r in results if r['theme'] == t)}/{sum(r['theme'] == t for r in results)}"
                     for t in dict.fromkeys(r["theme"] for r in results)},
        "not_held": [f"{r['theme']}: {r['attack']}: {r['why']}" for r in results if not r["held"]],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads_left": threading.active_count(),
    }, indent=1))  # fmt: skip
    os._exit(0)  # a reader stuck on the FIFO (before the fix) must not hold the process


if __name__ == "__main__":
    main()
