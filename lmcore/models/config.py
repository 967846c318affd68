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
import math
from dataclasses import dataclass
from typing import Any

from lmcore.errors import ConfigError

# No size field may exceed this: far past any model that fits in memory, and low
# enough that shapes multiplied together stay within 64-bit integers. Whether a
# config fits the machine is ``lmcore.models.estimate.check_fits``'s question.
MAX_FIELD = 1 << 20
MAX_MLP_RATIO = 1024.0


@dataclass
class ModelConfig:
    arch: str = "transformer"  # which model family: a key of lmcore.models.ARCHITECTURES
    preset: str = ""  # the preset this config started from, for display only
    vocab_size: int = 65  # V
    block_size: int = 64  # longest context seen in training (T); the transformer's hard limit
    n_layer: int = 4
    n_embd: int = 128  # D, the residual stream width (the LSTM's hidden size)
    # transformer
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads: None = n_head (MHA), 1 = MQA, else GQA
    dropout: float = 0.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    pos: str = "learned"  # learned | rope
    mlp: str = "gelu"  # gelu | swiglu | relu2 (ReLU squared: c_proj(relu(c_fc(x))^2), as wide as gelu)
    mlp_ratio: float = 4.0  # MLP hidden width / n_embd (SwiGLU uses 2/3 of it, so parameters match)
    bias: bool = True  # biases in linear layers and norms
    tie_weights: bool = True  # the output head shares the token embedding matrix
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5  # epsilon of every LayerNorm / RMSNorm (LLaMA checkpoints often use 1e-6)
    gelu_approximate: str = "none"  # the GELU MLP's form: "none" (exact, erf) or "tanh" (GPT-2's original)
    # RMSNorm on each head's queries and keys before attention (and before RoPE), with
    # a learned gain of size head_dim per projection (checkpoint keys attn.q_norm, attn.k_norm).
    qk_norm: bool = False
    # mamba (Gu & Dao 2023)
    d_state: int = 16  # N, the SSM state size per channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # E: the inner width is E * D
    dt_rank: int | None = None  # rank of the Δ projection; None = ceil(D / 16)
    # mamba2 (Dao & Gu 2024; it reads d_state, d_conv and expand too)
    ssm_head_dim: int = 16  # P, channels per SSM head: the inner width splits into E / P heads
    n_groups: int = 1  # groups of heads that share B and C (like grouped-query attention's key/value heads)
    chunk_size: int = 64  # time steps per chunk of the SSD algorithm: changes the speed, never the result
    # n-gram counting baseline
    ngram_n: int = 3  # n: the next token is predicted from the previous n - 1
    add_k: float = 0.1  # add-k smoothing: k is added to every count

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
        from lmcore.models import PRESETS  # the registry; imported here to avoid a cycle

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
        from lmcore.models import model_class  # the registry; imported here to avoid a cycle

        _check_types(self)
        arch_class = model_class(self.arch)  # ConfigError for an unknown architecture
        _positive(self, "vocab_size", "block_size", "n_layer", "n_embd")
        if self.vocab_size < 2:
            raise ConfigError("vocab_size must be at least 2; build a vocabulary from a corpus first")
        if not 0.0 < self.mlp_ratio <= MAX_MLP_RATIO:
            raise ConfigError(f"mlp_ratio must be more than 0 and at most {MAX_MLP_RATIO:g}, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        arch_class.validate_config(self)
        return self


def _check_types(cfg: ModelConfig) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if value is None and "None" in kind:
            continue
        if kind.startswith("int"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{f.name} must be a whole number, got {value!r}")
            if value > MAX_FIELD:
                raise ConfigError(f"{f.name} must be at most {MAX_FIELD:,}, got {value:,}")
        if kind.startswith("float"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{f.name} must be true or false, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{f.name} must be text, got {value!r}")


def _positive(cfg: ModelConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")

