"""One training run from its spec to its end: the path every run takes.

A ``RunSpec`` says what to train (a model config from scratch, a checkpoint to
resume, or one to fine-tune), on which data, and how to keep the checkpoint;
``Run(spec, path, device, callbacks)`` builds the model and the ``Trainer``
(``build``) and trains it (``fit``). The command line (``lmcore train`` and
``lmcore finetune``, and each rank under torchrun), the app's runs
(``jobs.TrainingJob``, in a thread or in the run process of ``lmcore.runs``)
and the library's ``finetune`` all go through it, so a run is the same
wherever it starts:

- the initial weights are drawn with the run's seed, in a fork of torch's
  global generator and one build at a time (runs in threads beside each
  other draw the same weights as a run alone);
- every evaluation measures the attention heads' scores and the bits per
  byte of the validation text (of plain text: a masked source's loss is its
  answers' alone), the base's loss on its own text when a fine-tuning run has
  it, and a short text sampled from the model (``sample_tokens``), seeded so
  that evaluations compare;
- the checkpoint at ``path`` is saved at the evaluations that improve on the
  best (``keep="last"``: at every one), and the run log beside it is appended
  at every step and evaluation, the sample included.

Under torchrun every rank trains its share of each step; rank 0 alone
measures, samples, saves and logs. The extra ``callbacks`` (a progress bar,
the app's job) get every event after the run's own: an evaluation with its
sample.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmcore.batches import TokenSource, as_source
from lmcore.checkpoint import CheckpointCallback, load_checkpoint
from lmcore.checkpoint_names import optimizer_path
from lmcore.checkpoint_resume import load_resume_state, resume_settings
from lmcore.device import resolve_device
from lmcore.distributed import is_main
from lmcore.errors import ConfigError, TrainingError
from lmcore.finetune import (
    BaseLossCallback,
    MaskedTokens,
    apply_lora,
    chat_reply,
    chat_tokenizer,
    encode_examples,
    extends,
    grow_vocab,
    lora_trainable_share,
    merged_checkpoint_callback,
    read_examples,
    save_adapter,
    train_new_rows,
)
from lmcore.models import LanguageModel, ModelConfig, build_model
from lmcore.runlog import RunLogger
from lmcore.tokenizers import ChatTokenizer, Tokenizer
from lmcore.train import BitsPerByteCallback, HeadScoresCallback, Trainer, TrainConfig, TrainEvent

# Length of the text sample generated at each eval, in tokens.
SAMPLE_TOKENS = 120
# Serialises seeded model construction (it uses torch's global generator).
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunSpec:
    """What a training run needs: its name, the model and training settings, the tokenizer and the data.

    ``train_ids`` and ``val_ids`` are 1-D long tensors or token sources (see
    ``lmcore.batches``). ``data_info`` (``documents``, ``source``...) is saved
    with the checkpoint. ``resume_from`` continues that checkpoint (weights,
    optimizer and step); ``init_from`` fine-tunes: the run starts from that
    checkpoint's weights (an imported model, say) with a new optimizer and
    schedule, and saves under its own name. ``keep="best"``: the checkpoint
    holds the best-validation weights; ``"last"``: the latest.
    ``sample_tokens``: the length of the text sampled at each evaluation.
    Fine-tuning (see ``finetune_spec``): ``tokenizer`` may extend the
    ``init_from`` checkpoint's with chat tokens (the model grows to it), the ids may be
    masked sources (``MaskedTokens``), ``lora`` (``rank``, ``alpha``, ``dropout``,
    ``targets``) trains adapters on a frozen base (saved merged, without a resume
    state), and ``base_val_ids`` (plain text in the base's vocabulary) adds its loss to
    every evaluation (``base_val_loss``: what the model forgets).
    """

    name: str
    model_config: ModelConfig
    tokenizer: Tokenizer
    train_ids: torch.Tensor | TokenSource
    val_ids: torch.Tensor | TokenSource
    train_config: TrainConfig
    data_info: dict[str, Any] | None = None
    resume_from: str | Path | None = None
    init_from: str | Path | None = None
    keep: str = "best"
    sample_tokens: int = SAMPLE_TOKENS
    lora: dict[str, Any] | None = None
    base_val_ids: torch.Tensor | TokenSource | None = None


def _masked(ids: Any) -> bool:
    """Whether ``ids`` is a masked source (prompt/response pairs: only the answers' targets train)."""
    return hasattr(ids, "target_windows")


class Run:
    """The run ``spec`` describes, saving to ``path`` (None: nothing saved or logged) on ``device``.

    ``build()`` makes the model (new, resumed or fine-tuned) and the Trainer;
    ``fit()`` trains to the end and returns ``Trainer.fit``'s result. After
    ``build``: ``model``, ``trainer``, ``checkpointer`` (None without a path or
    off rank 0), ``model_config`` and ``data_info`` (a resumed run's are its
    checkpoint's, with the spec's data info on top).
    """

    def __init__(self, spec: RunSpec, path: str | Path | None, device: torch.device, callbacks: Any = ()):
        self.spec = spec
        self.path = None if path is None else Path(path)
        self.device = device
        self.callbacks = list(callbacks)
        self.tokenizer = spec.tokenizer
        self.model_config = spec.model_config
        self.data_info: dict[str, Any] = {"documents": False, **(spec.data_info or {})}
        self.model: LanguageModel | None = None
        self.trainer: Trainer | None = None
        self.checkpointer: CheckpointCallback | None = None
        self.runlog: RunLogger | None = None

    def build(self) -> Trainer:
        """The model and its Trainer, with the run's callbacks (and the resume state loaded)."""
        spec = self.spec
        model, resume_state = self._model()
        model.train()
        callbacks: list[Any] = [self]
        if is_main():  # rank 0 alone measures, saves and logs
            callbacks = [HeadScoresCallback(), *self._measures(), self]
            if self.path is not None:
                # Saves weights, tokenizer and resume state at the evals that improve on the best
                # validation loss (keep="last": at every eval); a run that fails keeps its last good
                # save. A run on masked prompt/response pairs saves no resume state: a resume
                # continues a run on a corpus, which is not what it trained on.
                if spec.lora is not None:
                    self.checkpointer = merged_checkpoint_callback(self.path, self.tokenizer, spec.keep, self.data_info)
                else:
                    self.checkpointer = CheckpointCallback(
                        self.path, self.tokenizer, keep=spec.keep, data_info=self.data_info,
                        save_optimizer=not _masked(spec.train_ids),
                    )  # fmt: skip
                info = {"source": self.data_info.get("source"), "train_tokens": len(spec.train_ids)}
                self.runlog = RunLogger(self.path, info, own_evals=True)  # evals are logged with their sample
                callbacks += [self.checkpointer, self.runlog]
        trainer = Trainer(model, spec.train_ids, spec.val_ids, spec.train_config, callbacks=callbacks,
                          device=self.device)  # fmt: skip
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
        self.model, self.trainer = model, trainer
        return trainer

    def fit(self) -> dict[str, Any]:
        """Train to the end (max_iters, the time budget, patience or ``trainer.stop()``); the log is closed after."""
        if self.trainer is None:
            self.build()
        assert self.trainer is not None
        try:
            return self.trainer.fit()
        finally:
            if self.runlog is not None:
                self.runlog.close()

    # ------------------------------------------------------------------ building
    def _model(self) -> tuple[LanguageModel, dict[str, Any] | None]:
        """The model to train, and the resume state when continuing a checkpoint."""
        spec = self.spec
        if spec.init_from is not None:
            ckpt = load_checkpoint(spec.init_from, device="cpu")
            if not extends(self.tokenizer, ckpt.tokenizer):
                raise TrainingError(
                    f"{Path(spec.init_from).name} has another vocabulary than the one that encoded this data; "
                    "encode the data with the checkpoint's tokenizer"
                )
            # The new rows and the adapters draw their first values from the run's seed, as a new model does.
            with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.train_config.seed)
                model = grow_vocab(ckpt.model, self.tokenizer.vocab_size)  # chat tokens added: new rows
                if spec.lora is not None:
                    lora = spec.lora
                    apply_lora(model, lora["rank"], lora.get("alpha"), lora.get("dropout", 0.0), lora.get("targets"))
                    train_new_rows(model, ckpt.config.vocab_size)  # the chat tokens' rows learn beside the adapters
            self.model_config = model.config
            return model, None
        if spec.resume_from is None:
            # Initial weights come from torch's global generator: seed it, in a
            # fork that leaves the global state as it was, and one build at a
            # time, so that the run's seed fixes its starting point.
            with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.train_config.seed)
                return build_model(self.model_config), None
        name = Path(spec.resume_from).name
        ckpt = load_checkpoint(spec.resume_from, device="cpu")
        state = load_resume_state(spec.resume_from)
        if state is None:
            optim = optimizer_path(spec.resume_from).name
            raise TrainingError(f"{name} has no resume state beside it ({optim}); start a new run instead")
        if ckpt.tokenizer.to_dict() != self.tokenizer.to_dict():
            raise TrainingError(
                f"{name} was trained with another vocabulary than the one that encoded this data; "
                "encode the data with the checkpoint's tokenizer"
            )
        self.model_config = ckpt.config
        self.data_info = {"documents": False, **ckpt.data_info, **(spec.data_info or {})}
        return ckpt.model, state

    def _measures(self) -> list[Any]:
        """Bits per byte of the validation text (not of a masked source: its loss is the answers' alone),
        and the base's loss on its own text when a fine-tuning run has it."""
        spec = self.spec
        out: list[Any] = []
        if not _masked(spec.val_ids):
            out.append(BitsPerByteCallback(self.tokenizer, spec.val_ids))
        if spec.base_val_ids is not None:
            out.append(BaseLossCallback(spec.base_val_ids, seed=spec.train_config.seed))
        return out

    # ------------------------------------------------------------------ trainer callbacks
    # The run's own, then the extra callbacks' (an evaluation reaches them with its sample).
    def on_start(self, trainer: Trainer) -> None:
        self._emit("on_start", trainer)

    def on_step(self, event: TrainEvent) -> None:
        self._emit("on_step", event)

    def on_eval(self, event: TrainEvent) -> None:
        if event.sample is None and self.spec.sample_tokens > 0:
            event = dataclasses.replace(event, sample=self._sample())
        if self.runlog is not None:
            self.runlog.log_eval(event)
        self._emit("on_eval", event)

    def on_end(self, result: dict[str, Any]) -> None:
        self._emit("on_end", result)

    def _emit(self, hook: str, payload: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(payload)

    def _sample(self) -> str:
        """A short text from the model as it is now, seeded so that evals compare."""
        from lmcore.sample import SamplingConfig, generate, prompt_start

        model, tok, n = self.model, self.tokenizer, self.spec.sample_tokens
        assert model is not None
        sampling = SamplingConfig(temperature=0.8, seed=self.spec.train_config.seed)
        asked = (self.data_info.get("finetune") or {}).get("sample_prompt")
        if asked and isinstance(tok, ChatTokenizer):  # a fine-tuning run answers a held-out prompt
            last = max(i for i, m in enumerate(asked) if m["role"] == "assistant")
            answer = chat_reply(model, tok, asked[:last], n, sampling)
            return "".join(f"{m['role']}: {m['content']}\n" for m in asked[:last]) + f"assistant: {answer}"
        documents = bool(self.data_info.get("documents"))
        val = self.spec.val_ids
        first: list[int] = []  # a plain-text run continues the first validation token (ids or shards)
        if not documents and len(val) > 0:
            first = [int(as_source(val).windows(torch.zeros(1, dtype=torch.long), 1)[0, 0])]
        prompt = prompt_start(first, tok.bos_id, documents)
        events = generate(model, prompt, max_new_tokens=n, sampling=sampling, stop_ids=[tok.bos_id])
        ids = [e.token_id for e in events]  # generate samples in eval mode and puts the model back as it was
        return tok.decode([i for i in prompt + ids if i != tok.bos_id])


# --------------------------------------------------------------------------- fine-tuning


def finetune_spec(
    name: str,
    base: str | os.PathLike,
    examples: list[list[dict[str, str]]],
    train_config: Any,
    *,
    lora: dict[str, Any] | None = None,
    add_chars: bool = False,
    base_val_ids: Any = None,
    val_share: float = 0.1,
    data_info: dict[str, Any] | None = None,
) -> RunSpec:
    """The ``RunSpec`` of a fine-tuning run of the checkpoint ``base`` on ``examples`` (for ``Run``, ``finetune`` or
    ``jobs.JobRegistry.start``).

    The checkpoint's vocabulary gets the chat template (``chat_tokenizer``; unseen
    characters refused unless ``add_chars``), the examples are split (the last
    ``val_share`` validate) and encoded with their loss mask. ``lora``: ``rank``
    (and ``alpha``, ``dropout``, ``targets``) for adapters on a frozen base, else
    every weight trains. ``base_val_ids``: plain text in the base's vocabulary whose
    loss every evaluation reports (``BaseLossCallback``). Everything is checked here,
    before any run starts.
    """
    ckpt = load_checkpoint(base, device="cpu")
    tok = chat_tokenizer(ckpt.tokenizer, examples, add_chars=add_chars)
    if getattr(ckpt.model, "sized_by_data", False) or not any(p.requires_grad for p in ckpt.model.parameters()):
        raise ConfigError(f"a {ckpt.config.arch} model learns no weights by gradient; fine-tune a neural model")
    config = ckpt.config.replace(vocab_size=tok.vocab_size)
    lora = None if lora is None else {"rank": int(lora["rank"]), "alpha": lora.get("alpha"),
                                      "dropout": float(lora.get("dropout", 0.0)), "targets": lora.get("targets")}  # fmt: skip
    share = 1.0
    if lora is not None:
        share = lora_trainable_share(config, lora["rank"], lora["targets"], ckpt.config.vocab_size)
        if not 0.0 <= lora["dropout"] < 1.0:
            raise ConfigError(f"the LoRA dropout must be in [0, 1), not {lora['dropout']}")
    n_val = max(1, int(len(examples) * val_share)) if len(examples) > 1 else 0
    train_ex, val_ex = examples[: len(examples) - n_val], examples[len(examples) - n_val :] or examples
    block = config.block_size
    train = MaskedTokens(*encode_examples(tok, train_ex), min_len=block + 1)
    val = MaskedTokens(*encode_examples(tok, val_ex), min_len=block + 1)
    if base_val_ids is not None and len(base_val_ids) < block + 1:
        base_val_ids = None  # too short to measure; the run goes on without the curve
    info = {
        **(data_info or {}),
        "finetune": {
            "base": Path(base).name,
            "base_checkpoint_id": str(ckpt.metadata.get("checkpoint_id", "")),
            "examples": len(examples),
            "train_examples": len(train_ex),
            "val_examples": n_val,
            "lora_rank": None if lora is None else lora["rank"],
            "trainable_share": share,
            "sample_prompt": val_ex[0],
        },
        "train_tokens": len(train),
    }
    return RunSpec(name, config, tok, train, val, train_config, data_info=info, init_from=base, lora=lora,
                   base_val_ids=base_val_ids)  # fmt: skip


def finetune_run(
    base: str | os.PathLike,
    data: str | os.PathLike,
    train_config: TrainConfig,
    out: str | os.PathLike | None = None,
    *,
    lora: dict[str, Any] | None = None,
    adapter_out: str | os.PathLike | None = None,
    add_chars: bool = False,
    val_share: float = 0.1,
    callbacks: Any = (),
) -> Run:
    """The run that fine-tunes the checkpoint ``base`` on the JSONL ``data`` (``lmcore finetune`` and ``finetune``).

    Refused before anything is read unless it has somewhere to write: ``out`` (the
    merged checkpoint, saved at every evaluation with the run log beside it) and/or
    ``adapter_out`` (which needs ``lora``; ``finetune_result`` writes it after the fit).
    """
    if out is None and adapter_out is None:
        raise ConfigError("say where to write the result: an output checkpoint and/or an adapter file")
    if adapter_out is not None and lora is None:
        raise ConfigError("an adapter file needs a LoRA rank; add --lora-rank")
    name = Path(out if out is not None else adapter_out).name  # type: ignore[arg-type]
    examples = read_examples(data)
    spec = finetune_spec(name, base, examples, train_config, lora=lora, add_chars=add_chars, val_share=val_share)
    return Run(dataclasses.replace(spec, keep="last"), out, resolve_device(train_config.device), callbacks)


def finetune_result(run: Run, result: dict[str, Any], adapter_out: str | os.PathLike | None) -> dict[str, Any]:
    """``result`` (the fit's) with what the fine-tuning ``run`` wrote and trained.

    ``out``: the merged checkpoint the run saved (if it saved one); ``adapter``: its
    LoRA adapters, saved now to ``adapter_out`` with the tokens they add;
    ``trainable_share`` and the examples' counts (``train_examples``, ``val_examples``).
    """
    ft = run.spec.data_info["finetune"]
    result = {**result, "trainable_share": ft["trainable_share"], "train_examples": ft["train_examples"],
              "val_examples": ft["val_examples"]}  # fmt: skip
    if run.checkpointer is not None and run.checkpointer.saved_path is not None:
        result["out"] = str(run.checkpointer.saved_path)
    if adapter_out is not None:
        base = resume_settings(run.spec.init_from)
        base_vocab = base.tokenizer.vocab_size if isinstance(base.tokenizer, ChatTokenizer) else base.config.vocab_size
        info = {"extra": list(run.tokenizer.extra), "base_vocab": base_vocab}
        result["adapter"] = str(save_adapter(adapter_out, run.model, ft["base_checkpoint_id"], info))
    return result


def finetune(
    base: str | os.PathLike,
    data: str | os.PathLike,
    train_config: TrainConfig,
    out: str | os.PathLike | None = None,
    *,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    lora_targets: Iterable[str] | None = None,
    adapter_out: str | os.PathLike | None = None,
    add_chars: bool = False,
    val_share: float = 0.1,
    callbacks: Any = (),
) -> dict[str, Any]:
    """Fine-tune the checkpoint ``base`` on the JSONL ``data``; write ``out`` (merged) and/or ``adapter_out``.

    The run ``lmcore finetune`` makes (``finetune_run``): every check (the data, its
    characters, the LoRA settings) runs before the first step, so a bad line trains
    nothing; ``out`` gets the run log beside it, with a held-out prompt answered at
    each evaluation. Returns the fit's result plus ``trainable_share`` and the
    examples' counts (``finetune_result``).
    """
    lora = None if lora_rank is None else {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout,
                                           "targets": None if lora_targets is None else list(lora_targets)}  # fmt: skip
    run = finetune_run(base, data, train_config, out, lora=lora, adapter_out=adapter_out, add_chars=add_chars,
                       val_share=val_share, callbacks=callbacks)  # fmt: skip
    return finetune_result(run, run.fit(), adapter_out)
