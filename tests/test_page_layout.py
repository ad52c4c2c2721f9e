"""The page where a class looks at it (issue 13): a projector at 1280×720, a phone at 390×844, the token
panel opened by a click, presenter mode, and the new texts readable in the dark theme. Real Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()
DONE = "() => document.querySelector('#status') && document.querySelector('#status').innerText.startsWith('Done.')"


def open_page(browser, url: str, width: int, height: int, query: str = "", **options):
    page = browser.new_page(viewport={"width": width, "height": height}, **options)
    page.goto(url + query)
    page.wait_for_selector("#compare-btn")
    return page


def run_first_example(page) -> None:
    first = page.locator("#examples button").first
    wanted = first.inner_text().strip()[:10]
    assert not page.input_value("#prompt textarea").startswith(wanted)  # the first example changes the prompt
    first.click()
    page.wait_for_function("(w) => document.querySelector('#prompt textarea').value.startsWith(w)", arg=wanted)
    page.click("#compare-btn")
    page.wait_for_function(DONE, timeout=300_000)


def in_view(box: dict | None, width: int, height: int) -> bool:
    return box is not None and box["y"] >= 0 and box["x"] >= 0 and box["y"] + box["height"] <= height and \
        box["x"] + box["width"] <= width


def test_the_projector_shows_every_answer_and_its_figures_on_one_screen(browser, app_url):
    page = open_page(browser, app_url, 1280, 720)
    try:
        run_first_example(page)
        for i in range(3):
            text = page.locator(f"#col-text-{i} textarea")
            summary = page.locator(f"#col-stats-{i} p").first
            assert page.input_value(f"#col-text-{i} textarea").strip()
            assert "MiB" in summary.inner_text() and "tokens/s" in summary.inner_text()
            assert in_view(text.bounding_box(), 1280, 720), (i, text.bounding_box())
            assert in_view(summary.bounding_box(), 1280, 720), (i, summary.bounding_box())
        assert "smaller" in page.locator("#col-stats-1 p").first.inner_text()
        assert "top-1" in page.locator("#col-stats-1 p").first.inner_text()  # the agreement, under the answer
        assert page.evaluate("window.scrollY") == 0
    finally:
        page.close()


def test_presenter_mode_from_the_url_and_the_toggle_enlarges_the_answers(browser, app_url):
    page = open_page(browser, app_url, 1280, 720)
    try:
        size = "() => parseFloat(getComputedStyle(document.querySelector('#col-text-0 textarea')).fontSize)"
        normal = page.evaluate(size)
        page.locator("#presenter-toggle input").check()
        page.wait_for_function("() => document.body.classList.contains('qp-presenter')")
        assert page.evaluate(size) > normal * 1.3
    finally:
        page.close()
    page = open_page(browser, app_url, 1280, 720, "?presenter=1")
    try:
        page.wait_for_function("() => document.body.classList.contains('qp-presenter')")
        assert page.locator("#presenter-toggle input").is_checked()
    finally:
        page.close()


def test_the_phone_view_puts_the_prompt_and_compare_first_and_scrolls_inside_boxes(browser, app_url):
    page = open_page(browser, app_url, 390, 844, is_mobile=True, has_touch=True)
    try:
        compare = page.locator("#compare-btn").bounding_box()
        assert in_view(compare, 390, 844), compare
        assert page.locator("#prompt textarea").bounding_box()["y"] < compare["y"]
        assert page.locator("#model-picker").bounding_box()["y"] > compare["y"]  # settings come after
        style = "(sel) => { const s = getComputedStyle(document.querySelector(sel));" \
                " return [s.overflowX, s.scrollSnapType]; }"
        assert page.evaluate(style, "#columns")[0] == "auto" and "x" in page.evaluate(style, "#columns")[1]
        assert page.evaluate(style, "#agreement")[0] == "auto"  # a wide table scrolls in its box
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the page itself never scrolls sideways
    finally:
        page.close()


def test_a_tapped_token_shows_its_top_choices_readably_in_dark_mode(browser, app_url):
    page = open_page(browser, app_url, 1280, 900, "?__theme=dark")
    try:
        page.click("#compare-btn")
        page.wait_for_function(DONE, timeout=300_000)
        token = page.locator("#tokens-1 .qp-tok").first
        tip = token.locator(".qp-tip")
        assert not tip.is_visible()
        token.click()
        assert tip.is_visible() and "fp32 top:" in tip.inner_text()
        assert float(page.evaluate("(el) => parseFloat(getComputedStyle(el).fontSize)", tip.element_handle())) >= 15
        measured = page.evaluate(CONTRAST_JS, "#tokens-1 .qp-tip, #metric-note, #col-stats-1")
        assert any(item["where"] == "qp-tip" for item in measured["checked"]), measured["checked"]
        assert measured["failures"] == [], "below 4.5:1:\n" + "\n".join(map(json.dumps, measured["failures"]))
    finally:
        page.close()
