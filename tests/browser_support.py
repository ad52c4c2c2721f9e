"""What some tests need from the machine beyond Python: a Chromium for the browser tests,
jemalloc (or tcmalloc) for the soak test. Each is found where a newcomer would have put
it; where it is missing the test is skipped with the command that installs it, and under
CI=true (where .ci/run installs both) a missing one fails the test instead."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from quantplay import allocator

CHROMIUM_INSTALLS = "apt-get install chromium, or .venv/bin/playwright install chromium"
MALLOC_INSTALLS = "apt-get install libjemalloc2"


def in_ci(environ=os.environ) -> bool:
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(what: str, install: str) -> NoReturn:
    """Skip (a newcomer's machine) or fail (CI): either way the message names the install."""
    message = f"{what}: {install}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing requirement fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def _playwright_chromium() -> str | None:
    """Playwright's own Chromium, where `playwright install chromium` has put it."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # playwright missing or its driver broken: as good as no browser
        return None
    return path if path and Path(path).is_file() else None


@functools.cache
def chromium_executable() -> str | None:
    """Debian's `chromium` on PATH, else Playwright's own download, else None."""
    return shutil.which("chromium") or _playwright_chromium()


def require_chromium() -> str:
    path = chromium_executable()
    if path is None:
        missing("no Chromium for the browser tests (neither `chromium` on PATH nor Playwright's own)",
                CHROMIUM_INSTALLS)
    return path


def require_fast_malloc() -> str:
    library = allocator.choose(None)
    if library is None:
        missing("needs jemalloc or tcmalloc: under glibc's malloc the server held 1.3 GiB more than its models, "
                "beyond this budget (see quantplay/allocator.py)", MALLOC_INSTALLS)
    return library
