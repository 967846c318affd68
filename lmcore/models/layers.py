"""Layers shared by several architectures: norms, MLPs, rotary position embeddings and a causal conv.

Shapes: B batch, T time, D width, H heads, hd head size.
Parameter names (``weight``, ``c_fc``, ``c_proj``) are checkpoint keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) * weight, no centring."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return torch.nn.functional.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(kind: str, dim: int, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """The normalisation layer named by a config: ``layernorm`` or ``rmsnorm``.

    Both keep their scale under the name ``weight`` (checkpoint key); LayerNorm
    adds ``bias`` when ``bias`` is true. RMSNorm never has a bias.
    """
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")  # configs are validated before models are built


def swiglu_hidden(n_embd: int, mlp_ratio: float, multiple_of: int = 8) -> int:
    """Hidden width of a SwiGLU MLP with as many weights as a GELU MLP of ``mlp_ratio``.

    A GELU MLP has two (D, r D) matrices, SwiGLU three (gate, up, down), so the
    hidden width is 2/3 of r D, rounded to the nearest multiple of ``multiple_of``
    (vector-friendly) and never below it. D=128, r=4: 2/3 * 512 = 341.3 -> 344.
    """
    target = 2.0 / 3.0 * mlp_ratio * n_embd
    return max(multiple_of, int(round(target / multiple_of)) * multiple_of)


class GeluMLP(nn.Module):
    """GPT-2's MLP: Linear(D, h) -> GELU -> Linear(h, D), named ``c_fc`` and ``c_proj``."""

    def __init__(self, n_embd: int, hidden: int, bias: bool = True, dropout: float = 0.0, approximate: str = "none"):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = dropout
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        # Exact (erf) GELU by default: on CPU it is several times faster than the
        # tanh form, which only models imported from GPT-2 checkpoints use.
        x = self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))  # (B, T, D)
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        return x


class SwiGLU(nn.Module):
    """LLaMA's gated MLP (Shazeer 2020): down(silu(gate(x)) * up(x)).

    Gate and up are one fused ``c_fc`` of width 2h (gate rows first, then up
    rows): one matrix multiply instead of two. ``c_proj`` is the down projection.
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.hidden = hidden
        self.c_fc = nn.Linear(n_embd, 2 * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)  # 2 x (B, T, h), views
        x = self.c_proj(F.silu(gate) * up)  # (B, T, D)
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True)
        return x


def rope_table(head_dim: int, length: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position table (Su et al. 2021): (length, head_dim / 2, 2) of (cos, sin).

    Channel pair i of position p is rotated by the angle p * theta^(-2i / head_dim).
    Stored as real pairs, not a complex tensor, so that ``module.to(dtype)`` can
    never drop the imaginary part; ``apply_rope`` views it as complex.
    """
    assert head_dim % 2 == 0, "rotary embeddings need an even head size"
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # (length, hd/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()  # (length, hd/2, 2)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2i, 2i+1) of x by the angles of ``table``.

    x (B, T, H, hd), table (T, hd/2, 2) -> (B, T, H, hd), a new contiguous tensor.
    One complex multiply: on CPU about four times faster (forward and backward)
    than the rotate-half form, which needs slices, four products and a cat.
    Half-precision inputs are rotated in float32 and cast back.
    """
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    B, T, H, hd = xf.shape
    rot = torch.view_as_complex(table.to(torch.float64 if xf.dtype == torch.float64 else torch.float32))  # (T, hd/2)
    pairs = torch.view_as_complex(xf.view(B, T, H, hd // 2, 2))  # (B, T, H, hd/2) complex view
    out = torch.view_as_real(pairs * rot[:, None, :]).flatten(3)  # (B, T, H, hd)
    return out.to(dtype)


def apply_rope_reference(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The same rotation as ``apply_rope`` in plain real arithmetic.

    (a, b) -> (a cos - b sin, a sin + b cos) for each channel pair. Slower, but
    obviously right, and free of complex tensors (which ``torch.compile`` handles
    poorly), so it is also the path taken while compiling.
    """
    B, T, H, hd = x.shape
    pairs = x.reshape(B, T, H, hd // 2, 2)  # (B, T, H, hd/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]  # (B, T, H, hd/2) each
    cos, sin = table[:, None, :, 0].to(x.dtype), table[:, None, :, 1].to(x.dtype)  # (T, 1, hd/2)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(3)  # (B, T, H, hd)


class _CausalDepthwiseConv(torch.autograd.Function):
    """``causal_conv1d``'s sums, with a backward that writes each gradient once.

    Autograd through the forward's shifted slices would build a zero-filled
    gradient the size of the padded input for every tap and add them up; here
    the taps accumulate into one buffer.
    """

    @staticmethod
    def forward(ctx, pad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        K = weight.shape[1]
        T = pad.shape[1] - (K - 1)
        u = torch.addcmul(bias, pad[:, K - 1 :], weight[:, K - 1])  # (B, T, C)
        for k in range(K - 1):
            u.addcmul_(pad[:, k : k + T], weight[:, k])  # tap k sees the input K-1-k steps back
        ctx.save_for_backward(pad, weight)
        return u

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        pad, weight = ctx.saved_tensors
        K, T = weight.shape[1], grad.shape[1]
        grad_pad = torch.zeros_like(pad)
        for k in range(K):
            grad_pad[:, k : k + T].addcmul_(grad, weight[:, k])
        grad_weight = torch.stack([(grad * pad[:, k : k + T]).sum((0, 1)) for k in range(K)], dim=1)
        return grad_pad, grad_weight, grad.sum((0, 1))


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal depthwise convolution over time, channels last: Mamba's short conv.

    x (B, T, C); weight (C, K) (a ``Conv1d(C, C, K, groups=C)``'s weight[:, 0]);
    bias (C,); state (B, K-1, C), the inputs just before x (None: zeros, the
    causal padding). Returns u (B, T, C) with u_t = bias + Σ_k weight[:, k]
    x_{t-K+1+k}, as ``F.conv1d`` with left padding K-1 computes it, and the
    state after x (its last K-1 inputs). On CPU, K multiply-adds over the
    channels-last input cost less than transposing it for ``conv1d``.
    """
    batch, _, channels = x.shape
    K = weight.shape[1]
    if state is None:
        state = x.new_zeros(batch, K - 1, channels)
    pad = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+T, C)
    return _CausalDepthwiseConv.apply(pad, weight, bias), pad[:, pad.shape[1] - (K - 1) :]
