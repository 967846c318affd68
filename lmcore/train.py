"""Training: TrainConfig, the events callbacks receive, and the Trainer.

Progress is reported through callbacks (``on_step``, ``on_eval``), never by
printing: ``ProgressBar`` (the CLI's, or ``Trainer(..., progress=True)``)
draws a tqdm bar, the app's job stores events for polling, tests append them
to a list. The Trainer reads and writes no files: it cuts
batches from the token sources its caller hands it (``lmcore.batches``; the
shards of ``lmcore.shards`` map their files themselves), and checkpoints are
saved by a callback (``lmcore.checkpoint.CheckpointCallback``).

The recipe is nanoGPT's: AdamW with weight decay on matrices only (biases,
norms' gains and other vectors are not decayed), a linear learning-rate warmup
then a cosine decay to ``min_lr``, gradient clipping by global norm, and bf16
autocast on CUDA (fp32 elsewhere). Losses are measured on fixed evaluation
batches drawn once from their own seeded generator, so every evaluation of a
run (and of runs with other seeds on the same data) sees the same windows.

Determinism: batches come from a ``torch.Generator`` seeded with
``TrainConfig.seed``, dropout from torch's global generator, seeded at the
start of a fresh run. ``Trainer.state_dict()`` captures the optimizer, the step
and both generators, so a run stopped and resumed gives the same losses as an
uninterrupted one.

Shapes: B batch, T block size, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lmcore.batches import TokenSource, as_source, batch_from_starts, check_length
from lmcore.configs import config_from_dict
from lmcore.device import DEVICE_CHOICES, resolve_device
from lmcore.distributed import world
from lmcore.errors import CheckpointError, ConfigError, DataError, LMCoreError, TrainingError
from lmcore.models.base import lm_loss
from lmcore.settings import check, setting

DTYPES = ("auto", "float32", "bfloat16")
OPTIMIZERS = ("adamw", "muon", "sgd")
SCHEDULES = ("steps", "time")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}
_LOG_INTERVAL_S = 10.0  # how often a progress bar written to a file (not a terminal) is redrawn


# The most windows one step (batch_size x grad_accum) or one evaluation (eval_iters x
# batch_size) may draw: far past any run that finishes (GPT-3 took 1,600 a step), and
# their start offsets alone stay under 10 MB.
MAX_WINDOWS = 1 << 20


_COUNT = 2**31 - 1  # steps and evaluations: far past any run, far below an overflow
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """How a run trains. Each field is declared once (``lmcore.settings``): its
    bounds, help, command-line flag, page-address key and widget come from here."""

    batch_size: int = setting(
        12, "Text windows per step.", low=1, high=MAX_WINDOWS,
        key="batch", label="Batch size", widget="number", page=(1, 1024), step=1, page_default=16,
    )  # fmt: skip
    max_iters: int = setting(
        2000, "Optimizer steps in total (a resumed run continues up to this number).", low=1, high=_COUNT,
        key="iters", label="Iterations", widget="number", page=(1, 1_000_000), step=50, page_default=300,
    )  # fmt: skip
    lr: float = setting(
        1e-3, "Peak step size; it warms up linearly, then decays along a cosine to a tenth (or the final rate).", what="the learning rate", low=0, low_open=True,
        key="lr", label="Learning rate", widget="number", page=(1e-6, 1.0), step=1e-4, fmt="%.4f", page_default=2e-3,
    )  # fmt: skip
    # cosine decays to this; None = lr / 10
    min_lr: float | None = setting(
        None, "Where the cosine ends (default: a tenth of the peak).", low=0,
        key="min_lr", label="Final learning rate (empty: a tenth of the peak)", widget="number", page=(0.0, 1.0),
        step=1e-4, fmt="%.5f",
    )  # fmt: skip
    warmup_iters: int = setting(
        100, "Steps of linear warm-up to the peak learning rate.", low=0, high=_COUNT,
        key="warmup", label="Warm-up steps", widget="number", page=(0, 100_000), step=10, page_default=20,
    )  # fmt: skip
    weight_decay: float = setting(
        0.1, "Decay of the matrices' weights (AdamW's, decoupled); vectors are not decayed.", low=0, key="wd", label="Weight decay", widget="number", page=(0.0, 10.0), step=0.01, fmt="%.3f",
    )  # fmt: skip
    beta1: float = setting(
        0.9, "AdamW's first moment decay (SGD's momentum).", low=0, high=1, high_open=True,
        key="beta1", label="β1 (momentum)", widget="number", page=(0.0, 0.999), step=0.01, fmt="%.3f",
    )  # fmt: skip
    beta2: float = setting(
        0.99, "AdamW's second moment decay.", low=0, high=1, high_open=True,
        key="beta2", label="β2", widget="number", page=(0.0, 0.9999), step=0.001, fmt="%.4f",
    )  # fmt: skip
    grad_clip: float = setting(
        1.0, "Clip the gradient's norm to this (0 = off).", what="grad_clip (0 = off)", low=0,
        key="clip", label="Gradient clipping (0 = off)", widget="number", page=(0.0, 100.0), step=0.1, fmt="%.2f",
    )  # fmt: skip
    eval_interval: int = setting(
        250, "Steps between evaluations; each one saves the checkpoint and writes a text sample.", low=1, high=_COUNT,
        key="eval", label="Evaluate every", widget="number", page=(1, 100_000), step=10, page_default=50,
    )  # fmt: skip
    eval_iters: int = setting(
        20, "Batches per evaluation: more give a steadier loss estimate, slower evaluations.", low=1, high=MAX_WINDOWS,
        key="eval_iters", label="Evaluation batches", widget="number", page=(1, 1000), step=1, page_default=10,
    )  # fmt: skip
    seed: int = setting(
        1337, f"Same seed, same settings: the same run (0 to {MAX_SEED:,}).", low=0, high=MAX_SEED,
        key="seed", label="Seed", widget="number", page=(0, 2**31 - 1), step=1,
    )  # fmt: skip
    time_budget_s: float | None = setting(
        None, "Stop after this many seconds (with a save).", what="the time budget", low=0, low_open=True, flag="--time-budget", metavar="S",
        key="budget", label="Time budget (seconds, 0 = none)", widget="number", page=(0, 86_400), page_kind="int",
        step=30, off=0,
    )  # fmt: skip
    device: str = setting(
        "auto", "Where the run trains (auto: a GPU if there is one).", choices=DEVICE_CHOICES, strict=False, key="device", label="Device", widget="select",
    )  # fmt: skip
    compile: bool = setting(False, "Use torch.compile (faster steps after a slow first one).", key="compile", label="torch.compile", widget="checkbox")
    # auto = bf16 autocast on CUDA, fp32 elsewhere
    dtype: str = setting(
        "auto", "auto: bf16 autocast on CUDA, fp32 elsewhere.", choices=DTYPES, strict=False,
        key="dtype", label="Precision", widget="select",
    )  # fmt: skip
    # the fixed evaluation windows; shared by runs with different seeds
    eval_seed: int = setting(
        0, "Seed of the fixed evaluation windows, shared by runs with other seeds.", low=0, high=MAX_SEED,
        key="eval_seed", label="Evaluation seed", widget="number", page=(0, 2**31 - 1), step=1,
    )  # fmt: skip
    # micro-batches of batch_size per process in each optimizer step
    grad_accum: int = setting(
        1, "Micro-batches per process in each step (default 1).", low=1, high=MAX_WINDOWS, metavar="K",
        key="accum", label="Gradient accumulation", widget="number", page=(1, 1024), step=1,
    )  # fmt: skip
    # stop after this many evaluations without a better val loss; None = never
    patience: int | None = setting(
        None, "Stop after this many evaluations without a better validation loss (default: never).", low=1, high=_COUNT,
        metavar="N", key="patience", label="Patience (evaluations, 0 = never stop early)", widget="number",
        page=(0, 10_000), step=1, off=0,
    )  # fmt: skip
    # adamw: AdamW on everything. muon: Muon (orthogonalised momentum) on the hidden
    # matrices at muon_lr, AdamW at lr on the rest. sgd: SGD with Nesterov momentum beta1.
    optimizer: str = setting(
        "adamw", "adamw (default); muon: Muon on the hidden matrices, AdamW on the rest; sgd: SGD with momentum.",
        choices=OPTIMIZERS, key="optimizer", label="Optimizer", widget="select",
    )  # fmt: skip
    # Muon's peak learning rate; the schedule scales it as it scales lr
    muon_lr: float = setting(
        0.02, "Peak rate of Muon's matrices; the same warm-up and cosine.", what="the Muon learning rate", low=0, low_open=True,
        key="muon_lr", label="Muon learning rate", widget="number", page=(1e-5, 10.0), step=0.005, fmt="%.4f",
    )  # fmt: skip
    # steps: warmup and cosine follow the step count (max_iters). time: they follow the
    # elapsed share of time_budget_s, so a run ends its decay inside the budget on a slow
    # machine and a fast one alike; max_iters is then only a cap.
    schedule: str = setting(
        "steps", "Warm-up and decay follow the steps (default) or the elapsed share of the time budget.",
        choices=SCHEDULES, key="schedule", label="Schedule follows", widget="select",
    )  # fmt: skip

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine ends at."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys are rejected with ConfigError."""
        return config_from_dict(cls, d, "a training config", "unknown training setting(s) {}; known: {}")

    def validate(self) -> "TrainConfig":
        """Check every value; raise ConfigError naming the bad one and the fix. Returns self.

        Each field's kind and bounds are its declaration's (``lmcore.settings.check``);
        what ties fields together is checked here.
        """
        check(self)
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"min_lr must be between 0 and lr ({self.lr}), got {self.min_lr}", "min_lr", ("lr",))
        if self.warmup_iters > self.max_iters:
            raise ConfigError(
                f"warmup_iters must be between 0 and max_iters ({self.max_iters}), got {self.warmup_iters}",
                "warmup_iters", ("max_iters",),
            )  # fmt: skip
        # A step draws batch_size x grad_accum windows, an evaluation eval_iters x batch_size: bound both.
        for what, n, names in (("batch_size x grad_accum", self.batch_size * self.grad_accum, ("batch_size", "grad_accum")),
                               ("eval_iters x batch_size", self.eval_iters * self.batch_size, ("eval_iters", "batch_size"))):  # fmt: skip
            if n > MAX_WINDOWS:
                raise ConfigError(f"{what} is {n:,} windows, over the limit of {MAX_WINDOWS:,}; lower them", *names[:1], names)
        if self.schedule == "time" and self.time_budget_s is None:
            raise ConfigError(
                "a schedule shaped by time needs a time budget; set time_budget_s, or use schedule=steps", "schedule"
            )
        if not (self.device in DEVICE_CHOICES or self.device.startswith("cuda:")):
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICE_CHOICES)}", "device")
        if _DTYPE_ALIASES.get(self.dtype, self.dtype) not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}", "dtype")
        return self


@dataclass(frozen=True, slots=True)  # slots: a long run keeps one per step
class TrainEvent:
    """What a callback is told after a step (and, with val_loss set, after an eval)."""

    step: int  # optimizer steps done so far (1-based after the first step)
    max_iters: int
    loss: float  # training loss of this step's batch
    lr: float
    tokens_seen: int
    tokens_per_s: float  # throughput of the recent steps
    grad_norm: float
    elapsed_s: float
    train_loss: float | None = None  # mean over the fixed eval batches, at evals only
    val_loss: float | None = None
    val_ppl: float | None = None
    val_acc: float | None = None
    val_bpb: float | None = None  # bits per UTF-8 byte of the validation text, when a BitsPerByteCallback runs
    base_val_loss: float | None = None  # a fine-tuning run's loss on the base's own text (finetune.BaseLossCallback)
    sample: str | None = None  # a short generated text, when a callback asks for one
    # per layer and head, at evals when a HeadScoresCallback runs: previous_token, first_token, induction
    head_scores: dict[str, list[list[float]]] | None = None

    @property
    def is_eval(self) -> bool:
        return self.val_loss is not None


def lr_schedule(step: int, cfg: TrainConfig, elapsed_s: float | None = None) -> float:
    """The learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr.

    Warmup climbs lr/warmup, 2 lr/warmup, ... reaching ``lr`` at step warmup-1;
    the cosine then falls from ``lr`` to ``min_lr`` over the remaining steps
    and stays there past ``max_iters``.

    With ``schedule="time"`` and ``elapsed_s`` (seconds of this run so far) the
    same shape follows the elapsed share of ``time_budget_s`` instead: warmup
    takes the share warmup_iters / max_iters of the budget (or warmup_iters
    steps, whichever ends first, so that no step runs at a learning rate of
    zero), the cosine the rest, and the budget's end is min_lr.
    """
    lr, min_lr = cfg.lr, cfg.final_lr
    if cfg.schedule == "time" and elapsed_s is not None and cfg.time_budget_s:
        share = elapsed_s / cfg.time_budget_s  # 0 .. 1
        warm = cfg.warmup_iters / cfg.max_iters
        if share < warm:
            return lr * min(1.0, max(share / warm, (step + 1) / cfg.warmup_iters))
        if share >= 1.0:
            return min_lr
        progress = (share - warm) / (1.0 - warm)  # 0 .. 1
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if step < cfg.warmup_iters:
        return lr * (step + 1) / cfg.warmup_iters
    span = cfg.max_iters - cfg.warmup_iters
    if span <= 0 or step >= cfg.max_iters:
        return min_lr
    progress = (step - cfg.warmup_iters) / span  # 0 .. 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights of the model's hidden linear layers: what Muon orthogonalises.

    Every ``nn.Linear`` weight except the output head's (``lm_head`` or
    ``head``) and the embeddings' (a tied head is the embedding). Embeddings,
    norms, biases, convolutions and free parameters such as Mamba's ``A_log``
    and ``D`` are not among them, nor is anything that is not 2-D.
    """
    heads = {getattr(model, name, None) for name in ("lm_head", "head")}
    exclude = {id(m.weight) for m in model.modules() if m in heads or isinstance(m, torch.nn.Embedding)}
    out: dict[int, torch.nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m not in heads:
            w = m.weight
            if w.requires_grad and w.dim() == 2 and id(w) not in exclude:
                out.setdefault(id(w), w)
    return list(out.values())


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton-Schulz iterations in float32 instead of bf16: the CPU's Muon.

    torch's Muon orthogonalises in bf16, which a GPU's tensor cores run fast;
    a CPU without bf16 matrix units runs it several times slower than float32
    (one iteration on a 128 x 512 matrix: 184 ms against 31 ms on the 2-core
    test machine), which made a Muon step of the baby GPT cost seconds. The
    update is torch's (momentum, Nesterov, the quintic iteration with the
    group's coefficients, decoupled weight decay, the step scaled by
    sqrt(max(1, rows / cols))), and so are the state (``momentum_buffer``) and
    the groups: a state saved by either loads into the other.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            a, b, c = group["ns_coefficients"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                x = update.float()  # (rows, cols); iterate on the wide orientation
                tall = x.size(0) > x.size(1)
                if tall:
                    x = x.T
                x = x / x.norm().clamp(min=group["eps"])  # spectral norm at most 1
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                if tall:
                    x = x.T
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(x.to(p.dtype), alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))
        return loss


class Optimizers:
    """Several torch optimizers stepped as one: Muon on the hidden matrices, AdamW on the rest.

    It offers what the Trainer uses of an optimizer: ``param_groups`` (the live
    groups of all of them, in order), ``step``, ``zero_grad``, ``state_dict``
    and ``load_state_dict``.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"the state holds {len(states)} optimizers, this run has {len(self.optimizers)}")
        for opt, s in zip(self.optimizers, states):
            opt.load_state_dict(s)


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer | Optimizers:
    """The optimizer ``cfg.optimizer`` names, over every trainable parameter (shared ones once).

    Weight decay applies to tensors of 2 or more dimensions only (matrices,
    embeddings): decaying biases and norm gains pulls them towards 0 for no
    benefit, hence the split (as in nanoGPT). A model can also opt a matrix out
    by setting ``p._no_weight_decay = True`` (Mamba's A_log: decay would pull
    every A towards -1).

    - ``adamw``: AdamW (betas beta1, beta2); fused on CUDA, foreach elsewhere.
    - ``muon``: ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 Newton-Schulz
      steps; ``Float32Muon`` off CUDA) at ``muon_lr`` on
      ``hidden_matrices(model)``, AdamW at ``lr`` on the rest (embeddings,
      head, norms, biases, Mamba's A_log, D and conv); returned as one
      ``Optimizers``.
    - ``sgd``: SGD with Nesterov momentum ``beta1``.

    Each group carries ``lr_scale``, its peak learning rate over ``lr``: the
    Trainer sets a group's rate to the schedule's value times it, so the
    warmup and cosine apply to every group.
    """
    hidden = {id(p) for p in hidden_matrices(model)} if cfg.optimizer == "muon" else set()
    decay, no_decay, muon = [], [], []
    for p in model.parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        if id(p) in hidden:
            muon.append(p)
        elif p.dim() < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if cfg.optimizer == "sgd":
        kwargs: dict[str, Any] = {"lr": cfg.lr, "momentum": cfg.beta1, "nesterov": cfg.beta1 > 0}
    else:
        kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    if device.type == "cuda":
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    rest = (torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.AdamW)(groups, **kwargs)
    if not muon:
        return rest
    muon_class = torch.optim.Muon if device.type == "cuda" else Float32Muon
    groups = [{"params": muon, "lr_scale": cfg.muon_lr / cfg.lr}]
    return Optimizers(muon_class(groups, lr=cfg.muon_lr, weight_decay=cfg.weight_decay), rest)


def _as_ids(ids: Any, what: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        try:
            ids = torch.as_tensor(ids, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"the {what} must be a 1-D sequence of token ids") from None
    if ids.dim() != 1:
        raise DataError(f"the {what} must be a 1-D tensor of token ids, got shape {list(ids.shape)}")
    if ids.dtype != torch.long:
        ids = ids.long()
    return ids.cpu()


def _as_source(ids: Any, what: str) -> TokenSource:
    """A tensor (or list) of ids as a TokenSource; a TokenSource as it is."""
    if hasattr(ids, "windows") and hasattr(ids, "id_range"):
        return ids
    return as_source(_as_ids(ids, what))


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; no autocast when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def score_windows(
    model: torch.nn.Module,
    windows: Iterable[torch.Tensor],
    device: torch.device | str | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The evaluation loop: summed next-token loss and correct guesses of ``model`` over ``windows``.

    Each window is a (B, T + 1) tensor of ids whose last T tokens are predicted
    from the ones before them (B and T may differ from one window to the
    next). Returns ``[loss sum, correct predictions, predictions]`` as one
    tensor on ``device`` (by default the model's), so a caller reads it back
    with a single sync: the mean loss is the first number over the third.
    The model runs in eval mode (through ``forward``, e.g. its compiled form,
    when given) and is put back in the mode it was in.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    forward = model if forward is None else forward
    # float64 sums stay accurate over long texts; MPS has no float64.
    sums = torch.zeros(3, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    n = 0
    was_training = model.training
    model.eval()
    try:
        for w in windows:
            masked = isinstance(w, tuple)  # (ids, targets): a loss mask, untrained targets are -100
            w, t = (w[0].to(device), w[1].to(device)) if masked else (w.to(device), None)
            x, y = w[:, :-1], (t if masked else w)[:, 1:]
            with _autocast(device, autocast_dtype):
                logits = forward(x)  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum"
            )
            correct = (logits.argmax(-1) == y).sum()
            sums[:2] += torch.stack([loss.to(sums.dtype), correct.to(sums.dtype)])
            if masked:
                sums[2] += (y != -100).sum().to(sums.dtype)
            else:
                n += y.numel()
    finally:
        model.train(was_training)
    sums[2] += n  # a scalar add: no transfer, no sync
    return sums


def _eval_window(ids: TokenSource, starts: torch.Tensor, length: int) -> Any:
    """The windows at ``starts``, with their targets when the source carries a loss mask."""
    if hasattr(ids, "target_windows"):
        return ids.windows(starts, length), ids.target_windows(starts, length)
    return ids.windows(starts, length)


class Trainer:
    """Trains ``model`` on token ids; see the module docstring.

    ``train_ids`` and ``val_ids`` are 1-D long tensors (on any device; batches
    are cut on the CPU) or ``TokenSource``s (e.g. memmapped shards from
    ``lmcore.shards``). Under torchrun (a process group of several ranks) the
    model is wrapped in DistributedDataParallel; each step draws one global
    batch of world_size x grad_accum micro-batches from the seeded generator,
    and each rank trains on its own share, so the steps do not depend on how
    the work is spread. Rank 0 alone evaluates and calls ``on_eval``. A callback is any object with some of ``on_start(trainer)``,
    ``on_step(event)``, ``on_eval(event)``, ``on_end(result)``. ``stop()`` may be
    called from any thread; the run ends after the current step, evaluates and
    returns. ``progress=True`` adds a ``ProgressBar`` (on stderr in a terminal, a
    widget in a notebook); without it the Trainer prints nothing. Another thread that reads the weights while training goes on
    should hold ``trainer.lock``: the optimizer updates them under it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_ids: torch.Tensor | TokenSource,
        val_ids: torch.Tensor | TokenSource,
        config: TrainConfig,
        callbacks: Any = (),
        device: torch.device | str | None = None,
        progress: bool = False,
    ):
        self.config = config.validate()
        self.device = device if isinstance(device, torch.device) else resolve_device(device or config.device)
        self.model = model.to(self.device)
        self.block_size: int = model.config.block_size
        self.train_ids = _as_source(train_ids, "training split")
        self.val_ids = _as_source(val_ids, "validation split")
        check_length(self.train_ids, self.block_size, "training split")
        check_length(self.val_ids, self.block_size, "validation split")
        vocab = model.config.vocab_size
        for ids, what in ((self.train_ids, "training split"), (self.val_ids, "validation split")):
            low, high = ids.id_range()
            if low < 0 or high >= vocab:
                raise DataError(
                    f"the {what} holds token ids outside the model's vocabulary of {vocab}; "
                    "build the model with the tokenizer that encoded the data"
                )
        self.callbacks = list(callbacks)
        if progress:
            self.callbacks.append(ProgressBar())
        self.lock = threading.RLock()
        self._stop = threading.Event()

        dtype = _DTYPE_ALIASES.get(config.dtype, config.dtype)
        if dtype == "bfloat16" and self.device.type != "cuda":
            raise ConfigError("bf16 autocast is only used on CUDA; choose dtype 'auto' or 'float32' on this device")
        use_bf16 = self.device.type == "cuda" and dtype != "float32" and torch.cuda.is_bf16_supported()
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

        self.optimizer = make_optimizer(self.model, config, self.device)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.rank, self.world_size = world()
        self.is_main = self.rank == 0
        self.tokens_per_step = config.batch_size * self.block_size * config.grad_accum * self.world_size
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # Evaluation runs the bare model (rank 0 alone); training goes through DDP.
        self._forward = torch.compile(self.model) if config.compile else self.model
        self._train_forward = self._forward
        if self._ddp is not None:
            self._train_forward = torch.compile(self._ddp) if config.compile else self._ddp

        # Training state: everything state_dict() saves.
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_s = 0.0  # across resumed runs
        self.clock: Callable[[], float] = time.perf_counter  # what the time budget and a time schedule read
        self.best_val_loss: float | None = None
        self.history: list[dict[str, Any]] = []  # one entry per evaluation
        self.last: dict[str, Any] = {}  # the latest evaluation's numbers
        self._batch_gen = torch.Generator().manual_seed(config.seed)
        self._resumed = False
        self._evals_since_best = 0
        self._early_stop = False  # patience ran out

        # Fixed evaluation windows: start offsets (eval_iters, B) per split, drawn once.
        eval_gen = torch.Generator().manual_seed(config.eval_seed)
        shape = (config.eval_iters, config.batch_size)
        self._eval_starts = {
            "train": torch.randint(len(self.train_ids) - self.block_size, shape, generator=eval_gen),
            "val": torch.randint(len(self.val_ids) - self.block_size, shape, generator=eval_gen),
        }

    # -- control --
    def stop(self) -> None:
        """Ask the run to end after the current step (thread-safe)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # -- resume --
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: optimizer, step, generators, history."""
        state: dict[str, Any] = {
            "version": 1,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "best_val_loss": self.best_val_loss,
            "history": list(self.history),
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch_generator": self._batch_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; CheckpointError if it does not fit this model."""
        saved_opt = dict(state.get("config") or {}).get("optimizer", "adamw")  # older states: AdamW
        if saved_opt != self.config.optimizer:
            raise CheckpointError(
                f"the run was trained with {saved_opt}, not {self.config.optimizer}; "
                f"resume it with optimizer {saved_opt} or train from the weights only"
            )
        # Loading replaces the groups' hyper-parameters with the saved ones; the current config wins.
        current = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            if state.get("version") != 1:
                raise CheckpointError("the resume state has an unknown version; train from the weights only")
            self.optimizer.load_state_dict(state["optimizer"])
            self._batch_gen.set_state(state["batch_generator"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.step = int(state["step"])
            self.tokens_seen = int(state["tokens_seen"])
            self.elapsed_s = float(state["elapsed_s"])
            best = state.get("best_val_loss")
            self.best_val_loss = None if best is None else float(best)
            self.history = list(state.get("history") or [])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"the saved optimizer state does not fit this model ({type(e).__name__}); train from the weights only"
            ) from None
        for group, values in zip(self.optimizer.param_groups, current):
            group.update(values)
        self._resumed = True

    def train_state(self) -> dict[str, Any]:
        """A JSON-able summary for checkpoint metadata: steps, tokens, losses, seed, time."""
        return {
            "steps": self.step,
            "max_iters": self.config.max_iters,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": round(self.elapsed_s, 3),
            "seed": self.config.seed,
            "train_loss": self.last.get("train_loss"),
            "val_loss": self.last.get("val_loss"),
            "val_ppl": self.last.get("val_ppl"),
            "val_acc": self.last.get("val_acc"),
            "best_val_loss": self.best_val_loss,
            "device": str(self.device),
            "config": self.config.to_dict(),
            "history": list(self.history),
        }

    # -- evaluation --
    def _autocast(self) -> contextlib.AbstractContextManager:
        return _autocast(self.device, self.autocast_dtype)

    def evaluate(self) -> dict[str, float]:
        """Mean loss and next-token accuracy over the fixed evaluation windows of both splits."""
        scores = [
            score_windows(
                self.model,
                (_eval_window(ids, starts, self.block_size + 1) for starts in self._eval_starts[split]),  # (B, T + 1)
                device=self.device,
                forward=self._forward,
                autocast_dtype=self.autocast_dtype,
            )
            for split, ids in (("train", self.train_ids), ("val", self.val_ids))
        ]
        # One device sync for all six numbers.
        train_loss, train_correct, n, val_loss, val_correct, n_val = torch.cat(scores).tolist()
        train_loss, val_loss = train_loss / n, val_loss / n_val
        return {
            "train_loss": train_loss,
            "train_acc": train_correct / n,
            "val_loss": val_loss,
            "val_ppl": _perplexity(val_loss),
            "val_acc": val_correct / n_val,
        }

    # -- the loop --
    def fit(self) -> dict[str, Any]:
        """Train until max_iters, stop() or the time budget; evaluate at each interval and at the end.

        Returns: step, train_loss, val_loss, val_ppl, val_acc, tokens_seen,
        elapsed_s, stopped_early, early_stopped (patience ran out), best_val_loss.
        Under DDP the ranks other than 0 return None for the evaluation numbers.
        """
        cfg = self.config
        if self.step == 0 and not self._resumed:
            # Dropout draws from the global generator: seed it so runs repeat
            # (each rank its own masks, as its micro-batches differ).
            torch.manual_seed(cfg.seed + self.rank)
        started = time.perf_counter()
        budget_start = self.clock()
        elapsed_before = self.elapsed_s
        stopped_early = False
        last_event: TrainEvent | None = None
        evaluated_at = -1
        tokens_per_step = self.tokens_per_step
        tok_s = 0.0
        self._emit("on_start", self)
        self.model.train()
        if not self._params and self.step < cfg.max_iters:
            # Nothing to learn by gradient (an n-gram table): one counting pass is the whole training.
            every = self.train_ids.windows(torch.zeros(1, dtype=torch.long), len(self.train_ids))[0]  # (N,)
            self.model.fit_counts(every.to(self.device))
            self.step = cfg.max_iters
            self.tokens_seen += len(self.train_ids)
            self.elapsed_s = elapsed_before + (time.perf_counter() - started)
        try:
            while self.step < cfg.max_iters:
                spent = self.clock() - budget_start
                over_budget = cfg.time_budget_s is not None and spent >= cfg.time_budget_s
                if self._should_stop(self._stop.is_set() or over_budget or self._early_stop):
                    stopped_early = True
                    break
                t0 = time.perf_counter()
                lr = lr_schedule(self.step, cfg, spent)
                loss, grad_norm = self._train_step(lr)
                self.step += 1
                self.tokens_seen += tokens_per_step
                now = time.perf_counter()
                rate = tokens_per_step / max(now - t0, 1e-9)
                # Smoothed throughput; the first steps (warm-up, compilation) fade out quickly.
                tok_s = rate if self.step == 1 or tok_s == 0.0 else 0.9 * tok_s + 0.1 * rate
                self.elapsed_s = elapsed_before + (now - started)
                last_event = TrainEvent(
                    step=self.step,
                    max_iters=cfg.max_iters,
                    loss=loss,
                    lr=lr,
                    tokens_seen=self.tokens_seen,
                    tokens_per_s=tok_s,
                    grad_norm=grad_norm,
                    elapsed_s=self.elapsed_s,
                )
                self._emit("on_step", last_event)
                if self.step % cfg.eval_interval == 0:
                    if self.is_main:
                        self._eval_and_emit(last_event)
                    evaluated_at = self.step
            if evaluated_at != self.step and self.is_main:
                if last_event is None:  # nothing trained in this call: report the state as it is
                    last_event = TrainEvent(
                        step=self.step,
                        max_iters=cfg.max_iters,
                        loss=math.nan,
                        lr=lr_schedule(max(self.step - 1, 0), cfg),
                        tokens_seen=self.tokens_seen,
                        tokens_per_s=0.0,
                        grad_norm=math.nan,
                        elapsed_s=self.elapsed_s,
                    )
                self._eval_and_emit(last_event)
        finally:
            self._stop.clear()
        self.elapsed_s = elapsed_before + (time.perf_counter() - started)
        result = {
            "step": self.step,
            "train_loss": self.last.get("train_loss"),
            "val_loss": self.last.get("val_loss"),
            "val_ppl": self.last.get("val_ppl"),
            "val_acc": self.last.get("val_acc"),
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "stopped_early": stopped_early,
            "early_stopped": self._early_stop,
            "best_val_loss": self.best_val_loss,
        }
        self._emit("on_end", result)
        return result

    def _should_stop(self, local: bool) -> bool:
        """Whether to end the run now: any rank's reason stops every rank (they must step together)."""
        if self.world_size == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _micro_batches(self) -> torch.Tensor:
        """This rank's start offsets for one step: (grad_accum, B) of the global (world x grad_accum, B) draw."""
        cfg = self.config
        k, n = cfg.grad_accum, cfg.grad_accum * self.world_size
        starts = torch.randint(len(self.train_ids) - self.block_size, (n * cfg.batch_size,), generator=self._batch_gen)
        return starts.view(n, cfg.batch_size)[self.rank * k : (self.rank + 1) * k]

    def _train_step(self, lr: float) -> tuple[float, float]:
        """One optimizer step at learning rate ``lr``; returns (loss, grad norm) as floats.

        The loss is the mean over the step's micro-batches (of every rank).
        Loss and gradient norm are read back together, once, before the update,
        so a NaN or inf never reaches the weights.
        """
        cfg = self.config
        micro = self._micro_batches()
        loss_sum = torch.zeros((), device=self.device)
        try:
            for k, starts in enumerate(micro):
                x, y = batch_from_starts(self.train_ids, starts, self.block_size, device=self.device)
                last = k == len(micro) - 1
                # DDP averages gradients across ranks on the last micro-batch's backward only.
                sync = contextlib.nullcontext() if self._ddp is None or last else self._ddp.no_sync()
                with sync:
                    with self._autocast():
                        logits = self._train_forward(x)  # (B, T, V)
                    loss = lm_loss(logits, y) / len(micro)
                    loss.backward()
                loss_sum += loss.detach().float()
            if self.world_size > 1:
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= self.world_size
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"out of memory at step {self.step + 1}; lower the batch size, block size or model size"
            ) from None
        except LMCoreError:
            raise
        except Exception as e:
            if cfg.compile and self.step == 0:
                raise TrainingError(f"torch.compile failed ({type(e).__name__}); train without compile") from e
            raise
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None], foreach=True)
        loss_value, grad_norm = torch.stack([loss_sum, norm.float()]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            bad = loss_value if what == "loss" else grad_norm
            raise TrainingError(
                f"{what} became {bad} at step {self.step + 1}; lower the learning rate (now {lr:.3g}) "
                "or raise warmup/grad clipping; the last good checkpoint is kept"
            )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with self.lock:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    def _eval_and_emit(self, event: TrainEvent) -> None:
        metrics = self.evaluate()
        for key in ("train_loss", "val_loss"):
            if not math.isfinite(metrics[key]):
                raise TrainingError(
                    f"the {key.replace('_', ' ')} became {metrics[key]} at step {self.step}; lower the learning rate "
                    "or raise warmup/grad clipping; the last good checkpoint is kept"
                )
        self.last = metrics
        if self.best_val_loss is None or metrics["val_loss"] < self.best_val_loss:
            self.best_val_loss = metrics["val_loss"]
            self._evals_since_best = 0
        else:
            self._evals_since_best += 1
            if self.config.patience is not None and self._evals_since_best >= self.config.patience:
                self._early_stop = True
        # Measurements callbacks add to the evaluation (``on_measure(trainer) -> {field: value}``).
        measures: dict[str, Any] = {}
        for cb in self.callbacks:
            if hasattr(cb, "on_measure"):
                measures.update(cb.on_measure(self))
        point = {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": round(self.elapsed_s, 3)}
        self.history.append({**point, **{k: round(v, 6) for k, v in metrics.items()}, **measures})
        eval_event = dataclasses.replace(
            event,
            **measures,
            train_loss=metrics["train_loss"],
            val_loss=metrics["val_loss"],
            val_ppl=metrics["val_ppl"],
            val_acc=metrics["val_acc"],
        )
        self._emit("on_eval", eval_event)

    def _emit(self, hook: str, payload: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(payload)


class ProgressBar:
    """A training progress bar: tqdm's text bar in a terminal, its widget in a notebook (tqdm.auto).

    The bar advances with the steps and shows the loss, the learning rate and
    the throughput; each evaluation is written as one line above it. ``file``
    is where the text goes (default: stderr); ``disable=True`` prints nothing.
    Used by the CLI and by ``Trainer(..., progress=True)``; the app shows its
    own charts instead.
    """

    def __init__(self, file: Any = None, disable: bool = False, evals: bool = True, mininterval: float = 0.2):
        self.file = file
        self.disable = disable
        self.evals = evals
        self.mininterval = mininterval
        self._bar: Any = None
        self._file: Any = None

    def on_start(self, trainer: "Trainer") -> None:
        from tqdm.auto import tqdm

        self.close()
        file = self.file if self.file is not None else sys.stderr
        bar = tqdm(
            total=trainer.config.max_iters,
            initial=trainer.step,
            unit="step",
            file=file,
            disable=self.disable,
            dynamic_ncols=True,
            mininterval=self.mininterval,
        )
        notebook = any(c.__module__ == "tqdm.notebook" for c in type(bar).__mro__)
        if not notebook and not getattr(file, "isatty", lambda: False)():
            bar.mininterval = max(self.mininterval, _LOG_INTERVAL_S)  # a log file: a line now and then
        self._bar, self._file = bar, file

    def on_step(self, e: TrainEvent) -> None:
        bar = self._bar
        if bar is None or self.disable:
            return
        rate = e.tokens_per_s
        tok_s = f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"
        bar.set_postfix_str(f"loss {e.loss:.4f} lr {e.lr:.2e} |g| {e.grad_norm:.2f} {tok_s} tok/s", refresh=False)
        bar.update(e.step - bar.n)

    def on_eval(self, e: TrainEvent) -> None:
        if self._bar is None or self.disable or not self.evals:
            return
        self._bar.write(
            f"step {e.step}: train loss {e.train_loss:.4f}, val loss {e.val_loss:.4f}, "
            f"val ppl {e.val_ppl:.2f}, val acc {e.val_acc:.1%}"
            + ("" if e.val_bpb is None else f", val bpb {e.val_bpb:.4f}"),
            file=self._file,
        )

    def on_end(self, result: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class HeadScoresCallback:
    """Adds ``interpret.head_scores`` of the model to every evaluation (event and history).

    Models without attention are skipped. ``seconds`` is the time spent measuring, so
    its share of a run can be reported.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.seconds = 0.0

    def on_measure(self, trainer: Trainer) -> dict[str, Any]:
        if not getattr(trainer.model, "has_attention", False):
            return {}
        from lmcore.interpret import head_scores  # interpret imports models; keep train light

        t0 = time.perf_counter()
        with trainer.lock:
            scores = head_scores(trainer.model, seed=self.seed)
        self.seconds += time.perf_counter() - t0
        return {"head_scores": {k: [[round(x, 4) for x in row] for row in v.tolist()] for k, v in scores.items()}}


def token_byte_lengths(tokenizer: Any) -> torch.Tensor:
    """(V,) the UTF-8 length in bytes of every token's text (special tokens: 0)."""
    return torch.tensor([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=torch.long)


def bits_per_byte(loss: float, ids: torch.Tensor, tokenizer: Any) -> float:
    """Bits per UTF-8 byte of a text: ``loss`` (mean nats per predicted token, ids[1:]) x tokens / bytes / ln 2.

    A character model's nats per token and a BPE model's are different units;
    bits per byte of the same text are not, so runs with different vocabularies
    compare. Special tokens have no bytes: their loss counts, their length does not.
    """
    predicted = torch.as_tensor(ids)[1:].long().cpu()
    n_bytes = int(token_byte_lengths(tokenizer)[predicted].sum())
    if n_bytes == 0:
        raise DataError("the evaluated text has no bytes (only special tokens); give it some text")
    return loss * len(predicted) / n_bytes / math.log(2)


class BitsPerByteCallback:
    """Adds ``val_bpb`` to every evaluation: the validation loss in bits per UTF-8 byte.

    val_bpb = val_loss x tokens / bytes / ln 2, with the tokens-per-byte ratio of
    the validation split (its first ``max_tokens``, once): the unit in which runs
    with different vocabularies (characters, BPE, an imported tokenizer) compare.
    """

    def __init__(self, tokenizer: Any, val_ids: torch.Tensor | TokenSource, max_tokens: int = 1 << 21):
        n = min(len(val_ids), max_tokens + 1)
        ids = as_source(val_ids).windows(torch.zeros(1, dtype=torch.long), n)[0] if n >= 2 else None
        try:
            self.bits_per_nat_token = None if ids is None else bits_per_byte(1.0, ids, tokenizer)
        except DataError:  # only special tokens: no bytes to count
            self.bits_per_nat_token = None

    def on_measure(self, trainer: Trainer) -> dict[str, Any]:
        if self.bits_per_nat_token is None:
            return {}
        return {"val_bpb": trainer.last["val_loss"] * self.bits_per_nat_token}


def evaluate_ids(
    model: torch.nn.Module,
    ids: torch.Tensor,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    max_tokens: int | None = None,
    tokenizer: Any = None,
) -> dict[str, float]:
    """Loss, perplexity and accuracy of ``model`` over every token of ``ids``; with ``tokenizer``, bits per byte.

    The ids are cut into consecutive windows of block_size + 1 tokens that
    overlap by one, so each token after the first is predicted exactly once
    (with up to block_size tokens of context). Deterministic: no sampling.
    ``bpb`` (with a tokenizer): the total loss in bits over the UTF-8 bytes of
    the predicted tokens (``bits_per_byte``).
    """
    ids = _as_ids(ids, "evaluation text")
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    if len(ids) < 2:
        raise DataError("the evaluation text needs at least 2 tokens; give it more text")
    vocab = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise DataError(f"the evaluation text holds token ids outside the model's vocabulary of {vocab}")
    T = model.config.block_size
    n_full = (len(ids) - 1) // T
    full = ids[: n_full * T + 1].unfold(0, T + 1, T)  # (n_full, T + 1)
    batches = [full[i : i + batch_size] for i in range(0, n_full, batch_size)]
    tail = ids[n_full * T :]
    if len(tail) >= 2:  # the last, shorter window
        batches.append(tail[None])  # (1, t + 1)
    total_loss, total_correct, _ = score_windows(model, batches, device=device).tolist()
    n_pred = len(ids) - 1
    loss = total_loss / n_pred
    result = {"loss": loss, "perplexity": _perplexity(loss), "accuracy": total_correct / n_pred, "tokens": n_pred}
    if tokenizer is not None:
        result["bpb"] = bits_per_byte(loss, ids, tokenizer)
    return result
