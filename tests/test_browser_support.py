"""A missing browser or malloc: skipped on a newcomer's machine with the install named, a failure under CI."""

import browser_support
import pytest


@pytest.fixture
def no_chromium(monkeypatch):
    monkeypatch.setattr(browser_support, "chromium_executable", lambda: None)


def test_a_missing_browser_is_skipped_naming_both_installs(no_chromium, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium, or .*playwright install chromium"):
        browser_support.require_chromium()


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_browser_fails_under_ci(no_chromium, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true.*fails instead of skipping"):
        browser_support.require_chromium()


def test_a_found_browser_is_used(monkeypatch):
    monkeypatch.setattr(browser_support, "chromium_executable", lambda: "/opt/chromium/chrome")
    monkeypatch.setenv("CI", "true")
    assert browser_support.require_chromium() == "/opt/chromium/chrome"


def test_a_missing_malloc_names_libjemalloc2_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(browser_support.allocator, "choose", lambda setting: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install libjemalloc2"):
        browser_support.require_fast_malloc()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install libjemalloc2"):
        browser_support.require_fast_malloc()


def test_ci_false_is_not_ci():
    assert not browser_support.in_ci({"CI": "false"}) and not browser_support.in_ci({})
    assert browser_support.in_ci({"CI": "true"}) and browser_support.in_ci({"CI": "TRUE"})
