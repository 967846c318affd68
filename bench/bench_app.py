"""The app under load: page switches, live chart refresh and memory while a run trains.

Run: python3 bench/bench_app.py [--minutes 10] [--rounds 3] [--quick]

A real ``streamlit run app.py`` (headless, a free port, checkpoints in a fresh
temporary folder) driven by a real headless Chromium (Debian's
/usr/bin/chromium through Playwright's Python package). One browser session
goes to the Training page and starts a run of the default tiny model on the
app's default corpus with many iterations, so it keeps training throughout.

1. Page switches while it trains: ``--rounds`` times through the sidebar
   (Data, Vocabulary, Model, Attention, Generation, Checkpoints, Training).
   For each click, measured inside the page (an in-page poller every 16 ms,
   so no Playwright round trip is counted): the time until the new page's
   title is visible, until its main content (a page-specific element) is
   visible and not stale, and until the run settled (no status widget and no
   stale element for 300 ms). The same again after the run is stopped, for
   comparison.
2. Live refresh on the Training page: an in-page sampler reads the progress
   bar and the drawn path of the loss chart every 50 ms for
   ``--refresh-seconds``. The bar's text shows the elapsed seconds, so its
   changes count the redraws of the live view; the step count and the chart
   change only when the run has new steps to show (none arrive while it
   evaluates, or when it trains slower than the view refreshes). Reported:
   updates per second of each, the gaps between chart updates, and how often
   the chart or the bar was missing or marked stale (flicker).
3. Memory over ``--minutes`` with the Training page open (its live view
   refreshing all the time): the server's RSS (VmRSS of the streamlit process
   and its children) every ``--sample-every`` seconds, with the browser's JS
   heap (after a garbage collection) and DOM node count, and the refresh rate
   of each interval. Reported: start, end, max, and the slope over the second
   half (MB/minute).

The machine may be shared: the load average at the start and at the end is
reported, and the idle page switches give a same-run reference (ratios).

0. Open against closed (first, right after the first evaluation): the
   Training page open for ``--oc-seconds``, then the Data page (the live view
   closed) as long, ``--oc-windows`` times each, alternating. Steps are read
   from the run's log in the checkpoint folder (what the run wrote, whatever
   the page shows). Reported: steps/s in each window, the median of each
   side, and open over closed (1.0: watching costs the run nothing).
   ``--open-closed-only`` stops after it.
Prints one JSON object on stdout; progress goes to stderr. Without Playwright
or Chromium it prints {"skipped": reason} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import emit, tests_module

_appserver = tests_module("appserver")  # the browser tests' server, shared with them
app_server, descendants = _appserver.app_server, _appserver.descendants

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
MAIN = '[data-testid="stMain"]'
RUN_NAME = "bench-app"
ITERATIONS = 1_000_000  # the widget's maximum: the run outlasts the benchmark
STEP = re.compile(r"step ([\d,]+) of ([\d,]+)")

# Sidebar label -> CSS selector of the page's main content (inside the main area).
PAGES: list[tuple[str, str]] = [
    ("Data", '[data-testid="stSlider"]'),
    ("Vocabulary", '[data-testid="stPlotlyChart"]'),
    ("Model", '[data-testid="stDataFrame"]'),
    ("Attention", '[data-testid="stPlotlyChart"]'),
    ("Generation", '[data-testid="stTabs"]'),
    ("Checkpoints", '[data-testid="stDataFrame"]'),
    ("Training", '[data-testid="stProgress"]'),
]

# Installed before a click: records, in the page's own clock, when the click
# happened and when the new page's title, its content, and a settled page showed.
SWITCH_WATCH_JS = """
([label, contentSel, settleMs, timeoutMs]) => {
  const w = {click: null, title: null, content: null, settled: null, timedOut: false};
  window.__switch = w;
  document.addEventListener('click', () => { w.click = performance.now(); }, {capture: true, once: true});
  const shown = el => !el.closest('[data-stale="true"]') && el.getClientRects().length > 0;
  let calmSince = null;
  const timer = setInterval(() => {
    if (w.click === null) return;
    const now = performance.now();
    const main = document.querySelector('[data-testid="stMain"]');
    if (main) {
      if (w.title === null && [...main.querySelectorAll('h1')].some(h => h.textContent.trim().startsWith(label) && shown(h)))
        w.title = now;
      if (w.title !== null && w.content === null && [...main.querySelectorAll(contentSel)].some(shown))
        w.content = now;
      const calm = w.content !== null && !document.querySelector('[data-testid="stStatusWidget"]')
        && main.querySelectorAll('[data-stale="true"]').length === 0;
      if (!calm) calmSince = null;
      else if (calmSince === null) calmSince = now;
      if (calmSince !== null && now - calmSince >= settleMs) { w.settled = calmSince; }
    }
    if (w.settled !== null || now - w.click > timeoutMs) {
      w.timedOut = w.settled === null;
      clearInterval(timer);
    }
  }, 16);
}
"""

# Samples the Training page's live view every 50 ms; ``window.__live.take()``
# returns the counts since the last take and starts a new window.
LIVE_SAMPLER_JS = """
() => {
  if (window.__live) clearInterval(window.__live.timer);
  const hash = s => { let h = 0; for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0; return h; };
  const fresh = () => ({start: performance.now(), samples: 0, stepChanges: 0, chartChanges: 0, textChanges: 0,
                        changeTimes: [], chartMissing: 0, barMissing: 0, stale: 0,
                        step: null});
  const live = {cur: fresh(), lastStep: null, lastChart: null, lastText: null};
  live.timer = setInterval(() => {
    const c = live.cur, now = performance.now();
    c.samples++;
    const main = document.querySelector('[data-testid="stMain"]');
    const bar = main && main.querySelector('[data-testid="stProgress"]');
    const m = bar && bar.innerText.match(/step ([\\d,]+) of/);
    const chart = main && main.querySelector('[data-testid="stPlotlyChart"]');
    const line = chart && chart.querySelector('path.js-line');
    if (!bar) c.barMissing++;
    if (!line) c.chartMissing++;
    if (main && main.querySelector('[data-stale="true"]')) c.stale++;
    if (bar && bar.innerText !== live.lastText) {
      if (live.lastText !== null) c.textChanges++;
      live.lastText = bar.innerText;
    }
    const step = m ? m[1] : null;
    if (step !== null) {
      if (live.lastStep !== null && step !== live.lastStep) { c.stepChanges++; }
      live.lastStep = step; c.step = step;
    }
    if (line) {
      const h = hash(line.getAttribute('d') || '');
      if (live.lastChart !== null && h !== live.lastChart) { c.chartChanges++; c.changeTimes.push(now); }
      live.lastChart = h;
    }
  }, 50);
  live.take = () => { const c = live.cur; live.cur = fresh(); c.end = performance.now(); return c; };
  window.__live = live;
}
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The server process and its memory.
def _vmrss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def server_rss_mb(pid: int) -> float:
    """VmRSS of the server process plus its descendants, in MB (10^6 bytes)."""
    return round(sum(_vmrss_kb(p) for p in [pid, *descendants(pid)]) * 1024 / 1e6, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


class RssSampler(threading.Thread):
    """Reads the server's RSS every ``every`` seconds in the background (reading /proc only)."""

    def __init__(self, pid: int, every: float, t0: float):
        super().__init__(daemon=True)
        self.pid, self.every, self.t0 = pid, every, t0
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append(
                {"t_min": round((time.monotonic() - self.t0) / 60, 2), "rss_mb": server_rss_mb(self.pid),
                 "load1": round(os.getloadavg()[0], 2)}  # fmt: skip
            )
            if self._halt.wait(self.every):
                return

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# ----------------------------------------------------------------------------------------------
# The browser side.
def wait_idle(page: Any, timeout_s: float = 60.0) -> None:
    """Until the script run started by the last input has finished (no status widget, nothing stale)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(150)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=timeout_s * 1000)
    expect(page.locator('[data-stale="true"]')).to_have_count(0, timeout=timeout_s * 1000)


def set_number(page: Any, label: str, value: int) -> None:
    from playwright.sync_api import expect

    wait_idle(page)
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value))


def progress(page: Any) -> tuple[int, int]:
    """(steps done, steps in total) from the Training page's progress bar."""
    from playwright.sync_api import expect

    bar = page.locator(f"{MAIN} [data-testid=\"stProgress\"]").first
    expect(bar).to_contain_text(STEP, timeout=60_000)
    m = STEP.search(bar.inner_text())
    assert m is not None
    return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))


def switch(page: Any, label: str, content: str, settle_ms: int = 300, timeout_s: float = 60.0) -> dict[str, float | None]:
    """Click ``label`` in the sidebar; seconds from the click to title, content and settled page."""
    page.evaluate(SWITCH_WATCH_JS, [label, content, settle_ms, timeout_s * 1000])
    page.locator('[data-testid="stSidebarNav"] a', has_text=label).click()
    page.wait_for_function("() => window.__switch.settled !== null || window.__switch.timedOut",
                           polling=100, timeout=(timeout_s + 10) * 1000)  # fmt: skip
    w = page.evaluate("() => window.__switch")

    def since(key: str) -> float | None:
        return None if w[key] is None or w["click"] is None else round((w[key] - w["click"]) / 1000, 3)

    if w["title"] is None or w["content"] is None:
        raise RuntimeError(f"the {label} page did not show its title and content within {timeout_s:.0f} s")
    return {"title_s": since("title"), "content_s": since("content"), "settled_s": since("settled")}


def switch_rounds(page: Any, rounds: int, pause_s: float) -> dict[str, Any]:
    """``rounds`` passes through every page; per page and overall median and max."""
    per: dict[str, list[dict[str, float | None]]] = {label: [] for label, _ in PAGES}
    for r in range(rounds):
        for label, content in PAGES:
            t = switch(page, label, content)
            per[label].append(t)
            log(f"  round {r + 1}/{rounds} {label:<12} title {t['title_s']:.3f} s  content {t['content_s']:.3f} s  "
                f"settled {t['settled_s'] if t['settled_s'] is not None else 'n/a'}")  # fmt: skip
            page.wait_for_timeout(int(pause_s * 1000))

    def summary(rows: list[dict[str, float | None]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(rows)}
        for key in ("title_s", "content_s", "settled_s"):
            vals = [row[key] for row in rows if row[key] is not None]
            out[key.replace("_s", "_median_s")] = round(statistics.median(vals), 3) if vals else None
            out[key.replace("_s", "_max_s")] = round(max(vals), 3) if vals else None
        out["not_settled"] = sum(row["settled_s"] is None for row in rows)
        return out

    every = [row for rows in per.values() for row in rows]
    return {"per_page": {label: summary(rows) for label, rows in per.items()}, "overall": summary(every),
            "over_1s": {"title": sum(row["title_s"] > 1 for row in every),
                        "content": sum(row["content_s"] > 1 for row in every)}}  # fmt: skip


def live_window(page: Any) -> dict[str, Any]:
    """The live sampler's counts since the last call, as rates."""
    c = page.evaluate("() => window.__live.take()")
    span = max((c["end"] - c["start"]) / 1000, 1e-9)
    times = c["changeTimes"]
    gaps = [(b - a) / 1000 for a, b in zip(times, times[1:])]
    n = max(c["samples"], 1)
    return {
        "window_s": round(span, 1),
        "progress_text_updates_per_s": round(c["textChanges"] / span, 3),
        "step_updates_per_s": round(c["stepChanges"] / span, 3),
        "chart_updates_per_s": round(c["chartChanges"] / span, 3),
        "chart_gap_median_s": round(statistics.median(gaps), 3) if gaps else None,
        "chart_gap_max_s": round(max(gaps), 3) if gaps else None,
        "samples": c["samples"],
        "sampler_lag": round(1 - c["samples"] * 0.05 / span, 3),  # share of 50 ms ticks the page was too busy for
        "chart_missing_fraction": round(c["chartMissing"] / n, 4),
        "progress_missing_fraction": round(c["barMissing"] / n, 4),
        "stale_fraction": round(c["stale"] / n, 4),
        "step": None if c["step"] is None else int(c["step"].replace(",", "")),
    }


def browser_memory(cdp: Any) -> dict[str, float]:
    """The page's JS heap after a garbage collection, and its DOM counters."""
    cdp.send("HeapProfiler.collectGarbage")
    heap = cdp.send("Runtime.getHeapUsage")
    dom = cdp.send("Memory.getDOMCounters")
    return {"js_heap_mb": round(heap["usedSize"] / 1e6, 2), "dom_nodes": dom["nodes"],
            "js_listeners": dom["jsEventListeners"]}  # fmt: skip


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minutes, value) points."""
    if len(points) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 3)


def logged_step(log_file: Path) -> tuple[int, float]:
    """(the last step in a run log, now): what the run itself has done, read from its file."""
    step = 0
    with open(log_file, "rb") as f:
        f.seek(max(0, log_file.stat().st_size - 4096))
        for line in f.read().splitlines()[1:] or []:
            try:
                step = max(step, int(json.loads(line).get("step") or 0))
            except (ValueError, AttributeError):
                continue
    return step, time.monotonic()


def open_closed(page: Any, log_file: Path, windows: int, seconds: float) -> dict[str, Any]:
    """Steps/s with the Training page open and with the Data page shown instead, alternating."""
    rows: list[dict[str, Any]] = []
    for i in range(windows):
        for side, (label, content) in (("closed", PAGES[0]), ("open", PAGES[-1])):
            switch(page, label, content)
            page.wait_for_timeout(1000)  # the switch itself is not counted
            s0, t0 = logged_step(log_file)
            page.wait_for_timeout(int(seconds * 1000))
            s1, t1 = logged_step(log_file)
            rows.append({"side": side, "steps_per_s": round((s1 - s0) / (t1 - t0), 2), "load1": round(os.getloadavg()[0], 2)})
            log(f"  {side:6s} window {i + 1}: {rows[-1]['steps_per_s']} steps/s (load {rows[-1]['load1']})")
    med = {side: statistics.median(r["steps_per_s"] for r in rows if r["side"] == side) for side in ("open", "closed")}
    return {"windows": rows, "open_median": med["open"], "closed_median": med["closed"],
            "open_over_closed": round(med["open"] / med["closed"], 3) if med["closed"] else None}  # fmt: skip


def torch_threads() -> int | None:
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        return int(out.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    t_begin = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "app under a training run: page switches, live refresh, memory",
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch_threads(),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
            "python": platform.python_version(),
            "platform": platform.platform(),
            "note": "shared machine: other work may run beside the benchmark; compare with the idle figures of the same run",
        },
        "settings": {"minutes": args.minutes, "rounds": args.rounds, "refresh_seconds": args.refresh_seconds,
                     "sample_every_s": args.sample_every, "iterations": ITERATIONS, "quick": args.quick},  # fmt: skip
    }
    try:
        import streamlit

        result["machine"]["streamlit"] = streamlit.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        folder = Path(tmp) / "checkpoints"
        folder.mkdir()
        log_path = Path(tmp) / "server.log"
        try:
            log("starting streamlit")
            with app_server(folder, log_path) as app, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                result["machine"]["chromium"] = browser.version
                try:
                    context = browser.new_context(viewport={"width": 1400, "height": 1500})
                    page = context.new_page()
                    page.set_default_timeout(60_000)
                    page.goto(app.url)
                    expect(page.locator("h1", has_text="Data")).to_be_visible(timeout=120_000)
                    result.update(session(page, context, app.proc.pid, args, folder))
                finally:
                    browser.close()
        except BaseException:
            if log_path.exists():
                log("server log (last lines):\n" + "\n".join(log_path.read_text().splitlines()[-30:]))
            raise
    result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.monotonic() - t_begin, 1)
    return result


def session(page: Any, context: Any, pid: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Everything that happens in the one browser session; the measured figures."""
    from playwright.sync_api import expect

    out: dict[str, Any] = {}
    cdp = context.new_cdp_session(page)

    # Visit every page once, so first-time imports and caches are not counted below.
    log("warming up: every page once")
    for label, content in PAGES:
        switch(page, label, "h1")  # no model yet: Attention and Generation show only a hint

    wait_idle(page)
    rss_before = server_rss_mb(pid)
    log(f"server RSS before training: {rss_before} MB")
    caption = page.locator(f"{MAIN} [data-testid=\"stCaptionContainer\"]", has_text="parameters").first
    out["settings"] = {"model": caption.inner_text().strip()}
    set_number(page, "Iterations", ITERATIONS)
    wait_idle(page)
    box = page.get_by_label("Run name (the checkpoint's file name)", exact=True)
    box.fill(RUN_NAME)
    box.press("Enter")
    expect(page.get_by_text(f"{RUN_NAME}.safetensors").first).to_be_visible(timeout=120_000)
    wait_idle(page)
    out["settings"]["train"] = {label: page.get_by_label(label, exact=True).input_value()
                                for label in ("Iterations", "Batch size", "Evaluate every", "Evaluation batches")}  # fmt: skip
    eval_every = int(out["settings"]["train"]["Evaluate every"])

    button = page.locator(".st-key-train_start button:visible")
    expect(button).to_be_enabled()
    button.click()
    t_train = time.monotonic()
    cpu_train = cpu_seconds(pid)
    expect(page.get_by_text(STEP).first).to_be_visible(timeout=60_000)
    sampler = RssSampler(pid, args.sample_every, t_train)
    sampler.start()
    log(f"training started; waiting for the first evaluation (step {eval_every})")
    deadline = time.monotonic() + 300
    while progress(page)[0] <= eval_every and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    wait_idle(page)

    if args.oc_windows:
        log(f"open against closed: {args.oc_windows} x {args.oc_seconds:.0f} s each side")
        out["open_vs_closed"] = open_closed(page, folder / f"{RUN_NAME}.metrics.jsonl", args.oc_windows, args.oc_seconds)
        log(f"  open/closed: {out['open_vs_closed']['open_over_closed']}")
        if args.open_closed_only:
            sampler.halt()
            switch(page, *PAGES[-1])
            wait_idle(page)
            page.locator(".st-key-train_stop button").click()
            expect(page.get_by_text(re.compile(rf"{RUN_NAME}: stopped")).first).to_be_visible(timeout=120_000)
            return out

    try:
        # 1. Page switches while the run trains.
        log(f"page switches while training: {args.rounds} round(s)")
        step0, t0 = progress(page)[0], time.monotonic()
        switching = switch_rounds(page, args.rounds, args.pause)
        step1, t1 = progress(page)[0], time.monotonic()
        switching["steps_per_s_meanwhile"] = round((step1 - step0) / (t1 - t0), 2)

        # 2. Live refresh on the Training page (it is the last page of a round).
        log(f"live refresh: sampling for {args.refresh_seconds:.0f} s")
        page.evaluate(LIVE_SAMPLER_JS)
        page.wait_for_timeout(1000)
        page.evaluate("() => window.__live.take()")  # drop the first second
        step0, t0 = progress(page)[0], time.monotonic()
        page.wait_for_timeout(int(args.refresh_seconds * 1000))
        live = live_window(page)
        live["steps_per_s"] = round((live["step"] - step0) / (time.monotonic() - t0), 2)
        log(f"  {live['progress_text_updates_per_s']} redraws/s, {live['step_updates_per_s']} step updates/s, "
            f"{live['chart_updates_per_s']} chart updates/s, {live['steps_per_s']} training steps/s")

        # 3. Memory with the Training page open for --minutes.
        log(f"memory: {args.minutes} min with the Training page open, a sample every {args.sample_every:.0f} s")
        series: list[dict[str, Any]] = []
        t_mem, cpu_mem = time.monotonic(), cpu_seconds(pid)
        page.evaluate("() => window.__live.take()")
        end = t_mem + args.minutes * 60
        while True:
            now = time.monotonic()
            row: dict[str, Any] = {"t_min": round((now - t_mem) / 60, 2), "rss_mb": server_rss_mb(pid),
                                   "load1": round(os.getloadavg()[0], 2)}  # fmt: skip
            if series:
                w = live_window(page)
                row.update(step=w["step"], redraws_per_s=w["progress_text_updates_per_s"],
                           chart_updates_per_s=w["chart_updates_per_s"],
                           step_updates_per_s=w["step_updates_per_s"], stale_fraction=w["stale_fraction"])  # fmt: skip
            else:
                row["step"] = progress(page)[0]
            row.update(browser_memory(cdp))
            series.append(row)
            log(f"  {row['t_min']:5.2f} min  RSS {row['rss_mb']} MB  step {row['step']}  "
                f"redraws {row.get('redraws_per_s', '-')}/s  chart {row.get('chart_updates_per_s', '-')}/s  JS heap {row['js_heap_mb']} MB  load {row['load1']}")  # fmt: skip
            if now >= end:
                break
            page.wait_for_timeout(int(min(args.sample_every, end - now + 0.05) * 1000))
        span_min = (time.monotonic() - t_mem) / 60
        half = [r for r in series if r["t_min"] >= series[-1]["t_min"] / 2]
        rss = [r["rss_mb"] for r in series]
        later = series[1:]  # the rows with a refresh window behind them
        memory = {
            "rss_mb": {
                "before_training": rss_before,
                "training_start": sampler.samples[0]["rss_mb"] if sampler.samples else None,
                "start": rss[0],
                "end": rss[-1],
                "max": max(rss),
                "slope_second_half_mb_per_min": slope_per_min([(r["t_min"], r["rss_mb"]) for r in half]),
                "slope_whole_mb_per_min": slope_per_min([(r["t_min"], r["rss_mb"]) for r in series]),
            },
            "browser": {
                "js_heap_mb_start": series[0]["js_heap_mb"],
                "js_heap_mb_end": series[-1]["js_heap_mb"],
                "js_heap_mb_max": max(r["js_heap_mb"] for r in series),
                "js_heap_slope_second_half_mb_per_min": slope_per_min([(r["t_min"], r["js_heap_mb"]) for r in half]),
                "dom_nodes_start": series[0]["dom_nodes"],
                "dom_nodes_end": series[-1]["dom_nodes"],
            },
            **{
                key: {
                    "first_interval": later[0][key] if later else None,
                    "last_interval": later[-1][key] if later else None,
                    "min_interval": min(r[key] for r in later) if later else None,
                }
                for key in ("redraws_per_s", "chart_updates_per_s")
            },
            "steps": {"start": series[0]["step"], "end": series[-1]["step"],
                      "per_s": round((series[-1]["step"] - series[0]["step"]) / (span_min * 60), 2)},  # fmt: skip
            "server_cpu_share": round((cpu_seconds(pid) - cpu_mem) / (span_min * 60), 3),
            "series": series,
        }
    finally:
        sampler.halt()
        log("stopping the run")
        stop_button = page.locator(".st-key-train_stop button")
        try:
            if stop_button.count() == 0:
                switch(page, "Training", PAGES[-1][1])
            wait_idle(page)
            stop_button.click()
            expect(page.get_by_text(re.compile(rf"{RUN_NAME}: stopped")).first).to_be_visible(timeout=120_000)
        except Exception as e:  # the server is stopped afterwards anyway, which ends the run
            log(f"could not stop the run from the page: {e}")
    out["training"] = {
        "steps_at_stop": progress(page)[0],
        "minutes_trained": round((time.monotonic() - t_train) / 60, 2),
        "server_cpu_seconds": round(cpu_seconds(pid) - cpu_train, 1),
        "rss_timeline_from_start": sampler.samples,
    }
    wait_idle(page)
    out["page_switch_while_training"] = switching
    out["live_refresh"] = live
    out["memory"] = memory

    # 4. The same page switches with nothing training.
    log(f"page switches with no training: {args.rounds} round(s)")
    idle = switch_rounds(page, args.rounds, args.pause)
    out["page_switch_idle"] = idle
    memory["rss_mb"]["after_stop_and_idle_switches"] = server_rss_mb(pid)

    def ratio(key: str) -> float | None:
        a, b = switching["overall"][key], idle["overall"][key]
        return round(a / b, 2) if a and b else None

    out["page_switch_training_over_idle"] = {k: ratio(k) for k in ("title_median_s", "content_median_s", "settled_median_s")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the memory phase")
    ap.add_argument("--rounds", type=int, default=3, help="passes through every page, while training and idle")
    ap.add_argument("--refresh-seconds", type=float, default=30.0, help="length of the live refresh sampling")
    ap.add_argument("--sample-every", type=float, default=30.0, help="seconds between memory samples")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between two page switches")
    ap.add_argument("--quick", action="store_true", help="1 minute, 1 round: checks that it runs")
    ap.add_argument("--oc-windows", type=int, default=3, help="open/closed windows of each side (0: none)")
    ap.add_argument("--oc-seconds", type=float, default=15.0, help="length of each open/closed window")
    ap.add_argument("--open-closed-only", action="store_true", help="stop after the open/closed windows")
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.rounds, args.refresh_seconds, args.sample_every = 1.0, 1, 10.0, 15.0
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        emit({"skipped": "the playwright Python package is not installed (pip install playwright)"}, indent=None)
        return
    if not CHROMIUM.exists():
        emit({"skipped": f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"}, indent=None)
        return
    emit(run(args), indent=2)


if __name__ == "__main__":
    main()
