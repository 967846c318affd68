"""Mamba-2: state-space duality (Dao & Gu 2024), in plain PyTorch.

Shapes: B batch, T time, D model width (``n_embd``), E inner width
(``expand * D``), P channels per head (``ssm_head_dim``), H heads (E / P),
G groups (``n_groups``), N state size (``d_state``), K conv width
(``d_conv``), L chunk length (``chunk_size``), V vocabulary.

One block, pre-norm and residual: ``x + mixer(rmsnorm(x))``, where the mixer is
1. ``in_proj``: D -> [z (E) | xBC (E + 2 G N) | dt (H)];
2. a causal depthwise conv1d of width K over xBC, then SiLU, split into
   x (E, as H heads of P channels), B and C (G groups of N each);
3. Δ = softplus(dt + dt_bias) (B, T, H): one step size per head;
4. the SSM, per head h with its group's B and C and a scalar A_h = -exp(A_log_h):
       h_t = exp(Δ_t A_h) h_{t-1} + Δ_t x_t ⊗ B_t   (state P x N),   y_t = h_t C_t
5. ``y + D x``, gated and normalised: RMSNorm(y · SiLU(z)) in groups of E / G
   channels (as mamba_ssm's Mamba2), then ``out_proj``: E -> D.
A final RMSNorm, and logits through the token embedding (tied) or a separate head.
``dropout`` (training only) zeroes entries of each block's mixer output before
the residual add, as a transformer's residual dropout; 0 by default.

Where Mamba-1 has a decay per channel and state (E x N exponentials per step),
Mamba-2's decay is one scalar per head. That is what makes the duality: the
whole sequence map is y = M x with, per head,
       M[i, j] = (C_i · B_j) exp(A Σ_{k=j+1..i} Δ_k) Δ_j   for j <= i, 0 above,
a causal attention matrix whose mask is a cumulative decay (a "1-semiseparable"
matrix). Two algorithms compute step 4: ``ssd_ref`` is the recurrence as a
plain loop over time, and ``ssd_chunked`` (training) cuts time into chunks of L
and uses the quadratic, attention-like form within each chunk and the
recurrence between chunks only (``ssd_minimal`` of state-spaces/mamba): a few
batched matrix products instead of T small steps. Tests check the two against
each other in float64, values and gradients. ``ssd_attention`` builds M itself,
which the Attention page shows, exact rather than approximate.

Generation carries, per layer, the last K-1 conv inputs (B, K-1, E + 2 G N)
and the state (B, H, P, N); a single token takes the loop's one step.

Hook points (``lmcore.hooks``), named as Mamba-1's: ``embed``; per block
``hook_resid_pre``, ``mixer.hook_delta`` (B, T, H: one Δ per head, after
softplus), ``mixer.hook_B`` and ``mixer.hook_C`` (B, T, G, N: one B and one C
per group of heads), ``mixer.hook_y`` (B, T, E: the gated, normalised SSM
output per channel, the input of ``out_proj``), ``hook_mixer_out`` and
``hook_resid_post`` (B, T, D); ``final.hook_normalized``. They fire in
``step`` too, and ``attention_maps`` reads Δ, B and C from them.
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
from lmcore.models.config import ModelConfig
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
)
from lmcore.models.layers import RMSNorm, causal_conv1d
from lmcore.models.mamba import StateSpaceLM, one_sequence

# Δ initialisation, as Mamba's: dt log-uniform in [DT_MIN, DT_MAX], at least DT_FLOOR,
# stored in dt_bias through the inverse of softplus.
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
# The SSD's factored decay (``ssd_chunked``): used where each chunk's decays span at most
# this much (its larger factor then at most e^60, inside float32's e^88 with room for the
# sums of a chunk's products), halving the chunk down to FACTORED_MIN_CHUNK steps to get there.
FACTORED_MAX_SPAN = 60.0
FACTORED_MIN_CHUNK = 16


# --------------------------------------------------------------------------- the SSM, two ways


def _heads_of_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, G, N) -> (B, T, H, N): each group's B or C repeated for the heads it serves."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba-2 recurrence as a plain loop over time: slow, and obviously the formula.

    x: (B, T, H, P); dt: (B, T, H) (Δ, after softplus); A: (H,); B, C: (B, T, G, N)
    with G dividing H; h0: (B, H, P, N) or None (zeros). Returns y (B, T, H, P)
    with y_t = h_t C_t (no D skip, no gate) and the last state h_T (B, H, P, N).
    """
    batch, _, heads, width = x.shape
    B, C = _heads_of_groups(B, heads), _heads_of_groups(C, heads)  # (B, T, H, N)
    h = x.new_zeros(batch, heads, width, B.shape[-1]) if h0 is None else h0  # (B, H, P, N)
    ys = []
    for x_t, d_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(d_t * A)[:, :, None, None]  # (B, H, 1, 1)
        h = decay * h + (d_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]  # (B, H, P, N)
        ys.append((h * C_t[:, :, None, :]).sum(-1))  # (B, H, P)
    return torch.stack(ys, dim=1), h


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a (..., L) -> S (..., L, L) with S[i, j] = a_{j+1} + ... + a_i for j <= i, -inf above.

    Summed from masked copies rather than as differences of a cumulative sum, so
    that no large numbers cancel (exp(S) is the decay between steps j and i):
    the maps span the whole sequence, where the sums grow with its length.
    """
    L = a.shape[-1]
    lower = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    s = a[..., :, None].expand(*a.shape, L).masked_fill(~lower, 0.0)  # [..., k, j] = a_k for k > j
    s = torch.cumsum(s, dim=-2)  # [..., i, j] = Σ_{j<k<=i} a_k
    return s.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def _factored_chunks(a: torch.Tensor, chunk: int) -> list[int]:
    """Per head, the longest chunk (``chunk``, or halved down to ``FACTORED_MIN_CHUNK``) whose decays factor safely.

    a (B, T, H): Δ A per step (<= 0). Within a chunk the decay exp(a_cum_i - a_cum_j)
    equals exp(a_cum_i) exp(-a_cum_j), a_cum counted from the chunk's start; the
    second factor is at most exp(span), so a head's chunks factor when each one's
    span (minus the sum of its Δ A) is at most ``FACTORED_MAX_SPAN``. 0 for a head
    no such length fits. One read back to the host for all heads and lengths.
    """
    batch, T, heads = a.shape
    lengths, spans = [], []
    length = chunk
    while length >= min(FACTORED_MIN_CHUNK, chunk):
        pad = -T % length
        sums = F.pad(a, (0, 0, 0, pad)).view(batch, (T + pad) // length, length, heads).sum(2)
        lengths.append(length)
        spans.append(-sums.amin((0, 1)))  # (H,) each head's largest span
        length //= 2
    fits = (torch.stack(spans) <= FACTORED_MAX_SPAN).tolist()  # (lengths, H)
    return [next((n for n, ok in zip(lengths, col) if ok), 0) for col in zip(*fits)]


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    chunk_size: int = 64,
    final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSD algorithm in chunks; same arguments and results as ``ssd_ref``.

    Within a chunk of L steps the output is the masked, attention-like product
    (C Bᵀ ∘ decay) (Δ x); each chunk's final state is a decayed sum of its
    inputs; the states passed between chunks follow the recurrence from chunk to
    chunk; and each step reads the state entering its chunk through C, decayed.
    A length that is not a multiple of L is padded with Δ = 0 steps (no decay, no
    input), which leave the state as it was. Half-precision inputs are computed
    in float32 and the output cast back. Gradients come from autograd.
    ``final_state=False`` (a forward that carries no state on) returns None for
    the state and skips the last chunk's.

    The decay within a chunk, exp(a_cum_i - a_cum_j) from the chunk's running sum
    of Δ A, is computed one of two ways (``_ssd_chunks``); both are exact:
    - on a CPU (eager), for the heads whose every chunk's decays span at most
      ``FACTORED_MAX_SPAN`` (halving a head's chunk down to ``FACTORED_MIN_CHUNK``
      if that makes them so), factored as exp(a_cum_i) exp(-a_cum_j);
    - otherwise per head, one L x L matrix each, as mamba_ssm's kernels compute it.
    Heads are independent of each other, so heads that need different ways (a few
    fast-decaying heads need shorter chunks than the rest) are computed apart, each
    set at its own chunk length, and put back in order.
    """
    assert chunk_size >= 1
    dtype = x.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    batch, T, heads, width = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    if T == 0:
        h = x.new_zeros(batch, heads, width, n_state, dtype=work) if h0 is None else h0.to(work)
        return x.new_zeros(x.shape), h if final_state else None
    x, dt, A, B, C = (t.to(work) for t in (x, dt, A, B, C))
    h0 = None if h0 is None else h0.to(work)
    if T == 1:  # one token (generation): the loop's single step
        y, h = ssd_ref(x, dt, A, B, C, h0)
        return y.to(dtype), h if final_state else None
    L = min(chunk_size, T)
    a = dt * A  # (B, T, H) the log-decay of each step
    # Per head on CUDA (the check reads the spans back to the host) and while torch.compile traces
    # (it fuses the per-head steps itself, and a value read back would break its graph).
    eager_cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
    ways = _factored_chunks(a.detach(), L) if eager_cpu else [0] * heads  # per head: chunk length, 0 per head
    if len(set(ways)) == 1:
        y, h = _ssd_chunks(x, dt, a, B, C, h0, ways[0] or L, bool(ways[0]), final_state)
        return y.to(dtype), h
    r = heads // groups
    ys, hs, order = [], [], []
    for way in sorted(set(ways), reverse=True):
        idx = torch.tensor([i for i, w in enumerate(ways) if w == way], device=x.device)
        # One group serves every head; else each head of the set takes its group's B and C.
        Bs, Cs = (B, C) if groups == 1 else (B.index_select(2, idx // r), C.index_select(2, idx // r))
        y, h = _ssd_chunks(
            x.index_select(2, idx), dt.index_select(2, idx), a.index_select(2, idx), Bs, Cs,
            None if h0 is None else h0.index_select(1, idx), way or L, bool(way), final_state,
        )  # fmt: skip
        ys.append(y)
        hs.append(h)
        order.append(idx)
    back = torch.argsort(torch.cat(order))  # each head's place among the sets' outputs
    y = torch.cat(ys, dim=2).index_select(2, back)
    return y.to(dtype), torch.cat(hs, dim=1).index_select(1, back) if final_state else None


def _ssd_chunks(
    x: torch.Tensor,
    dt: torch.Tensor,
    a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
    L: int,
    factored: bool,
    final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``ssd_chunked`` at chunks of L, in the working dtype, given a = Δ A (B, T, H).

    ``factored``: the decay within a chunk as exp(a_cum_i) exp(-a_cum_j) (the caller
    checked that it fits): the second factor scales Δ x, the first the output, and
    the masked C Bᵀ, shared by every head of a group, is one product with all their
    channels at once. No step-by-step matrix per head is built. Both factors count
    from the chunk's start, so a step's output depends on no later step, to the
    last bit (the masked products add exact zeros). Otherwise one L x L matrix
    (C Bᵀ ∘ exp(a_cum_i - a_cum_j)) per head, in the layout (batch, chunk, group,
    head in group, step, channel), one batched product for all heads. The states,
    and what each step reads from them, are one product per group with its B or C
    over all its heads' channels (batch, chunk, group, step, heads x channels).
    Δ multiplies x where x is scaled anyway, so Δ x is never a tensor of its own.
    """
    batch, T, heads, width = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    pad = -T % L
    if pad:
        x, dt, a, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, a, B, C))
    c = (T + pad) // L
    r = heads // groups  # heads per group
    xc, dtc = x.view(batch, c, L, heads, width), dt.view(batch, c, L, heads)
    a_cum = torch.cumsum(a.view(batch, c, L, heads), dim=2)  # running sum of Δ A in each chunk
    last = a_cum[:, :, -1]  # (B, c, H): the log-decay across each whole chunk
    Bg = B.view(batch, c, L, groups, n_state).transpose(2, 3)  # (B, c, G, L, N)
    Cg = C.view(batch, c, L, groups, n_state).transpose(2, 3)
    above = ~torch.ones(L, L, dtype=torch.bool, device=x.device).tril()

    # 1. Within each chunk: the masked "attention" (C_i · B_j) exp(a_cum_i - a_cum_j) applied to Δ x.
    # Factored, y is left in the layout (B, c, G, L, rP) and without its factor exp(a_cum_i), which
    # step 4 applies once to it and to what each step reads from the state entering its chunk.
    if factored:
        xv = (xc * (dtc * torch.exp(-a_cum))[..., None]).view(batch, c, L, groups, r * width).transpose(2, 3)
        CB = (Cg @ Bg.transpose(-1, -2)).masked_fill_(above, 0.0)  # (B, c, G, L, L)
        y = CB @ xv  # (B, c, G, L, rP)
    else:
        xh = (xc * dtc[..., None]).view(batch, c, L, groups, r, width).permute(0, 1, 3, 4, 2, 5)  # (B, c, G, r, L, P)
        ah = a_cum.view(batch, c, L, groups, r).permute(0, 1, 3, 4, 2)  # (B, c, G, r, L)
        log_decay = (ah[..., :, None] - ah[..., None, :]).masked_fill_(above, float("-inf"))
        M = (Cg @ Bg.transpose(-1, -2))[:, :, :, None] * torch.exp(log_decay)  # (B, c, G, r, L, L)
        y = (M @ xh).permute(0, 1, 4, 2, 3, 5).reshape(batch, c, L, heads, width)

    # 2. Each chunk's own contribution to the state at its end, Σ_s exp(a_cum_L - a_cum_s) (Δ x)_s ⊗ B_s,
    # and 3. between chunks the recurrence, one step per chunk, from h0: the state entering each chunk.
    n = c if final_state else c - 1  # the chunks whose states are needed
    h = h0  # None: zeros
    entering = []
    if n:
        to_end = dtc[:, :n] * torch.exp(last[:, :n, None] - a_cum[:, :n])  # (B, n, L, H): Δ decayed to chunk end
        xe = (xc[:, :n] * to_end[..., None]).view(batch, n, L, groups, r * width).transpose(2, 3)  # (B, n, G, L, rP)
        states = (xe.transpose(-1, -2) @ Bg[:, :n]).view(batch, n, heads, width, n_state)
        decay = torch.exp(last)[..., None, None].unbind(1)  # c x (B, H, 1, 1): across each whole chunk
        for k, state in enumerate(states.unbind(1)):  # unbind: one backward for all chunks, not one per chunk
            entering.append(h)
            h = state if h is None else h * decay[k] + state
    if n < c:
        entering.append(h)

    # 4. Each step reads the state entering its chunk through C (none enters at zeros), decayed to the step.
    first = next((k for k, e in enumerate(entering) if e is not None), c)
    if first < c:
        states_in = torch.stack(entering[first:], dim=1).view(batch, c - first, groups, r * width, n_state)
        read = Cg[:, first:] @ states_in.transpose(-1, -2)  # (B, c', G, L, rP)
        if factored:
            y[:, first:] += read  # in place: no backward reads y
        else:
            read = read.transpose(2, 3).reshape(batch, c - first, L, heads, width)
            y[:, first:] += read * torch.exp(a_cum[:, first:])[..., None]
    if factored:
        y = y.transpose(2, 3).reshape(batch, c, L, heads, width) * torch.exp(a_cum)[..., None]
    return y.reshape(batch, c * L, heads, width)[:, :T], h if final_state else None


def ssd_attention(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The SSM of one sequence as attention matrices, one per head: y = M x exactly.

    dt: (T, H); A: (H,); B, C: (T, G, N). Returns M (H, T, T) with
    M[h, i, j] = (C_i · B_j) exp(A_h Σ_{k=j+1..i} Δ_k) Δ_j for j <= i and 0 above,
    so that ``ssd_ref``'s output is y_i = Σ_j M[h, i, j] x_j for every channel of
    head h. The decay is built from masked sums (no cumulative-sum differences).
    """
    heads = dt.shape[1]
    Bh = _heads_of_groups(B[None], heads)[0]  # (T, H, N)
    Ch = _heads_of_groups(C[None], heads)[0]
    CB = torch.einsum("ihn,jhn->hij", Ch, Bh)  # (H, T, T)
    decay = torch.exp(_segsum((dt * A).t()))  # (H, T, T), 0 above the diagonal
    return CB * decay * dt.t()[:, None, :]


# --------------------------------------------------------------------------- model


@dataclass
class Mamba2Cache:
    """Generation state: per layer, the last K-1 conv inputs and the SSM state."""

    conv: list[torch.Tensor]  # per layer (B, K-1, E + 2 G N)
    ssm: list[torch.Tensor]  # per layer (B, H, P, N)
    position: int = 0  # tokens consumed so far


@dataclass
class SSMInputs:
    """What the SSM of one layer reads, from the normed input: the named steps of the mixer."""

    x: torch.Tensor  # (B, T, H, P) the signal, after the conv and SiLU
    dt: torch.Tensor  # (B, T, H) Δ, after softplus
    A: torch.Tensor  # (H,) negative, at least float32
    B: torch.Tensor  # (B, T, G, N)
    C: torch.Tensor  # (B, T, G, N)
    z: torch.Tensor  # (B, T, E) the gate
    conv_state: torch.Tensor  # (B, K-1, E + 2 G N) the conv inputs to carry


class GatedRMSNorm(nn.Module):
    """RMSNorm(y · SiLU(z)) in groups of ``group`` channels, one learned gain per channel."""

    def __init__(self, dim: int, group: int, eps: float):
        super().__init__()
        self.group, self.eps = group, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (B, T, E) each
        dtype = y.dtype
        g = (y.float() * F.silu(z.float())).unflatten(-1, (-1, self.group))  # (B, T, G, E/G)
        g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(dtype)


class Mamba2Mixer(nn.Module):
    """The SSD mixer of one block: (B, T, D) -> (B, T, D)."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        # Hook points (lmcore.hooks): Δ per head (B, T, H); B and C per group (B, T, G, N);
        # y, the gated and normalised output per channel, before out_proj (B, T, E).
        self.hook_delta = HookPoint(f"blocks.{layer}.mixer.hook_delta")
        self.hook_B = HookPoint(f"blocks.{layer}.mixer.hook_B")
        self.hook_C = HookPoint(f"blocks.{layer}.mixer.hook_C")
        self.hook_y = HookPoint(f"blocks.{layer}.mixer.hook_y")
        D, E, N, K = config.n_embd, config.d_inner, config.d_state, config.d_conv
        P, G = config.ssm_head_dim, config.n_groups
        H = E // P
        self.d_inner, self.d_state, self.d_conv, self.head_dim, self.n_heads, self.n_groups = E, N, K, P, H, G
        self.chunk_size = config.chunk_size
        self.conv_dim = E + 2 * G * N
        self.in_proj = nn.Linear(D, E + self.conv_dim + H, bias=False)  # [z | xBC | dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, K, groups=self.conv_dim, bias=True)  # applied by hand
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(E, E // G, config.norm_eps)
        self.out_proj = nn.Linear(E, D, bias=False)
        for p in (self.dt_bias, self.A_log, self.D):  # dynamics, not weights to shrink (as mamba_ssm marks them)
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A_h = -h (1..H), unit D, and Δ's bias so that softplus(dt_bias) is log-uniform in [DT_MIN, DT_MAX]."""
        H = self.n_heads
        self.A_log.copy_(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        u = torch.rand(H)
        dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)).clamp_(min=DT_FLOOR)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) == dt

    def ssm_inputs(self, x: torch.Tensor, conv_state: torch.Tensor | None = None) -> SSMInputs:
        """Everything the SSM needs, from the normed input x (B, T, D), as named steps."""
        E, G, N = self.d_inner, self.n_groups, self.d_state
        z, xBC, dt = self.in_proj(x).split([E, self.conv_dim, self.n_heads], dim=-1)
        u, conv_state = causal_conv1d(xBC, self.conv1d.weight[:, 0, :], self.conv1d.bias, conv_state)
        xs, B, C = F.silu(u).split([E, G * N, G * N], dim=-1)
        delta = F.softplus(dt + self.dt_bias)  # (B, T, H)
        A_log = self.A_log if self.A_log.dtype in (torch.float32, torch.float64) else self.A_log.float()
        return SSMInputs(
            x=xs.unflatten(-1, (self.n_heads, self.head_dim)),
            dt=delta,
            A=-torch.exp(A_log),
            B=B.unflatten(-1, (G, N)),
            C=C.unflatten(-1, (G, N)),
            z=z,
            conv_state=conv_state,
        )

    def finish(self, y: torch.Tensor, s: SSMInputs) -> torch.Tensor:
        """The SSM's output y (B, T, H, P) -> the mixer's output (B, T, D): D skip, gated norm, projection."""
        y = y + s.x * self.D[:, None].to(y.dtype)  # (B, T, H, P)
        return self.out_proj(self.hook_y(self.norm(y.flatten(-2).to(s.z.dtype), s.z)))  # y: (B, T, E)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x (B, T, D), optional (conv, ssm) state -> (B, T, D) and the state after x.

        Without a state (a whole sequence, as in training) none is carried on:
        the state after x is None, and the SSD skips computing it.
        """
        conv_state, ssm_state = state if state is not None else (None, None)
        s = self.ssm_inputs(x, conv_state)
        s.dt, s.B, s.C = self.hook_delta(s.dt), self.hook_B(s.B), self.hook_C(s.C)
        y, h = ssd_chunked(
            s.x, s.dt, s.A, s.B, s.C, h0=ssm_state, chunk_size=self.chunk_size, final_state=state is not None
        )
        out = self.finish(y, s)
        return out, None if state is None else (s.conv_state, h)


class Mamba2Block(nn.Module):
    """Pre-norm residual block: x + mixer(rmsnorm(x))."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        # Hook points (lmcore.hooks), each (B, T, D); they fire in generation too (step runs this forward).
        self.hook_resid_pre = HookPoint(f"blocks.{layer}.hook_resid_pre")
        self.hook_mixer_out = HookPoint(f"blocks.{layer}.hook_mixer_out")
        self.hook_resid_post = HookPoint(f"blocks.{layer}.hook_resid_post")
        self.norm = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mixer = Mamba2Mixer(config, layer)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        residual = self.hook_resid_pre(x)  # (B, T, D)
        mixed, state = self.mixer(self.norm(residual), state)
        mixed = self.hook_mixer_out(mixed)
        if self.dropout and self.training:
            mixed = F.dropout(mixed, self.dropout, True)
        return self.hook_resid_post(residual + mixed), state


def _diagram(c: ModelConfig) -> Diagram:
    E, G, N = c.d_inner, c.n_groups, c.d_state
    heads = E // c.ssm_head_dim if c.ssm_head_dim else 0
    return Diagram(
        embed=embedding_node(c),
        block=(
            ("n1", "RMSNorm"),
            ("inproj", f"input projection\n{c.n_embd} → z ({E}), x ({E}), B, C ({G}×{N} each), Δ ({heads})"),
            ("conv", f"causal depthwise conv1d (width {c.d_conv}) + SiLU on x, B, C"),
            ("ssm", f"SSD: {heads} heads × {c.ssm_head_dim} channels\nscalar decay per head; state {c.ssm_head_dim}×{N}"),
            ("gate", "RMSNorm(y × SiLU(z))"),
            ("outproj", f"output projection\n{E} → {c.n_embd}"),
            ("add1", "+"),
        ),
        residuals=(("in", "add1"),),
        final_norm="RMSNorm",
    )


def _activations(c: ModelConfig, batch_size: int) -> int:
    """Per layer: about 12 E + 6 G N values per token, the chunk's masked matrices (3 H L per token)
    and the states between chunks (3 H P N per chunk)."""
    T, E = c.block_size, c.d_inner
    H = E // max(1, c.ssm_head_dim)
    L = max(1, min(c.chunk_size, T))
    chunks = -(-T // L) + 1
    return batch_size * (T * (12 * E + 6 * c.n_groups * c.d_state + 3 * H * L) + 3 * chunks * E * c.d_state)


FAMILY = Family(
    presets={
        "mamba2": Preset(
            "Mamba-2 (state-space duality)",
            "Mamba's successor: each head decays its state by one number per step, which lets the same "
            "recurrence be computed chunk by chunk as masked attention, with matrix products. Faster to train, "
            "with a larger state; generation still carries a fixed-size state.",
            dict(norm="rmsnorm", bias=False, tie_weights=True, d_state=64, d_conv=4, expand=2,
                 ssm_head_dim=16, n_groups=1, chunk_size=64),
        ),
    },  # fmt: skip
    sizes={
        "tiny": dict(n_layer=2, n_embd=64, block_size=64, d_state=32, d_conv=4, expand=2, ssm_head_dim=16),
        "small": dict(n_layer=4, n_embd=128, block_size=64, d_state=64, d_conv=4, expand=2, ssm_head_dim=16),
        "GPU": dict(n_layer=6, n_embd=384, block_size=256, d_state=64, d_conv=4, expand=2, ssm_head_dim=64),
    },
    fields=(
        N_LAYER,
        N_EMBD,
        BLOCK_SIZE,
        Field("d_state", help="Numbers each head's channels remember along the sequence."),
        Field("d_conv"),
        Field("expand"),
        Field("ssm_head_dim"),
        Field("n_groups"),
        Field("chunk_size"),
        DROPOUT,
        TIE_WEIGHTS,
    ),  # fmt: skip
    diagram=_diagram,
    activations=_activations,
    attention="SSD attention",
    attention_unit="head",
    hf_names=("mamba2",),
    attention_note=(
        "State-space duality: a Mamba-2 head's recurrence over time is exactly y = M x with this matrix M, "
        "an attention matrix (C·B, which can be negative) under a causal mask that decays by exp(Δ A) at "
        "every step, so the same layer runs as a recurrence when generating and as masked attention, chunk by "
        "chunk, when training. These maps are therefore exact, not an approximation: applied to the layer's "
        "input they give its output, and their rows need not add up to 1."
    ),
)


class Mamba2(StateSpaceLM):
    """Mamba-2 language model; see the module docstring.

    Parameter names (checkpoint keys, transformers' Mamba2 names without ``backbone.``):
    ``embedding.weight``, ``layers.{i}.norm.weight``, ``layers.{i}.mixer.{in_proj,out_proj}.weight``,
    ``layers.{i}.mixer.conv1d.{weight,bias}``, ``layers.{i}.mixer.{dt_bias,A_log,D}``,
    ``layers.{i}.mixer.norm.weight``, ``norm_f.weight``, and ``head.weight`` only when the head is not tied.
    """

    family: ClassVar[Family] = FAMILY
    max_context = None

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.hook_embed = HookPoint("embed")  # (B, T, D)
        self.hook_normalized = HookPoint("final.hook_normalized")  # (B, T, D) after the final norm
        self.layers = nn.ModuleList(Mamba2Block(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.head = None if config.tie_weights else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
        with torch.no_grad():  # residual branches start small so deep stacks start near identity
            for layer in self.layers:
                layer.mixer.out_proj.weight.div_(math.sqrt(config.n_layer))

    @classmethod
    def validate_config(cls, config: ModelConfig) -> None:
        # Each field's kind and bounds are checked by ModelConfig.validate (its declaration).
        E, P = config.d_inner, config.ssm_head_dim
        if E % P:
            raise ConfigError(
                f"ssm_head_dim ({P}) must divide the inner width expand × n_embd ({E}); "
                "pick a head size that divides it, or change the width",
                "ssm_head_dim", ("expand", "n_embd"),
            )  # fmt: skip
        if (E // P) % config.n_groups:
            raise ConfigError(
                f"n_groups ({config.n_groups}) must divide the number of heads ({E // P} = {E} / {P}); "
                "use 1 or a divisor of it",
                "n_groups", ("ssm_head_dim",),
            )  # fmt: skip

    def init_cache(self, batch_size: int = 1, device: torch.device | str | None = None) -> Mamba2Cache:
        device = self.device if device is None else torch.device(device)
        dtype = self.embedding.weight.dtype
        state_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # as the SSD returns it
        c, mixer = self.config, self.layers[0].mixer if len(self.layers) else None
        H = c.d_inner // c.ssm_head_dim
        conv_dim = c.d_inner + 2 * c.n_groups * c.d_state
        assert mixer is None or mixer.conv_dim == conv_dim
        return Mamba2Cache(
            conv=[torch.zeros(batch_size, c.d_conv - 1, conv_dim, device=device, dtype=dtype) for _ in self.layers],
            ssm=[torch.zeros(batch_size, H, c.ssm_head_dim, c.d_state, device=device, dtype=state_dtype)
                 for _ in self.layers],
        )  # fmt: skip

    def step(self, idx_t: torch.Tensor, cache: Mamba2Cache) -> tuple[torch.Tensor, Mamba2Cache]:
        """idx_t (B, t) -> logits (B, t, V) and the cache after those tokens.

        t = 1 is the usual case (the recurrence's one step); a longer t (a whole
        prompt) goes through the chunked SSD in one call, from the cached state.
        """
        x = self.hook_embed(self.embedding(idx_t))  # (B, t, D)
        conv, ssm = [], []
        for layer, c, h in zip(self.layers, cache.conv, cache.ssm):
            x, (c, h) = layer(x, (c, h))
            conv.append(c)
            ssm.append(h)
        return self._logits(x), Mamba2Cache(conv, ssm, cache.position + idx_t.shape[1])

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """The exact SSD matrices per layer and head: idx (1, T) -> (n_layer, H, T, T).

        Map h of a layer is ``ssd_attention``'s M for that head: the layer's SSM
        output for the head is M x (before the D skip, the gate and the
        projection). Signed, not normalised; float32 on the model's device.
        """
        maps = [ssd_attention(dt, A.float(), B, C) for dt, A, B, C in self.scan_inputs(one_sequence(idx))]  # A: (H,)
        return torch.stack(maps)  # (n_layer, H, T, T)

    def num_params(self, non_embedding: bool = False) -> int:
        total = super().num_params()
        return total - self.embedding.weight.numel() if non_embedding else total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """6 N for the weights, plus the SSD: per layer forward about 2 E (L + 2 N) + 2 G N L, x3 with backward."""
        c = self.config
        L = min(c.chunk_size, seq_len or c.block_size)
        per_layer = 2 * c.d_inner * (L + 2 * c.d_state) + 2 * c.n_groups * c.d_state * L
        return 6 * self.num_params(non_embedding=True) + 3 * c.n_layer * per_layer
