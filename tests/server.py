"""Start app.py in a subprocess on a free port and drive its page in Chromium (tests and `make screenshot`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from browser_support import chromium_executable

from quantplay import appserver
from quantplay import config as qconfig

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def config_env(config: qconfig.Config | None = None) -> dict[str, str]:
    """The test config's paths as the variables a child process reads (the rest keep their defaults there)."""
    cfg = config or qconfig.current()
    return {"QUANTPLAY_CACHE_DIR": str(cfg.cache_dir), "QUANTPLAY_MODEL_DIRS": os.pathsep.join(map(str, cfg.model_dirs)),
            "QUANTPLAY_DISK_CACHE_LIMIT": "off" if cfg.disk_cache_limit is None else _size_text(cfg.disk_cache_limit)}


def _size_text(size: qconfig.Size) -> str:
    return f"{size.bytes}B" if size.bytes is not None else f"{size.fraction * 100:g}%"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process (CLI, app.py): this one's, with the test config's settings."""
    return {**os.environ, **config_env(), **extra}


@contextlib.contextmanager
def running_app(extra_env: dict | None = None, **kwargs):
    """app.py in a subprocess (quantplay.appserver) with the test config's settings, its log kept in .cache/."""
    logs = ROOT / ".cache" if (ROOT / ".cache").is_dir() else None
    with appserver.running_app({**config_env(), **(extra_env or {})}, log_dir=logs, **kwargs) as served:
        yield served


def open_page(browser, url: str, theme: str, height: int = 720):
    """A 1280-wide page of the app in the light or dark theme, once its Compare button is there."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.goto(url + ("?__theme=dark" if theme == "dark" else "?__theme=light"))
    page.wait_for_selector("#compare-btn")
    return page


def compare_in_browser(url: str, prompt: str, screenshot: Path, timeout_ms: int = 300_000) -> dict:
    """Open the page, ask `prompt`, press Compare, wait for every column; return what it shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1300})
            page.goto(url)
            page.get_by_text("Memory: live").click()  # the live memory refreshes only while its panel is open
            box = page.get_by_label("Prompt")
            box.fill(prompt)
            page.click("#compare-btn")
            page.wait_for_function(
                "() => document.querySelector('#status') && document.querySelector('#status').innerText.startsWith('Done.')",
                timeout=timeout_ms)
            page.wait_for_function("() => document.querySelector('#live-memory').innerText.includes('MiB')")
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
