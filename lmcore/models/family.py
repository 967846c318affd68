"""What the project knows about one architecture family, declared beside its model.

Each model file declares one ``Family`` and sets it as its class's ``family``:
its presets (with the names and notes the app shows), its sizes for the app's
size presets, the config fields a person sets (declared on ModelConfig; the
family names them, with its own label or limits where they differ), which
attention views apply, the parts of its block diagram and its rule of
thumb for the activations training keeps. Pages, figures and estimates read
these instead of branching on the architecture's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmcore.models.config import ModelConfig
from lmcore.settings import Declared, declared, on_page

# The app's size presets, smallest first, with what each means; every family gives
# its overrides for each. "tiny" trains in seconds on a laptop CPU, "small" is
# nanoGPT's CPU baby GPT (about 0.8M parameters, minutes), "GPU" is nanoGPT's
# Shakespeare-char model (about 10M parameters, wants a GPU).
SIZES = {
    "tiny": "CPU, trains in seconds: for trying things out",
    "small": "CPU, a few minutes: nanoGPT's 'baby GPT' size",
    "GPU": "about 10M parameters: wants a GPU",
}


@dataclass(frozen=True)
class Preset:
    """A named starting point: the ModelConfig fields it sets, its name in the app and a note on it.

    Presets are starting points, not code paths. Sizes a preset leaves alone are
    ModelConfig's defaults, nanoGPT's CPU "baby GPT" (4 layers, 4 heads, 128 wide, block 64).
    """

    label: str
    note: str
    values: dict[str, Any]


@dataclass(frozen=True)
class Field:
    """A config field a person sets on the model page: a declared ModelConfig field a family draws.

    Its kind, bounds, label, help and widget are the field's declaration's
    (``lmcore.models.config``, ``lmcore.settings``); a family gives only where
    its page differs: ``label``, ``help``, ``limits`` (the widget's bounds) and
    ``choices`` (those the page offers). ``by_preset``: the preset decides it,
    so switching presets within a family resets it. After construction every
    attribute holds the value the page uses; ``declared`` is the declaration
    the page's widget and the address's rule are drawn from, and ``kind`` is
    ``int``, ``float``, ``fraction`` (a slider), ``choice`` or ``bool``.
    """

    name: str
    label: str = ""
    help: str = ""
    limits: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    by_preset: bool = False
    kind: str = field(init=False, default="")
    step: float = field(init=False, default=1)
    declared: Declared = field(init=False, repr=False, compare=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        d = on_page(declared(ModelConfig)[self.name], label=self.label, help=self.help, page=self.limits,
                    choices=self.choices)  # fmt: skip
        s = d.setting
        kind = "fraction" if s.widget == "slider" else d.kind
        for name, value in (("declared", d), ("label", s.label), ("help", s.help), ("limits", d.bounds),
                            ("choices", s.choices), ("kind", kind), ("step", s.step or 1)):  # fmt: skip
            object.__setattr__(self, name, value)


# Fields most families share (each as its declaration says).
N_LAYER = Field("n_layer")
N_EMBD = Field("n_embd")
BLOCK_SIZE = Field("block_size")
DROPOUT = Field("dropout")
TIE_WEIGHTS = Field("tie_weights")


@dataclass(frozen=True)
class Diagram:
    """The parts of a family's block diagram (``lmcore.viz.model_diagram`` draws them).

    embed: (node id, label) of the input layer; steps: (node id, label) of
    steps drawn once after it; block: (node id, label) of each step of the
    repeated block, in order ("+" marks a residual sum);
    residuals: (from, to) node ids of the skip connections ("in" is the block's
    input); final_norm: the norm before the head ("" for none); head: whether
    an output head follows.
    """

    embed: tuple[str, str]
    steps: tuple[tuple[str, str], ...] = ()
    block: tuple[tuple[str, str], ...] = ()
    residuals: tuple[tuple[str, str], ...] = ()
    final_norm: str = ""
    head: bool = True


def embedding_node(c: ModelConfig, extra: str = "") -> tuple[str, str]:
    """The token-embedding node of a diagram: V -> D."""
    return ("embed", f"token embedding{extra}\n{c.vocab_size} → {c.n_embd}")


def layers_by_width(c: ModelConfig) -> str:
    """The shape part of a run name: layers x width ("4x128")."""
    return f"{c.n_layer}x{c.n_embd}"


@dataclass(frozen=True)
class Family:
    """Everything the project knows about one architecture family.

    - presets: name -> Preset; sizes: size name (``SIZES``) -> field overrides;
    - fields: the config fields the model page shows, in order;
    - diagram: config -> Diagram;
    - activations: (config, batch size) -> values kept per layer for the
      backward pass; None when there are no layers to count;
    - attention: the maps the Attention page shows ("attention", "implicit
      attention") or None; attention_unit: what one map belongs to;
      attention_note: what the maps mean, shown beside them, when the family has more to say;
    - run_shape: config -> the shape part of a run name;
    - hf_names: the transformers families that can hold it (``lmcore.hf``);
    - training_note: how its training differs from gradient steps, if it does;
    - params_formula: config -> a LaTeX line on where its parameters go;
      params_note: a caption under its parameter count.
    """

    presets: dict[str, Preset]
    sizes: dict[str, dict[str, Any]]
    fields: tuple[Field, ...]
    diagram: Callable[[ModelConfig], Diagram]
    activations: Callable[[ModelConfig, int], int] | None = None
    attention: str | None = None
    attention_unit: str = "head"
    attention_note: str = ""
    run_shape: Callable[[ModelConfig], str] = layers_by_width
    hf_names: tuple[str, ...] = ()
    training_note: str = ""
    params_formula: Callable[[ModelConfig], str] | None = None
    params_note: str = ""
