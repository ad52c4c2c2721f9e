"""Start app.py in a subprocess on a free port and drive its page in Chromium (tests and `make screenshot`)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from quantplay import appserver

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def running_app(extra_env: dict | None = None):
    """app.py in a subprocess (quantplay.appserver), its log kept in .cache/ when that exists."""
    logs = ROOT / ".cache" if (ROOT / ".cache").is_dir() else None
    with appserver.running_app(extra_env, log_dir=logs) as served:
        yield served


def compare_in_browser(url: str, prompt: str, screenshot: Path, timeout_ms: int = 300_000) -> dict:
    """Open the page, ask `prompt`, press Compare, wait for every column; return what it shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1300})
            page.goto(url)
            box = page.get_by_label("Prompt")
            box.fill(prompt)
            page.click("#compare-btn")
            page.wait_for_function(
                "() => document.querySelector('#status') && document.querySelector('#status').innerText.startsWith('Done.')",
                timeout=timeout_ms)
            page.wait_for_timeout(2500)  # one memory-timer tick
            shown = {
                "status": page.inner_text("#status"),
                "texts": [page.input_value(f"#col-text-{i} textarea") for i in range(3)],
                "heads": [page.inner_text(f"#col-head-{i}") for i in range(3)],
                "stats": [page.inner_text(f"#col-stats-{i}") for i in range(3)],
                "live": page.inner_text("#live-memory"),
                "plot_visible": page.locator("#footprint-plot").is_visible(),
                "readings": page.inner_text("#readings"),
                "tokens": page.inner_html("#tokens-1"),
            }
            page.screenshot(path=str(screenshot), full_page=True)
            return shown
        finally:
            browser.close()
