"""The Small LM Playground: from raw text to a trained language model you can look inside.

Run with ``streamlit run app.py``. This file draws the shell (page settings,
the sidebar) and the navigation over ``views/``, one file per step of the
journey; the pages are thin views over ``lmcore``.
"""

from __future__ import annotations

import os

# Before torch loads: idle OpenMP threads sleep instead of spinning, so a training
# run in the background leaves the CPU to the server and the live charts (on a
# busy 2-core machine, spinning threads cut the steps per second by 5-10x).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from ui import flow  # noqa: E402
from ui import state as S  # noqa: E402
from ui.shell import begin_run  # noqa: E402
from ui.urlstate import save as save_to_address  # noqa: E402
from ui.sidebar import render_sidebar  # noqa: E402

begin_run()

PAGES = [
    st.Page(flow.PAGE_DATA, title="Data", icon=":material/description:", default=True),
    st.Page(flow.PAGE_VOCABULARY, title="Vocabulary", icon=":material/abc:"),
    st.Page(flow.PAGE_MODEL, title="Model", icon=":material/account_tree:"),
    st.Page(flow.PAGE_TRAINING, title="Training", icon=":material/monitoring:"),
    st.Page(flow.PAGE_ATTENTION, title="Attention", icon=":material/grid_on:"),
    st.Page(flow.PAGE_GENERATION, title="Generation", icon=":material/edit_note:"),
    st.Page(flow.PAGE_SURPRISE, title="Surprise", icon=":material/psychology:"),
    st.Page("views/intervene.py", title="Intervene", icon=":material/science:"),
    st.Page("views/features.py", title="Features", icon=":material/scatter_plot:"),
    st.Page(flow.PAGE_CHECKPOINTS, title="Checkpoints", icon=":material/save:"),
]

page = st.navigation(PAGES)
render_sidebar()
st.session_state[S.IN_APP] = True  # tells the page it runs inside this shell (ui.shell.require_app)
try:
    page.run()
finally:
    st.session_state[S.IN_APP] = False
    save_to_address()  # a reload restores what this run set up
