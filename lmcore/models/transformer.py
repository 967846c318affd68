"""One configurable decoder-only transformer: GPT-2 style, LLaMA style, and mixes.

Shapes: B batch, T time, D width (n_embd), V vocabulary, L layers, H query heads,
KV key/value heads, hd head size (D / H), S cache length (block_size).

What the config chooses (see ``ModelConfig``):
- positions: learned absolute embeddings (``wpe``, GPT-2) or rotary embeddings
  applied to queries and keys (RoPE, Su et al. 2021, LLaMA);
- norm: LayerNorm (GPT-2) or RMSNorm (LLaMA), pre-norm in every block;
- MLP: GELU (GPT-2), SwiGLU (LLaMA; hidden width 2/3 of ``mlp_ratio * D``
  so that both hold about the same number of weights) or ReLU squared
  (``relu2``, So et al. 2021, as in the modded-nanoGPT speedruns; GELU's width);
- QK-norm (``qk_norm``): RMSNorm over each head's queries and keys before
  RoPE and the dot product, which bounds the attention logits (Dehghani et al.
  2023; OLMo 2, Qwen3);
- attention: multi-head (``n_kv_head`` = H), grouped-query (1 < KV < H) or
  multi-query (KV = 1) through ``n_kv_head``; query head h reads key/value head
  h // (H / KV);
- dropout, biases on or off, and weight tying (head and embedding are one
  Parameter).

Parameter names follow GPT-2 checkpoints (``wte``, ``wpe``, ``h.N.ln_1``,
``h.N.attn.c_attn``, ``h.N.attn.c_proj``, ``h.N.ln_2``, ``h.N.mlp.c_fc``,
``h.N.mlp.c_proj``, ``ln_f``, ``lm_head``; with QK-norm ``h.N.attn.q_norm`` and
``h.N.attn.k_norm``): they are the checkpoint keys, so
renaming one breaks saved files. ``c_attn`` packs the projections as rows
[queries (H hd) | keys (KV hd) | values (KV hd)]. Weights are ``nn.Linear``
(out, in), not GPT-2's transposed Conv1D.

Three paths through the same weights:
- ``forward``: training and scoring, ``scaled_dot_product_attention`` with
  ``is_causal=True``;
- ``step``: generation with a key/value cache; accepts one token or a whole
  prompt (prefill) per call;
- ``reference_forward``: explicit softmax(Q K^T / sqrt(hd)) attention, slow and
  obviously right; the tests hold the fast paths to it.

Hook points (``lmcore.hooks``): ``embed``, per block ``hook_resid_pre``,
``attn.hook_pattern`` (the softmax weights, computed only when a hook asks for
them), ``attn.hook_z``, ``hook_attn_out``, ``hook_resid_mid``,
``hook_mlp_out``, ``hook_resid_post``, and ``final.hook_normalized``. The
residual points fire in ``step`` too. ``attention_maps`` (the base class's)
reads the pattern points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmcore.errors import ConfigError
from lmcore.hooks import HookPoint
from lmcore.models.base import LanguageModel
from lmcore.models.config import GELU_FORMS, MLPS, NORMS, POSITIONS, ModelConfig  # noqa: F401  (re-exported)
from lmcore.models.family import (
    BLOCK_SIZE,
    DROPOUT,
    N_EMBD,
    N_LAYER,
    TIE_WEIGHTS,
    Diagram,
    Family,
    Field,
    Preset,
    embedding_node,
    layers_by_width,
)
from lmcore.models.layers import (
    GeluMLP,
    RMSNorm,
    SwiGLU,
    apply_rope,
    apply_rope_reference,
    make_norm,
    rope_table,
    swiglu_hidden,
)

# The key/value cache is preallocated at block_size, and learned positions need
# a table of that many rows: past this, memory rather than quality is the limit.
MAX_BLOCK_SIZE = 65536


def _rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, T, H, hd); the complex fast path unless compiling."""
    if torch.compiler.is_compiling():
        return apply_rope_reference(x, table)
    return apply_rope(x, table)


class Relu2MLP(GeluMLP):
    """GELU's MLP with ReLU squared for the activation: c_proj(relu(c_fc(x))^2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = self.c_proj(F.relu(self.c_fc(x)).square())  # (B, T, D)
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        return x


@dataclass
class KVCache:
    """Keys and values of every layer for the positions seen so far.

    Buffers are preallocated for the whole block, so a step writes into them in
    place and never concatenates. ``pos`` is how many positions are filled.
    ``step`` mutates the cache and returns it.
    """

    k: torch.Tensor  # (L, B, KV, S, hd)
    v: torch.Tensor  # (L, B, KV, S, hd)
    pos: int = 0

    @property
    def capacity(self) -> int:
        return self.k.size(3)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        # Hook points (lmcore.hooks): the softmax weights (B, H, T, T) and each head's output (B, T, H, hd).
        self.hook_pattern = HookPoint(f"blocks.{layer}.attn.hook_pattern")
        self.hook_z = HookPoint(f"blocks.{layer}.attn.hook_z")
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        # One fused projection for queries, keys and values: one matmul, not three.
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm = RMSNorm(self.head_dim) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if config.qk_norm else None

    def _qkv(self, x: torch.Tensor, rope: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project x (B, T, D) to q (B, H, T, hd), k and v (B, KV, T, hd), rotated if rope is given."""
        B, T, _ = x.shape
        H, KV, hd = self.n_head, self.n_kv_head, self.head_dim
        heads = self.c_attn(x).view(B, T, H + 2 * KV, hd)  # (B, T, H + 2 KV, hd), a view
        # split(), not slicing: its backward is one cat, where each slice's
        # backward would fill a zero tensor of the full width (measured ~3x slower).
        if self.q_norm is not None:
            q, k, v = heads.split((H, KV, KV), dim=2)  # (B, T, H, hd), (B, T, KV, hd) x 2
            q, k = self.q_norm(q), self.k_norm(k)  # each head normalised over its hd channels
            if rope is not None:
                q, k = _rope(torch.cat([q, k], dim=2), rope).split((H, KV), dim=2)  # rotated in one call
        elif rope is not None:
            qk, v = heads.split((H + KV, KV), dim=2)  # (B, T, H + KV, hd), (B, T, KV, hd)
            q, k = _rope(qk, rope).split((H, KV), dim=2)  # queries and keys rotated in one call
        else:
            q, k, v = heads.split((H, KV, KV), dim=2)  # (B, T, H, hd), (B, T, KV, hd) x 2
        # Transposes are views; the attention kernels take strided inputs.
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        """Merge heads of y (B, H, T, hd) and project back to (B, T, D)."""
        B, H, T, hd = y.shape
        z = self.hook_z(y.transpose(1, 2))  # (B, T, H, hd), a view unless a hook replaces it
        y = self.c_proj(z.reshape(B, T, H * hd))  # (B, T, D)
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, True)
        return y

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        q, k, v = self._qkv(x, rope)
        if self.hook_pattern.active():
            # Only a hook on the pattern needs the weights written out; the fused kernel stays the default.
            att = self._pattern(q, k)  # (B, H, T, T)
            hooked = self.hook_pattern(att)
            if hooked is not att:  # replaced: the output must come from the new weights
                if self.dropout and self.training:
                    hooked = F.dropout(hooked, self.dropout, True)
                group = self.n_head // self.n_kv_head
                return self._out(hooked.to(v.dtype) @ v.repeat_interleave(group, dim=1))  # (B, H, T, hd) in
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, T, hd)
        return self._out(y)

    def _pattern(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(Q K^T / sqrt(hd)) with the causal mask: q (B, H, T, hd), k (B, KV, T, hd) -> (B, H, T, T)."""
        T = q.size(2)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, H, T, hd): head h reads kv h // group
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # (T, T) True above the diagonal
        return scores.masked_fill(future, float("-inf")).float().softmax(dim=-1).to(q.dtype)  # (B, H, T, T)

    def forward_explicit(self, x: torch.Tensor, rope: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention written out: returns the output (B, T, D) and the weights (B, H, T, T). No dropout."""
        q, k, v = self._qkv(x, rope)
        T = x.size(1)
        group = self.n_head // self.n_kv_head
        att = self._pattern(q, k)  # (B, H, T, T)
        v = v.repeat_interleave(group, dim=1)  # (B, H, T, hd)
        y = att @ v  # (B, H, T, hd)
        B, H, _, hd = y.shape
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, H * hd))  # (B, T, D)
        return y, att

    def step(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int, rope: torch.Tensor | None
    ) -> torch.Tensor:
        """Attend t new positions x (B, t, D) at pos.. to everything cached so far; fills the cache."""
        t = x.size(1)
        q, k, v = self._qkv(x, rope)  # (B, H, t, hd), (B, KV, t, hd) x 2
        k_cache[:, :, pos : pos + t] = k
        v_cache[:, :, pos : pos + t] = v
        keys = k_cache[:, :, : pos + t]  # (B, KV, pos + t, hd)
        values = v_cache[:, :, : pos + t]  # (B, KV, pos + t, hd)
        mask, causal = None, False
        if t > 1 and pos == 0:
            causal = True  # a square block: the usual causal mask
        elif t > 1:
            # New query i sits at position pos + i and may read keys 0..pos + i.
            rows = torch.arange(pos, pos + t, device=x.device)[:, None]  # (t, 1)
            mask = torch.arange(pos + t, device=x.device)[None, :] <= rows  # (t, pos + t)
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=causal, enable_gqa=self.n_kv_head != self.n_head
        )  # (B, H, t, hd)
        return self._out(y)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        # Hook points (lmcore.hooks), each (B, T, D).
        self.hook_resid_pre = HookPoint(f"blocks.{layer}.hook_resid_pre")
        self.hook_attn_out = HookPoint(f"blocks.{layer}.hook_attn_out")
        self.hook_resid_mid = HookPoint(f"blocks.{layer}.hook_resid_mid")
        self.hook_mlp_out = HookPoint(f"blocks.{layer}.hook_mlp_out")
        self.hook_resid_post = HookPoint(f"blocks.{layer}.hook_resid_post")
        self.ln_1 = make_norm(config.norm, config.n_embd, bias=config.bias, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config.norm, config.n_embd, bias=config.bias, eps=config.norm_eps)
        if config.mlp == "swiglu":
            self.mlp = SwiGLU(config.n_embd, swiglu_hidden(config.n_embd, config.mlp_ratio), config.bias, config.dropout)
        elif config.mlp == "relu2":
            self.mlp = Relu2MLP(config.n_embd, int(config.mlp_ratio * config.n_embd), config.bias, config.dropout)
        else:
            hidden = int(config.mlp_ratio * config.n_embd)
            self.mlp = GeluMLP(config.n_embd, hidden, config.bias, config.dropout, config.gelu_approximate)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x), rope)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))

    def forward_explicit(self, x: torch.Tensor, rope: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, att = self.attn.forward_explicit(self.ln_1(x), rope)  # (B, T, D), (B, H, T, T)
        x = x + y
        return x + self.mlp(self.ln_2(x)), att

    def step(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int, rope: torch.Tensor | None
    ) -> torch.Tensor:  # (B, t, D) -> (B, t, D)
        # The residual points fire here too, so that steering and ablation reach generation.
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn.step(self.ln_1(x), k_cache, v_cache, pos, rope)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))


def _diagram(c: ModelConfig) -> Diagram:
    norm = "RMSNorm" if c.norm == "rmsnorm" else "LayerNorm"
    kv = c.kv_heads
    kind = "multi-head" if kv == c.n_head else ("multi-query" if kv == 1 else "grouped-query")
    rope = ", RoPE" if c.pos == "rope" else ""
    mlp = "SwiGLU" if c.mlp == "swiglu" else "GELU"
    hidden = swiglu_hidden(c.n_embd, c.mlp_ratio) if c.mlp == "swiglu" else int(c.mlp_ratio * c.n_embd)
    return Diagram(
        embed=embedding_node(c, " + learned positions" if c.pos == "learned" else ""),
        block=(
            ("n1", norm),
            ("attn", f"causal self-attention ({kind}{rope})\n{c.n_head} heads, {kv} key/value, {c.head_dim} wide"),
            ("add1", "+"),
            ("n2", norm),
            ("mlp", f"MLP ({mlp})\n{c.n_embd} → {hidden} → {c.n_embd}"),
            ("add2", "+"),
        ),
        residuals=(("in", "add1"), ("add1", "add2")),
        final_norm=norm,
    )  # fmt: skip


def _activations(c: ModelConfig, batch_size: int) -> int:
    """B T (34 D + 5 H T) per layer (Korthikanti et al. 2022, attention scores counted as if not fused)."""
    return batch_size * c.block_size * (34 * c.n_embd + 5 * c.n_head * c.block_size)


def _run_shape(c: ModelConfig) -> str:
    kv = c.kv_heads
    return layers_by_width(c) + ("" if kv == c.n_head else ("-mqa" if kv == 1 else "-gqa"))


def _params_formula(c: ModelConfig) -> str:
    d = c.n_embd
    return r"N_\text{block} \approx 12\,d^2 = 12 \cdot %d^2 = %s \quad(\text{attention } 4d^2,\ \text{MLP } 8d^2)" % (
        d, f"{12 * d * d:,}".replace(",", "{,}")
    )  # fmt: skip


FAMILY = Family(
    presets={
        "gpt2": Preset(
            "GPT-2 (transformer)",
            "The GPT-2 recipe: learned positions, LayerNorm, GELU MLP, biases. Every token looks back at every "
            "earlier one through attention.",
            dict(norm="layernorm", pos="learned", mlp="gelu", bias=True, tie_weights=True),
        ),
        "llama": Preset(
            "LLaMA (transformer)",
            "The LLaMA recipe: rotary positions (RoPE), RMSNorm, SwiGLU MLP, no biases; grouped-query attention "
            "when there are fewer key/value heads than heads.",
            dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_weights=True),
        ),
    },
    sizes={
        "tiny": dict(n_layer=2, n_head=2, n_kv_head=None, n_embd=64, block_size=64, dropout=0.0),
        "small": dict(n_layer=4, n_head=4, n_kv_head=None, n_embd=128, block_size=64, dropout=0.0),
        "GPU": dict(n_layer=6, n_head=6, n_kv_head=None, n_embd=384, block_size=256, dropout=0.2),
    },
    fields=(
        N_LAYER,
        Field("n_head"),
        Field("n_kv_head"),
        N_EMBD,
        BLOCK_SIZE,
        DROPOUT,
        Field("norm", by_preset=True),
        Field("pos", by_preset=True),
        # relu2 is for the library and imported checkpoints; the page offers the two presets' MLPs.
        Field("mlp", help="GELU, or the gated SwiGLU.", choices=("gelu", "swiglu"), by_preset=True),
        Field("bias", by_preset=True),
        TIE_WEIGHTS,
    ),  # fmt: skip
    diagram=_diagram,
    activations=_activations,
    attention="attention",
    run_shape=_run_shape,
    hf_names=("gpt2", "llama"),
    params_formula=_params_formula,
)


class Transformer(LanguageModel):
    """Decoder-only transformer; see the module docstring for the choices and names."""

    family: ClassVar[Family] = FAMILY

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.max_context = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.hook_embed = HookPoint("embed")  # (B, T, D) token embeddings, before positions
        self.hook_normalized = HookPoint("final.hook_normalized")  # (B, T, D) after the final norm
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config.norm, config.n_embd, bias=config.bias, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # One Parameter in two places (Press & Wolf 2017). wte is registered
            # first, so named_parameters() lists it as "wte.weight".
            self.lm_head.weight = self.wte.weight
        # Not persistent: the table is a function of the config, not a weight.
        rope = rope_table(config.head_dim, config.block_size, config.rope_theta) if config.pos == "rope" else None
        self.register_buffer("rope", rope, persistent=False)  # (S, hd/2, 2) or None
        self._init_weights()

    # -- construction --
    @classmethod
    def validate_config(cls, config: ModelConfig) -> None:
        if config.block_size > MAX_BLOCK_SIZE:
            raise ConfigError(f"block_size {config.block_size} is too large; use at most {MAX_BLOCK_SIZE}", "block_size")
        # Each field's kind, bounds and choices are checked by ModelConfig.validate (its declaration).
        if config.n_embd % config.n_head:
            raise ConfigError(
                f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head}); "
                f"try n_embd={config.n_head * max(1, round(config.n_embd / config.n_head))}",
                "n_embd", ("n_head",),
            )  # fmt: skip
        kv = config.kv_heads
        if kv > config.n_head:
            raise ConfigError(
                f"n_kv_head must be between 1 and n_head ({config.n_head}), got {kv}; "
                "leave it empty for one key/value head per query head",
                "n_kv_head", ("n_head",),
            )  # fmt: skip
        if config.n_head % kv:
            divisors = [d for d in range(1, config.n_head + 1) if config.n_head % d == 0]
            raise ConfigError(
                f"n_kv_head ({kv}) must divide n_head ({config.n_head}); choose one of {', '.join(map(str, divisors))}",
                "n_kv_head", ("n_head",),
            )  # fmt: skip
        if config.mlp in ("gelu", "relu2") and int(config.mlp_ratio * config.n_embd) < 1:
            raise ConfigError(
                f"mlp_ratio {config.mlp_ratio} gives an MLP with no hidden units; use at least 1", "mlp_ratio"
            )
        if config.pos == "rope" and config.head_dim % 2:
            raise ConfigError(
                f"rotary positions need an even head size, but n_embd / n_head = {config.head_dim}; "
                "change n_embd or n_head, or use pos='learned'",
                "n_embd", ("n_head", "pos"),
            )  # fmt: skip

    def _init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights and embeddings, zero biases.

        The projections that write into the residual stream (attn.c_proj and
        mlp.c_proj) get std 0.02 / sqrt(2 L), so the stream's variance does not
        grow with depth (Radford et al. 2019). Norms start at weight 1, bias 0.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- the fast path --
    def _check_length(self, T: int) -> None:
        if T > self.config.block_size:
            raise ConfigError(
                f"the input has {T} tokens but this model reads at most block_size={self.config.block_size}; "
                "shorten the text or keep only its last block_size tokens"
            )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) long -> (B, T, V)
        T = idx.size(1)
        self._check_length(T)
        x = self.hook_embed(self.wte(idx))  # (B, T, D)
        if self.wpe is not None:
            x = x + self.wpe.weight[:T]  # (B, T, D); a slice, no index tensor needed
        if self.config.dropout and self.training:
            x = F.dropout(x, self.config.dropout, True)
        rope = self.rope[:T] if self.rope is not None else None  # (T, hd/2, 2)
        for block in self.h:
            x = block(x, rope)  # (B, T, D)
        return self.lm_head(self.hook_normalized(self.ln_f(x)))  # (B, T, V)

    def residual_blocks(self) -> nn.ModuleList:
        return self.h

    def readout(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V)
        return self.lm_head(self.ln_f(x))

    # -- generation --
    def init_cache(
        self, batch_size: int = 1, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to block_size positions."""
        c = self.config
        shape = (c.n_layer, batch_size, c.kv_heads, c.block_size, c.head_dim)
        device = self.wte.weight.device if device is None else device
        dtype = self.wte.weight.dtype if dtype is None else dtype
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def step(self, idx_t: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Feed t >= 1 new tokens idx_t (B, t); returns their logits (B, t, V) and the cache.

        With t > 1 this is a prefill: a whole prompt in one call. Token by token
        or all at once, the logits equal ``forward`` over the whole sequence.
        The cache holds at most block_size positions: stepping past it raises
        ValueError, and the caller (the sampler) starts a new cache from the
        last tokens. Meant for eval mode; no gradients are kept.
        """
        B, t = idx_t.shape
        pos = cache.pos
        if pos + t > cache.capacity:
            raise ValueError(
                f"the key/value cache holds {cache.capacity} positions and {pos} are used, so {t} more do not fit; "
                "start a new cache with the last tokens"
            )
        if B != cache.batch_size:
            raise ValueError(f"the cache was made for batch size {cache.batch_size}, got {B}")
        # Inference mode skips autograd's bookkeeping on every small op of a
        # one-token step (measured 8% faster than no_grad for gpt2, 15% for llama); the cache, made
        # outside it, may still be written in place.
        with torch.inference_mode():
            x = self.hook_embed(self.wte(idx_t))  # (B, t, D)
            if self.wpe is not None:
                x = x + self.wpe.weight[pos : pos + t]  # (B, t, D)
            rope = self.rope[pos : pos + t] if self.rope is not None else None  # (t, hd/2, 2)
            for layer, block in enumerate(self.h):
                x = block.step(x, cache.k[layer], cache.v[layer], pos, rope)  # (B, t, D)
            logits = self.lm_head(self.hook_normalized(self.ln_f(x)))  # (B, t, V)
        cache.pos = pos + t
        # An ordinary tensor for the caller (inference tensors refuse in-place edits outside the mode).
        return logits.clone(), cache

    # -- the explicit path --
    def reference_forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and attention weights (L, B, H, T, T) with attention written out.

        The same weights and math as ``forward`` (without dropout), computing
        softmax(Q K^T / sqrt(hd)) explicitly so its weights can be shown.
        """
        T = idx.size(1)
        self._check_length(T)
        x = self.wte(idx)  # (B, T, D)
        if self.wpe is not None:
            x = x + self.wpe.weight[:T]
        rope = self.rope[:T] if self.rope is not None else None
        maps = []
        for block in self.h:
            x, att = block.forward_explicit(x, rope)  # (B, T, D), (B, H, T, T)
            maps.append(att)
        return self.lm_head(self.ln_f(x)), torch.stack(maps)  # (B, T, V), (L, B, H, T, T)

    # -- accounting --
    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6 N + 12 L D T.

        The estimate of Kaplan et al. (2020) and PaLM's appendix B, as nanoGPT's
        ``estimate_mfu`` uses it. N counts the weights that take part in a
        matrix multiply: every parameter but the embedding lookups, with the
        output head counted once whether tied or not. 12 L D T is attention's
        Q K^T and A V at context T (default block_size), forward 2 x 2 L D T
        and backward twice that; the causal half that a kernel may skip is
        counted, as is customary.
        """
        T = self.config.block_size if seq_len is None else seq_len
        n = self.num_params()
        if self.wpe is not None:
            n -= self.wpe.weight.numel()
        if not self.config.tie_weights:
            n -= self.wte.weight.numel()  # the head has its own matrix, counted already
        c = self.config
        return 6 * n + 12 * c.n_layer * c.n_embd * T
