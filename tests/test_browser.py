"""The page in a real browser: Debian's chromium (or Playwright's own) driven by Playwright.

Without a browser these tests are skipped, naming the installs (`browser_support`);
under CI=true they fail instead."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from server import compare_in_browser

from quantplay import metrics

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()
# The texts quantplay writes: the intro, status, columns (head, answer, figures), agreement readings,
# table and token views with their legend, the live memory and the cache table. Not measured: gradio's
# own parts (buttons, code highlighting, footer, labels), whose colours come from its theme.
OUR_TEXTS = ", ".join(["#intro", "#status", "[id^=col-head-]", "[id^=col-text-]", "[id^=col-stats-]", "#readings",
                       "#agreement", "[id^=tokens-]", ".qp-legend", "#live-memory", "#cache-table"])
MEMORY_PANEL = "Memory: live"
DONE = "() => document.querySelector('#status') && document.querySelector('#status').innerText.startsWith('Done.')"


def open_page(browser, url: str, query: str = "", width: int = 1600, height: int = 1300):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url + query)
    page.wait_for_selector("#compare-btn")
    return page


def compare(page, timeout_ms: int = 300_000) -> None:
    page.click("#compare-btn")
    page.wait_for_function(DONE, timeout=timeout_ms)


def test_compare_fills_every_column_with_memory_figures(chromium, app_url, tmp_path):
    shot = tmp_path / "page.png"
    shown = compare_in_browser(app_url, "What is the capital of France?", shot)
    assert shown["status"].startswith("Done.")
    assert all(text.strip() for text in shown["texts"]), shown["texts"]
    assert "Paris" in shown["texts"][0]
    assert "fp32" in shown["heads"][0] and "int8" in shown["heads"][1] and "nf4" in shown["heads"][2]
    assert all("MiB" in s for s in shown["stats"])
    assert "smaller" in shown["stats"][1] and "smaller" in shown["stats"][2]
    live_memory = "VRAM" if metrics.default_device().startswith("cuda") else "process RAM"
    assert live_memory in shown["live"], shown["live"]
    assert shown["plot_visible"]
    assert "int8 agrees with fp32 on" in shown["readings"] and "nf4 agrees with fp32 on" in shown["readings"]
    assert 'class="qp-tok' in shown["tokens"] and "fp32 top:" in shown["tokens"]  # hover titles
    assert shot.stat().st_size > 20_000


@pytest.mark.parametrize("query", ["", "?__theme=dark"], ids=["light", "dark"])
def test_every_text_we_write_is_readable_in_light_and_dark_mode(browser, app_url, query):
    page = open_page(browser, app_url, query)
    try:
        assert page.evaluate("document.body.classList.contains('dark')") == bool(query)
        page.get_by_text(MEMORY_PANEL).click()
        compare(page)
        page.wait_for_function("() => document.querySelector('#live-memory').innerText.includes('MiB')")
        measured = page.evaluate(CONTRAST_JS, OUR_TEXTS)
    finally:
        page.close()
    places = {re.sub(r"-\d+$", "", item["where"]) for item in measured["checked"]}
    # every kind of text was measured, the token views and their legend included
    assert {"intro", "status", "col-head", "col-text", "col-stats", "readings", "agreement", "tokens", "qp-legend",
            "live-memory", "cache-table"} <= places, places
    assert any(item["where"] == "tokens-1" and item["tag"] == "SPAN" for item in measured["checked"])  # tokens
    assert measured["failures"] == [], "below 4.5:1:\n" + "\n".join(map(json.dumps, measured["failures"]))


def test_settings_link_is_in_the_footer(browser, app_url):
    page = open_page(browser, app_url)
    try:
        settings = page.locator("footer").get_by_text("Settings")
        assert settings.is_visible()
        settings.click()  # opens gradio's settings (theme, language)
        page.get_by_text("Language").first.wait_for(timeout=10_000)
    finally:
        page.close()


def _memory_requests(page, seconds: float, ticks: list) -> int:
    before = len(ticks)
    page.wait_for_timeout(seconds * 1000)
    return len(ticks) - before


def test_memory_timer_polls_only_while_the_memory_panel_is_open(browser, app_url):
    page = open_page(browser, app_url)
    try:
        config = page.evaluate("window.gradio_config")
        tick = next(d.get("id", i) for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "memory_panel")
        ticks: list[float] = []
        page.on("request", lambda r: r.method == "POST" and f'"fn_index":{tick},' in (r.post_data or "")
                and ticks.append(time.monotonic()))
        assert _memory_requests(page, 5, ticks) == 0  # closed: no polling at all
        page.get_by_text(MEMORY_PANEL).click()
        page.wait_for_function("() => document.querySelector('#live-memory').innerText.includes('MiB')")
        assert _memory_requests(page, 5, ticks) >= 2  # open: every 2 s
        with page.expect_response(lambda r: "run/predict" in r.url and f'"fn_index":{tick},'
                                  not in (r.request.post_data or "")):
            page.get_by_text(MEMORY_PANEL).click()  # the collapse event switches the timer off
        page.wait_for_timeout(300)
        assert _memory_requests(page, 5, ticks) == 0
    finally:
        page.close()


def test_columns_and_their_figures_fit_a_1280x720_projector(browser, app_url):
    page = open_page(browser, app_url, width=1280, height=720)
    try:
        compare(page)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        boxes = [page.locator(f"#col-stats-{i}").bounding_box() for i in range(3)]
        figures = [page.inner_text(f"#col-stats-{i}") for i in range(3)]
    finally:
        page.close()
    assert widths[0] <= widths[1], f"horizontal scrolling: page {widths[0]} px wide in a {widths[1]} px window"
    for box, text in zip(boxes, figures):
        assert "MiB" in text
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 1280, (box, text)
        assert box["width"] >= 200, box  # room for "x.xx× smaller than fp32" without one word per line
