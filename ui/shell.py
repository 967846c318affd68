"""The app's shell: page settings and the sidebar, drawn on every run.

``app.py`` draws it around the page that ``st.navigation`` picked. A page that
runs without app.py calls ``require_app()`` first (see there).
"""

from __future__ import annotations

import ipaddress
import os

import streamlit as st

from ui import state as S
from ui import urlstate
from ui.sidebar import render_sidebar

PAGE_TITLE = "Small LM Playground"
ALLOW_NETWORK_ENV = "LMCORE_ALLOW_NETWORK"
REFUSED_NETWORK = (
    "This playground is listening on every network interface because Streamlit was started without the "
    "project's settings (from another folder?), so it serves nothing: start it with `make run` or with "
    "`--server.address 127.0.0.1`; to serve a network on purpose, give `--server.address 0.0.0.0` "
    f"(`make run HOST=0.0.0.0`) or set {ALLOW_NETWORK_ENV}=1 (see \"Serving on a network\" in README.md)."
)


def _is_loopback(address: str) -> bool:
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def network_refusal() -> str | None:
    """Why this server must not serve pages (one line), or None when it may.

    Streamlit reads ``.streamlit/config.toml`` from the folder it is started
    in; started elsewhere, it listens on every interface. The app serves only
    when the listening address is loopback, or the operator chose one (on the
    command line, in the environment or a config file), or set
    ``LMCORE_ALLOW_NETWORK=1``. A run with no browser request behind it (a
    test's AppTest) serves nobody and is not checked.
    """
    from streamlit import config

    if os.environ.get(ALLOW_NETWORK_ENV, "").strip() == "1" or not st.context.headers:
        return None
    address = config.get_option("server.address")
    if address and (_is_loopback(address) or config.get_where_defined("server.address") != config.ConfigOption.DEFAULT_DEFINITION):
        return None
    return REFUSED_NETWORK


def begin_run() -> None:
    """Page settings, and a new browser session's settings from the address; the first thing every run does."""
    st.set_page_config(page_title=PAGE_TITLE, page_icon=":material/neurology:", layout="wide")
    refusal = network_refusal()
    if refusal is not None:
        st.error(refusal, icon=":material/lock:")
        st.stop()
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
