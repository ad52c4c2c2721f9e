"""The page at the moments a class watches (issue 13): Stop mid-generation and mid-load, and requests that
cannot run, in a real browser, light and dark. Without a browser these tests are skipped (`browser_support`)."""

from __future__ import annotations

import time

import pytest
from server import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
STATUS = "() => (document.querySelector('#status') || {innerText: ''}).innerText"
DONE = f"() => ({STATUS})().startsWith('Done.')"
HEADS = "() => [0, 1, 2].map(i => (document.querySelector('#col-head-' + i) || {innerText: ''}).innerText)"
# gradio's red "Error" badge: the status tracker's error span, over an output whose event failed
ERROR_BADGES = "() => [...document.querySelectorAll('[data-testid=status-tracker] .error')].filter(e => e.offsetParent).length"
LONG_PROMPT = "Write a Python function that checks whether a number is prime."


def texts(page) -> list[str]:
    return [page.input_value(f"#col-text-{i} textarea") for i in range(3)]


def tick(page, box, on: bool) -> None:
    """Set a checkbox and see it stay set. Playwright's check() fails at once when a click does not change the
    state; in a full CI run one such click on the picker was lost once (the page still settling from the
    previous round trip), so the box is clicked again until it holds, at most three times."""
    for _ in range(3):
        if box.is_checked() == on:
            break
        box.click()
        page.wait_for_timeout(300)
    assert box.is_checked() == on


def stopped_within(page, seconds: float) -> float:
    """Press Stop; the seconds until the status and every shown column say stopped."""
    start = time.perf_counter()
    page.click("#stop-btn")
    page.wait_for_function(f"""() => ({STATUS})().includes('Stopped') &&
        ({HEADS})().filter(h => h.trim()).every(h => h.includes('stopped'))""", timeout=seconds * 1000)
    return time.perf_counter() - start


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_stop_mid_generation_says_stopped_and_keeps_the_partial_text_with_its_figures(browser, app_url, theme):
    page = open_page(browser, app_url, theme)
    try:
        page.get_by_label("Prompt").fill(LONG_PROMPT)
        page.click("#compare-btn")
        page.wait_for_function(f"() => ({STATUS})().startsWith('Generating') && "
                               "document.querySelector('#col-text-0 textarea').value.length >= 5", timeout=300_000)
        assert stopped_within(page, 2) < 2
        page.wait_for_function(f"() => ({STATUS})().startsWith('Stopped.')", timeout=60_000)  # scored
        shown = texts(page)
        assert shown[0].strip() and shown[1].strip(), shown
        assert all("MiB" in page.inner_text(f"#col-stats-{i}") for i in range(3))
        assert "agrees with fp32" in page.inner_text("#readings")
        assert page.locator("#download-json").is_visible()
        assert page.evaluate(ERROR_BADGES) == 0
    finally:
        page.close()


def test_stop_mid_load_says_stopped_at_once(browser, app_url):
    """Pressing Stop while fp4 loads ends the request at once. A loaded fp4 would be a cache hit, over before
    the page shows "loading": test_api's custom 4-bit variant is fp4 by its settings and may still be in this
    app's cache, and test_e2e writes fp4 to the disk cache (a load from there takes well under a second). So
    the app unloads its idle models and the disk-cache entry goes: fp4 is quantized from the checkpoint."""
    from gradio_client import Client

    from quantplay import catalog, diskcache

    diskcache.clear(f"{catalog.resolve(catalog.BUNDLED_NAME).name}/fp4")
    client = Client(app_url, verbose=False)
    client.predict(api_name="/unload_all")
    entries = client.predict(api_name="/status")["entries"]
    assert not [e for e in entries if e["preset"] in ("fp4", "custom")], entries  # (a cached entry keeps its first name)
    page = open_page(browser, app_url, "light")
    try:
        picker = page.locator("#variant-picker")
        tick(page, picker.get_by_label("int8", exact=True), False)
        tick(page, picker.get_by_label("fp4", exact=True), True)
        page.click("#compare-btn")
        page.wait_for_function(f"() => ({HEADS})().some(h => h.includes('load'))", timeout=60_000)
        assert stopped_within(page, 2) < 2
        assert page.inner_text("#status").startswith("Stopped.")
        assert page.evaluate(ERROR_BADGES) == 0
        page.wait_for_timeout(1000)  # the load finishing in the background changes nothing on the page
        assert page.inner_text("#status").startswith("Stopped.")
    finally:
        page.close()


def refuse(page, step) -> str:
    """Do `step` (a bad input), press Compare; the status line's text once it shows the refusal."""
    step()
    page.click("#compare-btn")
    page.wait_for_function(f"() => ({STATUS})().startsWith('⚠')", timeout=30_000)
    return page.inner_text("#status")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_a_refused_request_says_why_in_the_status_and_keeps_the_results(browser, app_url, theme):
    page = open_page(browser, app_url, theme)
    try:
        page.get_by_label("Prompt").fill("What is the capital of France?")
        page.click("#compare-btn")
        page.wait_for_function(DONE, timeout=300_000)
        before = texts(page), page.inner_text("#readings"), [page.inner_text(f"#col-stats-{i}") for i in range(3)]
        assert before[0][0].strip()

        box, model = page.get_by_label("Prompt"), page.locator("#model-picker input")
        assert "empty" in refuse(page, lambda: box.fill("   ")).lower()
        assert (texts(page), page.inner_text("#readings"),
                [page.inner_text(f"#col-stats-{i}") for i in range(3)]) == before  # the results stay
        box.fill("What is the capital of France?")
        named = model.input_value()
        assert "no/such-model-here" in refuse(page, lambda: (model.fill("no/such-model-here"), model.press("Enter")))
        assert texts(page) == before[0] and page.inner_text("#readings") == before[1]
        assert page.evaluate(ERROR_BADGES) == 0
        model.fill(named)
        model.press("Enter")
        page.evaluate("""() => {  // tick every box: the widget stops at the limit (issue 13 item 3)
            [...document.querySelectorAll('#variant-picker input[type=checkbox]')]
                .forEach(b => { if (!b.checked) b.click(); }); }""")
        page.wait_for_timeout(2_000)  # the picker's change handler trims the ticks to the limit
        ticked = page.evaluate("() => document.querySelectorAll('#variant-picker input:checked').length")
        assert ticked <= 3  # so "too many variants" cannot be asked from the page; the handler test covers the API side
        message = page.inner_text("#status")
        page.wait_for_timeout(20_000)
        assert page.inner_text("#status") == message  # kept, not a toast that fades
        assert page.evaluate(ERROR_BADGES) == 0
    finally:
        page.close()
