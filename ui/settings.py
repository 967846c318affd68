"""A config field's page widget, drawn from its declaration (``lmcore.settings``).

``widget()`` draws a number box, a slider, a select box or a checkbox with the
field's label, the page's bounds, step, format and help, keeps its value across
page switches (``ui.state.keep_default``) and returns the config's value (None
for an unset optional field). A training widget's key is ``keep.train.<address
key>``, a sampling widget's ``keep.<page>.<field name>``, so the page address
(``ui.urlstate``) finds it by the same declaration.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from lmcore.sample import SAMPLING_SETTINGS, SamplingConfig
from lmcore.settings import UNSET, Declared, declared
from lmcore.train import TrainConfig
from ui import state as S


def train_key(name: str) -> str:
    """The Training page's widget key of TrainConfig field ``name`` ("keep.train.iters")."""
    return S.KEEP + "train." + declared(TrainConfig)[name].key


def widget(where: Any, d: Declared, key: str, choices: list | None = None, **extra: Any) -> Any:
    """Draw field ``d``'s widget in ``where`` (``st``, a column or a container); its value for the config.

    ``choices``: the ones this machine offers, when fewer than the declared; ``extra``: more widget arguments
    (``label`` and ``help`` replace the declared ones; ``first``: the first value, instead of the page's default).
    """
    s = d.setting
    S.keep_default(key, d.to_widget(extra.pop("first", d.page_default)))
    common = {"key": key, "help": s.help or None, **extra}
    label = common.pop("label", s.label)
    if s.widget == "select":
        return d.from_widget(where.selectbox(label, list(choices or s.choices), **common))
    if s.widget == "checkbox":
        return bool(where.checkbox(label, **common))
    assert s.widget in ("number", "slider"), f"{d.name} declares no widget"
    lo, hi = d.bounds
    if d.page_kind == "int":
        lo, hi, step = int(lo), int(hi), int(s.step or 1)
    else:
        lo, hi, step = float(lo), float(hi), float(s.step or 0.01)
    if d.optional and s.off is UNSET:
        common["value"] = None  # an empty box: unset
    if s.fmt:
        common["format"] = s.fmt
    if s.widget == "slider":
        return d.from_widget(where.slider(label, lo, hi, step=step, **common))
    return d.from_widget(where.number_input(label, lo, hi, step=step, **common))


def train_widget(where: Any, name: str, **extra: Any) -> Any:
    """Draw TrainConfig field ``name``'s widget on the Training page; its value for the config."""
    return widget(where, declared(TrainConfig)[name], train_key(name), **extra)


def train_widgets(where: Any, names: list[str], columns: int = 4) -> None:
    """Draw the widgets of TrainConfig fields ``names`` in rows of ``columns`` in ``where``."""
    cols = where.columns(columns)
    for i, name in enumerate(names):
        train_widget(cols[i % columns], name)


def train_value(name: str) -> Any:
    """TrainConfig field ``name``'s value on the Training page: the widget's, else the page's default."""
    d = declared(TrainConfig)[name]
    key = train_key(name)
    if key in st.session_state:
        value = st.session_state[key]
    else:
        value = st.session_state.get(S.KEPT, {}).get(key, d.to_widget(d.page_default))
    return d.from_widget(value)


def page_config() -> TrainConfig:
    """The TrainConfig the Training page's widgets set (each field the page draws; the rest their defaults)."""
    return TrainConfig(**{n: train_value(n) for n, d in declared(TrainConfig).items() if d.setting.widget})



# ------------------------------------------------------------------ sampling
def sampling_key(name: str, page: str = "generation") -> str:
    """A page's widget key of sampling setting ``name`` ("keep.generation.temperature")."""
    assert name in SAMPLING_SETTINGS, f"{name} is no declared sampling setting"
    return S.KEEP + f"{page}.{name}"


def sampling_widgets(where: Any, page: str = "generation", names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Draw the widgets of sampling settings ``names`` (default: all) side by side in ``where``; their values.

    Returns the config's value of each (None for an unset filter), read back by ``sampling_config``.
    """
    names = tuple(SAMPLING_SETTINGS) if names is None else names
    cols = where.columns(len(names))
    return {n: widget(cols[i], SAMPLING_SETTINGS[n], sampling_key(n, page)) for i, n in enumerate(names)}


def sampling_config(values: dict[str, Any]) -> SamplingConfig:
    """The checked SamplingConfig of ``values`` (from ``sampling_widgets``; settings not there: their defaults)."""
    fields = declared(SamplingConfig)
    return SamplingConfig(**{n: v for n, v in values.items() if n in fields}).validate()
