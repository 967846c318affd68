"""ModelConfig: one dataclass describing every architecture (each family's presets live in its model file).

Every field is annotated so that ``asdict`` -> JSON -> checkpoint metadata
round-trips. Fields that do not apply to an architecture are ignored by it
(the Mamba reads ``d_state`` but not ``n_head``). ``validate()`` raises
``ConfigError`` naming the bad value and how to fix it; architecture-specific
rules live beside each model (``validate_config`` on the model class).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcore.errors import ConfigError
from lmcore.settings import check, check_kind, declared, setting

if TYPE_CHECKING:  # for annotations only: both import this module
    from lmcore.models.base import LanguageModel
    from lmcore.models.family import Family

# No size field may exceed this: far past any model that fits in memory, and low
# enough that shapes multiplied together stay within 64-bit integers. Whether a
# config fits the machine is ``lmcore.models.estimate.check_fits``'s question.
MAX_FIELD = 1 << 20
MAX_MLP_RATIO = 1024.0


# The registry of families, filled by lmcore.models as it loads each model file (those
# import this one, so this one reads them from here): architecture name -> model class,
# preset name -> the ModelConfig fields it sets, its arch included.
ARCHITECTURES: dict[str, Any] = {}
PRESETS: dict[str, dict[str, Any]] = {}


def model_class(arch: str) -> type[LanguageModel]:
    """The class registered for ``arch``; ConfigError listing the known ones."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}", "arch")
    return ARCHITECTURES[arch]


def family_of(arch: str) -> Family:
    """The ``Family`` of architecture ``arch`` (a ModelConfig's ``arch``)."""
    return model_class(arch).family


# The transformer's choices (lmcore.models.transformer reads them from here).
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu", "relu2")
GELU_FORMS = ("none", "tanh")  # torch's F.gelu(approximate=...)


@dataclass
class ModelConfig:
    """Each field is declared once (``lmcore.settings``): its bounds, help, command-line
    flag, page-address key (its name) and the model page's widget come from here;
    ``Family.fields`` says which fields a family's page draws (and where its page differs)."""

    # which model family: a key of lmcore.models.ARCHITECTURES (the CLI's --preset and the address's arch set it)
    arch: str = setting("transformer", flag=None, key=None)
    preset: str = setting("", flag=None, key=None)  # the preset this config started from, for display only
    vocab_size: int = setting(65, flag=None, key=None)  # V: the tokenizer's (validate() asks for at least 2)
    # longest context seen in training (T); the transformer's hard limit
    block_size: int = setting(
        64, "How many tokens the model sees at once during training.", low=1,
        label="Context length", widget="number", page=(2, 4096),
    )  # fmt: skip
    n_layer: int = setting(4, "How many blocks are stacked.", low=1, label="Layers", widget="number", page=(1, 48))
    # D (the LSTM's hidden size)
    n_embd: int = setting(
        128, "The size of each token's vector (for the LSTM, its hidden size).", low=1,
        label="Width", widget="number", page=(8, 4096),
    )  # fmt: skip
    # transformer
    n_head: int = setting(
        4, "Each head learns its own pattern of which earlier tokens to look at.", low=1,
        label="Attention heads", widget="number", page=(1, 64),
    )  # fmt: skip
    # key/value heads: None = n_head (MHA), 1 = MQA, else GQA
    n_kv_head: int | None = setting(
        None, "Equal to the heads (the default): multi-head attention; 1: multi-query; in between: grouped-query.",
        low=1, label="Key/value heads", widget="number", page=(1, 64),
    )  # fmt: skip
    dropout: float = setting(
        0.0, "Randomly zeroes activations while training; helps against overfitting on small data.",
        low=0, high=1, high_open=True, label="Dropout", widget="slider", page=(0.0, 0.5), step=0.05,
    )  # fmt: skip
    norm: str = setting(
        "layernorm", "LayerNorm centres and scales; RMSNorm only scales.", choices=NORMS, what="norm",
        label="Normalisation", widget="select",
    )  # fmt: skip
    pos: str = setting(
        "learned", "Learned position vectors, or rotary embeddings (RoPE) applied inside attention.",
        choices=POSITIONS, what="position encoding", label="Positions", widget="select",
    )  # fmt: skip
    # gelu | swiglu | relu2 (ReLU squared: c_proj(relu(c_fc(x))^2), as wide as gelu)
    mlp: str = setting(
        "gelu", "GELU, the gated SwiGLU, or relu2 (ReLU squared).", choices=MLPS, what="MLP",
        label="MLP", widget="select",
    )  # fmt: skip
    # MLP hidden width / n_embd (SwiGLU uses 2/3 of it, so parameters match)
    mlp_ratio: float = setting(
        4.0, "MLP hidden width / n_embd", low=0, low_open=True, high=MAX_MLP_RATIO, page=(0.1, 64.0)
    )
    bias: bool = setting(True, "Bias terms in linear layers and norms.", label="Biases", widget="checkbox")
    tie_weights: bool = setting(
        True, "Use the token embedding matrix as the output layer too.", label="Tie embedding and output",
        widget="checkbox",
    )  # fmt: skip
    rope_theta: float = setting(10000.0, "RoPE's base period", low=0, low_open=True, page=(1.0, 1e9))
    # epsilon of every LayerNorm / RMSNorm (LLaMA checkpoints often use 1e-6)
    norm_eps: float = setting(
        1e-5, "epsilon of every LayerNorm / RMSNorm", low=0, low_open=True, page=(1e-12, 0.1)
    )
    # the GELU MLP's form: "none" (exact, erf) or "tanh" (GPT-2's original)
    gelu_approximate: str = setting(
        "none", "the GELU's form: none (exact) or tanh (GPT-2's)", choices=GELU_FORMS, what="GELU form"
    )
    # RMSNorm on each head's queries and keys before attention (and before RoPE), with
    # a learned gain of size head_dim per projection (checkpoint keys attn.q_norm, attn.k_norm).
    qk_norm: bool = setting(False, "transformer: RMSNorm on each head's queries and keys", flag="--qk-norm")
    # mamba (Gu & Dao 2023)
    # N, the SSM state size per channel
    d_state: int = setting(
        16, "Mamba: numbers each channel remembers along the sequence.", low=1,
        label="State size (N)", widget="number", page=(1, 256),
    )  # fmt: skip
    # width of the causal depthwise convolution
    d_conv: int = setting(
        4, "Mamba: the short causal convolution before the scan.", low=1,
        label="Convolution width", widget="number", page=(1, 16),
    )  # fmt: skip
    # E: the inner width is E * D
    expand: int = setting(
        2, "Mamba: inner width = E × width.", low=1, label="Expansion (E)", widget="number", page=(1, 8)
    )
    # rank of the Δ projection; None = ceil(D / 16)
    dt_rank: int | None = setting(None, "Mamba: rank of the step-size projection (default width / 16)", low=1,
                                  page=(1, 4096))  # fmt: skip
    # mamba2 (Dao & Gu 2024; it reads d_state, d_conv and expand too)
    # P, channels per SSM head: the inner width splits into E / P heads
    ssm_head_dim: int = setting(
        16, "Mamba-2: channels per head; the inner width is cut into heads of this size, each with its own decay. "
        "Must divide the inner width.", low=1, label="Head size (P)", widget="number", page=(1, 256),
    )  # fmt: skip
    # groups of heads that share B and C (like grouped-query attention's key/value heads)
    n_groups: int = setting(
        1, "Mamba-2: heads in a group share their input (B) and output (C) projections, as grouped-query "
        "attention shares keys and values. Must divide the number of heads.", low=1,
        label="Groups of B and C", widget="number", page=(1, 64),
    )  # fmt: skip
    # time steps per chunk of the SSD algorithm: changes the speed, never the result
    chunk_size: int = setting(
        64, "Mamba-2: time steps computed together as a masked matrix product; the rest is a short recurrence "
        "between chunks. Changes the speed, never the result.", low=1,
        label="Chunk length (SSD)", widget="number", page=(1, 1024),
    )  # fmt: skip
    # n-gram counting baseline
    # n: the next token is predicted from the previous n - 1
    # (the page's limits are the n-gram family's: its largest order)
    ngram_n: int = setting(
        3, "n-gram: the next token is looked up from the previous n - 1 tokens (1 to 5).", low=1,
        label="Order (n)", widget="number",
    )  # fmt: skip
    add_k: float = setting(
        0.1, "n-gram: added to every count, so tokens never seen after a context keep a small chance.",
        low=0, low_open=True, label="Smoothing (k)", widget="number", page=(0.001, 10.0), step=0.05, fmt="%.3f",
    )  # fmt: skip

    # -- derived values (properties, never fields) --
    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_inner(self) -> int:
        return self.expand * self.n_embd

    @property
    def dt_rank_value(self) -> int:
        return self.dt_rank if self.dt_rank is not None else -(-self.n_embd // 16)

    # -- construction --
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset with fields overridden, e.g. ``preset("llama", n_layer=6)``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = {**PRESETS[name], "preset": name}
        values.update({k: v for k, v in overrides.items() if v is not None or k in ("n_kv_head", "dt_rank")})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; unknown keys are rejected with ConfigError."""
        from lmcore.configs import config_from_dict

        return config_from_dict(cls, d, "a model config", "unknown model config field(s) {}; known fields: {}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config is not valid JSON ({e.msg})") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # -- validation --
    def validate(self) -> "ModelConfig":
        """Check every value; raise ConfigError with the fix. Returns self for chaining."""
        _check_types(self)
        arch_class = model_class(self.arch)  # ConfigError for an unknown architecture
        if self.vocab_size < 2:
            raise ConfigError("vocab_size must be at least 2; build a vocabulary from a corpus first", "vocab_size")
        check(self)  # each field's bounds and choices, as declared
        arch_class.validate_config(self)
        return self


def _check_types(cfg: ModelConfig) -> None:
    """Each field's kind, and no whole number past ``MAX_FIELD``, before anything is counted or built."""
    for d in declared(ModelConfig).values():
        value = getattr(cfg, d.name)
        if value is None and d.optional:
            continue
        check_kind(d, value)
        if d.kind == "int" and value > MAX_FIELD:
            raise ConfigError(f"{d.name} must be at most {MAX_FIELD:,}, got {value:,}", d.name)
