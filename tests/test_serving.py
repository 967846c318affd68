"""Started from another folder, the app still serves this machine only, unless the operator says otherwise.

Streamlit before 1.44 (requirements allow 1.40) reads ``.streamlit/config.toml``
only from the folder it is started in, and every version reads it beside the
script path it is given, not beside a link's target: started elsewhere, it
listens on every interface. The app itself then answers every page with one
line saying how to serve it (``ui.shell.network_refusal``). A real server,
started from a temporary folder through a link to app.py, so that Streamlit
finds no project config (as those versions do for any ``streamlit run
path/to/app.py``); the browser talks to it on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appserver import free_port, stop, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the playwright Python package is not installed"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]


@contextmanager
def server_from(cwd: Path, log: Path, *args: str, env: dict[str, str] | None = None, link: bool = True) -> Iterator[str]:
    """``streamlit run`` started in ``cwd``, of a link to the project's app.py there (or of its full path); its URL."""
    port = free_port()
    script = cwd / "app.py"
    if link and not script.exists():
        script.symlink_to(ROOT / "app.py")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script if link else ROOT / "app.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           *args]  # fmt: skip
    full_env = {**os.environ, "PLAYGROUND_CHECKPOINT_DIR": str(cwd / "checkpoints"), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT), **(env or {})}  # fmt: skip
    full_env.pop("LMCORE_ALLOW_NETWORK", None) if "LMCORE_ALLOW_NETWORK" not in (env or {}) else None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, log, 120)
            yield url
        finally:
            stop(proc)


def page_text(url: str, expect: str) -> str:
    """The page's text once ``expect`` shows (or the app's first alert, error or title, after 90 s)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url)
            try:
                page.get_by_text(expect).first.wait_for(timeout=90_000)
            except Exception:  # noqa: BLE001 - the assertions below say what was there instead
                pass
            return page.inner_text("body")
        finally:
            browser.close()


def test_started_from_another_folder_it_refuses_to_serve_until_told(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with server_from(elsewhere, tmp_path / "default.log") as url:  # no address: Streamlit's default, every interface
        text = page_text(url, "LMCORE_ALLOW_NETWORK=1")
    assert "LMCORE_ALLOW_NETWORK=1" in text and "--server.address 127.0.0.1" in text
    assert "Where the text comes from" not in text  # no page of the app

    # the operator names the address: served (here by the project's app.py given by its full path)
    with server_from(elsewhere, tmp_path / "loopback.log", "--server.address", "127.0.0.1", link=False) as url:
        text = page_text(url, "Where the text comes from")
    assert "LMCORE_ALLOW_NETWORK" not in text and "Where the text comes from" in text
