"""What a model config costs, computed without allocating it: parameters, FLOPs, training memory.

Counting never builds real weights. The model is built on PyTorch's ``meta``
device (shapes only, no storage) with one and with two layers, and the
layer-independent part and the per-layer part give the count for any depth,
so a config of a million layers is counted as fast as one of two. Every
block of a model is the same size, so this is exact.

``check_fits`` compares the training-memory estimate with what the device
has free (``/proc/meminfo``'s MemAvailable on Linux, ``torch.cuda.mem_get_info``
on CUDA) and with an absolute ceiling on parameters, and raises ``ConfigError``
with the estimate before anything is built. Shapes: B batch, T block_size,
D n_embd, H n_head, E expand x D, N d_state, V vocab_size, L n_layer.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch.overrides import TorchFunctionMode

from lmcore.errors import ConfigError
from lmcore.models.config import family_of, model_class
from lmcore.models.config import ModelConfig

# A safety net whatever the machine reports: a playground model above this many
# parameters is a typing mistake (2 billion fp32 parameters train in ~32 GB
# before activations).
MAX_PARAMS = 2_000_000_000
BYTES_PER_VALUE = 4  # fp32 weights, gradients and AdamW moments
# What each parameter tensor costs beyond its values while training: its module,
# the tensor objects of the weight, its gradient and AdamW's moments, and the
# autograd graph of each step. Measured at 10-16 kB per tensor on CPU (GPT-2,
# Mamba and LSTM at width 2, 500 and 2,500 layers: 118, 158 and 49 kB per layer);
# nothing at ordinary widths, but it is what a model of a million one-wide layers
# is made of (196 GB, where its values take 0.5 GB).
OVERHEAD_PER_TENSOR = 16 * 1024


class _SkipInit(TorchFunctionMode):
    """Skips weight initialisation: on the meta device there are no values to fill.

    Only a shortcut: the meta versions of the random fills live in PyTorch's
    Python reference ops, whose first use imports torch._dynamo (seconds).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", "") in ("normal_", "uniform_"):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@lru_cache(maxsize=256)
def _meta_counts(config_json: str) -> tuple[int, int, int, int]:
    """(params, non-embedding params, training FLOPs per token, parameter tensors) of a config on the meta device."""
    config = ModelConfig.from_json(config_json)
    with torch.device("meta"), _SkipInit():
        model = model_class(config.arch)(config)
    flops = int(model.flops_per_token(config.block_size))
    return model.num_params(), model.num_params(non_embedding=True), flops, len(list(model.parameters()))


def _by_depth(config: ModelConfig) -> tuple[int, ...]:
    """``_meta_counts`` of ``config`` at its depth, from its one- and two-layer versions."""
    one = _meta_counts(config.replace(n_layer=1).to_json())
    two = _meta_counts(config.replace(n_layer=2).to_json())
    extra = config.n_layer - 1
    return tuple(a + extra * (b - a) for a, b in zip(one, two))


def model_counts(config: ModelConfig) -> dict[str, int]:
    """``params``, ``params_non_embedding`` and ``flops_per_token`` (at block_size) of a valid config.

    Exact, and computed from one- and two-layer models on the meta device, so
    it costs the same for any depth and never allocates the weights.
    """
    params, non_embedding, flops, _ = _by_depth(config)
    return {"params": params, "params_non_embedding": non_embedding, "flops_per_token": flops}


def parameter_tensors(config: ModelConfig) -> int:
    """How many parameter tensors the model of a valid config has (shared ones once), counted without building it."""
    return _by_depth(config)[3]


def activation_values(config: ModelConfig, batch_size: int) -> int:
    """Values kept for the backward pass for B sequences of T tokens: a rule of thumb per architecture.

    Per layer, the family's ``activations`` (none for a lookup table), plus
    2 B T V for the logits and their gradient for every architecture.
    """
    b, t, v = int(batch_size), int(config.block_size), int(config.vocab_size)
    per_layer = family_of(config.arch).activations
    layers = 0 if per_layer is None else int(config.n_layer) * per_layer(config, b)
    return layers + 2 * b * t * v


def training_memory(
    config: ModelConfig, n_params: int, batch_size: int, bytes_per_value: int = BYTES_PER_VALUE
) -> dict[str, int]:
    """Training memory in bytes: ``weights``, ``gradients``, ``optimizer`` (AdamW), ``activations``,
    ``overhead`` and ``total``.

    Weights and gradients take one value per parameter, AdamW two more (its
    moments); ``overhead`` is ``OVERHEAD_PER_TENSOR`` per parameter tensor (the
    objects around the values, which outweigh them in a deep, narrow model). It
    ignores allocator slack, temporary buffers and fused kernels: the right
    order of magnitude, not a promise.
    """
    weights = int(n_params) * bytes_per_value
    out = {
        "weights": weights,
        "gradients": weights,
        "optimizer": 2 * weights,
        "activations": activation_values(config, batch_size) * bytes_per_value,
        "overhead": parameter_tensors(config) * OVERHEAD_PER_TENSOR,
    }
    out["total"] = sum(out.values())
    return out


def estimate_memory(config: ModelConfig, batch_size: int, bytes_per_value: int = BYTES_PER_VALUE) -> dict[str, int]:
    """``training_memory`` of a valid config, with ``params`` (counted on the meta device) added."""
    params = model_counts(config)["params"]
    return {"params": params, **training_memory(config, params, batch_size, bytes_per_value)}


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes the device has free now, or None when the system does not say.

    CUDA: ``torch.cuda.mem_get_info``. Anything else (CPU, and MPS, whose
    memory is the machine's): MemAvailable from ``/proc/meminfo`` (Linux),
    else the free physical pages from ``os.sysconf``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """'41.2 GB', '350.0 MB', '12.0 kB': decimal units, as file managers and `free -h` print them."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _where(device: torch.device | str) -> str:
    return "the GPU" if torch.device(device).type == "cuda" else "the machine"


def check_fits(
    config: ModelConfig, batch_size: int, device: torch.device | str = "cpu", free: int | None = None
) -> dict[str, int]:
    """Refuse a config too big to train here, before anything is built; returns ``estimate_memory``.

    ConfigError when the parameters exceed ``MAX_PARAMS`` or the training
    estimate exceeds the memory ``device`` has free (``free`` overrides what
    the system reports; None and unknown: only the ceiling applies).
    """
    config.validate()
    est = estimate_memory(config, batch_size)
    fix = "use fewer layers, a smaller width, a shorter context or a smaller batch"
    free = available_memory(device) if free is None else free
    if free is not None and est["total"] > free:
        parts = ", ".join(
            f"{label} {format_bytes(est[key])}"
            for key, label in (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "AdamW state"),
                               ("activations", "activations"), ("overhead", "per-tensor overhead"))
        )
        raise ConfigError(
            f"this model needs about {format_bytes(est['total'])} to train ({parts}, for a batch of "
            f"{batch_size} x {config.block_size} tokens) but {_where(device)} has {format_bytes(free)} free; {fix}"
        )
    if est["params"] > MAX_PARAMS:
        raise ConfigError(
            f"this model has {est['params']:,} parameters (about {format_bytes(est['total'])} to train), "
            f"over the playground's limit of {MAX_PARAMS:,}; {fix}"
        )
    return est


def params_by_part(config: ModelConfig) -> dict[str, int]:
    """Parameters per top-level part of a valid config's model ("blocks.0" per layer, "tok_emb", "head"...).

    Built on the meta device (shapes only); tied weights are counted once, at their first name.
    """
    with torch.device("meta"), _SkipInit():
        model = model_class(config.arch)(config)
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():  # shared tensors appear once
        head, *rest = name.split(".")
        part = f"{head}.{rest[0]}" if rest and rest[0].isdigit() else head
        parts[part] = parts.get(part, 0) + p.numel()
    return parts
