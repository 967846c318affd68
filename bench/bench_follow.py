"""Benchmark: how soon a command-line run's new evaluation shows in the browser.

Runs the Chromium test that starts ``python -m lmcore train`` in another
process, writing into the app server's checkpoint folder, overlays that run on
the training page's saved runs, and times each of its next evaluations from the
moment its line lands in ``NAME.metrics.jsonl`` (the log polled every 20 ms) to
the moment the page says so. ``--repeats`` runs of the test, 4 evaluations each.

Run: python3 bench/bench_follow.py [--repeats 3]
Prints one JSON object on stdout; pytest's output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import ROOT, emit

TIMINGS = ROOT / "tests" / "artifacts" / "timings.json"
TEST = "tests/test_browser.py::test_a_cli_run_in_another_process_is_listed_overlaid_and_followed_live"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    latencies: list[float] = []
    for _ in range(args.repeats):
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "follow", TEST], cwd=ROOT, check=True, stdout=sys.stderr)
        latencies += json.loads(TIMINGS.read_text())["cli_eval_to_browser_s"]
    emit({
        "eval_to_browser_s": latencies,
        "median_s": round(statistics.median(latencies), 2),
        "max_s": max(latencies),
        "refresh_s": 1.0,
    }, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
