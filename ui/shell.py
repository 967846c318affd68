"""The app's shell: page settings and the sidebar, drawn on every run.

``app.py`` draws it around the page that ``st.navigation`` picked. A page that
runs without app.py calls ``require_app()`` first (see there).
"""

from __future__ import annotations

import streamlit as st

from ui import state as S
from ui import urlstate
from ui.sidebar import render_sidebar

PAGE_TITLE = "Small LM Playground"


def begin_run() -> None:
    """Page settings, and a new browser session's settings from the address; the first thing every run does."""
    st.set_page_config(page_title=PAGE_TITLE, page_icon=":material/neurology:", layout="wide")
    urlstate.restore()
    urlstate.save()


def require_app() -> None:
    """Draw the shell around this page when app.py did not; call it first on every page.

    The pages live in ``views/``, not ``pages/``: Streamlit treats a project
    with a ``pages/`` folder as an old-style multipage app until app.py has
    called ``st.navigation`` once, so a deep link to a just-started server
    would run the page alone under a menu of raw file names. With ``views/``
    every request goes through app.py; a page run on its own (a test's
    ``AppTest.from_file`` of a page) still gets the page settings and sidebar.
    """
    if st.session_state.get(S.IN_APP):
        return
    begin_run()
    render_sidebar()
