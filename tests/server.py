"""Start app.py in a subprocess on a free port and drive its page in Chromium (tests and `make screenshot`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(extra_env: dict | None = None, timeout: float = 120.0):
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", **(extra_env or {}))
    log = open(ROOT / ".cache" / f"app-{port}.log", "w") if (ROOT / ".cache").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start (exit {proc.poll()})") from None
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


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
