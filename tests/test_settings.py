"""Each setting declared once: every config field has its flag and its address key, and survives both.

The declarations (``lmcore.settings``) are the only list: these tests walk them,
so a field declared without a flag or an address key, or one that a flag or the
address loses on the way, fails here without any test naming it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from lmcore.cli import _model_overrides, _sampling, _train_overrides, build_parser
from lmcore.errors import ConfigError
from lmcore.models import ModelConfig, preset_family
from lmcore.sample import SAMPLING_SETTINGS, SamplingConfig
from lmcore.settings import Declared, declared
from lmcore.train import TrainConfig
from ui import state as S
from ui.settings import sampling_key
from ui.urlstate import ADDRESS_FIELDS, SAMPLING_FIELDS, TRAIN_FIELDS

APP = str(Path(__file__).resolve().parents[1] / "app.py")
# Set by something else: the architecture by --preset (the address's arch), the vocabulary's size by the tokenizer.
NOT_SET_ALONE = {"arch", "preset", "vocab_size"}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not (cls is ModelConfig and f.name in NOT_SET_ALONE)]


@pytest.mark.parametrize("cls", [TrainConfig, ModelConfig])
def test_every_config_field_is_declared_with_a_flag_and_an_address_key(cls: type) -> None:
    flags = {s for a in _subparser("train")._actions for s in a.option_strings}
    for name in _fields(cls):
        d = declared(cls).get(name)
        assert d is not None, f"{cls.__name__}.{name} is not declared with lmcore.settings.setting()"
        assert d.flag in flags, f"{name}: no command-line flag"
        assert d.key in ADDRESS_FIELDS, f"{name}: no page-address key"
        assert d.setting.help, f"{name}: no help"
    if cls is TrainConfig:  # the training settings are what fine-tuning takes too
        finetune = {s for a in _subparser("finetune")._actions for s in a.option_strings}
        assert {declared(cls)[n].flag for n in _fields(cls)} <= finetune


def _subparser(command: str) -> Any:
    import argparse

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


def _other(d: Declared) -> Any:
    """A value of field ``d`` other than its default, within its bounds."""
    s = d.setting
    if d.kind == "choice":
        return next(c for c in s.choices if c != d.default)
    if d.kind == "bool":
        return not d.default
    if d.default is None:
        return (s.low or 0) + (1 if d.kind == "int" else 1e-4)
    if d.kind == "int":
        return d.default + 1
    return d.default / 2 if d.default else 0.25


def _argv(d: Declared, value: Any) -> list[str]:
    if d.kind == "bool":
        return [d.flag if value else "--no-" + d.flag[2:]]
    return [d.flag, str(value)]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_every_training_setting_round_trips_through_the_flags(command: str) -> None:
    wanted = {n: _other(declared(TrainConfig)[n]) for n in _fields(TrainConfig)}
    argv = [command] + (["--checkpoint", "base.safetensors", "--data", "x.jsonl"] if command == "finetune" else [])
    for name, value in wanted.items():
        argv += _argv(declared(TrainConfig)[name], value)
    tc = TrainConfig(**_train_overrides(build_parser().parse_args(argv)))
    assert tc == TrainConfig(**wanted)
    assert tc != TrainConfig()  # every value differs from the default: none was dropped on the way
    tc.validate()


def test_every_model_field_round_trips_through_the_flags() -> None:
    wanted = {n: _other(declared(ModelConfig)[n]) for n in _fields(ModelConfig)}
    argv = ["train"]
    for name, value in wanted.items():
        argv += _argv(declared(ModelConfig)[name], value)
    assert _model_overrides(build_parser().parse_args(argv)) == wanted


@pytest.mark.parametrize(
    "change, field",
    [(dict(lr=0.0), "lr"), (dict(batch_size=2.5), "batch_size"), (dict(optimizer="lion"), "optimizer"),
     (dict(warmup_iters=50, max_iters=10), "warmup_iters"), (dict(schedule="time"), "schedule"),
     (dict(device="tpu"), "device"), (dict(patience=0), "patience")],
)  # fmt: skip
def test_a_training_config_error_names_its_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig(**change).validate()
    assert e.value.field == field and str(e.value).count("\n") == 0


# ----------------------------------------------------------- every model field survives a reload
# One valid model per family, each field other than its preset's value; together they set every field.
MODELS = {
    "llama": dict(n_layer=3, n_head=2, n_kv_head=1, n_embd=32, block_size=24, dropout=0.1, norm="layernorm",
                  pos="learned", mlp="gelu", bias=True, tie_weights=False, mlp_ratio=3.0, rope_theta=500000.0,
                  norm_eps=1e-6, gelu_approximate="tanh", qk_norm=True),
    "mamba": dict(n_layer=2, n_embd=48, block_size=32, d_state=8, d_conv=3, expand=3, tie_weights=False, dt_rank=5),
    "mamba2": dict(n_layer=2, n_embd=32, block_size=32, d_state=8, d_conv=3, expand=4, ssm_head_dim=8, n_groups=2,
                   chunk_size=16),
    "ngram": dict(ngram_n=2, add_k=0.5, block_size=16),
}  # fmt: skip


def test_every_model_page_field_is_drawn_from_its_declaration() -> None:
    """A family names the fields its page draws; their kind, widget and help are the declaration's."""
    from lmcore.models import ARCHS, family_of
    from lmcore.settings import check_value

    for arch in ARCHS:
        for f in family_of(arch).fields:
            d = declared(ModelConfig)[f.name]
            s = d.setting
            assert s.label and s.widget and s.help, f"{f.name}: declare its label, widget and help on ModelConfig"
            assert f.declared.setting.widget == s.widget and f.declared.kind == d.kind, f.name
            assert f.help in (s.help, f.declared.setting.help) and f.label == f.declared.setting.label, f.name
            if d.kind in ("int", "float"):
                for bound in f.limits:  # the page offers only values validate() accepts
                    check_value(d, int(bound) if d.kind == "int" else float(bound))
            assert set(f.choices) <= set(s.choices), f.name


def test_the_models_below_set_every_model_field() -> None:
    assert set(_fields(ModelConfig)) == {n for values in MODELS.values() for n in values}


def _text(v: Any) -> str:
    return ("1" if v else "0") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


@pytest.mark.slow  # two app sessions per family
@pytest.mark.parametrize("arch", list(MODELS))
def test_every_model_field_survives_the_model_page_and_a_reload(arch: str) -> None:
    values = MODELS[arch]
    for name, v in values.items():
        assert v != getattr(ModelConfig.preset(arch), name), name  # a value the preset would not give back
    address = {"corpus": "builtin:python-docs", "tok": "char", "arch": arch, **{k: _text(v) for k, v in values.items()}}
    for _ in range(2):  # the link, then a reload of the address the app wrote back
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update(address)
        at.run()
        assert not at.sidebar.warning, [w.value for w in at.sidebar.warning]
        at.switch_page("views/model.py").run()  # the page rebuilds the model from its widgets
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        cfg = at.session_state[S.MODEL_CONFIG]
        assert {n: getattr(cfg, n) for n in values} == values
        for f in preset_family(arch).fields:  # each widget as its declaration (and the family) says
            w = _model_widget(at, f.name)
            assert w.label == f.label and w.help == f.help, f.name
            if f.kind in ("int", "float", "fraction"):
                assert (w.proto.min, w.proto.max) == f.limits, f.name
        address = dict(at.query_params)


def _model_widget(at: AppTest, name: str) -> Any:
    kinds = ("number_input", "slider", "selectbox", "checkbox")
    (w,) = [w for kind in kinds for w in getattr(at, kind) if w.key == S.model_field(name)]
    return w


def test_every_training_setting_has_its_widget_key_in_the_address_rules() -> None:
    from ui.settings import train_key

    for name in _fields(TrainConfig):
        d = declared(TrainConfig)[name]
        assert TRAIN_FIELDS[d.key].key == train_key(name), name


# ----------------------------------------------------------- the sampling settings, the same way
# generate()'s length is set beside SamplingConfig's fields on the command line and the pages.
SAMPLING_NAMES = [f.name for f in dataclasses.fields(SamplingConfig)] + ["max_new_tokens"]


def test_every_sampling_setting_is_declared_with_a_flag_an_address_key_and_a_widget() -> None:
    flags = {s for a in _subparser("generate")._actions for s in a.option_strings}
    assert set(SAMPLING_SETTINGS) == set(SAMPLING_NAMES)
    for name in SAMPLING_NAMES:
        d = SAMPLING_SETTINGS[name]
        assert d is declared(SamplingConfig).get(name, d), f"SamplingConfig.{name} is not declared with setting()"
        assert d.flag in flags, f"{name}: no command-line flag"
        assert d.key in SAMPLING_FIELDS and SAMPLING_FIELDS[d.key].key == sampling_key(name), f"{name}: no address key"
        assert d.setting.help and d.setting.label and d.setting.widget, f"{name}: no help, label or widget"


def test_every_sampling_setting_round_trips_through_the_flags() -> None:
    wanted = {n: _other(SAMPLING_SETTINGS[n]) for n in SAMPLING_NAMES}
    argv = ["generate", "--checkpoint", "model.safetensors"]
    for name, value in wanted.items():
        argv += _argv(SAMPLING_SETTINGS[name], value)
    sampling, max_new = _sampling(build_parser().parse_args(argv))
    assert max_new == wanted.pop("max_new_tokens") != SAMPLING_SETTINGS["max_new_tokens"].default
    assert sampling == SamplingConfig(**wanted) != SamplingConfig()  # none was dropped on the way
    assert _sampling(build_parser().parse_args(argv[:3])) == (SamplingConfig(), 200)  # no flag: the defaults


@pytest.mark.parametrize(
    "change, field",
    [(dict(temperature=-0.5), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"),
     (dict(seed=-1), "seed"), (dict(top_k=2.5), "top_k")],
)  # fmt: skip
def test_a_sampling_config_error_names_its_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        SamplingConfig(**change).validate()
    assert e.value.field == field and str(e.value).count("\n") == 0


def _page_value(d: Declared) -> Any:
    """A widget value of sampling setting ``d`` other than the page's first one, within its bounds and on its step."""
    lo, hi = d.bounds
    if d.page_kind == "int":
        value = d.to_widget(d.page_default) + 1
    else:
        step = d.setting.step or 0.01
        value = round(lo + step * round((hi - lo) / 2 / step), 6)
    assert lo <= value <= hi and value != d.to_widget(d.page_default), d.name
    return value


@pytest.fixture
def one_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint folder with one tiny model, so the Generation page draws its sampling widgets."""
    from lmcore.checkpoint import save_checkpoint
    from lmcore.data import build_tokenizer
    from lmcore.models import build_model

    tok = build_tokenizer("char", "the quick brown fox jumps over the lazy dog\n")
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16)
    save_checkpoint(tmp_path / "tiny", build_model(cfg), tok)
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(tmp_path))


def _generation_widget(at: AppTest, name: str) -> Any:
    (w,) = [w for kind in ("number_input", "slider") for w in getattr(at, kind) if w.key == sampling_key(name)]
    return w


@pytest.mark.slow  # two app sessions
def test_every_sampling_setting_survives_the_generation_page_and_a_reload(one_checkpoint: None) -> None:
    wanted = {n: _page_value(SAMPLING_SETTINGS[n]) for n in SAMPLING_NAMES}
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/generation.py").run()
    for name, value in wanted.items():
        _generation_widget(at, name).set_value(value)
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    address = dict(at.query_params)
    for name in SAMPLING_NAMES:
        assert SAMPLING_SETTINGS[name].key in address, name

    again = AppTest.from_file(APP, default_timeout=120)  # a reload, or the link pasted in another browser
    again.query_params.update(address)
    again.run()
    assert not again.sidebar.warning, [w.value for w in again.sidebar.warning]
    again.switch_page("views/generation.py").run()
    assert not again.exception, [e.value for e in again.exception]
    read = {n: _generation_widget(again, n).value for n in SAMPLING_NAMES}
    assert read == wanted
    config = {n: SAMPLING_SETTINGS[n].from_widget(v) for n, v in read.items() if n != "max_new_tokens"}
    assert SamplingConfig(**config).validate() != SamplingConfig()
