"""Each setting declared once: a config field's type, bounds, help, flag, address key and widget.

A config dataclass (``TrainConfig``, ``ModelConfig``) declares each field with
``setting(default, help, ...)``; the declaration travels in the field's
metadata and everything else reads it from there: ``check()`` (the type and
bounds part of each ``validate()``), the command line's flags (``add_flags``,
``flag_values``), the page address (``ui.urlstate``) and the page's widgets
(``ui.settings``). A new setting is one line in its dataclass. A setting that
is a function's argument rather than a config's field (``generate``'s
``max_new_tokens``) is declared the same way with ``loose()``.

The field's annotation gives its kind (``int``, ``float``, ``bool``, ``str``,
each ``| None`` when it may be unset); a field with ``choices`` is a choice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmcore.errors import ConfigError

_KEY = "lmcore.setting"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "not given" (page_default: the config's default; off: no widget value means None)


@dataclass(frozen=True)
class Setting:
    """What one config field means to a person, and where it shows up.

    - help: one line, the CLI's help and the widget's tooltip; what: how a
      message names it ("the learning rate"; default the field's name).
    - low, high: the bounds ``check()`` enforces (None: none); low_open,
      high_open: the bound itself is refused (``lr`` must be more than 0).
      choices: the values it may take; strict=False lets ``validate()`` accept
      more (``device`` takes ``cuda:N`` too).
    - flag: the CLI flag ("" = ``--`` and the name with dashes; None = none);
      metavar: its argument's name in ``--help``.
    - key: the page-address key ("" = the field's name; None = not in the
      address); the page's widget key is ``keep.<page>.<key>``.
    - label, widget (``number``, ``slider``, ``select``, ``checkbox``): how a page draws
      it ("" = the page does not draw it); page: the widget's bounds when
      narrower than low/high, which the address then holds to; page_kind:
      "int" when the page takes whole numbers of a float field; step, fmt: the
      number widget's; page_default: the page's first value when it is not the
      config's; off: the widget's value that stands for None (0 = none).
    """

    help: str = ""
    what: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    strict: bool = True
    flag: str | None = ""
    metavar: str | None = None
    key: str | None = ""
    label: str = ""
    widget: str = ""
    page: tuple[float, float] | None = None
    page_kind: str = ""
    step: float | None = None
    fmt: str | None = None
    page_default: Any = UNSET
    off: Any = UNSET


def setting(default: Any, help: str = "", **how: Any) -> Any:
    """A dataclass field with default ``default`` that carries its ``Setting(help, **how)``."""
    return dataclasses.field(default=default, metadata={_KEY: Setting(help=help, **how)})


@dataclass(frozen=True)
class Declared:
    """A declared field, resolved: its name, kind, default and ``Setting``."""

    name: str
    kind: str  # int | float | bool | str | choice
    optional: bool  # None is a value (unset)
    default: Any
    setting: Setting

    @property
    def flag(self) -> str | None:
        f = self.setting.flag
        return None if f is None else (f or "--" + self.name.replace("_", "-"))

    @property
    def key(self) -> str | None:
        k = self.setting.key
        return None if k is None else (k or self.name)

    @property
    def what(self) -> str:
        return self.setting.what or self.name

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """The widget's (and the address's) bounds: ``page`` if given, else the checked ones."""
        s = self.setting
        return s.page if s.page is not None else (s.low, s.high)

    @property
    def page_kind(self) -> str:
        """The kind the page and the address hold it as ("int" for whole seconds of a float field)."""
        return self.setting.page_kind or self.kind

    @property
    def page_default(self) -> Any:
        return self.default if self.setting.page_default is UNSET else self.setting.page_default

    def to_widget(self, value: Any) -> Any:
        """The widget's value for config value ``value``."""
        return self.setting.off if value is None and self.setting.off is not UNSET else value

    def from_widget(self, value: Any) -> Any:
        """The config value for widget value ``value``."""
        if self.setting.off is not UNSET and value == self.setting.off:
            return None
        if value is None:
            return None
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return value


def loose(name: str, kind: type, default: Any, help: str = "", **how: Any) -> Declared:
    """A declared setting that is no config's field (a function's argument), e.g. ``loose("n", int, 5, ...)``."""
    s = Setting(help=help, **how)
    return Declared(name, "choice" if s.choices else kind.__name__, False, default, s)


def on_page(d: Declared, **how: Any) -> Declared:
    """``d`` as one page draws it: ``how`` (Setting fields, e.g. a family's ``label``, ``page`` or ``choices``)
    replaces the declared ones; empty values (None, "", ()) leave them as declared."""
    given = {k: v for k, v in how.items() if v is not None and v != "" and v != ()}
    return dataclasses.replace(d, setting=dataclasses.replace(d.setting, **given)) if given else d


_CACHE: dict[type, dict[str, Declared]] = {}


def declared(cls: type) -> dict[str, Declared]:
    """Every declared field of config dataclass ``cls``, in order."""
    if cls not in _CACHE:
        out = {}
        for f in dataclasses.fields(cls):
            s = f.metadata.get(_KEY)
            if s is None:
                continue
            text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            base = text.replace(" ", "").replace("|None", "")
            kind = "choice" if s.choices else base
            out[f.name] = Declared(f.name, kind, "None" in text, f.default, s)
        _CACHE[cls] = out
    return _CACHE[cls]


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def check(cfg: Any) -> None:
    """Check each declared field of ``cfg`` against its kind, bounds and choices; ConfigError naming it."""
    for d in declared(type(cfg)).values():
        check_value(d, getattr(cfg, d.name))


def check_value(d: Declared, value: Any) -> None:
    """Check one value of declared setting ``d`` against its kind and bounds; ConfigError naming it."""
    if value is None and d.optional:
        return
    check_kind(d, value)
    _check_bounds(d, value)


def check_kind(d: Declared, value: Any) -> None:
    """ConfigError unless ``value`` is of the field's kind (and one of its choices)."""
    s, name = d.setting, d.name
    is_bool = isinstance(value, bool)
    if d.kind == "int" and (not isinstance(value, int) or is_bool):
        raise ConfigError(f"{name} must be a whole number, got {value!r}", field=name)
    if d.kind == "float" and (not isinstance(value, (int, float)) or is_bool or not math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}", field=name)
    if d.kind == "bool" and not is_bool:
        raise ConfigError(f"{name} must be true or false, got {value!r}", field=name)
    if (d.kind == "str" or (d.kind == "choice" and not s.strict)) and not isinstance(value, str):
        raise ConfigError(f"{name} must be text, got {value!r}", field=name)
    if d.kind == "choice" and s.strict and value not in s.choices:
        raise ConfigError(f"unknown {d.what} {value!r}; choose one of {', '.join(map(str, s.choices))}", field=name)


def _check_bounds(d: Declared, value: Any) -> None:
    s, name = d.setting, d.name
    if d.kind not in ("int", "float"):
        return
    lo, hi = s.low, s.high
    below = lo is not None and (value <= lo if s.low_open else value < lo)
    above = hi is not None and (value >= hi if s.high_open else value > hi)
    if below or above:
        raise ConfigError(f"{d.what} must be {_range(s)}, got {value!r}", field=name)


def _range(s: Setting) -> str:
    lo, hi = s.low, s.high
    if lo is not None and hi is not None:
        if s.low_open or s.high_open:
            return f"in {'(' if s.low_open else '['}{_number(lo)}, {_number(hi)}{')' if s.high_open else ']'}"
        return f"from {_number(lo)} to {_number(hi)}"
    if lo is not None:
        return f"more than {_number(lo)}" if s.low_open else f"at least {_number(lo)}"
    return f"less than {_number(hi)}" if s.high_open else f"at most {_number(hi)}"


# ------------------------------------------------------------------ the command line
def _settings(of: type | dict[str, Declared]) -> dict[str, Declared]:
    return of if isinstance(of, dict) else declared(of)


def add_flags(group: Any, cls: type | dict[str, Declared], types: dict[str, Any], skip: tuple[str, ...] = (),
              bare: bool = False) -> None:  # fmt: skip
    """Add a flag to argparse ``group`` for each declared field of ``cls`` (or setting of a dict) that has one.

    ``types`` maps a kind to a function ``(low, high) -> argparse type`` for
    ``int`` and ``float``; a choice gets its choices, a bool an on/off pair
    (``--flag`` and ``--no-flag``). An unset flag is None: the config's default.
    ``bare``: no help texts (a second command's copy of the flags).
    """
    import argparse

    for d in _settings(cls).values():
        if d.flag is None or d.name in skip:
            continue
        s = d.setting
        extra: dict[str, Any] = {} if bare else {"help": s.help or None}
        if s.metavar:
            extra["metavar"] = s.metavar
        if d.kind == "bool":
            group.add_argument(d.flag, dest=d.name, action=argparse.BooleanOptionalAction, **extra)
        elif d.kind == "choice":
            group.add_argument(d.flag, dest=d.name, choices=list(s.choices), **extra)
        else:
            group.add_argument(d.flag, dest=d.name, type=types[d.kind](s.low, s.high), **extra)


def flag_values(args: Any, cls: type | dict[str, Declared]) -> dict[str, Any]:
    """The fields of ``cls`` (or settings of a dict) whose flags were given (argparse namespace ``args``)."""
    out = {}
    for d in _settings(cls).values():
        if d.flag is not None and getattr(args, d.name, None) is not None:
            out[d.name] = getattr(args, d.name)
    return out
