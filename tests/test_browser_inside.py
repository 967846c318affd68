"""The Attention page in Chromium: a click on a head-score point draws that head's map beside the chart and
moves the "One head" selectors to it (a real server on 127.0.0.1, a tiny model trained with head scores)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appserver import app_server  # noqa: E402
from tests.test_surprise_page import folder  # noqa: E402, F401  (tiny: a 2-layer, 2-head gpt2 with head scores)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="the playwright Python package is not installed"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]


@pytest.fixture
def page(folder: Path, tmp_path: Path) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with app_server(folder, tmp_path / "server.log") as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1200}).new_page()
            page.set_default_timeout(60_000)
            page.goto(app.url)
            expect(page.locator("h1", has_text="Data")).to_be_visible(timeout=90_000)
            yield page
        finally:
            browser.close()


def idle(page: Page) -> None:
    page.wait_for_timeout(300)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=60_000)
    expect(page.locator('[data-stale="true"]')).to_have_count(0, timeout=60_000)


def test_a_click_on_a_head_score_draws_its_map_beside_the_chart_and_selects_it(page: Page) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text="Attention").click()
    expect(page.locator("h1", has_text="Attention")).to_be_visible(timeout=60_000)
    idle(page)
    charts = page.locator('[data-testid="stMain"] [data-testid="stPlotlyChart"]')
    scores = charts.filter(has=page.locator(".scatterlayer"))
    expect(scores.locator(".scatterlayer .trace").first).to_be_attached(timeout=60_000)
    scores.scroll_into_view_if_needed()
    # The last trace is layer 1, head 1; click its last point.
    point = scores.locator(".scatterlayer .trace").last.locator(".point").last
    point.click(force=True)
    idle(page)
    picked = page.locator('[data-testid="stMain"] [data-testid="stPlotlyChart"]', has_text="layer 1 · head 1")
    expect(picked.last).to_be_visible(timeout=60_000)
    box, chart = picked.last.bounding_box(), scores.first.bounding_box()
    assert abs(box["y"] - chart["y"]) < 200 and box["x"] > chart["x"] + chart["width"] / 2  # beside, not far below
    page.screenshot(path=str(ARTIFACTS / "17_head_score_click.png"), full_page=True)
    # The "One head" tab (above the chart) now shows layer 1, head 1: its selectors were moved there.
    page.get_by_role("tab", name="One head").click()
    one = page.locator('[data-testid="stMain"] [data-testid="stPlotlyChart"]:visible', has_text="layer 1 · head 1")
    expect(one.first).to_be_visible()
    roles = page.locator("h3", has_text="Head roles over training").bounding_box()
    assert one.first.bounding_box()["y"] < roles["y"]
