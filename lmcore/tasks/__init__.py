"""Small ready-made fine-tuning tasks: prompt/response JSONL shipped with the package.

Each task is made here, deterministically (a fixed seed, fixed tables: no
download), and written next to this file as ``NAME.train.jsonl`` and
``NAME.heldout.jsonl`` (prompts the training file never holds, for an exact
match score). ``python -m lmcore.tasks`` writes them again; a test checks that
the shipped files are what ``make_task`` gives, so they cannot drift.

Every task is small enough for a tiny character model to learn in a few
minutes on a CPU, and each teaches one thing (``Task.teaches``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmcore.errors import ConfigError

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "heldout")

# Letters alternate consonant/vowel (no clusters), from a set chosen so that few real words come out;
# the rare unfortunate one is skipped (forwards or reversed).
_CONSONANTS = "bdflmprstvz"
_VOWELS = "aeiou"
_SKIP = ("rap", "ped", "tit", "pis", "pus", "fat", "dum", "sod", "pot", "poo", "sat", "dam", "mor")

# Capitals written in plain ASCII letters, so a character vocabulary of English text has them all.
CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Norway": "Oslo",
    "Sweden": "Stockholm", "Egypt": "Cairo", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima",
    "Chile": "Santiago", "Cuba": "Havana", "Greece": "Athens", "Poland": "Warsaw", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Russia": "Moscow", "China": "Beijing", "India": "Delhi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Ghana": "Accra", "Nepal": "Kathmandu",
}  # fmt: skip
# The phrasings of the question: the training file asks in the first three, the held-out one in the last.
CAPITAL_QUESTIONS = ("capital of {}", "What is the capital of {}?", "Name the capital of {}.",
                     "Which city is the capital of {}?")  # fmt: skip


def _words(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    """``n`` distinct pronounceable lowercase words of ``lo`` to ``hi`` letters."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        length = rng.randint(lo, hi)
        start = rng.random() < 0.5
        w = "".join(rng.choice(_VOWELS if (i % 2 == 0) != start else _CONSONANTS) for i in range(length))
        if w not in seen and not any(bad in w or bad in w[::-1] for bad in _SKIP):
            seen.add(w)
            out.append(w)
    return out


Rows = list[dict[str, str]]


def _split_words(seed: int, n_train: int, n_heldout: int, lo: int, hi: int, answer: Callable[[str], str]) -> tuple[Rows, Rows]:
    words = _words(random.Random(seed), n_train + n_heldout, lo, hi)
    rows = [{"prompt": w, "response": answer(w)} for w in words]
    return rows[:n_train], rows[n_train:]


def _uppercase() -> tuple[Rows, Rows]:
    return _split_words(1, 600, 50, 3, 6, str.upper)


def _reverse() -> tuple[Rows, Rows]:
    return _split_words(2, 800, 50, 3, 5, lambda w: w[::-1])


def _capitals() -> tuple[Rows, Rows]:
    rng = random.Random(3)
    train = [{"prompt": q.format(c), "response": a} for c, a in CAPITALS.items() for q in CAPITAL_QUESTIONS[:3]]
    rng.shuffle(train)
    heldout = [{"prompt": CAPITAL_QUESTIONS[3].format(c), "response": a} for c, a in CAPITALS.items()]
    return train, heldout


@dataclass(frozen=True)
class Task:
    """A shipped task: its name, a title, the one thing it teaches, and its two files."""

    name: str
    title: str
    teaches: str
    make: Callable[[], tuple[Rows, Rows]]

    def path(self, split: str = "train") -> Path:
        if split not in SPLITS:
            raise ConfigError(f"a task's split is train or heldout, not {split!r}")
        return HERE / f"{self.name}.{split}.jsonl"

    def examples(self, split: str = "train") -> list[list[dict[str, str]]]:
        """The split's examples as message lists (``lmcore.finetune.read_examples``)."""
        from lmcore.finetune import read_examples

        return read_examples(self.path(split))

    def text(self, split: str = "train") -> str:
        return self.path(split).read_text(encoding="utf-8")


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("uppercase", "Uppercase a word", "A mapping applied letter by letter: each letter of the prompt becomes "
             "its capital, so it works on words the model has never seen.", _uppercase),  # fmt: skip
        Task("reverse", "Reverse a word", "Copying from the prompt in reverse order: each letter of the answer "
             "must be looked up at the right place in the prompt, the work attention does.", _reverse),  # fmt: skip
        Task("capitals", "Capital of a country", "Recalling facts held in the weights: the answer is not in the "
             "prompt, and the held-out prompts ask the same facts in a phrasing never trained on.", _capitals),  # fmt: skip
    )
}


def list_tasks() -> list[Task]:
    return list(TASKS.values())


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"no shipped task named {name!r}; choose one of {', '.join(TASKS)}") from None


def jsonl(rows: Rows) -> str:
    """The JSONL text of ``rows``: one object a line, keys in order, UTF-8 as it is."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def make_task(name: str) -> dict[str, str]:
    """The JSONL text of each split of task ``name``, as the generator makes it."""
    train, heldout = get_task(name).make()
    return {"train": jsonl(train), "heldout": jsonl(heldout)}


def write_tasks(folder: str | Path = HERE) -> list[Path]:
    """Write every task's files into ``folder`` (by default the package's own); the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TASKS:
        for split, text in make_task(name).items():
            path = folder / f"{name}.{split}.jsonl"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
