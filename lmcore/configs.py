"""Building the config dataclasses (model, training) from plain dicts, such as JSON read from a file."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from lmcore.errors import ConfigError

C = TypeVar("C")


def config_from_dict(cls: type[C], d: Any, what: str, unknown: str) -> C:
    """``cls(**d)`` for a config dataclass; ConfigError when ``d`` is not a dict or names keys ``cls`` lacks.

    ``what`` names the config in the first message ("a model config must be a
    JSON object"); ``unknown`` is the second message, formatted with the
    unknown keys and the known ones, each sorted and comma-separated.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(unknown.format(", ".join(extra), ", ".join(sorted(known))))
    return cls(**d)
