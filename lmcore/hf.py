"""The bridge to Hugging Face transformers: import GPT-2, Llama, Mamba and Mamba-2 models, export ours.

Import reads a folder saved with ``save_pretrained`` (or a hub id, fetched into
huggingface_hub's own cache) and builds the lmcore model that computes the same
logits: the config is mapped field by field, and any field our models cannot
express (biases, rope scaling, other activations, sliding windows...) is
refused with a one-line ``ConfigError`` naming it, never approximated. The
tokenizer comes along as an ``HFTokenizer`` (its tokenizer.json).

Export writes a folder that ``AutoModelForCausalLM`` and ``AutoTokenizer``
load: config.json, model.safetensors, tokenizer.json (our character and BPE
tokenizers expressed in the ``tokenizers`` format, with the same ids),
tokenizer_config.json, generation_config.json and a README.md model card.

The weight mapping, per family (ours <- transformers'):
- GPT-2: the same names under ``transformer.``; its Conv1D weights are stored
  (in, out), so every projection is transposed.
- Llama: ``c_attn`` = rows [q | k | v] of ``q_proj``, ``k_proj``, ``v_proj``;
  ``c_fc`` = [gate | up]; ``c_proj`` = ``o_proj`` / ``down_proj``. Transformers
  rotates the channel pairs (i, i + hd/2) of each head (the half-split layout)
  where we rotate (2i, 2i + 1), so the rows of q and k are permuted within each
  head; attention scores are unchanged, as both sides get the same permutation.
- Mamba and Mamba-2: the same names under ``backbone.`` (``embeddings`` for
  ``embedding``, ``lm_head`` for ``head``). Mamba-2's gated norm is per group
  of B and C, as in mamba_ssm and transformers' CUDA kernels; transformers'
  CPU code normalises the whole inner width, the same thing when n_groups = 1.
Every mapping is a transpose, a permutation or a concatenation: exporting and
importing again gives bit-identical weights.

``transformers`` (configs) and ``huggingface_hub`` (downloads) are imported
inside the functions that need them, so the app and the CLI start fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmcore.errors import CheckpointError, ConfigError, TokenizerError
from lmcore.models import LanguageModel, ModelConfig, build_model, family_of
from lmcore.models.layers import swiglu_hidden
from lmcore.tokenizers import BOS_TOKEN, UNK_TOKEN, BPETokenizer, CharTokenizer, HFTokenizer, Tokenizer
from lmcore.tokenizers.chat import ChatTokenizer
from lmcore.tokenizers.bpe import PATTERNS
from lmcore.tokenizers.hf import MAX_TOKENIZER_JSON_CHARS, byte_encoder, check_tokenizer_json

FAMILIES = {
    "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"
}  # fmt: skip
# The state-space families: no context limit, a head named "head", the rest under "backbone.".
_SSM_FAMILIES = ("mamba", "mamba2")
# Rotary models keep their trained context, but at most this many positions: the
# key/value cache and the rotary table are sized by it (Llama 3's 131072 would
# take gigabytes). Learned positions (GPT-2) always keep their full table.
MAX_IMPORT_CONTEXT = 4096
# A Mamba has no context limit; this is the window training and the app use.
MAMBA_CONTEXT = 1024
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "lmcore.json",
]
# What an export keeps of its training, read back by an import: lmcore.json beside the weights.
EXPORT_FORMAT = "lmcore-export/1"


@dataclass
class Imported:
    """An imported model, ready to use or save: what ``import_model`` returns."""

    model: LanguageModel
    tokenizer: Tokenizer
    source: str
    family: str
    notes: list[str] = field(default_factory=list)  # what a user should know (a capped context...)
    # An lmcore export's own training record (steps, tokens seen, losses, documents mode), else empty.
    train_state: dict[str, Any] = field(default_factory=dict)

    @property
    def data_info(self) -> dict[str, Any]:
        return {"documents": bool(self.train_state.get("documents")), "name": f"imported from {self.source}"}


# --------------------------------------------------------------------------- sources


# Bounds on what a folder can make an import read or build, all checked before anything is
# allocated: the cost of an import is bounded by the size of the folder's weights.
MAX_SMALL_JSON_BYTES = 1 << 20  # config.json, tokenizer_config.json, special_tokens_map.json
MAX_INDEX_BYTES = 16 << 20  # model.safetensors.index.json (a 405B model's is under 100 KB)
# More layers than any published model (Llama 3.1 405B has 126): module objects cost memory
# even without weights, so a config cannot ask for a million of them.
MAX_IMPORT_LAYERS = 1024
# A safetensors header: its fixed part, and per tensor (name, dtype, shape, offsets).
_HEADER_BASE_BYTES = 1 << 20
_HEADER_BYTES_PER_TENSOR = 1024
# A tokenizer.json: its fixed part (normalizers, added tokens), and per token of the model's vocabulary.
_TOKENIZER_BASE_BYTES = 1 << 20
_TOKENIZER_BYTES_PER_TOKEN = 256
# Element sizes of the safetensors dtypes an import accepts.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def no_folder(source: str) -> ConfigError:
    """The one answer for a folder that does not exist and for one that cannot be opened here."""
    return ConfigError(
        f"no model folder {source!r} that can be opened here, and it is not a hub id like 'gpt2' or 'owner/name'; "
        "pass a folder saved with save_pretrained (with config.json) or a hub id"
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):
        return False
    return True


def _local_folder(path: Path, allowed_root: Path | None) -> tuple[Path, Path] | None:
    """(folder, the root its files must stay in) for a local model folder, or None when there is none to open."""
    try:
        if not path.is_dir() or not (path / "config.json").exists():
            return None
    except OSError:
        return None
    if allowed_root is not None and not _inside(path, allowed_root):
        return None
    folder = path.resolve()
    # A snapshot in huggingface_hub's cache links its files to the repository's blobs/.
    repo = folder.parent.parent
    if folder.parent.name == "snapshots" and (repo / "blobs").is_dir():
        return path, repo
    return path, folder


def locate_source(
    source: str, download_weights: bool = True, allowed_root: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """(folder, root) for ``source``: a local folder (its own root), or a hub snapshot (the repository's cache).

    Every file the import reads must lie inside root, symlinks resolved. With
    ``allowed_root`` only folders under it are opened; a folder outside it, one
    that does not exist and one without config.json get the same answer.
    """
    source = str(source).strip()
    path = Path(source).expanduser()
    found = _local_folder(path, Path(allowed_root).expanduser() if allowed_root is not None else None)
    if found is not None:
        return found
    if not source or not HUB_ID.match(source) or source.count("/") > 1 or source.startswith("."):
        raise no_folder(source)
    snapshot = _download(source, download_weights)
    return snapshot, snapshot.resolve().parent.parent


def resolve_source(source: str, download_weights: bool = True) -> Path:
    """A local folder for ``source``: the folder itself, or a hub snapshot in huggingface_hub's cache.

    Without ``download_weights`` only the small files (config, tokenizer) are fetched.
    """
    return locate_source(source, download_weights)[0]


def _download(source: str, download_weights: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = HUB_FILES if download_weights else [p for p in HUB_FILES if "safetensors" not in p or "index" in p]
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"cannot reach the Hugging Face hub to fetch {source!r} and it is not in the local cache; "
            "connect to the internet, or pass a folder saved with save_pretrained"
        ) from None
    except GatedRepoError:
        raise ConfigError(
            f"{source!r} is gated on the hub; accept its licence there and log in (hf auth login)"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ConfigError(f"there is no model {source!r} on the Hugging Face hub; check the id") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot fetch {source!r} from the hub ({first})") from None


def _checked_path(folder: Path, name: str, root: Path | None) -> Path:
    """``folder / name`` when ``name`` is a relative path that stays inside ``root`` (symlinks resolved)."""
    rel = Path(name)
    if not name or rel.is_absolute() or rel.drive or ".." in rel.parts or "\\" in name:
        raise CheckpointError(f"the folder names a file outside itself ({name!r}); it is damaged or hostile")
    path = folder / rel
    if root is not None and not _inside(path, root):
        raise CheckpointError(f"{name} lies outside the model folder (a link elsewhere); copy the real file in")
    return path


def _open_regular(path: Path, name: str) -> Any:
    """``path`` opened for reading when it is a regular file; never blocks on a pipe or device."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CheckpointError(f"cannot read {name} ({e.strerror or e})") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise CheckpointError(f"{name} is not a regular file (a pipe, device or folder); the folder is damaged")
    return f


def _read_bytes(path: Path, name: str, limit: int, what: str = "") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; CheckpointError otherwise."""
    with _open_regular(path, name) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CheckpointError(
                f"{name} is {size:,} bytes, more than {what or 'such a file'} can need ({limit:,}); "
                "the folder is damaged or hostile"
            )
        try:
            return f.read(limit + 1)[:limit]
        except OSError as e:
            raise CheckpointError(f"cannot read {name} ({e.strerror or e})") from None


def _read_json(path: Path, limit: int = MAX_SMALL_JSON_BYTES, root: Path | None = None) -> dict[str, Any]:
    from lmcore.checkpoint_header import _JSONRefused, _loads

    if root is not None:
        path = _checked_path(path.parent, path.name, root)
    raw = _read_bytes(path, path.name, limit)
    try:
        value = _loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, _JSONRefused) as e:
        raise CheckpointError(f"cannot read {path.name} ({e}); the file is damaged") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path.name} is not a JSON object; the file is damaged")
    return value


def hf_config(folder: Path, root: Path | None = None) -> Any:
    """The transformers config of a save_pretrained folder, with every default filled in."""
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} has no config.json; pass a folder that save_pretrained wrote")
    raw = _read_json(folder / "config.json", root=root if root is not None else folder)
    kind = raw.get("model_type")
    if kind not in FAMILIES:
        raise ConfigError(
            f"model_type={kind!r} is not a family lmcore can open; it opens {', '.join(FAMILIES)} models"
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**raw)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config.json cannot be read by transformers ({first})") from None


# --------------------------------------------------------------------------- configs


def _refuse(field_name: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"cannot import: config field {field_name}={value!r} {why}")


def _require(cfg: Any, name: str, allowed: tuple, why: str) -> None:
    value = getattr(cfg, name, None)
    if value not in allowed:
        raise _refuse(name, value, why)


def _gelu_ratio(hidden: int, width: int) -> float:
    """An mlp_ratio r with int(r * width) == hidden (r = hidden / width can round just below)."""
    r = hidden / width
    return r if int(r * width) == hidden else math.nextafter(r, math.inf)


def config_from_hf(cfg: Any) -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig for a transformers config, and notes; ConfigError naming any field we cannot express."""
    family = cfg.model_type
    notes: list[str] = []
    if getattr(cfg, "sliding_window", None) is not None:
        raise _refuse("sliding_window", cfg.sliding_window, "(windowed attention) has no lmcore equivalent")
    if family == "gpt2":
        forms = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
        _require(cfg, "activation_function", tuple(forms), "is not a GELU lmcore has (gelu, gelu_new)")
        _require(cfg, "scale_attn_weights", (True,), "(unscaled attention) has no lmcore equivalent")
        _require(
            cfg, "scale_attn_by_inverse_layer_idx", (False,), "(per-layer attention scaling) has no lmcore equivalent"
        )
        _require(cfg, "add_cross_attention", (False,), "(cross-attention) has no lmcore equivalent")
        hidden = cfg.n_inner if cfg.n_inner is not None else 4 * cfg.n_embd
        ours = ModelConfig.preset(
            "gpt2",
            vocab_size=cfg.vocab_size,
            block_size=cfg.n_positions,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            mlp_ratio=_gelu_ratio(hidden, cfg.n_embd),
            norm_eps=float(cfg.layer_norm_epsilon),
            gelu_approximate=forms[cfg.activation_function],
            tie_weights=bool(cfg.tie_word_embeddings),
        )
    elif family == "llama":
        _require(cfg, "hidden_act", ("silu",), "is not SwiGLU's SiLU, the only gate lmcore's Llama has")
        if bool(cfg.attention_bias) != bool(cfg.mlp_bias):
            why = f"differs from mlp_bias={cfg.mlp_bias}; lmcore has one bias switch"
            raise _refuse("attention_bias", cfg.attention_bias, why)
        scaling = cfg.rope_scaling
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise _refuse("rope_scaling", scaling, "(scaled rotary positions) has no lmcore equivalent")
        heads, width = cfg.num_attention_heads, cfg.hidden_size
        head_dim = getattr(cfg, "head_dim", None) or width // heads
        if width % heads or head_dim != width // heads:
            raise _refuse("head_dim", head_dim, f"is not hidden_size / num_attention_heads ({width}/{heads})")
        ratio = 1.5 * cfg.intermediate_size / width
        if swiglu_hidden(width, ratio) != cfg.intermediate_size:
            why = "is not a multiple of 8, as lmcore's SwiGLU needs"
            raise _refuse("intermediate_size", cfg.intermediate_size, why)
        block = cfg.max_position_embeddings
        if block > MAX_IMPORT_CONTEXT:
            notes.append(f"context capped at {MAX_IMPORT_CONTEXT} of its {block} positions")
            block = MAX_IMPORT_CONTEXT
        kv = cfg.num_key_value_heads or heads
        ours = ModelConfig.preset(
            "llama",
            vocab_size=cfg.vocab_size,
            block_size=block,
            n_layer=cfg.num_hidden_layers,
            n_head=heads,
            n_kv_head=None if kv == heads else kv,
            n_embd=width,
            mlp_ratio=ratio,
            bias=bool(cfg.attention_bias),
            rope_theta=float(cfg.rope_theta),
            norm_eps=float(cfg.rms_norm_eps),
            tie_weights=bool(cfg.tie_word_embeddings),
        )
    elif family == "mamba2":
        _require(cfg, "hidden_act", ("silu",), "is not the SiLU lmcore's Mamba-2 uses")
        _require(cfg, "use_bias", (False,), "(biases in in_proj and out_proj) has no lmcore equivalent")
        _require(cfg, "use_conv_bias", (True,), "(a convolution without bias) has no lmcore equivalent")
        _require(cfg, "rms_norm", (True,), "(no gated RMSNorm after the scan) has no lmcore equivalent")
        limit = tuple(float(v) for v in cfg.time_step_limit)
        if limit != (0.0, math.inf):
            raise _refuse("time_step_limit", cfg.time_step_limit, "(clamped step sizes) has no lmcore equivalent")
        expand = cfg.expand
        if expand != int(expand) or cfg.num_heads * cfg.head_dim != int(expand) * cfg.hidden_size:
            why = f"times hidden_size ({cfg.hidden_size}) is not a whole num_heads x head_dim"
            raise _refuse("expand", expand, why)
        if cfg.n_groups < 1 or cfg.num_heads % cfg.n_groups:
            raise _refuse("n_groups", cfg.n_groups, f"does not divide num_heads ({cfg.num_heads})")
        if cfg.n_groups > 1:
            notes.append(
                f"n_groups={cfg.n_groups}: the gated norm is computed per group, as mamba_ssm and transformers' "
                "CUDA kernels do (transformers' CPU code normalises the whole width)"
            )
        ours = ModelConfig.preset(
            "mamba2",
            vocab_size=cfg.vocab_size,
            block_size=MAMBA_CONTEXT,
            n_layer=cfg.num_hidden_layers,
            n_embd=cfg.hidden_size,
            d_state=cfg.state_size,
            d_conv=cfg.conv_kernel,
            expand=int(expand),
            ssm_head_dim=cfg.head_dim,
            n_groups=cfg.n_groups,
            chunk_size=cfg.chunk_size,
            norm_eps=float(cfg.layer_norm_epsilon),
            tie_weights=bool(cfg.tie_word_embeddings),
        )
    else:  # mamba
        _require(cfg, "hidden_act", ("silu",), "is not the SiLU lmcore's Mamba uses")
        _require(cfg, "use_bias", (False,), "(biases in in_proj and out_proj) has no lmcore equivalent")
        _require(cfg, "use_conv_bias", (True,), "(a convolution without bias) has no lmcore equivalent")
        expand = cfg.intermediate_size / cfg.hidden_size
        if expand != int(expand):
            why = f"is not a whole multiple of hidden_size ({cfg.hidden_size})"
            raise _refuse("intermediate_size", cfg.intermediate_size, why)
        ours = ModelConfig.preset(
            "mamba",
            vocab_size=cfg.vocab_size,
            block_size=MAMBA_CONTEXT,
            n_layer=cfg.num_hidden_layers,
            n_embd=cfg.hidden_size,
            d_state=cfg.state_size,
            d_conv=cfg.conv_kernel,
            expand=int(expand),
            dt_rank=int(cfg.time_step_rank),
            norm_eps=float(cfg.layer_norm_epsilon),
            tie_weights=bool(cfg.tie_word_embeddings),
        )
    return ours.validate(), notes


def export_family(config: ModelConfig) -> str:
    """The transformers family that expresses ``config`` exactly; ConfigError saying which preset would export."""
    names = family_of(config.arch).hf_names
    if not names:
        raise ConfigError(
            f"transformers has no class for lmcore's {config.arch} model; train a gpt2, llama or mamba preset to export"
        )
    if len(names) == 1:
        return names[0]
    layout = (config.pos, config.norm, config.mlp)
    if layout == ("learned", "layernorm", "gelu"):
        if not config.bias:
            raise ConfigError("transformers' GPT-2 always has biases; train the gpt2 preset with biases on to export")
        if config.kv_heads != config.n_head:
            raise ConfigError(
                "transformers' GPT-2 has no grouped-query attention; leave n_kv_head empty, or use the llama preset"
            )
        return "gpt2"
    if layout == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    raise ConfigError(
        f"transformers has no class for a transformer with pos={config.pos}, norm={config.norm}, mlp={config.mlp}; "
        "the gpt2 preset (learned, layernorm, gelu) and the llama preset (rope, rmsnorm, swiglu) export"
    )


def _hf_config_for(config: ModelConfig, family: str, bos_id: int) -> Any:
    """A transformers config object that builds the same model as ``config``."""
    ids = dict(bos_token_id=bos_id, eos_token_id=bos_id, tie_word_embeddings=config.tie_weights)
    if family == "gpt2":
        from transformers import GPT2Config

        drop = config.dropout
        return GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=int(config.mlp_ratio * config.n_embd),
            activation_function="gelu" if config.gelu_approximate == "none" else "gelu_new",
            resid_pdrop=drop,
            embd_pdrop=drop,
            attn_pdrop=drop,
            layer_norm_epsilon=config.norm_eps,
            **ids,
        )
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.n_embd,
            intermediate_size=swiglu_hidden(config.n_embd, config.mlp_ratio),
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            num_key_value_heads=config.kv_heads,
            hidden_act="silu",
            max_position_embeddings=config.block_size,
            rms_norm_eps=config.norm_eps,
            rope_theta=config.rope_theta,
            attention_bias=config.bias,
            mlp_bias=config.bias,
            attention_dropout=config.dropout,
            **ids,
        )
    if family == "mamba2":
        from transformers import Mamba2Config

        return Mamba2Config(
            vocab_size=config.vocab_size,
            hidden_size=config.n_embd,
            state_size=config.d_state,
            num_hidden_layers=config.n_layer,
            layer_norm_epsilon=config.norm_eps,
            expand=config.expand,
            conv_kernel=config.d_conv,
            num_heads=config.d_inner // config.ssm_head_dim,
            head_dim=config.ssm_head_dim,
            n_groups=config.n_groups,
            chunk_size=config.chunk_size,
            use_bias=False,
            use_conv_bias=True,
            hidden_act="silu",
            rms_norm=True,
            pad_token_id=bos_id,
            **ids,
        )
    from transformers import MambaConfig

    return MambaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        state_size=config.d_state,
        num_hidden_layers=config.n_layer,
        layer_norm_epsilon=config.norm_eps,
        expand=config.expand,
        conv_kernel=config.d_conv,
        use_bias=False,
        use_conv_bias=True,
        hidden_act="silu",
        time_step_rank=config.dt_rank_value,
        pad_token_id=bos_id,
        **ids,
    )


# --------------------------------------------------------------------------- weights


def _rope_rows_from_hf(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection (heads * hd, ...) from the half-split layout to channel pairs."""
    hd = w.shape[0] // heads
    return w.reshape(heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _rope_rows_to_hf(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of ``_rope_rows_from_hf``."""
    hd = w.shape[0] // heads
    return w.reshape(heads, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _names(family: str, config: ModelConfig) -> dict[str, str]:
    """Our tensor name -> theirs, for the tensors that map one to one (a transpose at most)."""
    out: dict[str, str] = {}
    if family == "gpt2":
        for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            out[name] = "transformer." + name
        for i in range(config.n_layer):
            for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                for kind in ("weight", "bias"):
                    out[f"h.{i}.{part}.{kind}"] = f"transformer.h.{i}.{part}.{kind}"
    elif family == "llama":
        out.update({"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight"})
        for i in range(config.n_layer):
            out[f"h.{i}.ln_1.weight"] = f"model.layers.{i}.input_layernorm.weight"
            out[f"h.{i}.ln_2.weight"] = f"model.layers.{i}.post_attention_layernorm.weight"
            for kind in ("weight", "bias") if config.bias else ("weight",):
                out[f"h.{i}.attn.c_proj.{kind}"] = f"model.layers.{i}.self_attn.o_proj.{kind}"
                out[f"h.{i}.mlp.c_proj.{kind}"] = f"model.layers.{i}.mlp.down_proj.{kind}"
    else:
        out.update({"embedding.weight": "backbone.embeddings.weight", "norm_f.weight": "backbone.norm_f.weight"})
        parts = (
            ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
             "A_log", "D", "out_proj.weight")
            if family == "mamba"
            else ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                  "out_proj.weight")
        )  # fmt: skip
        for i in range(config.n_layer):
            out[f"layers.{i}.norm.weight"] = f"backbone.layers.{i}.norm.weight"
            for part in parts:
                out[f"layers.{i}.mixer.{part}"] = f"backbone.layers.{i}.mixer.{part}"
    if not config.tie_weights:
        out["head.weight" if family in _SSM_FAMILIES else "lm_head.weight"] = "lm_head.weight"
    return out


def _transposed(family: str, name: str) -> bool:
    """Whether GPT-2 stores this tensor as a Conv1D (in, out) matrix."""
    return family == "gpt2" and name.endswith(".weight") and (".attn." in name or ".mlp." in name)


def state_from_hf(family: str, config: ModelConfig, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from transformers' tensors (float32); CheckpointError on missing or unknown tensors."""
    theirs = dict(theirs)
    if family == "gpt2":  # the hub's original files have no "transformer." prefix and keep mask buffers
        prefixed = ("transformer.", "lm_head.")
        theirs = {(k if k.startswith(prefixed) else "transformer." + k): v for k, v in theirs.items()}
        theirs = {k: v for k, v in theirs.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    theirs = {k: v for k, v in theirs.items() if not k.endswith("rotary_emb.inv_freq")}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in theirs:
            raise CheckpointError(f"the model's weights lack {name}; the folder is incomplete or not a {family} model")
        used.add(name)
        return theirs[name].to(torch.float32)

    ours = {}
    for mine, name in _names(family, config).items():
        t = take(name)
        ours[mine] = t.t().contiguous() if _transposed(family, name) else t
    if family == "llama":
        H, KV = config.n_head, config.kv_heads
        for i in range(config.n_layer):
            attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            for kind in ("weight", "bias") if config.bias else ("weight",):
                q = _rope_rows_from_hf(take(f"{attn}q_proj.{kind}"), H)
                k = _rope_rows_from_hf(take(f"{attn}k_proj.{kind}"), KV)
                ours[f"h.{i}.attn.c_attn.{kind}"] = torch.cat([q, k, take(f"{attn}v_proj.{kind}")])
                gate, up = take(f"{mlp}gate_proj.{kind}"), take(f"{mlp}up_proj.{kind}")
                ours[f"h.{i}.mlp.c_fc.{kind}"] = torch.cat([gate, up])
    extra = sorted(set(theirs) - used)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise CheckpointError(f"the model's weights hold tensors lmcore's {family} has no place for: {shown}")
    if config.tie_weights and family not in _SSM_FAMILIES:  # the transformer's head is the embedding under a second name
        ours["lm_head.weight"] = ours["wte.weight"]
    return ours


def state_to_hf(family: str, config: ModelConfig, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transformers' tensors from our state dict; the inverse of ``state_from_hf``."""
    theirs = {}
    for mine, name in _names(family, config).items():
        t = ours[mine].detach().cpu()
        theirs[name] = t.t() if _transposed(family, name) else t
    if family == "llama":
        H, KV, hd = config.n_head, config.kv_heads, config.head_dim
        hidden = swiglu_hidden(config.n_embd, config.mlp_ratio)
        for i in range(config.n_layer):
            attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            for kind in ("weight", "bias") if config.bias else ("weight",):
                q, k, v = ours[f"h.{i}.attn.c_attn.{kind}"].detach().cpu().split((H * hd, KV * hd, KV * hd))
                theirs[f"{attn}q_proj.{kind}"] = _rope_rows_to_hf(q, H)
                theirs[f"{attn}k_proj.{kind}"] = _rope_rows_to_hf(k, KV)
                theirs[f"{attn}v_proj.{kind}"] = v
                gate, up = ours[f"h.{i}.mlp.c_fc.{kind}"].detach().cpu().split(hidden)
                theirs[f"{mlp}gate_proj.{kind}"], theirs[f"{mlp}up_proj.{kind}"] = gate, up
    return {k: v.contiguous().clone() for k, v in theirs.items()}


@dataclass
class _Weights:
    """The folder's safetensors files, their headers checked: what reading them will cost."""

    files: list[Path]
    tensors: int  # entries in all headers
    elements: int  # values in all tensors
    disk_bytes: int
    dtypes: set[str]


def _weight_files(folder: Path, root: Path | None) -> list[Path] | None:
    """The folder's model.safetensors, or the shards its index names (inside the folder); None when it has none."""
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        return [_checked_path(folder, "model.safetensors", root)]
    if index.exists():
        weight_map = _read_json(index, MAX_INDEX_BYTES, root).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index.name} has no weight_map of file names; the file is damaged")
        return [_checked_path(folder, name, root) for name in sorted(set(weight_map.values()))]
    return None


def _check_header(path: Path, limit: int, entries_left: int) -> tuple[dict[str, Any], int]:
    """The tensor entries of one safetensors file, read by hand within ``limit`` header bytes, and the file size.

    Refused before parsing when the header is larger than the model can need or
    holds more entries than ``entries_left``; every entry must have a known dtype
    and lie inside the file with exactly the bytes its shape needs.
    """
    import struct

    from lmcore.checkpoint_header import _JSONRefused, _loads

    name = path.name
    with _open_regular(path, name) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{name} is too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{name} is truncated: it declares a {n:,}-byte header in a {size:,}-byte file")
            if n > limit:
                raise CheckpointError(
                    f"{name} declares a {n:,}-byte header, more than this model's tensors can need ({limit:,}); "
                    "the file is damaged or hostile"
                )
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read {name} ({e.strerror or e})") from None
    # Each entry has four keys, so four colons: counted in C before anything is parsed.
    if raw.count(b":") > 4 * entries_left + 64:
        raise CheckpointError(
            f"{name} holds more tensor entries than the model can need; the file is damaged or hostile"
        )
    try:
        header = _loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, _JSONRefused) as e:
        raise CheckpointError(f"{name} is not a valid safetensors file (its header: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is not a valid safetensors file (its header is not an object)")
    header.pop("__metadata__", None)
    data = size - 8 - n
    for key, entry in header.items():
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_BYTES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and len(shape) <= 8 and all(type(d) is int and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok or not 0 <= offsets[0] <= offsets[1] <= data or offsets[1] - offsets[0] != math.prod(
            shape
        ) * _DTYPE_BYTES[entry["dtype"]]:
            raise CheckpointError(f"{name} is damaged: tensor {key!r} has a bad dtype, shape or place in the file")
    return header, size


def _check_weights(folder: Path, root: Path | None, config: ModelConfig, missing_ok: bool = False) -> _Weights | None:
    """Check the headers of the folder's weights against what ``config`` needs, before reading any tensor.

    The weights must hold at least as many values as the model has parameters,
    so a config cannot make the import build a model larger than its files.
    None when the folder has no weights (or, ``missing_ok``, not all of its shards: a hub
    snapshot described before its weights are fetched).
    """
    files = _weight_files(folder, root)
    if files is None or (missing_ok and not all(os.path.lexists(f) for f in files)):
        return None
    params, n_tensors = _model_size(config)
    # transformers may store a few more tensors than we have (GPT-2's attention masks, Llama's q/k/v apart).
    entries_left = 3 * n_tensors + 16
    limit = _HEADER_BASE_BYTES + _HEADER_BYTES_PER_TENSOR * entries_left
    tensors = elements = disk = 0
    dtypes: set[str] = set()
    for path in files:
        header, size = _check_header(path, limit, entries_left - tensors)
        tensors += len(header)
        elements += sum(math.prod(e["shape"]) for e in header.values())
        dtypes |= {e["dtype"] for e in header.values()}
        disk += size
    if elements < params:
        raise CheckpointError(
            f"the config asks for {params:,} parameters but the weights hold {elements:,} values; "
            "config.json does not belong to these weights"
        )
    return _Weights(files, tensors, elements, disk, dtypes)


def _model_size(config: ModelConfig) -> tuple[int, int]:
    """(parameters, tensors in the state dict) of ``config``'s model, built without weights."""
    with torch.device("meta"):
        model = build_model(config)
        return model.num_params(), len(model.state_dict())


def _read_weights(weights: _Weights) -> dict[str, torch.Tensor]:
    """Every tensor of the checked files, as stored."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for path in weights.files:
        try:
            with _open_regular(path, path.name):  # the file may have been swapped for a pipe since the check
                pass
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    state[name] = f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({reason})") from None
    return state


def _no_weights(folder: Path) -> CheckpointError:
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        return CheckpointError(
            f"{folder} holds only pickled PyTorch weights; lmcore never unpickles files: "
            "save the model again with save_pretrained(safe_serialization=True)"
        )
    return CheckpointError(f"{folder} has no model.safetensors; pass a folder that save_pretrained wrote")


def _checked_config(cfg: Any) -> tuple[ModelConfig, list[str]]:
    """config_from_hf, with the layer count bounded before any model is built."""
    config, notes = config_from_hf(cfg)
    if config.n_layer > MAX_IMPORT_LAYERS:
        raise ConfigError(
            f"cannot import: the config declares {config.n_layer:,} layers, more than any model lmcore opens "
            f"(at most {MAX_IMPORT_LAYERS:,}); the config is damaged or hostile"
        )
    return config, notes


# --------------------------------------------------------------------------- tokenizers


def _special_token(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or a dict with its 'content'."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _tokenizer_file(folder: Path, root: Path | None, vocab_size: int) -> tuple[Path, str, int, str]:
    """(path, name, size limit, what) of tokenizer.json, as ``_read_bytes`` takes them."""
    limit = min(MAX_TOKENIZER_JSON_CHARS, _TOKENIZER_BASE_BYTES + _TOKENIZER_BYTES_PER_TOKEN * vocab_size)
    path = _checked_path(folder, "tokenizer.json", root)
    return path, "tokenizer.json", limit, f"the tokenizer of a {vocab_size:,}-token model"


def _check_tokenizer_size(folder: Path, root: Path | None, vocab_size: int) -> None:
    """The size check of ``tokenizer_from_folder``, without reading the file (when there is one)."""
    if (folder / "tokenizer.json").exists():
        path, name, limit, what = _tokenizer_file(folder, root, vocab_size)
        with _open_regular(path, name) as f:
            size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CheckpointError(
                f"{name} is {size:,} bytes, more than {what} can need ({limit:,}); the folder is damaged or hostile"
            )


def tokenizer_from_folder(folder: Path, vocab_size: int, cfg: Any, name: str, root: Path | None = None) -> HFTokenizer:
    """The folder's fast tokenizer (tokenizer.json) as an lmcore tokenizer for a model of ``vocab_size``.

    tokenizer.json may take a fixed allowance plus a few hundred bytes per token of the
    model's vocabulary, checked before it is read.
    """
    root = root if root is not None else folder
    path = folder / "tokenizer.json"
    if not path.exists():
        raise TokenizerError(
            f"{name} has no tokenizer.json (a fast tokenizer); save one beside the model with "
            "AutoTokenizer.from_pretrained(...).save_pretrained(folder)"
        )
    tokens: dict[str, str | None] = {"bos_token": None, "eos_token": None}
    for extra in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        if (folder / extra).exists():
            data = _read_json(folder / extra, root=root)
            for key in tokens:
                tokens[key] = _special_token(data.get(key)) or tokens[key]
    raw = _read_bytes(*_tokenizer_file(folder, root, vocab_size))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"cannot read {name}'s tokenizer.json ({e})") from None
    check_tokenizer_json(text)
    if not any(tokens.values()):  # no tokenizer config: the model config's ids name the tokens
        from tokenizers import Tokenizer as FastTokenizer

        try:
            fast = FastTokenizer.from_str(text)
        except Exception:  # the Rust parser raises plain Exceptions; HFTokenizer reports it below
            fast = None
        for key, attr in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
            i = getattr(cfg, attr, None)
            tokens[key] = fast.id_to_token(i) if fast is not None and isinstance(i, int) else None
    return HFTokenizer(text, vocab_size=vocab_size, name=name, **tokens)


def tokenizer_json(tok: Tokenizer) -> str:
    """Our tokenizer as a tokenizer.json that gives the same ids (``tokenizers`` format)."""
    from tokenizers import Regex
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    if isinstance(tok, HFTokenizer):
        return tok.tokenizer_json
    if isinstance(tok, ChatTokenizer):  # a chat template's tokens, added after the base vocabulary
        fast = FastTokenizer.from_str(tokenizer_json(tok.base))
        if fast.get_vocab_size(with_added_tokens=True) != tok.base.vocab_size:
            raise TokenizerError("this tokenizer's chat tokens cannot be numbered as ours in tokenizer.json")
        fast.add_special_tokens(list(tok.extra))
        for s in tok.extra:  # the ids must be ours
            if fast.token_to_id(s) != tok.special_id(s):
                raise TokenizerError("this tokenizer's chat tokens cannot be numbered as ours in tokenizer.json")
        return fast.to_str()
    if isinstance(tok, CharTokenizer):
        vocab = {ch: i for i, ch in enumerate(tok.chars)}
        vocab[BOS_TOKEN] = tok.bos_id
        if tok.unk_id is not None:
            vocab[UNK_TOKEN] = tok.unk_id
        # The unknown token must be in the vocabulary, or the library fails on any unseen
        # character. Without an UNK of its own, unseen characters become the separator
        # (for transformers); lmcore reports them when it reads the file back.
        unk = UNK_TOKEN if tok.unk_id is not None else BOS_TOKEN
        fast = FastTokenizer(models.WordLevel(vocab, unk_token=unk))
        # Every character is a word of its own (newlines too), and decoding joins them with nothing.
        fast.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        fast.decoder = decoders.Fuse()
        specials = [BOS_TOKEN] + ([UNK_TOKEN] if tok.unk_id is not None else [])
    elif isinstance(tok, BPETokenizer):
        alphabet = byte_encoder()
        n_plain = tok.vocab_size - len(tok.special_tokens)
        strings = ["".join(alphabet[b] for b in tok.token_bytes(i)) for i in range(n_plain)]
        seen: dict[str, int] = {}
        for i, s in enumerate(strings):
            if s in seen:
                raise TokenizerError(
                    f"BPE tokens {seen[s]} and {i} have the same bytes, which tokenizer.json cannot express; "
                    "train the vocabulary again with another size to export"
                )
            seen[s] = i
        merges = [(strings[a], strings[b]) for a, b in tok.merges]
        fast = FastTokenizer(models.BPE(vocab=seen, merges=merges, ignore_merges=False))
        fast.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PATTERNS[tok.pattern]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
            ]
        )
        fast.decoder = decoders.ByteLevel()
        specials = list(tok.special_tokens)
    else:
        raise TokenizerError(f"a {tok.kind} tokenizer cannot be written as tokenizer.json")
    fast.add_special_tokens(specials)
    for s in specials:  # the ids must be ours, not the next free ones
        assert fast.token_to_id(s) == (tok.special_ids[s] if isinstance(tok, BPETokenizer) else vocab[s])
    return fast.to_str()


# --------------------------------------------------------------------------- import


def _hub_weights_bytes(repo: str) -> int:
    """Total size of a hub model's safetensors files, or 0 when the hub cannot say."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception:  # offline, gated, rate-limited...: the size is only shown, never needed
        return 0
    return sum(f.size or 0 for f in info.siblings or [] if f.rfilename.endswith(".safetensors"))


def describe_source(source: str, allowed_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What importing ``source`` would give, without loading weights: family, sizes, memory.

    For a hub id only the config and tokenizer are fetched, and the size of
    the weights is asked of the hub (None when it cannot be reached). Local
    weights are checked against the config from their headers, so a config
    that its weights cannot fill is refused here already.
    ``memory_bytes`` is the float32 model; converting holds up to three
    copies for a moment (the file's tensors, the mapped ones, the model).
    """
    folder, root = locate_source(source, download_weights=False, allowed_root=allowed_root)
    cfg = hf_config(folder, root)
    config, notes = _checked_config(cfg)
    params, _ = _model_size(config)
    weights = _check_weights(folder, root, config, missing_ok=True)
    _check_tokenizer_size(folder, root, config.vocab_size)
    disk = weights.disk_bytes if weights is not None else 0
    if not disk and not Path(source).expanduser().is_dir():
        disk = _hub_weights_bytes(source)
    return {
        "source": source,
        "family": cfg.model_type,
        "class": FAMILIES[cfg.model_type],
        "config": config,
        "params": params,
        "memory_bytes": params * 4,
        "disk_bytes": disk or None,
        "stored_dtype": "/".join(sorted(weights.dtypes)) if weights is not None and weights.dtypes else None,
        "notes": notes,
        "train": _lmcore_train_state(folder, root),
    }


def import_model(source: str, allowed_root: str | os.PathLike | None = None) -> Imported:
    """Build the lmcore model and tokenizer of a transformers GPT-2, Llama or Mamba (float32, eval mode).

    Everything is checked from the declared sizes before it is allocated: the
    layer count, each safetensors header against the model the config asks
    for, the weights' total against its parameters, tokenizer.json against the
    vocabulary. Only regular files inside the folder are read.
    """
    folder, root = locate_source(source, allowed_root=allowed_root)
    cfg = hf_config(folder, root)
    config, notes = _checked_config(cfg)
    family = cfg.model_type
    weights = _check_weights(folder, root, config)
    if weights is None:
        raise _no_weights(folder)
    tokenizer = tokenizer_from_folder(folder, config.vocab_size, cfg, str(source), root)
    theirs = _read_weights(weights)
    state = state_from_hf(family, config, theirs)
    model = build_model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, t in state.items():
        if tuple(t.shape) != expected[name]:
            raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)} but the config needs {expected[name]}")
    model.load_state_dict(state, strict=True)  # copies into the model's own (tied) parameters
    imported = Imported(model.eval(), tokenizer, str(source), family, notes)
    imported.train_state = _lmcore_train_state(folder, root)
    return imported


def _lmcore_train_state(folder: Path, root: Path | None) -> dict[str, Any]:
    """The training record an lmcore export left in lmcore.json: only known fields of the right types."""
    path = folder / "lmcore.json"
    if not path.exists():
        return {}
    try:
        raw = _read_json(path, root=root)
    except CheckpointError:
        return {}  # a damaged record loses the history, not the model
    if raw.get("format") != EXPORT_FORMAT or not isinstance(raw.get("train"), dict):
        return {}
    train, out = raw["train"], {}
    for key in ("steps", "tokens_seen"):
        value = train.get(key)
        if type(value) is int and 0 <= value < 10**15:
            out[key] = value
    for key in ("val_loss", "best_val_loss", "train_loss"):
        value = train.get(key)
        if type(value) in (int, float) and math.isfinite(value):
            out[key] = float(value)
    if type(train.get("documents")) is bool:
        out["documents"] = train["documents"]
    return out


def import_checkpoint(
    source: str, out: str | os.PathLike, allowed_root: str | os.PathLike | None = None
) -> tuple[Path, Imported]:
    """Import ``source`` and save it as an lmcore checkpoint at ``out``.

    An lmcore export keeps its steps, tokens seen and losses; any other model has
    no step count (it was not trained here), only where it came from.
    """
    from lmcore.checkpoint import save_checkpoint

    imported = import_model(source, allowed_root)
    kept = {k: v for k, v in imported.train_state.items() if k != "documents"}
    train_state = {**kept, "imported_from": imported.source, "notes": imported.notes}
    path = save_checkpoint(
        out, imported.model, imported.tokenizer, train_state=train_state, data_info=imported.data_info
    )
    return path, imported


# --------------------------------------------------------------------------- export


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def model_card(model: LanguageModel, tokenizer: Tokenizer, family: str, train_state: dict, data_info: dict) -> str:
    """A README.md for the exported folder: what the model is, how it was trained, how to load it."""
    c = model.config
    tc = train_state.get("config") or {}
    data = data_info.get("name") or data_info.get("source") or "unknown"
    shape = (
        f"{c.n_layer} layers x {c.n_head} heads ({c.kv_heads} key/value), width {c.n_embd}, context {c.block_size}"
        if family not in _SSM_FAMILIES
        else f"{c.n_layer} layers, width {c.n_embd}, state {c.d_state}, conv {c.d_conv}, expand {c.expand}"
        + (f", {c.d_inner // c.ssm_head_dim} heads of {c.ssm_head_dim}, {c.n_groups} groups" if family == "mamba2" else "")
    )
    rows = [
        ("Architecture", f"{FAMILIES[family]} ({shape})"),
        ("Parameters", f"{model.num_params():,}"),
        ("Tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size:,} tokens (BOS/EOS id {tokenizer.bos_id})"),
        ("Training data", f"{data}" + (" (one document per line)" if data_info.get("documents") else "")),
        ("Steps", _fmt(train_state.get("steps"))),
        ("Tokens seen", _fmt(train_state.get("tokens_seen"))),
        ("Validation loss", _fmt(train_state.get("val_loss"))),
        ("Best validation loss", _fmt(train_state.get("best_val_loss"))),
    ]
    how = ", ".join(f"{k}={tc[k]}" for k in ("batch_size", "max_iters", "lr", "optimizer", "seed") if k in tc)
    if how:
        rows.append(("Training settings", f"lmcore's Trainer: {how}"))
    if train_state.get("imported_from"):
        rows.append(("Imported from", str(train_state["imported_from"])))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""---
library_name: transformers
tags: [lmcore, small-lm-playground, {family}]
---

# A {family} model trained with the Small LM Playground

| | |
|---|---|
{table}

Made with lmcore (the Small LM Playground's library) and exported for transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
ids = tokenizer("Hello", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=True)[0]))
```

It is a small model trained on a small corpus: a toy for learning, not a
source of facts. `python -m lmcore import` reads this folder back.
"""


def _export_record(train_state: dict[str, Any], data_info: dict[str, Any]) -> str:
    """lmcore.json: the training record an import reads back (steps, tokens seen, losses, documents mode)."""
    keep = ("steps", "tokens_seen", "val_loss", "best_val_loss", "train_loss")
    train = {
        k: train_state[k]
        for k in keep
        if type(train_state.get(k)) in (int, float) and math.isfinite(train_state[k])
    }
    train["documents"] = bool(data_info.get("documents", False))
    record = {"format": EXPORT_FORMAT, "train": train}
    return json.dumps(record, indent=2, allow_nan=False, default=str) + "\n"


def _unk_text(tokenizer: Tokenizer, bos_text: str | None) -> str | None:
    """The unknown token the exported tokenizer declares: its own UNK, the separator for a
    character vocabulary without one (see ``tokenizer_json``), none for byte-level BPE."""
    if isinstance(tokenizer, CharTokenizer):
        return UNK_TOKEN if tokenizer.unk_id is not None else bos_text
    return None


def export_model(
    model: LanguageModel,
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    train_state: dict[str, Any] | None = None,
    data_info: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a folder transformers' Auto classes load; return its path.

    The folder must not exist or be empty (nothing is overwritten). Files are
    written into a temporary folder beside it, then renamed into place.
    """
    config = model.config
    family = export_family(config)
    text = tokenizer_json(tokenizer)  # refuses before anything is written
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; choose a new folder for the export")
    from safetensors.torch import save_file
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    bos = tokenizer.bos_id
    hf_cfg = _hf_config_for(config, family, bos)
    hf_cfg.architectures = [FAMILIES[family]]
    state = state_to_hf(family, config, model.state_dict())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            hf_cfg.save_pretrained(tmp)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            GenerationConfig(bos_token_id=bos, eos_token_id=bos, pad_token_id=bos).save_pretrained(tmp)
            from tokenizers import Tokenizer as FastTokenizer

            bos_text = FastTokenizer.from_str(text).id_to_token(bos)
            fast = PreTrainedTokenizerFast(
                tokenizer_object=FastTokenizer.from_str(text),
                bos_token=bos_text,
                eos_token=bos_text,
                pad_token=bos_text,
                unk_token=_unk_text(tokenizer, bos_text),
                model_max_length=config.block_size if family not in _SSM_FAMILIES else int(1e30),
                clean_up_tokenization_spaces=False,
                # No token_type_ids: none of the exported families takes them (generate would refuse).
                model_input_names=["input_ids", "attention_mask"],
            )
            fast.save_pretrained(tmp)
            (tmp / "README.md").write_text(
                model_card(model, tokenizer, family, train_state or {}, data_info or {}), encoding="utf-8"
            )
            (tmp / "lmcore.json").write_text(_export_record(train_state or {}, data_info or {}), encoding="utf-8")
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise CheckpointError(f"cannot write the export to {out}: {e.strerror or e}") from None
    return out


def export_refusal(checkpoint: str | os.PathLike) -> str | None:
    """Why a checkpoint cannot be exported (one line), or None when it can; reads only its metadata."""
    from lmcore.checkpoint import read_metadata
    from lmcore.errors import LMCoreError
    from lmcore.tokenizers import tokenizer_from_dict

    try:
        meta = read_metadata(checkpoint)
        export_family(ModelConfig.from_dict(meta["config"]))
        tokenizer_json(tokenizer_from_dict(meta["tokenizer"]))
    except LMCoreError as e:
        return str(e)
    return None


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export an lmcore checkpoint file to a transformers folder."""
    from lmcore.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return export_model(ckpt.model, ckpt.tokenizer, out, ckpt.train_state, ckpt.data_info)


def export_zip(checkpoint: str | os.PathLike) -> bytes:
    """The export of a checkpoint as the bytes of a zip archive (one folder named after the checkpoint)."""
    import zipfile
    from io import BytesIO

    name = Path(checkpoint).name.removesuffix(".safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_checkpoint(checkpoint, Path(tmp) / name)
        buf = BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.iterdir()):
                zf.write(path, f"{name}/{path.name}")
    return buf.getvalue()
