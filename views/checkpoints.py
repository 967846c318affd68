"""Checkpoints: the saved models, to download, upload, delete or load into the session."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from lmcore.checkpoint import delete_checkpoint, delete_sae, import_checkpoint, list_checkpoints, load_checkpoint
from lmcore.checkpoint_names import checkpoint_path, sanitize_name
from lmcore.errors import LMCoreError
from ui import state
from ui.boundary import user_errors
from ui.flow import PAGE_ATTENTION, PAGE_GENERATION, PAGE_TRAINING
from ui.shell import require_app
from ui.state import keep_default
from ui.render import md


def check_upload(data: bytes) -> str | None:
    """Check uploaded bytes as a checkpoint, in a temporary file outside the checkpoint folder:
    None when they load, else the reason (one line)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.safetensors"
        try:
            path.write_bytes(data)
            load_checkpoint(path, display_name="the uploaded file")
        except LMCoreError as e:
            return str(e)
        except OSError as e:
            return f"it could not be read ({e.strerror or e})"
    return None

require_app()
st.title("Checkpoints")
st.write(
    "A checkpoint is one self-contained `.safetensors` file: the weights, the model's settings and "
    "its tokenizer, so it can be used anywhere without this app. Finished and stopped training runs "
    "are saved here. Download a model to keep it, upload one trained elsewhere, or load one into "
    "the session to look inside it and generate with it."
)

directory = state.checkpoint_dir()
st.caption(f"Folder: {md(str(directory))}")

flash = st.session_state.pop(state.CHECKPOINTS_FLASH, None)
if flash:
    getattr(st, flash[0])(flash[1])

loaded = st.session_state.get(state.LOADED_CHECKPOINT)
if loaded and not Path(loaded).exists():
    st.session_state.pop(state.LOADED_CHECKPOINT, None)
    loaded = None
if loaded:
    with st.container(border=True):
        st.write(f"Loaded into the session: **{md(Path(loaded).stem)}**. The attention and generation pages use it.")
        a, b, c = st.columns(3)
        a.page_link(PAGE_ATTENTION, label="Look at its attention", icon=":material/grid_on:")
        b.page_link(PAGE_GENERATION, label="Generate text", icon=":material/edit_note:")
        if c.button("Unload", key="checkpoints.unload"):
            st.session_state.pop(state.LOADED_CHECKPOINT, None)
            st.rerun()


def _created(value: Any) -> str:
    """A checkpoint's creation time, shown to the minute in local time."""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, str) and value:
        try:
            return dt.datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return value
    return ""


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "name": [r["name"] for r in rows],
            "architecture": [(r.get("preset") or r.get("arch") or "") + (" (imported)" if r.get("imported") else "")
                             for r in rows],  # fmt: skip
            "parameters": [r.get("params") for r in rows],
            "tokenizer": [
                f"{r['tokenizer']} ({r['vocab_size']})" if r.get("tokenizer") and r.get("vocab_size") else (r.get("tokenizer") or "")
                for r in rows
            ],
            "steps": [_steps(r) for r in rows],
            "val loss": [r.get("val_loss") for r in rows],
            "created": [_created(r.get("created")) for r in rows],
            "size (MB)": [round(r.get("size_bytes", 0) / 1e6, 2) for r in rows],
        }
    )
    if any(r.get("error") for r in rows):
        table["problem"] = [r.get("error") or "" for r in rows]
    return table


def _steps(row: dict[str, Any]) -> int | None:
    """Training steps as shown: a count, or nothing (a model from elsewhere: its architecture says "imported")."""
    steps = row.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def _size(n: int | float) -> str:
    """A size in bytes in the unit that shows it best: 812 KB, 3.4 MB, 1.25 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:,.{digits}f} {unit}"
    return f"{int(n)} bytes"


def _free_name(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first name no checkpoint has (the rule runs follow)."""
    name, k = base, 1
    while checkpoint_path(directory, name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


# Served beyond this machine, the box opens only folders under the one the operator names here.
HF_DIR_ENV = "PLAYGROUND_HF_DIR"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def hf_folder_root() -> str | None:
    """None when the app listens on loopback only (any folder of this machine's user may be opened);
    else $PLAYGROUND_HF_DIR, or a place holding nothing when the operator set none (hub ids only)."""
    address = (st.get_option("server.address") or "").strip().strip("[]")
    if address in _LOOPBACK or address.startswith("127."):
        return None
    return os.environ.get(HF_DIR_ENV) or os.devnull


@st.cache_data(max_entries=16, show_spinner="Reading the model's config...")
def _describe(source: str, allowed_root: str | None) -> dict[str, Any]:
    from lmcore.hf import describe_source

    return describe_source(source, allowed_root)


@st.cache_data(max_entries=64, show_spinner=False)
def _export_refusal(path: str, mtime_ns: int) -> str | None:
    from lmcore.hf import export_refusal

    return export_refusal(path)


@st.cache_data(max_entries=2, show_spinner=False)
def _export_zip(path: str, mtime_ns: int) -> bytes:
    from lmcore.hf import export_zip

    return export_zip(path)


rows = list_checkpoints(directory)
if not rows:
    st.info("No saved models yet. Train one (it is saved here when it finishes or is stopped), or upload a file below.")
    st.page_link(PAGE_TRAINING, label="Train a model", icon=":material/model_training:")
else:
    st.dataframe(
        _table(rows),
        hide_index=True,
        column_config={
            "parameters": st.column_config.NumberColumn(format="localized"),
            "val loss": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    by_name = {r["name"]: r for r in rows}
    keep_default(state.CHECKPOINT_SELECTED, rows[0]["name"])  # the pick made before a page switch
    if st.session_state.get(state.CHECKPOINT_SELECT_NEXT) in by_name:
        st.session_state[state.CHECKPOINT_SELECTED] = st.session_state.pop(state.CHECKPOINT_SELECT_NEXT)
    if st.session_state.get(state.CHECKPOINT_SELECTED) not in by_name:
        st.session_state[state.CHECKPOINT_SELECTED] = rows[0]["name"]
    st.session_state[state.KEPT][state.CHECKPOINT_SELECTED] = st.session_state[state.CHECKPOINT_SELECTED]
    name = st.selectbox(
        "Checkpoint",
        list(by_name),
        key=state.CHECKPOINT_SELECTED,
        format_func=lambda n: n + ("  (unreadable)" if by_name[n].get("error") else ""),
    )
    row = by_name[name]
    path = Path(row["path"])
    if row.get("error"):
        st.error(f"{md(name)} cannot be used: {md(row['error'])}")

    col_dl, col_load, col_del = st.columns(3)
    col_dl.download_button(
        "Download .safetensors",
        data=lambda: path.read_bytes(),  # read only when the button is clicked
        file_name=f"{name}.safetensors",
        mime="application/octet-stream",
        on_click="ignore",
        disabled=bool(row.get("error")),
        key="checkpoints.download",
        icon=":material/download:",
    )
    if col_load.button("Load into session", disabled=bool(row.get("error")), key="checkpoints.load", type="primary"):
        st.session_state[state.LOADED_CHECKPOINT] = str(path)
        st.session_state[state.CHECKPOINTS_FLASH] = ("success", f"{md(name)} is loaded: the attention and generation pages now use it.")
        st.rerun()
    with col_del:
        saes = row.get("sae_files") or []
        also = f" and its {len(saes)} autoencoder{'s' * (len(saes) != 1)}" if saes else ""
        sure = st.checkbox(f"Yes, delete {md(name)}{also}", key=f"checkpoints.confirm.{name}")
        if st.button("Delete", disabled=not sure, key="checkpoints.delete", help="Tick the box first: this cannot be undone."):
            with user_errors():
                delete_checkpoint(path)
            if st.session_state.get(state.LOADED_CHECKPOINT) == str(path):
                st.session_state.pop(state.LOADED_CHECKPOINT, None)
            st.session_state[state.CHECKPOINTS_FLASH] = ("success", f"Deleted {md(name)}.")
            st.rerun()

    # Export: only the families transformers has classes for; say why not otherwise.
    refusal = row.get("error") or _export_refusal(str(path), path.stat().st_mtime_ns)
    st.download_button(
        "Export for transformers (.zip)",
        data=lambda: _export_zip(str(path), path.stat().st_mtime_ns),  # built only when clicked
        file_name=f"{name}-transformers.zip",
        mime="application/zip",
        on_click="ignore",
        disabled=bool(refusal),
        key="checkpoints.export",
        icon=":material/output:",
        help="A folder that transformers' AutoModelForCausalLM and AutoTokenizer load: config.json, "
        "model.safetensors, tokenizer.json, generation_config.json and a README.md model card.",
    )
    if refusal and not row.get("error"):
        st.caption(f"Export is not available: {md(refusal)}")

    if row.get("sae_files"):
        with st.container(border=True):
            st.markdown(f"**Sparse autoencoders of {md(name)}** (saved on the Features page; deleted with the model)")
            sae_file = st.selectbox("Autoencoder", [str(p) for p in row["sae_files"]],
                                    format_func=lambda p: Path(p).name, key="checkpoints.sae")  # fmt: skip
            a, b = st.columns(2)
            a.download_button(
                "Download the autoencoder",
                data=lambda: Path(sae_file).read_bytes(),
                file_name=Path(sae_file).name,
                mime="application/octet-stream",
                on_click="ignore",
                key="checkpoints.sae_download",
                icon=":material/download:",
            )
            if b.button("Delete the autoencoder", key="checkpoints.sae_delete"):
                with user_errors():
                    delete_sae(sae_file)
                st.session_state[state.CHECKPOINTS_FLASH] = ("success", f"Deleted {md(Path(sae_file).name)}.")
                st.rerun()

st.subheader("Open a Hugging Face model")
st.write(
    "A GPT-2, Llama or Mamba model from transformers: a hub id such as `gpt2` (downloaded into the "
    "Hugging Face cache) or a folder on this server saved with `save_pretrained`. It is converted "
    "exactly (the same logits) and saved here as a checkpoint, with its own tokenizer; settings "
    "lmcore cannot reproduce are refused, never approximated."
)
kept = st.session_state.setdefault(state.KEPT, {})
if state.HF_SOURCE not in st.session_state and state.HF_SOURCE in kept:
    st.session_state[state.HF_SOURCE] = kept[state.HF_SOURCE]  # typed before a page switch
source = st.text_input("Hub id or folder", key=state.HF_SOURCE, placeholder="gpt2  or  /path/to/folder")
kept[state.HF_SOURCE] = source
source = source.strip()
if source:
    allowed_root = hf_folder_root()
    with user_errors(stop=False):
        info = _describe(source, allowed_root)
        cfg = info["config"]
        shape = (
            f"{cfg.n_layer} layers x {cfg.n_head} heads, width {cfg.n_embd}"
            if info["family"] != "mamba"
            else f"{cfg.n_layer} layers, width {cfg.n_embd}, state {cfg.d_state}"
        )
        cols = st.columns(4)
        cols[0].metric("Model", info["class"].removesuffix("ForCausalLM").removesuffix("LMHeadModel"), help=shape)
        params = info["params"]
        cols[1].metric("Parameters", f"{params / 1e6:,.1f} M" if params >= 1e6 else f"{params:,}")
        on_disk = info["disk_bytes"]
        cols[2].metric("Download / on disk", _size(on_disk) if on_disk else "not yet known")
        memory = _size(info["memory_bytes"])
        cols[3].metric("Memory", memory, help="float32 weights; up to three times this for a moment while converting")
        trained = info.get("train") or {}
        history = f" · trained {trained['steps']:,} steps with lmcore" if "steps" in trained else ""
        st.caption(f"{shape} · vocabulary {cfg.vocab_size:,} · context {cfg.block_size:,}{history}"
                   + "".join(f" · {md(n)}" for n in info["notes"]))  # fmt: skip
        suggested = _free_name(sanitize_name(source.rstrip("/").split("/")[-1]))
        # The box follows the suggestion (a free name) until the user types a name of their own.
        if st.session_state.get("checkpoints.hf.name") in (None, st.session_state.get("checkpoints.hf.suggested")):
            st.session_state["checkpoints.hf.name"] = suggested
        st.session_state["checkpoints.hf.suggested"] = suggested
        hf_name = st.text_input("Save as", key="checkpoints.hf.name")
        if st.button("Open this model", key="checkpoints.hf.open", type="primary"):
            target = checkpoint_path(directory, hf_name)
            if target.exists():
                st.error(f"A checkpoint named {md(target.stem)} exists already; choose another name.")
            else:
                from lmcore.hf import import_checkpoint as import_hf

                with st.spinner(f"Converting {md(source)}..."):
                    saved, _ = import_hf(source, target, allowed_root)
                st.session_state[state.LOADED_CHECKPOINT] = str(saved)
                st.session_state[state.CHECKPOINT_SELECT_NEXT] = saved.stem
                opened = f"{md(source)} is open as {md(saved.stem)}: every page can use it now."
                st.session_state[state.CHECKPOINTS_FLASH] = ("success", opened)
                st.rerun()

st.subheader("Upload a checkpoint")
st.write(
    "A `.safetensors` file written by this playground or by `python -m lmcore train`. It is checked "
    "completely before anything is saved; a file that is not a valid checkpoint is refused."
)
uploaded = st.file_uploader("Checkpoint file", type=["safetensors"], key="checkpoints.upload")
if uploaded is not None:
    checked = st.session_state.setdefault(state.UPLOADS_CHECKED, {})
    if uploaded.file_id not in checked:
        with st.spinner("Checking the file…"):
            checked[uploaded.file_id] = check_upload(uploaded.getvalue())
    problem = checked[uploaded.file_id]
    if problem is not None:
        st.error(
            f"**{md(uploaded.name)} is not a checkpoint this playground can use**, so nothing was saved. "
            "Upload a `.safetensors` file written by this app or by `python -m lmcore train`.",
            icon=":material/block:",
        )
        st.caption(f"What is wrong with it: {md(problem)}")
    else:
        stem = uploaded.name[: -len(".safetensors")] if uploaded.name.endswith(".safetensors") else uploaded.name
        st.success(f"{md(uploaded.name)} is a valid checkpoint. Choose a name and save it.", icon=":material/check:")
        wanted = st.text_input("Save as", value=stem, key=f"checkpoints.name.{uploaded.file_id}")
        with user_errors(stop=False):
            safe = sanitize_name(wanted)
            if safe != wanted:
                st.caption(f"It will be saved as {md(safe)}.safetensors: a plain file name inside the checkpoints folder.")
            if st.button("Save to checkpoints", key="checkpoints.import"):
                saved = import_checkpoint(uploaded.getvalue(), safe, directory)
                st.session_state[state.CHECKPOINT_SELECT_NEXT] = saved.stem
                st.session_state[state.CHECKPOINTS_FLASH] = ("success", f"Saved as {md(saved.name)}.")
                st.rerun()
