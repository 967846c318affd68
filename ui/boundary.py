"""The error boundary: an LMCoreError becomes one inline st.error, never a traceback.

Messages name files, URLs and runs that users chose, so they are shown as
literal text (``md``), exactly as the command line prints them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from lmcore.errors import LMCoreError
from ui.render import md


@contextmanager
def user_errors(stop: bool = True) -> Iterator[None]:
    """Show any LMCoreError raised inside as ``st.error``; then stop the page if ``stop``.

    Anything else propagates, so tests see real bugs.
    """
    try:
        yield
    except LMCoreError as e:
        st.error(md(str(e)))
        if stop:
            st.stop()
