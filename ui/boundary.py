"""The error boundary: an LMCoreError or OSError becomes one inline st.error, never a traceback.

Messages name files, URLs and runs that users chose, so they are shown as
literal text (``md``), exactly as the command line prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from lmcore.errors import LMCoreError
from ui.render import md

logger = logging.getLogger(__name__)


def os_error_message(e: OSError) -> str:
    """One line for an OSError about a user's file or name: the reason and the file's name."""
    reason = e.strerror or str(e) or type(e).__name__
    name = f": {Path(str(e.filename)).name}" if e.filename else ""
    return " ".join(f"{reason}{name}".split())


@contextmanager
def user_errors(stop: bool = True) -> Iterator[None]:
    """Show any LMCoreError or OSError raised inside as ``st.error``; then stop the page if ``stop``.

    An OSError (a name too long for the file system, a full disk, a file that
    cannot be read) is logged with its traceback for the operator. Anything
    else propagates, so tests see real bugs.
    """
    try:
        yield
    except LMCoreError as e:
        st.error(md(str(e)))
        if stop:
            st.stop()
    except OSError as e:
        logger.warning("file system error shown to the user", exc_info=True)
        st.error(md(os_error_message(e)))
        if stop:
            st.stop()
