"""Blind mode in a real browser: the columns are shuffled and lettered, names and figures hidden until Reveal,
which says whether the guess was fp32. Client-side only: the API is untouched. Skipped without a browser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from server import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()
LETTERS = """() => [0, 1, 2].map(i => document.querySelector('#col-head-' + i).closest('.qp-col'))
    .map(c => ({letter: c.dataset.letter, order: c.style.order}))"""


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_blind_mode_hides_names_until_reveal_and_judges_the_guess(browser, app_url, theme):
    page = open_page(browser, app_url, theme, height=900)
    try:
        page.get_by_text("Blind mode: which column is fp32?").click()
        page.locator("#blind-toggle input").check()
        page.click("#compare-btn")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('Done.')",
                               timeout=300_000)
        page.wait_for_timeout(500)  # the letters follow the shown columns
        columns = page.evaluate(LETTERS)
        assert sorted(c["letter"] for c in columns) == ["A", "B", "C"], columns
        assert sorted(int(c["order"]) for c in columns) == sorted(set(int(c["order"]) for c in columns))
        for hidden in ("#col-head-0", "#col-stats-1", "#status", "#readings"):
            assert page.locator(hidden).evaluate("e => getComputedStyle(e).visibility") == "hidden", hidden
        assert page.locator("#col-text-0 textarea").input_value().strip()  # the answers themselves stay readable
        fp32 = columns[0]["letter"]
        page.locator("#blind-guess").get_by_label(fp32, exact=True).check()
        page.click("#blind-reveal")
        page.wait_for_function("() => document.querySelector('#blind-verdict').innerText.includes('fp32 was')")
        verdict = page.inner_text("#blind-verdict")
        assert f"You picked {fp32}: right" in verdict and f"{fp32}: fp32" in verdict, verdict
        assert page.locator("#col-head-0").evaluate("e => getComputedStyle(e).visibility") == "visible"
        measured = page.evaluate(CONTRAST_JS, "#blind-verdict")
        assert measured["checked"] and measured["failures"] == [], "\n".join(map(json.dumps, measured["failures"]))
    finally:
        page.close()
