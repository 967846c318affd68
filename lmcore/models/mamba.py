"""Mamba: a selective state-space language model (Gu & Dao 2023), in plain PyTorch.

Shapes: B batch, T time, D model width (``n_embd``), E inner width
(``expand * D``), N state size per channel (``d_state``), R rank of the Δ
projection (``dt_rank``), K conv width (``d_conv``), V vocabulary.

One block, pre-norm and residual: ``x + mixer(rmsnorm(x))``, where the mixer is
1. ``in_proj``: D -> 2E, split into the signal x and the gate z;
2. a causal depthwise conv1d of width K over time, then SiLU: u;
3. ``x_proj``: u -> (Δ-rank input, B, C); ``dt_proj`` + softplus: Δ (B, T, E);
4. the selective scan, per channel e and state n, with A = -exp(A_log):
       Ā_t = exp(Δ_t A),  B̄_t u_t = Δ_t B_t u_t,  h_t = Ā_t h_{t-1} + B̄_t u_t,  y_t = C_t · h_t
   (zero-order hold for A, the Euler step for B, as the reference CUDA kernel does);
5. ``y + D u``, gated by SiLU(z), then ``out_proj``: E -> D.
A final RMSNorm, and logits through the token embedding (tied) or a separate head.

Two scans compute the same thing (step 4): ``selective_scan_ref`` is a plain
loop over time that anyone can check against the formula above, and
``selective_scan`` is the fast one used for training. The fast one processes
time in short chunks so that each step's (B, N, E) block stays in the CPU
cache, runs the recurrence in place, and has a hand-written backward pass (the
adjoint recurrence run backwards in time). On a CPU it keeps Ā and the states
for the backward (computing the exponentials twice costs more than storing them,
about 2 x T x B x E x N values per layer while training) up to a size limit;
past it, and on a GPU, where memory is scarcer, the backward recomputes them
from each chunk's first state. Nothing is kept when no gradient is wanted. It
never forms cumulative products of Ā, so nothing underflows and nothing is
divided by a tiny number; it is exactly the loop's arithmetic, reordered for the
machine. (A single time step, as in generation, takes the loop's one step
directly.)
Tests check the two against each other in float64, values and gradients.

Generation carries, per layer, the last K-1 conv inputs and the state h
(B, E, N): each new token costs the same whatever its position, and the
context is not limited by ``block_size``.

``attention_maps`` shows the hidden attention of Ali, Zimerman & Wolf (2024),
"The Hidden Attention of Mamba Models": the scan is y_i = Σ_{j<=i} α_ij u_j
per channel, with α_ij = C_i · (Π_{k=j+1..i} Ā_k) B̄_j, computed from the Δ, B
and C its hook points give.

Hook points (``lmcore.hooks``): ``embed``; per block ``hook_resid_pre``,
``mixer.hook_delta`` (B, T, E), ``mixer.hook_B`` and ``mixer.hook_C`` (B, T, N),
``mixer.hook_y`` (the gated scan output per channel, (B, T, E)),
``hook_mixer_out`` and ``hook_resid_post`` (B, T, D); ``final.hook_normalized``.
They fire in ``step`` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lmcore.errors import ConfigError
from lmcore.hooks import HookPoint, layer_names, run_with_cache
from lmcore.models.base import LanguageModel
from lmcore.models.config import ModelConfig
from lmcore.models.family import (
    BLOCK_SIZE,
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

# Time steps per chunk in the fast scan: long enough that the per-chunk work is a
# few large operations, short enough that a chunk's (chunk, B, N, E) blocks stay
# near the cache; measured best among 4, 8, 16, 32 on a 2-core CPU.
SCAN_CHUNK = 8

# The most the fast scan keeps for its backward per call (one layer) on a CPU;
# above it, the backward recomputes: a big model on a laptop must not run out of
# memory for a gain of a few tens of percent.
KEEP_STATES_MAX_BYTES = 256 * 2**20

# Δ initialisation (Gu & Dao 2023, section 3.6): dt log-uniform in [DT_MIN, DT_MAX],
# at least DT_FLOOR, stored in dt_proj.bias through the inverse of softplus.
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4

# Channel groups shown by attention_maps, and the largest (channels, T, T) block it
# builds at once (in elements), so long prompts do not need gigabytes.
ATTENTION_GROUPS = 4
_ATTENTION_BLOCK = 1 << 23


# --------------------------------------------------------------------------- scans


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan as a plain loop over time: slow, and obviously the formula.

    u, delta: (B, T, E); A: (E, N); B, C: (B, T, N); h0: (B, E, N) or None (zeros).
    Returns y (B, T, E) with y_t = C_t · h_t (no D skip, no gate) and h_T (B, E, N).
    """
    batch, _, width = u.shape
    h = u.new_zeros(batch, width, A.shape[1]) if h0 is None else h0  # (B, E, N)
    ys = []
    for u_t, d_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
        A_bar = torch.exp(d_t[:, :, None] * A)  # (B, E, N)
        Bu_bar = (d_t * u_t)[:, :, None] * B_t[:, None, :]  # (B, E, N)
        h = A_bar * h + Bu_bar  # (B, E, N)
        ys.append((h * C_t[:, None, :]).sum(-1))  # (B, E)
    return torch.stack(ys, dim=1), h  # (B, T, E), (B, E, N)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    chunk_size: int = SCAN_CHUNK,
    keep_states: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast selective scan; same arguments and results as ``selective_scan_ref``.

    Half-precision inputs are computed in float32 (a long recurrence in bf16 drifts)
    and the output is cast back to u's dtype. Gradients flow to every input,
    h0 included. ``keep_states`` chooses how the backward gets Ā and the states:
    kept from the forward (True: faster, about 2 x T x B x E x N more values held
    until the backward) or recomputed from each chunk's first state (False: a
    chunk-th of that). None keeps them on a CPU, where it measured up to 30%
    faster, as long as they take at most ``KEEP_STATES_MAX_BYTES`` per call, and
    recomputes them on a GPU, whose memory is the scarcer resource.
    """
    assert chunk_size >= 1
    dtype = u.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    batch, _, width = u.shape
    if h0 is None:
        h0 = u.new_zeros(batch, width, A.shape[1], dtype=work)
    if u.shape[1] == 0:  # nothing to scan: no output, the state passes through
        return u.new_zeros(u.shape), h0.to(work)
    args = [t.to(work) for t in (u, delta, A, B, C, h0)]
    if u.shape[1] == 1:  # one token (generation): the loop's single step is the shortest path
        y, h = selective_scan_ref(*args)
    else:
        if keep_states is None:
            kept_bytes = 2 * u.numel() * A.shape[1] * args[0].element_size()  # Ā and h: T x B x E x N each
            keep_states = u.device.type == "cpu" and kept_bytes <= KEEP_STATES_MAX_BYTES
        y, h = _SelectiveScan.apply(*args, chunk_size, keep_states)
    return y.to(dtype), h


# What the mixer calls. Under torch.compile the scan runs as it is, between the
# compiled parts of the model: tracing its loops would unroll every time step into
# the graph, which takes minutes to compile and gains nothing over these few large
# operations per chunk. The first Mamba built wraps it so (``_keep_scan_out_of_compile``):
# doing it at import would import torch._dynamo (seconds) wherever the registry is imported.
_scan = selective_scan


def _keep_scan_out_of_compile() -> None:
    global _scan
    if _scan is selective_scan:
        _scan = torch.compiler.disable(selective_scan)


def _chunk_states(delta, du, A_t, B, h, out=None):
    """Ā (n, B, N, E) and the states h_1..h_n (n, B, N, E) of one chunk, from the state h before it.

    delta, du: (n, B, E); A_t: (N, E); B: (n, B, N); h: (B, N, E). ``out`` is a
    pair of (L, B, N, E) buffers to fill (L >= n), or None for new tensors.
    """
    n = delta.shape[0]
    a_out, h_out = (None, None) if out is None else (out[0][:n], out[1][:n])
    a = torch.mul(delta.unsqueeze(2), A_t, out=a_out).exp_()  # Ā
    hs = torch.mul(du.unsqueeze(2), B.unsqueeze(-1), out=h_out)  # B̄u
    for i in range(n):
        hs[i].addcmul_(a[i], h)  # h_t = Ā_t h_{t-1} + B̄_t u_t, in place
        h = hs[i]
    return a, hs


class _SelectiveScan(torch.autograd.Function):
    """Chunked scan with a hand-written backward; see the module docstring.

    Inside, tensors are time-major and the state is laid out (T, B, N, E), so that
    a time step is one contiguous block and E is the long, vectorised axis.
    Forward, chunk by chunk: Ā = exp(Δ A) and B̄u for the chunk in one pass each,
    the recurrence h_t = Ā_t h_{t-1} + B̄_t u_t in place (one multiply-add per
    step), then y = C · h for the whole chunk as one batched product. When a
    gradient is wanted, the forward keeps either each chunk's Ā and states (the
    exponentials are the most expensive part: computing them once is faster) or
    only each chunk's first state, from which the backward recomputes the rest.
    Backward, chunk by chunk from the end: the adjoint G_t = C_t gy_t + Ā_{t+1} G_{t+1}
    runs backwards, and every gradient is read off G: dL/d(B̄u) = G,
    dL/d(Δ A)_t = G_t Ā_t h_{t-1}, dL/dh0 = Ā_1 G_1.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size, keep_states):  # type: ignore[override]
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.transpose(0, 1).contiguous()  # (T, B, E)
            delta = delta.transpose(0, 1).contiguous()  # (T, B, E)
            B = B.transpose(0, 1).contiguous()  # (T, B, N)
            C = C.transpose(0, 1).contiguous()  # (T, B, N)
            A_t = A.t().contiguous()  # (N, E)
            T, batch, width = u.shape
            L = min(chunk_size, T)
            grad = any(ctx.needs_input_grad)
            keep = grad and keep_states
            du = delta * u  # (T, B, E): Δu, so that B̄_t u_t = du_t B_t
            y = torch.empty_like(u)  # (T, B, E)
            h = h0.transpose(1, 2).contiguous()  # (B, N, E)
            A_bars, states, starts = [], [], []  # per chunk: Ā and states when kept, the state before it
            # Kept, each chunk gets new tensors; otherwise one pair of buffers serves every chunk.
            work = None if keep else tuple(u.new_empty(L, batch, A_t.shape[0], width) for _ in range(2))
            for t0 in range(0, T, L):
                sl = slice(t0, min(T, t0 + L))
                if grad:
                    starts.append(h)
                a, hs = _chunk_states(delta[sl], du[sl], A_t, B[sl], h, work)  # (n, B, N, E) each
                torch.matmul(C[sl].unsqueeze(2), hs, out=y[sl].unsqueeze(2))  # (n, B, 1, E): C_t · h_t
                if keep:
                    A_bars.append(a)
                    states.append(hs)
                    h = hs[-1]
                else:
                    h = hs[-1].clone()  # the buffers are reused by the next chunk
            if grad:
                ctx.save_for_backward(u, delta, du, A_t, B, C, *starts)
                ctx.A_bars, ctx.states, ctx.chunk = A_bars, states, L
            ctx.set_materialize_grads(False)
            return y.transpose(0, 1), h.transpose(1, 2).clone()  # (B, T, E), (B, E, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gh):  # type: ignore[override]
        u, delta, du, A_t, B, C, *starts = ctx.saved_tensors
        A_bars, states, L = ctx.A_bars, ctx.states, ctx.chunk  # read, never changed: a retained graph can run again
        with torch.autocast(device_type=u.device.type, enabled=False):
            T, batch, width = u.shape
            n_state = A_t.shape[0]
            gy = u.new_zeros(T, batch, width) if gy is None else gy.transpose(0, 1).contiguous()  # (T, B, E)
            g_du = torch.empty_like(u)  # (T, B, E)
            g_delta = torch.empty_like(u)  # (T, B, E): the part through Ā, for now
            gB = torch.empty_like(B)  # (T, B, N)
            gC = torch.empty_like(C)  # (T, B, N)
            gA_t = torch.zeros_like(A_t)  # (N, E)
            q_buf = u.new_empty(L, batch, n_state, width)
            work = None if A_bars else (torch.empty_like(q_buf), torch.empty_like(q_buf))
            # carry = Ā_{t+1} G_{t+1} for the step after the chunk being processed
            carry = u.new_zeros(batch, n_state, width) if gh is None else gh.transpose(1, 2).contiguous()
            for c in reversed(range(len(starts))):
                sl = slice(c * L, min(T, c * L + L))
                h_first = starts[c]  # h before the chunk, (B, N, E)
                if A_bars:  # kept by the forward
                    a, hs = A_bars[c], states[c]  # (n, B, N, E) each
                else:  # recomputed from the state before the chunk
                    a, hs = _chunk_states(delta[sl], du[sl], A_t, B[sl], h_first, work)
                n = a.shape[0]
                torch.sum(hs * gy[sl].unsqueeze(2), dim=-1, out=gC[sl])  # Σ_e gy h
                g = torch.mul(gy[sl].unsqueeze(2), C[sl].unsqueeze(-1))  # (n, B, N, E): C_t gy_t
                g[-1].add_(carry)
                for i in range(n - 2, -1, -1):
                    g[i].addcmul_(a[i + 1], g[i + 1])  # G_t = C_t gy_t + Ā_{t+1} G_{t+1}
                carry = a[0] * g[0]
                torch.matmul(B[sl].unsqueeze(2), g, out=g_du[sl].unsqueeze(2))  # Σ_n G B
                torch.sum(g * du[sl].unsqueeze(2), dim=-1, out=gB[sl])  # Σ_e G Δu
                q = torch.mul(a, g, out=q_buf[:n])  # dL/d(Δ A) = G Ā h_{t-1}
                q[1:].mul_(hs[:-1])
                q[0].mul_(h_first)
                torch.sum(q * A_t, dim=2, out=g_delta[sl])  # Σ_n q A
                gA_t += q.mul_(delta[sl].unsqueeze(2)).sum((0, 1))  # Σ_{t,b} q Δ
            g_u = g_du * delta
            g_delta += g_du * u
            return (
                g_u.transpose(0, 1),
                g_delta.transpose(0, 1),
                gA_t.t(),
                gB.transpose(0, 1),
                gC.transpose(0, 1),
                carry.transpose(1, 2),
                None,
                None,
            )


def hidden_attention(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Mamba's hidden attention matrices, one per channel, for one sequence.

    delta: (T, E); A: (E, N); B, C: (T, N). Returns α (E, T, T) with
    α[e, i, j] = Σ_n C_i[n] exp(A[e, n] Σ_{k=j+1..i} Δ_k[e]) Δ_j[e] B_j[n] for j <= i
    and 0 above the diagonal, so that the scan's output is y_i[e] = Σ_j α[e, i, j] u_j[e].
    The decay is computed from differences of a float64 cumulative sum of Δ
    (float32 on MPS), clamped at 0 and masked, so it never overflows.
    """
    T = delta.shape[0]
    wide = torch.float32 if delta.device.type == "mps" else torch.float64  # MPS has no float64
    cum = torch.cumsum(delta.to(wide), dim=0)  # (T, E)
    seg = (cum[:, None, :] - cum[None, :, :]).clamp_(min=0).to(delta.dtype)  # (T_i, T_j, E)
    seg = seg.permute(2, 0, 1)  # (E, T_i, T_j)
    causal = torch.ones(T, T, dtype=torch.bool, device=delta.device).tril()
    alpha = torch.zeros_like(seg)  # (E, T, T)
    for n in range(A.shape[1]):
        cb = C[:, n, None] * B[None, :, n]  # (T_i, T_j)
        alpha += torch.exp(seg * A[:, n, None, None]) * cb  # (E, T, T)
    alpha *= delta.t()[:, None, :]  # Δ_j
    return alpha.masked_fill_(~causal, 0.0)


# --------------------------------------------------------------------------- model


@dataclass
class MambaCache:
    """Generation state: per layer, the last K-1 conv inputs and the SSM state."""

    conv: list[torch.Tensor]  # per layer (B, K-1, E)
    ssm: list[torch.Tensor]  # per layer (B, E, N)
    position: int = 0  # tokens consumed so far


class MambaMixer(nn.Module):
    """The selective SSM mixer of one block: (B, T, D) -> (B, T, D)."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        # Hook points (lmcore.hooks): the scan's Δ (B, T, E), B and C (B, T, N), and its gated output y (B, T, E).
        self.hook_delta = HookPoint(f"blocks.{layer}.mixer.hook_delta")
        self.hook_B = HookPoint(f"blocks.{layer}.mixer.hook_B")
        self.hook_C = HookPoint(f"blocks.{layer}.mixer.hook_C")
        self.hook_y = HookPoint(f"blocks.{layer}.mixer.hook_y")
        D, E, N, R, K = config.n_embd, config.d_inner, config.d_state, config.dt_rank_value, config.d_conv
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = E, N, R, K
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, bias=True)  # weight (E, 1, K); applied by hand
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, D, bias=False)
        # A and D are dynamics, not weights to shrink: marked (as mamba-ssm marks them)
        # so that an optimizer setup can leave weight decay off them.
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """S4D-real A, unit D skip, and the Δ projection's standard initialisation."""
        N = self.d_state
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(self.d_inner, N))
        self.D.fill_(1.0)
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        u = torch.rand(self.d_inner)
        dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)).clamp_(min=DT_FLOOR)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) == dt

    def ssm_inputs(
        self, x: torch.Tensor, conv_state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Everything the scan needs, from the normed input x (B, T, D).

        Returns u (B, T, E), Δ (B, T, E), A (E, N), B (B, T, N), C (B, T, N),
        the gate z (B, T, E) and the new conv state (B, K-1, E).
        """
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        u, new_conv = causal_conv1d(xi, self.conv1d.weight[:, 0, :], self.conv1d.bias, conv_state)  # (B, T, E)
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (B, T, E)
        A_log = self.A_log if self.A_log.dtype in (torch.float32, torch.float64) else self.A_log.float()
        A = -torch.exp(A_log)  # (E, N), at least float32
        return u, delta, A, B, C, z, new_conv

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, D), optional (conv, ssm) state -> (B, T, D) and the state after x."""
        conv_state, ssm_state = state if state is not None else (None, None)
        u, delta, A, B, C, z, new_conv = self.ssm_inputs(x, conv_state)
        delta, B, C = self.hook_delta(delta), self.hook_B(B), self.hook_C(C)
        y, h = _scan(u, delta, A, B, C, h0=ssm_state)  # (B, T, E), (B, E, N)
        y = self.hook_y(torch.addcmul(y, u, self.D) * F.silu(z))  # (y + D u) gated, (B, T, E)
        return self.out_proj(y), (new_conv, h)


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(rmsnorm(x))."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        # Hook points (lmcore.hooks), each (B, T, D); they fire in generation too (step runs this forward).
        self.hook_resid_pre = HookPoint(f"blocks.{layer}.hook_resid_pre")
        self.hook_mixer_out = HookPoint(f"blocks.{layer}.hook_mixer_out")
        self.hook_resid_post = HookPoint(f"blocks.{layer}.hook_resid_post")
        self.norm = RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mixer = MambaMixer(config, layer)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.hook_resid_pre(x)
        out, state = self.mixer(self.norm(x), state)
        return self.hook_resid_post(x + self.hook_mixer_out(out)), state  # (B, T, D)


def _diagram(c: ModelConfig) -> Diagram:
    inner = c.d_inner
    return Diagram(
        embed=embedding_node(c),
        block=(
            ("n1", "RMSNorm"),
            ("inproj", f"input projection\n{c.n_embd} → x, z ({inner} each)"),
            ("conv", f"causal depthwise conv1d (width {c.d_conv}) + SiLU"),
            ("ssm", f"selective scan\ninput-dependent Δ, B, C; state N = {c.d_state}"),
            ("gate", "× SiLU(z)"),
            ("outproj", f"output projection\n{inner} → {c.n_embd}"),
            ("add1", "+"),
        ),
        residuals=(("in", "add1"),),
        final_norm="RMSNorm",
    )


def _activations(c: ModelConfig, batch_size: int) -> int:
    """B T E (10 + 3 N) per layer: the scan keeps Ā and the state per step and channel."""
    return batch_size * c.block_size * c.expand * c.n_embd * (10 + 3 * c.d_state)


FAMILY = Family(
    presets={
        "mamba": Preset(
            "Mamba (state space)",
            "A selective state-space model: instead of attention, each layer carries a fixed-size state along "
            "the sequence and decides, token by token, what to keep. Cost grows linearly with length.",
            dict(norm="rmsnorm", bias=False, tie_weights=True, d_state=16, d_conv=4, expand=2),
        ),
    },
    sizes={
        "tiny": dict(n_layer=2, n_embd=64, block_size=64, d_state=16, d_conv=4, expand=2),
        "small": dict(n_layer=4, n_embd=128, block_size=64, d_state=16, d_conv=4, expand=2),
        "GPU": dict(n_layer=6, n_embd=384, block_size=256, d_state=16, d_conv=4, expand=2),
    },
    fields=(
        N_LAYER,
        N_EMBD,
        BLOCK_SIZE,
        Field("d_state"),
        Field("d_conv"),
        Field("expand"),
        TIE_WEIGHTS,
    ),
    diagram=_diagram,
    activations=_activations,
    attention="implicit attention",
    attention_unit="channel group",
    hf_names=("mamba",),
)


def one_sequence(idx: torch.Tensor) -> torch.Tensor:
    """idx as (1, T) with T >= 1, or ConfigError: the attention maps are of one sequence."""
    if idx.dim() == 1:
        idx = idx[None]
    if idx.dim() != 2 or idx.shape[0] != 1 or idx.shape[1] < 1:
        raise ConfigError(f"attention maps need one non-empty sequence of token ids, got shape {tuple(idx.shape)}")
    return idx


class StateSpaceLM(LanguageModel):
    """What Mamba and Mamba-2 share around their blocks: an embedding, a stack of
    residual blocks (``layers``, each returning ``(x, state)``), a final norm and a
    head (``None`` when tied to the embedding)."""

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V)
        x = self.hook_normalized(self.norm_f(x))
        return F.linear(x, self.embedding.weight) if self.head is None else self.head(x)

    def residual_blocks(self) -> nn.ModuleList:
        return self.layers

    def scan_inputs(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per layer, (Δ, A, B, C) of one sequence idx (1, T): Δ, B and C read at the mixers' hook
        points in one pass (in eval mode), in float32; A = -exp(A_log), in float32 or float64."""
        names = [layer_names(self, f"mixer.hook_{k}") for k in ("delta", "B", "C")]
        was_training = self.training
        self.eval()
        try:
            _, cache = run_with_cache(self, idx, [n for group in names for n in group])
        finally:
            self.train(was_training)
        out = []
        for i, layer in enumerate(self.layers):
            delta, B, C = (cache[group[i]][0].float() for group in names)
            A_log = layer.mixer.A_log
            A = -torch.exp(A_log if A_log.dtype in (torch.float32, torch.float64) else A_log.float())
            out.append((delta, A, B, C))
        return out

    def readout(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V)
        x = self.norm_f(x)
        return F.linear(x, self.embedding.weight) if self.head is None else self.head(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(self.embedding(idx))  # (B, T, D)
        for layer in self.layers:
            x, _ = layer(x)
        return self._logits(x)  # (B, T, V)


class Mamba(StateSpaceLM):
    """Mamba language model; see the module docstring.

    Parameter names (checkpoint keys): ``embedding.weight``, ``layers.{i}.norm.weight``,
    ``layers.{i}.mixer.{in_proj,x_proj,out_proj}.weight``, ``layers.{i}.mixer.conv1d.{weight,bias}``,
    ``layers.{i}.mixer.dt_proj.{weight,bias}``, ``layers.{i}.mixer.A_log``, ``layers.{i}.mixer.D``,
    ``norm_f.weight``, and ``head.weight`` only when the head is not tied.
    """

    family: ClassVar[Family] = FAMILY
    max_context = None

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        _keep_scan_out_of_compile()
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.hook_embed = HookPoint("embed")  # (B, T, D)
        self.hook_normalized = HookPoint("final.hook_normalized")  # (B, T, D) after the final norm
        self.layers = nn.ModuleList(MambaBlock(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.n_embd, eps=config.norm_eps)
        # Tied: the logits use the embedding matrix itself, so no second name holds it.
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
        # Taps past the context only ever meet padding, at a cost; Mamba's own 4 is always allowed.
        if config.d_conv > max(config.block_size, 4):
            raise ConfigError(
                f"d_conv (the convolution width) must be at most the context, block_size {config.block_size}, "
                f"got {config.d_conv:,}; Mamba uses 4",
                "d_conv", ("block_size",),
            )  # fmt: skip

    def init_cache(self, batch_size: int = 1, device: torch.device | str | None = None) -> MambaCache:
        device = self.device if device is None else torch.device(device)
        dtype = self.embedding.weight.dtype
        state_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # as the scan returns it
        cfg = self.config
        return MambaCache(
            conv=[torch.zeros(batch_size, cfg.d_conv - 1, cfg.d_inner, device=device, dtype=dtype) for _ in self.layers],
            ssm=[torch.zeros(batch_size, cfg.d_inner, cfg.d_state, device=device, dtype=state_dtype) for _ in self.layers],
        )

    def step(self, idx_t: torch.Tensor, cache: MambaCache) -> tuple[torch.Tensor, MambaCache]:
        """idx_t (B, t) -> logits (B, t, V) and the cache after those tokens.

        t = 1 is the usual case; a longer t (a whole prompt) goes through the fast
        scan in one call, starting from the cached state.
        """
        x = self.hook_embed(self.embedding(idx_t))  # (B, t, D)
        conv, ssm = [], []
        for layer, c, h in zip(self.layers, cache.conv, cache.ssm):
            x, (c, h) = layer(x, (c, h))
            conv.append(c)
            ssm.append(h)
        return self._logits(x), MambaCache(conv, ssm, cache.position + idx_t.shape[1])

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor, n_groups: int = ATTENTION_GROUPS) -> torch.Tensor:
        """Hidden attention per layer, in channel groups: idx (1, T) -> (n_layer, G, T, T).

        Each channel e of a layer's scan has its own causal matrix α_e (see
        ``hidden_attention``). The E channels are cut into ``n_groups`` contiguous
        groups of (nearly) equal size and each map is the mean of |α_e| over its
        group: absolute values, because α can be negative (C·B has either sign)
        and a signed mean would cancel channels that look at the same token in
        opposite directions. Rows are not normalised; the diagonal holds the
        current token's own weight. Values are float32 on the model's device.
        """
        idx = one_sequence(idx)
        n_groups = max(1, min(n_groups, self.config.d_inner))
        T = idx.shape[1]
        maps = []
        for delta, A, B, C in self.scan_inputs(idx):  # A: (E, N)
            per_group = []
            for channels in torch.arange(self.config.d_inner, device=idx.device).tensor_split(n_groups):
                total = torch.zeros(T, T, device=idx.device)
                step = max(1, _ATTENTION_BLOCK // (T * T))
                for block in channels.split(step):
                    total += hidden_attention(delta[:, block], A[block], B, C).abs_().sum(0)
                per_group.append(total / len(channels))
            maps.append(torch.stack(per_group))
        return torch.stack(maps)  # (n_layer, G, T, T)

    def num_params(self, non_embedding: bool = False) -> int:
        total = super().num_params()
        return total - self.embedding.weight.numel() if non_embedding else total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """6 N for the weights, plus the scan: about 7 E N per layer forward, x3 with backward."""
        cfg = self.config
        return 6 * self.num_params(non_embedding=True) + 3 * 7 * cfg.n_layer * cfg.d_inner * cfg.d_state
