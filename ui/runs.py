"""Saved runs on the training page: runs read from their log files, overlaid, compared and followed live.

Every run (started in this app, an earlier server, the command line or
torchrun) leaves ``NAME.metrics.jsonl`` beside its checkpoint; this section
lists them, reads the chosen ones incrementally (``lmcore.runlog.LogFollower``,
kept per session), redraws while one of them is still being written, marks
each run's best validation point, says when a run memorises, and shows the
comparison table with a CSV download. All the reading and figures come from
lmcore; this module only lays them out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lmcore import runlog
from lmcore.viz import RUN_COLORS, loss_figure, metric_figure
from ui import state as S
from ui.figure import show_figure
from ui.render import md

LIVE_S = 120.0  # a log written to this recently counts as a run still training
REFRESH_S = 1.0

COLUMNS = {
    "run": "run",
    "arch": "architecture",
    "params": "parameters",
    "steps": "steps",
    "tokens": "tokens",
    "epochs": "passes over the data",
    "wall_time_s": "wall time (s)",
    "best_val_loss": "best val loss",
    "best_step": "best at step",
    "final_val_loss": "final val loss",
    "best_val_bpb": "best val bits/byte",
    "val_acc": "val accuracy",
    "tokens_per_s": "tokens / s overall",  # tokens over wall time, evaluations included (the live view: steps only)
}


def _follower(path: Path) -> runlog.LogFollower:
    """The run's log reader, polled: it reads only what was appended since the last rerun."""
    followers = st.session_state.setdefault(S.RUN_FOLLOWERS, {})
    follower = followers.get(str(path))
    if follower is None:
        follower = followers[str(path)] = runlog.LogFollower(path)
    follower.poll()
    return follower


def _records(path: Path) -> list[dict]:
    return _follower(path).records


def _is_live(run: dict) -> bool:
    return run["log"] is not None and not run.get("error") and runlog.is_running(run["log"], LIVE_S)


def _view(directory: str, names: list[str]) -> None:
    """Chart, notes and table of the chosen runs; a fragment that reruns while one is being written."""
    runs = {r["name"]: r for r in runlog.list_runs(directory)}
    shown = [runs[n] for n in names if n in runs]
    if not shown:
        st.caption("The chosen runs are no longer in the folder.")
        return
    series, rows, bests = {}, [], []
    for run in shown:
        follower = _follower(run["log"]) if run["log"] is not None else None
        records = follower.records if follower is not None else []
        if follower is not None and follower.problem:
            st.caption(f"{md(run['name'])}: {md(follower.problem)}.")
        series[run["name"]] = runlog.series(records)
        rows.append(runlog.run_summary(run["checkpoint"], records))
        bests.append(runlog.best_eval(records))
        note = runlog.memorising(records)
        if note is not None:
            st.warning(
                f"**{md(run['name'])}** is memorising: validation loss rose from {note['best_val']:.3f} "
                f"(step {note['best_step']:,}) to {note['last_val']:.3f} (step {note['last_step']:,}) while "
                f"training loss fell from {note['train_at_best']:.3f} to {note['last_train']:.3f}. "
                "The best weights are the ones at the best step: use more text, a smaller model, dropout, "
                "or early stopping.",
                icon=":material/warning:",
            )
    for run in shown:
        if _is_live(run):
            records = _records(run["log"])
            found = runlog.evals(records)
            last_eval = f", last evaluation at step {found[-1]['step']:,}" if found else ""
            step = f"step {records[-1]['step']:,}" if records else "starting"
            st.caption(f"Following {md(run['name'])} as its log grows: {step}{last_eval}.")
    fig = loss_figure(series)
    for n, (name, best) in enumerate(zip(series, bests)):
        if best is not None:
            fig.add_trace(
                go.Scatter(
                    x=[best["step"]], y=[best["val_loss"]], mode="markers", name=f"{name}: best val",
                    marker=dict(symbol="star", size=15, color=RUN_COLORS[n % len(RUN_COLORS)], line=dict(width=1)),
                    legendgroup=name,
                    hovertemplate=f"best validation loss %{{y:.4f}}<br>at step %{{x:,}}<extra>{name}</extra>",
                )
            )  # fmt: skip
    show_figure(fig, key="runs_loss_chart")
    c = st.columns(2)
    with c[0]:
        st.caption("Validation accuracy")
        show_figure(metric_figure(series, "val_acc", "next-token accuracy"), key="runs_acc_chart")
    with c[1]:
        st.caption("Validation perplexity")
        show_figure(metric_figure(series, "val_ppl", "perplexity", log_y=True), key="runs_ppl_chart")
    table = pd.DataFrame(rows)[list(COLUMNS)].rename(columns=COLUMNS)
    st.dataframe(table, hide_index=True)
    st.download_button(
        "Download the table (CSV)",
        table.to_csv(index=False).encode("utf-8"),
        file_name="runs.csv",
        mime="text/csv",
        key="runs_csv",
    )


SAVED_BOX = "runs_saved_box"  # the expander's key; its open state is kept in S.KEPT


def _keep_open() -> None:
    st.session_state.setdefault(S.KEPT, {})[SAVED_BOX] = bool(st.session_state.get(SAVED_BOX))


def saved_runs_section(directory: Path) -> None:
    """The "Saved runs" expander: every run with a log or checkpoint in ``directory``."""
    listed = runlog.list_runs(directory)
    runs = [r for r in listed if not r.get("error")]
    bad = [r for r in listed if r.get("error")]
    # The pick and the open box are kept by hand: Streamlit drops a widget's state on a page switch.
    kept = st.session_state.setdefault(S.KEPT, {})
    if S.SAVED_RUNS_PICK not in st.session_state and S.SAVED_RUNS_PICK in kept:
        st.session_state[S.SAVED_RUNS_PICK] = kept[S.SAVED_RUNS_PICK]
    opened = kept.get(SAVED_BOX) or bool(st.session_state.get(S.SAVED_RUNS_PICK))
    # Keyed, so an expander the user opened stays open when a rerun moves it (first-visit notes gone).
    with st.expander("Saved runs (from files, any process)", expanded=bool(opened), key=SAVED_BOX,
                     on_change=_keep_open):  # fmt: skip
        if bad:
            st.caption("Not shown: " + "; ".join(f"{md(r['name'])} ({r['error']})" for r in bad[:10])
                       + (f" and {len(bad) - 10} more" if len(bad) > 10 else "") + ".")  # fmt: skip
        if not runs:
            st.caption("No saved runs yet. Runs from this app, the command line and torchrun appear here.")
            return
        names = [r["name"] for r in runs]
        st.session_state[S.SAVED_RUNS_PICK] = [n for n in st.session_state.get(S.SAVED_RUNS_PICK, []) if n in names]
        kept[S.SAVED_RUNS_PICK] = st.session_state[S.SAVED_RUNS_PICK]
        picked = st.multiselect(
            "Runs to compare",
            names,
            key=S.SAVED_RUNS_PICK,
            format_func=lambda n: n + ("  (training)" if _is_live(next(r for r in runs if r["name"] == n)) else ""),
            help="Runs read from their logs (NAME.metrics.jsonl); one still being written is followed live.",
        )
        if not picked:
            st.caption("Choose runs to overlay their curves and compare them side by side.")
            return
        live = any(_is_live(r) for r in runs if r["name"] in picked)
        st.fragment(_view, run_every=REFRESH_S if live else None)(str(directory), list(picked))
