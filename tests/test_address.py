"""The page address as hostile input, and as the way every setting survives a reload.

Every address field has one rule (``ui.urlstate.ADDRESS_FIELDS``, the widgets'
own bounds; the model fields' come from their declarations): a value outside
it is refused in one line in the sidebar and never reaches a widget, so no
page shows a Streamlit range error. Every training and sampling setting a
user sets comes back from the address in a fresh session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lmcore.checkpoint import save_checkpoint
from lmcore.data import build_tokenizer, corpus_from_text
from lmcore.models import ModelConfig, build_model, preset_family
from ui import state as S
from ui.urlstate import ADDRESS_FIELDS, SAMPLING_FIELDS, TRAIN_FIELDS, AddressField

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["views/vocabulary.py", "views/model.py", "views/training.py", "views/generation.py"]
TEXT = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7} times." for i in range(60))


@pytest.fixture(autouse=True)
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint folder with one tiny model, so the Generation page draws its sampling widgets."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    tok = build_tokenizer("char", corpus_from_text(TEXT, name="t").text)
    cfg = ModelConfig.preset("gpt2", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16)
    save_checkpoint(folder / "tiny", build_model(cfg), tok)
    monkeypatch.setenv("PLAYGROUND_CHECKPOINT_DIR", str(folder))
    return folder


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def hostile(field: AddressField, kind: str) -> str | None:
    """A value of ``kind`` for ``field`` that its rule must refuse (None when no such value exists)."""
    numeric = field.kind in ("int", "float")
    if kind == "too big":
        if numeric:
            return _number(field.high * 10 + 1)
        return {"bool": "2", "choice": "x" * 300, "str": "a" * (int(field.high) + 1)}[field.kind]
    if kind == "too small":
        if numeric:
            return _number(field.low - abs(field.low) - 1)
        return {"bool": "-1", "choice": ""}.get(field.kind)
    if kind == "huge integer":
        return "9" * 400 if field.kind != "str" else None
    if field.kind == "str":
        return None  # any short text is a name or a prompt
    return {"inf": "inf", "nan": "nan", "text": "abc; drop"}[kind]


KINDS = ["too big", "too small", "inf", "nan", "text", "huge integer"]
CASES = [(name, kind) for name in ADDRESS_FIELDS for kind in KINDS if hostile(ADDRESS_FIELDS[name], kind) is not None]


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_address_field_refuses_hostile_values_with_a_reason(name: str, kind: str) -> None:
    field = ADDRESS_FIELDS[name]
    with pytest.raises(ValueError) as refused:
        field.parse(hostile(field, kind))
    reason = str(refused.value)
    assert reason and "\n" not in reason and len(reason) < 200


def _base(arch: str) -> dict[str, str]:
    return {"corpus": "builtin:python-docs", "tok": "char", "arch": arch}


@pytest.mark.parametrize("arch", ["gpt2", "mamba", "ngram"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_address_is_refused_in_one_line_and_every_page_draws(arch: str, kind: str) -> None:
    own = {f.name for f in preset_family(arch).fields}
    names = [n for n in ADDRESS_FIELDS if n in own or n in TRAIN_FIELDS or n in SAMPLING_FIELDS or n in ("val", "size", "docs")]
    bad = {n: hostile(ADDRESS_FIELDS[n], kind) for n in names}
    bad = {n: v for n, v in bad.items() if v is not None}
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({**_base(arch), **bad})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (note,) = [w.value.replace("\\", "") for w in at.sidebar.warning]  # markdown escapes dropped
    assert "\n" not in note
    for n in bad:
        assert f"{n}=" in note, n
    assert at.session_state[S.MODEL_CONFIG].arch == ModelConfig.preset(arch).arch  # the valid parts are set up
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    assert not any(n in at.query_params and at.query_params[n] == v for n, v in bad.items())  # gone from the address


@pytest.mark.parametrize("address", ["temp=5", "temp=inf", "temp=-1", "top_p=5", "top_p=0", "new=999999", "top_k=nan"])
def test_the_generation_page_from_a_hostile_address(address: str) -> None:
    name, value = address.split("=")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params[name] = value
    at.run()
    assert any(f"{name}=" in w.value.replace("\\", "") for w in at.sidebar.warning)
    at.switch_page("views/generation.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.slider(key=S.GENERATION_TEMPERATURE).value == 0.8 and at.slider(key=S.GENERATION_TOP_P).value == 1.0


@pytest.mark.parametrize("vocab", ["1000000", "5000", "300", "-5", "nan"])
def test_a_bpe_size_the_page_does_not_offer_is_not_trained(vocab: str) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"corpus": "builtin:python-docs", "tok": "bpe", "vocab": vocab, "arch": "gpt2"})
    at.run()
    assert not at.exception
    assert S.TOKENIZER not in at.session_state  # nothing was trained
    assert any("vocab=" in w.value for w in at.sidebar.warning)
    at.switch_page("views/vocabulary.py").run()
    assert not at.exception


def test_model_fields_use_their_declared_limits() -> None:
    from lmcore.models import FIELDS

    for name, f in FIELDS.items():
        rule = ADDRESS_FIELDS[name]
        if f.kind in ("int", "float", "fraction"):
            assert (rule.low, rule.high) == f.limits, name
        elif f.kind == "choice":
            assert rule.choices == f.choices, name


def test_the_rules_match_the_widgets_bounds() -> None:
    """The training and sampling rules are the bounds the pages draw (checked on the drawn widgets)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(_base("gpt2"))
    at.run()
    seen = {}
    for page in ("views/training.py", "views/generation.py"):
        at.switch_page(page).run()
        for w in [*at.number_input, *at.slider]:
            seen[w.key] = (w.proto.min, w.proto.max)
    for name, rule in (TRAIN_FIELDS | SAMPLING_FIELDS).items():
        if rule.kind in ("int", "float") and rule.key in seen:
            assert seen[rule.key] == (rule.low, rule.high), name
    assert seen and all(rule.key in seen for rule in (TRAIN_FIELDS | SAMPLING_FIELDS).values()
                        if rule.kind in ("int", "float") and rule.key != S.EXPLORER_TEMPERATURE)


# --------------------------------------------------------------- every setting survives a reload
SET = {
    "iters": 777, "batch": 3, "lr": 0.0042, "warmup": 7, "eval": 11, "eval_iters": 2, "seed": 99, "budget": 30,
    "optimizer": "muon", "muon_lr": 0.05, "device": "cpu", "name": "my-run", "x": "tokens",
    "min_lr": 0.0001, "wd": 0.05, "beta1": 0.8, "beta2": 0.95, "clip": 0.5, "accum": 2, "patience": 3,
    "eval_seed": 4, "schedule": "time", "dtype": "float32", "compile": True,
    "prompt": "The q", "temp": 0.35, "top_k": 7, "top_p": 0.9, "new": 55, "gseed": 5, "etemp": 1.5,
}  # fmt: skip


def _widget(at: AppTest, key: str):
    for kind in ("number_input", "slider", "selectbox", "text_input", "text_area", "radio", "checkbox"):
        for w in getattr(at, kind):
            if w.key == key:
                return w
    return None  # not drawn yet (the axis picker appears with a run)


def _read(at: AppTest, key: str):
    w = _widget(at, key)
    return w.value if w is not None else at.session_state[S.KEPT].get(key, at.session_state[key] if key in at.session_state else None)


def test_every_training_and_sampling_setting_survives_a_reload() -> None:
    assert set(SET) == set(TRAIN_FIELDS | SAMPLING_FIELDS)  # a new setting must be added here too
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(_base("gpt2"))
    at.run()
    for page, fields in (("views/training.py", TRAIN_FIELDS), ("views/generation.py", SAMPLING_FIELDS)):
        at.switch_page(page).run()
        for name, rule in fields.items():
            w = _widget(at, rule.key)
            if w is None:
                at.session_state[rule.key] = SET[name]
            else:
                w.set_value(SET[name])
            at.run()
    assert not at.exception, [e.value for e in at.exception]
    address = dict(at.query_params)
    for name in SET:
        assert name in address, name

    again = AppTest.from_file(APP, default_timeout=120)  # a reload, or the link pasted in another browser
    again.query_params.update(address)
    again.run()
    assert not again.sidebar.warning, [w.value for w in again.sidebar.warning]
    for page, fields in (("views/training.py", TRAIN_FIELDS), ("views/generation.py", SAMPLING_FIELDS)):
        again.switch_page(page).run()
        assert not again.exception, [e.value for e in again.exception]
        for name, rule in fields.items():
            assert _read(again, rule.key) == SET[name], name
