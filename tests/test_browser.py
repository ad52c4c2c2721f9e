"""The page in a real browser: Debian's chromium driven by Playwright."""

import shutil

import pytest
from server import compare_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium():
    if not shutil.which("chromium"):
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does this)")


def test_compare_fills_every_column_with_memory_figures(chromium, app_url, tmp_path):
    shot = tmp_path / "page.png"
    shown = compare_in_browser(app_url, "What is the capital of France?", shot)
    assert shown["status"].startswith("Done.")
    assert all(text.strip() for text in shown["texts"]), shown["texts"]
    assert "Paris" in shown["texts"][0]
    assert "fp32" in shown["heads"][0] and "int8" in shown["heads"][1] and "nf4" in shown["heads"][2]
    assert all("MiB" in s for s in shown["stats"])
    assert "smaller" in shown["stats"][1] and "smaller" in shown["stats"][2]
    assert "process RAM" in shown["live"] or "VRAM" in shown["live"]
    assert shown["plot_visible"]
    assert "int8 agrees with fp32 on" in shown["readings"] and "nf4 agrees with fp32 on" in shown["readings"]
    assert 'class="qp-tok' in shown["tokens"] and "fp32 top:" in shown["tokens"]  # hover titles
    assert shot.stat().st_size > 20_000
